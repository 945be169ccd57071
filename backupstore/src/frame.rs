//! The frame around every stored chunk and manifest.
//!
//! ```text
//! offset size  field
//!      0    4  magic "BLST"
//!      4    1  format version (1 = plain, 2 = sealed)
//!      5    1  kind (1 = chunk, 2 = manifest)
//!      6    1  codec (0 = none, 1 = zstd)
//!      7    1  cipher (0 in version 1; in version 2 1 = XChaCha20-Poly1305,
//!                2 = AES-256-GCM)
//!      8    8  raw length (bytes after decoding), little endian
//!     16    8  payload length (bytes stored after the header)
//!     24    4  crc32 of the payload
//!     28    4  crc32 of bytes 0..28
//!     32    …  payload
//! ```
//!
//! A sealed frame's payload is a random nonce (24 bytes for XChaCha20, 12
//! for AES-GCM), the (compressed) data encrypted, and the 16-byte tag.
//! The associated data is the
//! object's key in the store followed by header bytes 0..16, so neither the
//! header's description of the data nor the object's place can be changed
//! unnoticed, and an object moved to another key does not open.
//!
//! A frame is decoded only if every field checks out, so a damaged or foreign
//! object is always an error, never data. A plain frame where a sealed one
//! is expected (or the reverse) is refused too: nothing unauthenticated is
//! read from an encrypted store, and neither is a frame of another cipher
//! than the store's.

use std::cell::RefCell;

use bytes::Bytes;

use crate::aead::{Aead, MAX_NONCE_LEN, TAG_LEN};

pub(crate) const MAGIC: [u8; 4] = *b"BLST";
const PLAIN_VERSION: u8 = 1;
const SEALED_VERSION: u8 = 2;
pub(crate) const HEADER_LEN: usize = 32;

/// The keyed cipher of a sealed frame and the store key of the object it
/// is sealed for (bound to it as associated data).
#[derive(Clone, Copy)]
pub(crate) struct Seal<'a> {
    pub aead: &'a Aead,
    pub object_key: &'a str,
}

impl Seal<'_> {
    fn associated_data(&self, header: &[u8]) -> Vec<u8> {
        let mut ad = Vec::with_capacity(self.object_key.len() + 16);
        ad.extend_from_slice(self.object_key.as_bytes());
        ad.extend_from_slice(&header[..16]);
        ad
    }
}

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
    #[error("not encrypted, but the store is: refused unread")]
    NotSealed,
    #[error("encrypted, but the store is not")]
    Sealed,
    #[error("unknown cipher {0}")]
    Cipher(u8),
    #[error("authentication failed: the object was altered, or sealed under another key")]
    Authentication,
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
/// smaller (random data is stored as is), and sealed if `seal` is given.
pub(crate) fn encode(kind: Kind, raw: &[u8], level: i32, seal: Option<Seal<'_>>) -> Bytes {
    // The payload is compressed straight into place after the header (and
    // nonce); room for just under `raw.len()` bytes means "only if it gets
    // smaller". The capacity holds the tag too: the frame is never moved.
    let nonce_len = seal.map_or(0, |s| s.aead.cipher().nonce_len());
    let body = HEADER_LEN + nonce_len;
    let tag_len = if seal.is_some() { TAG_LEN } else { 0 };
    let mut out = Vec::with_capacity(body + raw.len() + tag_len);
    out.resize(body, 0);
    let codec = if raw.len() > SAMPLES * SAMPLE_LEN && looks_incompressible(raw, level) {
        Codec::None
    } else {
        out.resize(body + raw.len().saturating_sub(1), 0);
        match compress_into(raw, level, &mut out[body..]) {
            Some(n) => {
                out.truncate(body + n);
                Codec::Zstd
            }
            None => {
                out.truncate(body);
                Codec::None
            }
        }
    };
    if codec == Codec::None {
        out.extend_from_slice(raw);
    }
    let (version, cipher) = match seal {
        Some(s) => (SEALED_VERSION, s.aead.cipher().frame_id()),
        None => (PLAIN_VERSION, 0),
    };
    out[..4].copy_from_slice(&MAGIC);
    out[4..8].copy_from_slice(&[version, kind as u8, codec as u8, cipher]);
    out[8..16].copy_from_slice(&(raw.len() as u64).to_le_bytes());
    if let Some(seal) = seal {
        let nonce: [u8; MAX_NONCE_LEN] = rand::random();
        let nonce = &nonce[..nonce_len];
        let ad = seal.associated_data(&out);
        out[HEADER_LEN..body].copy_from_slice(nonce);
        let tag = seal.aead.seal_in_place(nonce, &ad, &mut out[body..]);
        out.extend_from_slice(&tag);
    }
    let payload_len = out.len() - HEADER_LEN;
    let payload_crc = crc32fast::hash(&out[HEADER_LEN..]);
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
/// a forged header); a sealed one is authenticated and opened with `seal`,
/// which must be given exactly when the store is encrypted.
pub(crate) fn decode(
    expected: Kind,
    data: &[u8],
    max_len: u64,
    seal: Option<Seal<'_>>,
) -> Result<Vec<u8>, FrameError> {
    if data.len() < HEADER_LEN {
        return Err(FrameError::Short(data.len()));
    }
    if data[..4] != MAGIC {
        return Err(FrameError::Magic);
    }
    if le_u32(&data[28..32]) != crc32fast::hash(&data[..28]) {
        return Err(FrameError::HeaderCrc);
    }
    match (data[4], seal.is_some()) {
        (PLAIN_VERSION, false) | (SEALED_VERSION, true) => {}
        (PLAIN_VERSION, true) => return Err(FrameError::NotSealed),
        (SEALED_VERSION, false) => return Err(FrameError::Sealed),
        (other, _) => return Err(FrameError::Version(other)),
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
    let codec = match data[6] {
        0 => Codec::None,
        1 => Codec::Zstd,
        other => return Err(FrameError::Codec(other)),
    };
    let opened = match seal {
        None => None,
        Some(seal) => {
            let cipher = seal.aead.cipher();
            if data[7] != cipher.frame_id() {
                return Err(FrameError::Cipher(data[7]));
            }
            if payload.len() < cipher.nonce_len() + TAG_LEN {
                return Err(FrameError::Authentication);
            }
            let (nonce, rest) = payload.split_at(cipher.nonce_len());
            let (sealed, tag) = rest.split_at(rest.len() - TAG_LEN);
            let opened = seal
                .aead
                .open(nonce, &seal.associated_data(data), sealed, tag)
                .map_err(|_| FrameError::Authentication)?;
            Some(opened)
        }
    };
    let raw = match (codec, opened) {
        (Codec::None, Some(opened)) => opened,
        (Codec::None, None) => payload.to_vec(),
        (Codec::Zstd, opened) => decompress(opened.as_deref().unwrap_or(payload), raw_len as usize)
            .map_err(|e| FrameError::Decompress(e.to_string()))?,
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
    use crate::aead::Cipher;

    /// The callers' bound in these tests: a largest chunk.
    const LIMIT: u64 = 16 << 20;

    #[test]
    fn round_trip_compressible_and_random() {
        let zeros_and_text: Vec<u8> = b"ballast ".iter().copied().cycle().take(100_000).collect();
        let f = encode(Kind::Chunk, &zeros_and_text, 3, None);
        assert!(f.len() < 10_000, "compressible data shrinks");
        assert_eq!(
            decode(Kind::Chunk, &f, LIMIT, None).unwrap(),
            zeros_and_text
        );

        let random: Vec<u8> = (0..65536u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let f = encode(Kind::Manifest, &random, 3, None);
        assert_eq!(decode(Kind::Manifest, &f, LIMIT, None).unwrap(), random);
    }

    #[test]
    fn random_chunks_are_stored_as_is_and_partly_random_ones_compressed() {
        use rand::RngCore;
        let mut random = vec![0u8; 1 << 20];
        rand::thread_rng().fill_bytes(&mut random);
        let f = encode(Kind::Chunk, &random, 3, None);
        assert_eq!(f[6], Codec::None as u8);
        assert_eq!(f.len(), HEADER_LEN + random.len());
        assert_eq!(decode(Kind::Chunk, &f, LIMIT, None).unwrap(), random);

        // Random at both ends (where two of the samples fall), zeros between.
        let mut mixed = random.clone();
        let end = mixed.len() - SAMPLE_LEN;
        mixed[SAMPLE_LEN..end].fill(0);
        let f = encode(Kind::Chunk, &mixed, 3, None);
        assert_eq!(f[6], Codec::Zstd as u8);
        assert!(f.len() < 3 * SAMPLE_LEN, "{} bytes", f.len());
        assert_eq!(decode(Kind::Chunk, &f, LIMIT, None).unwrap(), mixed);
    }

    #[test]
    fn every_damage_is_detected() {
        let raw: Vec<u8> = b"0123456789".iter().copied().cycle().take(5000).collect();
        let f = encode(Kind::Chunk, &raw, 3, None).to_vec();
        assert_eq!(
            decode(Kind::Manifest, &f, LIMIT, None),
            Err(FrameError::Kind {
                expected: Kind::Manifest,
                found: 1
            })
        );
        assert_eq!(
            decode(Kind::Chunk, &f[..10], LIMIT, None),
            Err(FrameError::Short(10))
        );
        assert_eq!(
            decode(Kind::Chunk, &f[..f.len() - 1], LIMIT, None).unwrap_err(),
            FrameError::Length {
                header: (f.len() - HEADER_LEN) as u64,
                actual: (f.len() - HEADER_LEN - 1) as u64
            }
        );
        for i in 0..f.len() {
            let mut d = f.clone();
            d[i] ^= 0x40;
            assert!(
                decode(Kind::Chunk, &d, LIMIT, None).is_err(),
                "flip at byte {i} went unnoticed"
            );
        }
        assert_eq!(
            decode(
                Kind::Chunk,
                b"{\"not\": \"ours\", \"padding\": 1234567890}",
                LIMIT,
                None
            ),
            Err(FrameError::Magic)
        );
        // A header announcing more than the caller allows is refused before
        // anything is allocated for it.
        assert_eq!(
            decode(Kind::Chunk, &f, raw.len() as u64 - 1, None),
            Err(FrameError::TooLarge(raw.len() as u64))
        );
    }

    fn aead(cipher: Cipher, byte: u8) -> Aead {
        Aead::new(cipher, &[byte; 32])
    }

    #[test]
    fn sealed_frames_open_only_with_their_key_and_place() {
        for cipher in [Cipher::Aes256Gcm, Cipher::XChaCha20Poly1305] {
            sealed_frames_open_only_with_their_key_and_place_under(cipher);
        }
    }

    fn sealed_frames_open_only_with_their_key_and_place_under(cipher: Cipher) {
        let nonce_len = cipher.nonce_len();
        let text: Vec<u8> = b"secret text "
            .iter()
            .copied()
            .cycle()
            .take(50_000)
            .collect();
        let (c, other) = (aead(cipher, 1), aead(cipher, 2));
        let seal = |aead, object_key| Some(Seal { aead, object_key });
        let f = encode(Kind::Chunk, &text, 3, seal(&c, "chunks/a")).to_vec();
        assert_eq!(
            (f[4], f[6], f[7]),
            (SEALED_VERSION, Codec::Zstd as u8, cipher.frame_id())
        );
        assert!(!f.windows(12).any(|w| w == b"secret text "));
        assert_eq!(
            decode(Kind::Chunk, &f, LIMIT, seal(&c, "chunks/a")).unwrap(),
            text
        );
        assert_eq!(
            decode(Kind::Chunk, &f, LIMIT, seal(&other, "chunks/a")),
            Err(FrameError::Authentication)
        );
        assert_eq!(
            decode(Kind::Chunk, &f, LIMIT, seal(&c, "chunks/b")),
            Err(FrameError::Authentication)
        );
        assert_eq!(
            decode(Kind::Chunk, &f, LIMIT, None),
            Err(FrameError::Sealed)
        );
        let plain = encode(Kind::Chunk, &text, 3, None);
        assert_eq!(
            decode(Kind::Chunk, &plain, LIMIT, seal(&c, "chunks/a")),
            Err(FrameError::NotSealed)
        );
        for i in 0..f.len() {
            let mut d = f.clone();
            d[i] ^= 0x01;
            assert!(
                decode(Kind::Chunk, &d, LIMIT, seal(&c, "chunks/a")).is_err(),
                "flip at byte {i} went unnoticed"
            );
        }
        // A forger who also fixes both crc32s is stopped by the tag.
        let mut forged = f.clone();
        forged[HEADER_LEN + nonce_len] ^= 1;
        let crc = crc32fast::hash(&forged[HEADER_LEN..]);
        forged[24..28].copy_from_slice(&crc.to_le_bytes());
        let crc = crc32fast::hash(&forged[..28]);
        forged[28..32].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            decode(Kind::Chunk, &forged, LIMIT, seal(&c, "chunks/a")),
            Err(FrameError::Authentication)
        );

        use rand::RngCore;
        let mut random = vec![0u8; 1 << 20];
        rand::thread_rng().fill_bytes(&mut random);
        let f = encode(Kind::Chunk, &random, 3, seal(&c, "k"));
        assert_eq!(f.len(), HEADER_LEN + nonce_len + random.len() + TAG_LEN);
        assert_eq!(
            decode(Kind::Chunk, &f, LIMIT, seal(&c, "k")).unwrap(),
            random
        );
    }
}
