//! Decoders for what clients send: option headers and payloads during the
//! handshake, request headers during transmission. Pure functions over
//! bytes, so they can be fuzzed directly; every malformed input is a
//! [`WireError`], never a panic.

use crate::proto::{EXTENDED_REQUEST_MAGIC, IHAVEOPT, MAX_STRING_LEN, REQUEST_MAGIC};

pub const OPTION_HEADER_LEN: usize = 16;
pub const REQUEST_HEADER_LEN: usize = 28;
pub const EXTENDED_REQUEST_HEADER_LEN: usize = 32;

/// A malformed message from the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("bad option magic {0:#018x}")]
    BadOptionMagic(u64),
    #[error("bad request magic {0:#010x}")]
    BadRequestMagic(u32),
    #[error("option payload truncated")]
    Truncated,
    #[error("option payload has {0} trailing bytes")]
    TrailingBytes(usize),
    #[error("string longer than {MAX_STRING_LEN} bytes")]
    StringTooLong,
    #[error("string is not valid UTF-8 or contains NUL")]
    BadString,
}

/// `IHAVEOPT`, option, length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    pub option: u32,
    pub length: u32,
}

pub fn decode_option_header(buf: &[u8; OPTION_HEADER_LEN]) -> Result<OptionHeader, WireError> {
    let mut cur = Cursor::new(buf);
    let magic = cur.u64()?;
    if magic != IHAVEOPT {
        return Err(WireError::BadOptionMagic(magic));
    }
    Ok(OptionHeader {
        option: cur.u32()?,
        length: cur.u32()?,
    })
}

/// A transmission-phase request header (compact or extended form; the
/// compact form's 32-bit length is widened).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHeader {
    pub flags: u16,
    pub command: u16,
    pub handle: u64,
    pub offset: u64,
    pub length: u64,
}

pub fn decode_request_header(buf: &[u8; REQUEST_HEADER_LEN]) -> Result<RequestHeader, WireError> {
    let mut cur = Cursor::new(buf);
    let magic = cur.u32()?;
    if magic != REQUEST_MAGIC {
        return Err(WireError::BadRequestMagic(magic));
    }
    Ok(RequestHeader {
        flags: cur.u16()?,
        command: cur.u16()?,
        handle: cur.u64()?,
        offset: cur.u64()?,
        length: u64::from(cur.u32()?),
    })
}

/// The 32-byte request header used once extended headers are negotiated.
pub fn decode_extended_request_header(
    buf: &[u8; EXTENDED_REQUEST_HEADER_LEN],
) -> Result<RequestHeader, WireError> {
    let mut cur = Cursor::new(buf);
    let magic = cur.u32()?;
    if magic != EXTENDED_REQUEST_MAGIC {
        return Err(WireError::BadRequestMagic(magic));
    }
    Ok(RequestHeader {
        flags: cur.u16()?,
        command: cur.u16()?,
        handle: cur.u64()?,
        offset: cur.u64()?,
        length: cur.u64()?,
    })
}

/// Payload of NBD_OPT_INFO and NBD_OPT_GO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest {
    pub name: String,
    pub requests: Vec<u16>,
}

pub fn parse_info_request(payload: &[u8]) -> Result<InfoRequest, WireError> {
    let mut cur = Cursor::new(payload);
    let name = cur.string_u32()?;
    let count = cur.u16()?;
    let mut requests = Vec::with_capacity(usize::from(count).min(payload.len() / 2));
    for _ in 0..count {
        requests.push(cur.u16()?);
    }
    cur.finish()?;
    Ok(InfoRequest { name, requests })
}

/// Payload of NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaContextRequest {
    pub export: String,
    pub queries: Vec<String>,
}

pub fn parse_meta_context_request(payload: &[u8]) -> Result<MetaContextRequest, WireError> {
    let mut cur = Cursor::new(payload);
    let export = cur.string_u32()?;
    let count = cur.u32()?;
    // Each query takes at least 4 bytes, which bounds the allocation.
    let mut queries = Vec::with_capacity((count as usize).min(payload.len() / 4));
    for _ in 0..count {
        queries.push(cur.string_u32()?);
    }
    cur.finish()?;
    Ok(MetaContextRequest { export, queries })
}

/// Validates an NBD string (export name, query): UTF-8, no NUL, at most
/// [`MAX_STRING_LEN`] bytes.
pub fn parse_string(bytes: &[u8]) -> Result<String, WireError> {
    if bytes.len() > MAX_STRING_LEN {
        return Err(WireError::StringTooLong);
    }
    let s = std::str::from_utf8(bytes).map_err(|_| WireError::BadString)?;
    if s.contains('\0') {
        return Err(WireError::BadString);
    }
    Ok(s.to_string())
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Cursor { buf, pos: 0 }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self.pos.checked_add(n).ok_or(WireError::Truncated)?;
        let bytes = self.buf.get(self.pos..end).ok_or(WireError::Truncated)?;
        self.pos = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// A string preceded by its 32-bit length.
    fn string_u32(&mut self) -> Result<String, WireError> {
        let len = self.u32()? as usize;
        parse_string(self.take(len)?)
    }

    fn finish(self) -> Result<(), WireError> {
        match self.buf.len() - self.pos {
            0 => Ok(()),
            n => Err(WireError::TrailingBytes(n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn info_payload(name: &str, requests: &[u16]) -> Vec<u8> {
        let mut p = (name.len() as u32).to_be_bytes().to_vec();
        p.extend_from_slice(name.as_bytes());
        p.extend_from_slice(&(requests.len() as u16).to_be_bytes());
        for r in requests {
            p.extend_from_slice(&r.to_be_bytes());
        }
        p
    }

    #[test]
    fn info_request_round_trip_and_rejects() {
        let p = info_payload("vol@snap", &[3, 1]);
        assert_eq!(
            parse_info_request(&p).unwrap(),
            InfoRequest {
                name: "vol@snap".into(),
                requests: vec![3, 1]
            }
        );
        assert_eq!(
            parse_info_request(&p[..p.len() - 1]),
            Err(WireError::Truncated)
        );
        let mut long = p.clone();
        long.push(0);
        assert_eq!(parse_info_request(&long), Err(WireError::TrailingBytes(1)));
        let mut huge = p;
        huge[..4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(parse_info_request(&huge), Err(WireError::Truncated));
        assert_eq!(
            parse_info_request(&info_payload("a\0b", &[])),
            Err(WireError::BadString)
        );
    }

    #[test]
    fn meta_context_request_parses_queries() {
        let mut p = 3u32.to_be_bytes().to_vec();
        p.extend_from_slice(b"vol");
        p.extend_from_slice(&2u32.to_be_bytes());
        for q in ["base:allocation", "qemu:dirty-bitmap:x"] {
            p.extend_from_slice(&(q.len() as u32).to_be_bytes());
            p.extend_from_slice(q.as_bytes());
        }
        let req = parse_meta_context_request(&p).unwrap();
        assert_eq!(req.export, "vol");
        assert_eq!(req.queries, ["base:allocation", "qemu:dirty-bitmap:x"]);
        // A count larger than the payload can hold is truncated, not allocated.
        let mut bogus = 0u32.to_be_bytes().to_vec();
        bogus.extend_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(
            parse_meta_context_request(&bogus),
            Err(WireError::Truncated)
        );
    }

    #[test]
    fn request_header_checks_magic() {
        let mut h = [0u8; REQUEST_HEADER_LEN];
        h[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        h[6..8].copy_from_slice(&1u16.to_be_bytes());
        h[8..16].copy_from_slice(&7u64.to_be_bytes());
        h[24..28].copy_from_slice(&512u32.to_be_bytes());
        let r = decode_request_header(&h).unwrap();
        assert_eq!((r.command, r.handle, r.length), (1, 7, 512));
        h[0] = 0;
        assert!(matches!(
            decode_request_header(&h),
            Err(WireError::BadRequestMagic(_))
        ));
    }

    proptest! {
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse_info_request(&bytes);
            let _ = parse_meta_context_request(&bytes);
            let mut opt = [0u8; OPTION_HEADER_LEN];
            let n = bytes.len().min(OPTION_HEADER_LEN);
            opt[..n].copy_from_slice(&bytes[..n]);
            let _ = decode_option_header(&opt);
            let mut req = [0u8; REQUEST_HEADER_LEN];
            let n = bytes.len().min(REQUEST_HEADER_LEN);
            req[..n].copy_from_slice(&bytes[..n]);
            let _ = decode_request_header(&req);
            let mut ext = [0u8; EXTENDED_REQUEST_HEADER_LEN];
            let n = bytes.len().min(EXTENDED_REQUEST_HEADER_LEN);
            ext[..n].copy_from_slice(&bytes[..n]);
            let _ = decode_extended_request_header(&ext);
        }

        #[test]
        fn info_request_round_trips(name in "[a-z0-9@._-]{0,80}", reqs in proptest::collection::vec(any::<u16>(), 0..8)) {
            let parsed = parse_info_request(&info_payload(&name, &reqs)).unwrap();
            prop_assert_eq!(parsed.name, name);
            prop_assert_eq!(parsed.requests, reqs);
        }
    }
}
