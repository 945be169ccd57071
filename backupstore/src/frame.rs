//! The frame around every stored chunk and manifest.
//!
//! ```text
//! offset size  field
//!      0    4  magic "BLST"
//!      4    1  format version (1)
//!      5    1  kind (1 = chunk, 2 = manifest)
//!      6    1  codec (0 = none, 1 = zstd)
//!      7    1  reserved (0)
//!      8    8  raw length (bytes after decoding), little endian
//!     16    8  payload length (bytes stored after the header)
//!     24    4  crc32 of the payload
//!     28    4  crc32 of bytes 0..28
//!     32    …  payload
//! ```
//!
//! A frame is decoded only if every field checks out, so a damaged or foreign
//! object is always an error, never data.

use std::cell::RefCell;

use bytes::Bytes;

pub(crate) const MAGIC: [u8; 4] = *b"BLST";
pub(crate) const VERSION: u8 = 1;
pub(crate) const HEADER_LEN: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Chunk = 1,
    Manifest = 2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Codec {
    None = 0,
    Zstd = 1,
}

/// Why a frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FrameError {
    #[error("too short for a header ({0} bytes)")]
    Short(usize),
    #[error("bad magic (not a ballast object)")]
    Magic,
    #[error("unsupported format version {0}")]
    Version(u8),
    #[error("header checksum mismatch")]
    HeaderCrc,
    #[error("expected a {expected:?} object, found kind {found}")]
    Kind { expected: Kind, found: u8 },
    #[error("unknown codec {0}")]
    Codec(u8),
    #[error("payload length {header} in header, {actual} present")]
    Length { header: u64, actual: u64 },
    #[error("payload checksum mismatch")]
    PayloadCrc,
    #[error("decompression failed: {0}")]
    Decompress(String),
    #[error("decoded length {actual} differs from header ({header})")]
    RawLength { header: u64, actual: u64 },
    #[error("decoded length {0} in header exceeds the limit for this kind of object")]
    TooLarge(u64),
}

thread_local! {
    /// Each worker thread keeps its zstd contexts: creating one per chunk
    /// would allocate (and fault in) megabytes of fresh workspace every time.
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { RefCell::new(None) };
}

/// Compresses `raw` at `level` into `out`; the compressed length, or `None`
/// if it does not fit (the data does not compress) or zstd fails.
fn compress_into(raw: &[u8], level: i32, out: &mut [u8]) -> Option<usize> {
    COMPRESSOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.as_ref().is_none_or(|(l, _)| *l != level) {
            *cell = Some((level, zstd::bulk::Compressor::new(level).ok()?));
        }
        let (_, compressor) = cell.as_mut()?;
        compressor.compress_to_buffer(raw, out).ok()
    })
}

fn decompress(payload: &[u8], raw_len: usize) -> std::io::Result<Vec<u8>> {
    DECOMPRESSOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.is_none() {
            *cell = Some(zstd::bulk::Decompressor::new()?);
        }
        let decompressor = cell.as_mut().expect("created above");
        let mut raw = Vec::with_capacity(raw_len);
        decompressor.decompress_to_buffer(payload, &mut raw)?;
        Ok(raw)
    })
}

/// Bytes of each sample [`looks_incompressible`] tries.
const SAMPLE_LEN: usize = 16 << 10;
/// Samples taken across the data.
const SAMPLES: usize = 4;

/// True if samples spread across `raw` (which must be larger than them
/// all) do not shrink by even 1/32: random or already compressed data,
/// which is then stored as is without spending a full compression on it.
/// Data that is random in places only still gets compressed whole.
fn looks_incompressible(raw: &[u8], level: i32) -> bool {
    let mut scratch = vec![0u8; SAMPLE_LEN];
    (0..SAMPLES).all(|i| {
        let start = (raw.len() - SAMPLE_LEN) * i / (SAMPLES - 1);
        let sample = &raw[start..start + SAMPLE_LEN];
        let room = SAMPLE_LEN - SAMPLE_LEN / 32;
        compress_into(sample, level, &mut scratch[..room]).is_none()
    })
}

/// Frames `raw`, zstd-compressed at `level` unless that does not make it
/// smaller (random data is stored as is).
pub(crate) fn encode(kind: Kind, raw: &[u8], level: i32) -> Bytes {
    // The payload is compressed straight into place after the header; room
    // for just under `raw.len()` bytes means "only if it gets smaller".
    let mut out = vec![0u8; HEADER_LEN + raw.len()];
    let room = raw.len().saturating_sub(1);
    let compressed = if raw.len() > SAMPLES * SAMPLE_LEN && looks_incompressible(raw, level) {
        None
    } else {
        compress_into(raw, level, &mut out[HEADER_LEN..HEADER_LEN + room])
    };
    let codec = match compressed {
        Some(n) => {
            out.truncate(HEADER_LEN + n);
            Codec::Zstd
        }
        None => {
            out[HEADER_LEN..].copy_from_slice(raw);
            Codec::None
        }
    };
    let payload_len = out.len() - HEADER_LEN;
    let payload_crc = crc32fast::hash(&out[HEADER_LEN..]);
    out[..4].copy_from_slice(&MAGIC);
    out[4..8].copy_from_slice(&[VERSION, kind as u8, codec as u8, 0]);
    out[8..16].copy_from_slice(&(raw.len() as u64).to_le_bytes());
    out[16..24].copy_from_slice(&(payload_len as u64).to_le_bytes());
    out[24..28].copy_from_slice(&payload_crc.to_le_bytes());
    let header_crc = crc32fast::hash(&out[..28]);
    out[28..32].copy_from_slice(&header_crc.to_le_bytes());
    Bytes::from(out)
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

/// Checks and decodes a frame of the expected kind whose decoded length is
/// at most `max_len` (the caller's bound, which guards allocations against
/// a forged header).
pub(crate) fn decode(expected: Kind, data: &[u8], max_len: u64) -> Result<Vec<u8>, FrameError> {
    if data.len() < HEADER_LEN {
        return Err(FrameError::Short(data.len()));
    }
    if data[..4] != MAGIC {
        return Err(FrameError::Magic);
    }
    if le_u32(&data[28..32]) != crc32fast::hash(&data[..28]) {
        return Err(FrameError::HeaderCrc);
    }
    if data[4] != VERSION {
        return Err(FrameError::Version(data[4]));
    }
    if data[5] != expected as u8 {
        return Err(FrameError::Kind {
            expected,
            found: data[5],
        });
    }
    let raw_len = le_u64(&data[8..16]);
    let payload_len = le_u64(&data[16..24]);
    let payload = &data[HEADER_LEN..];
    if payload.len() as u64 != payload_len {
        return Err(FrameError::Length {
            header: payload_len,
            actual: payload.len() as u64,
        });
    }
    if crc32fast::hash(payload) != le_u32(&data[24..28]) {
        return Err(FrameError::PayloadCrc);
    }
    if raw_len > max_len {
        return Err(FrameError::TooLarge(raw_len));
    }
    let raw = match data[6] {
        0 => payload.to_vec(),
        1 => decompress(payload, raw_len as usize)
            .map_err(|e| FrameError::Decompress(e.to_string()))?,
        other => return Err(FrameError::Codec(other)),
    };
    if raw.len() as u64 != raw_len {
        return Err(FrameError::RawLength {
            header: raw_len,
            actual: raw.len() as u64,
        });
    }
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The callers' bound in these tests: a largest chunk.
    const LIMIT: u64 = 16 << 20;

    #[test]
    fn round_trip_compressible_and_random() {
        let zeros_and_text: Vec<u8> = b"ballast ".iter().copied().cycle().take(100_000).collect();
        let f = encode(Kind::Chunk, &zeros_and_text, 3);
        assert!(f.len() < 10_000, "compressible data shrinks");
        assert_eq!(decode(Kind::Chunk, &f, LIMIT).unwrap(), zeros_and_text);

        let random: Vec<u8> = (0..65536u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let f = encode(Kind::Manifest, &random, 3);
        assert_eq!(decode(Kind::Manifest, &f, LIMIT).unwrap(), random);
    }

    #[test]
    fn random_chunks_are_stored_as_is_and_partly_random_ones_compressed() {
        use rand::RngCore;
        let mut random = vec![0u8; 1 << 20];
        rand::thread_rng().fill_bytes(&mut random);
        let f = encode(Kind::Chunk, &random, 3);
        assert_eq!(f[6], Codec::None as u8);
        assert_eq!(f.len(), HEADER_LEN + random.len());
        assert_eq!(decode(Kind::Chunk, &f, LIMIT).unwrap(), random);

        // Random at both ends (where two of the samples fall), zeros between.
        let mut mixed = random.clone();
        let end = mixed.len() - SAMPLE_LEN;
        mixed[SAMPLE_LEN..end].fill(0);
        let f = encode(Kind::Chunk, &mixed, 3);
        assert_eq!(f[6], Codec::Zstd as u8);
        assert!(f.len() < 3 * SAMPLE_LEN, "{} bytes", f.len());
        assert_eq!(decode(Kind::Chunk, &f, LIMIT).unwrap(), mixed);
    }

    #[test]
    fn every_damage_is_detected() {
        let raw: Vec<u8> = b"0123456789".iter().copied().cycle().take(5000).collect();
        let f = encode(Kind::Chunk, &raw, 3).to_vec();
        assert_eq!(
            decode(Kind::Manifest, &f, LIMIT),
            Err(FrameError::Kind {
                expected: Kind::Manifest,
                found: 1
            })
        );
        assert_eq!(
            decode(Kind::Chunk, &f[..10], LIMIT),
            Err(FrameError::Short(10))
        );
        assert_eq!(
            decode(Kind::Chunk, &f[..f.len() - 1], LIMIT).unwrap_err(),
            FrameError::Length {
                header: (f.len() - HEADER_LEN) as u64,
                actual: (f.len() - HEADER_LEN - 1) as u64
            }
        );
        for i in 0..f.len() {
            let mut d = f.clone();
            d[i] ^= 0x40;
            assert!(
                decode(Kind::Chunk, &d, LIMIT).is_err(),
                "flip at byte {i} went unnoticed"
            );
        }
        assert_eq!(
            decode(
                Kind::Chunk,
                b"{\"not\": \"ours\", \"padding\": 1234567890}",
                LIMIT
            ),
            Err(FrameError::Magic)
        );
        // A header announcing more than the caller allows is refused before
        // anything is allocated for it.
        assert_eq!(
            decode(Kind::Chunk, &f, raw.len() as u64 - 1),
            Err(FrameError::TooLarge(raw.len() as u64))
        );
    }
}
