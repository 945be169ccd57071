//! Backup manifests, the store configuration object and the store's key
//! layout.
//!
//! ```text
//! ballast-store.json                 store configuration (chunk size, encryption), plain JSON
//! chunks/ab/cd/<id hex>              one framed, compressed (and sealed) chunk
//! backups/<volume>/<id>.manifest     one framed manifest (JSON inside)
//! locks/<name>.lock                  a running backup or gc (see lock.rs)
//! ```

use serde::{Deserialize, Serialize};

use crate::aead::Cipher;
use crate::error::Error;
use crate::frame::Kind;
use crate::key::{BackupKey, KdfParams};
use crate::sealing::Sealing;
use crate::url::validate_backup_id;

pub(crate) const CONFIG_KEY: &str = "ballast-store.json";
pub(crate) const CHUNKS_PREFIX: &str = "chunks/";
pub(crate) const BACKUPS_PREFIX: &str = "backups/";
pub(crate) const MANIFEST_SUFFIX: &str = ".manifest";

const STORE_FORMAT: &str = "ballast-backupstore";
/// Version 1 stores are plain; version 2 stores are encrypted (builds
/// that predate encryption refuse them rather than mix in plain objects).
const PLAIN_STORE_VERSION: u32 = 1;
const SEALED_STORE_VERSION: u32 = 2;
const MANIFEST_FORMAT: &str = "ballast-backup";

/// Upper bound on a decoded manifest (one of a 1 PiB volume in 1 MiB chunks
/// stays below it); guards allocations against a forged frame header.
const MAX_MANIFEST_LEN: u64 = 1 << 37;

pub const DEFAULT_CHUNK_SIZE: u32 = 1 << 20;
pub(crate) const MIN_CHUNK_SIZE: u64 = 64 << 10;
pub(crate) const MAX_CHUNK_SIZE: u64 = 16 << 20;

/// A chunk's content address: BLAKE3 of its (uncompressed) bytes, keyed in
/// an encrypted store (`sealing.rs`).
pub(crate) type Digest = [u8; 32];

pub(crate) fn digest_hex(d: &Digest) -> String {
    blake3::Hash::from_bytes(*d).to_hex().to_string()
}

pub(crate) fn parse_digest(hex: &str) -> Option<Digest> {
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    blake3::Hash::from_hex(hex).ok().map(|h| *h.as_bytes())
}

pub(crate) fn chunk_key(d: &Digest) -> String {
    let hex = digest_hex(d);
    format!("{CHUNKS_PREFIX}{}/{}/{hex}", &hex[0..2], &hex[2..4])
}

/// The digest a chunk key names, if it is one of ours.
pub(crate) fn digest_of_key(key: &str) -> Option<Digest> {
    let rest = key.strip_prefix(CHUNKS_PREFIX)?;
    let mut parts = rest.split('/');
    let (a, b, hex, none) = (parts.next()?, parts.next()?, parts.next()?, parts.next());
    if none.is_some() || hex.get(0..2)? != a || hex.get(2..4)? != b {
        return None;
    }
    parse_digest(hex)
}

pub(crate) fn manifest_key(volume: &str, id: &str) -> String {
    format!("{BACKUPS_PREFIX}{volume}/{id}{MANIFEST_SUFFIX}")
}

/// `(volume, id)` of a manifest key.
pub(crate) fn parse_manifest_key(key: &str) -> Option<(&str, &str)> {
    let rest = key.strip_prefix(BACKUPS_PREFIX)?;
    let (volume, file) = rest.split_once('/')?;
    let id = file.strip_suffix(MANIFEST_SUFFIX)?;
    (ballast_engine::validate_name(volume).is_ok() && validate_backup_id(id).is_ok())
        .then_some((volume, id))
}

pub(crate) fn validate_chunk_size(size: u64) -> Result<u32, Error> {
    if size.is_power_of_two() && (MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&size) {
        Ok(size as u32)
    } else {
        Err(Error::InvalidChunkSize(size))
    }
}

/// The store-wide settings, fixed when the store is initialised.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreConfig {
    pub format: String,
    pub version: u32,
    pub chunk_size: u32,
    /// Seconds since the Unix epoch.
    pub created: u64,
    /// Present if and only if the store is encrypted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<Encryption>,
}

/// How an encrypted store is encrypted: which key (by fingerprint, never
/// the key itself) and, for a passphrase key, how to derive it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Encryption {
    pub cipher: String,
    pub key_fingerprint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kdf: Option<KdfParams>,
}

impl Encryption {
    /// The store's cipher, if this build knows it (a parsed configuration
    /// always names one it knows).
    pub(crate) fn sealed_with(&self) -> Option<Cipher> {
        Cipher::from_name(&self.cipher)
    }
}

impl StoreConfig {
    pub fn new(chunk_size: u32, created: u64, key: Option<&BackupKey>) -> Self {
        StoreConfig {
            format: STORE_FORMAT.into(),
            version: if key.is_some() {
                SEALED_STORE_VERSION
            } else {
                PLAIN_STORE_VERSION
            },
            chunk_size,
            created,
            encryption: key.map(|k| Encryption {
                cipher: Cipher::FOR_NEW_STORES.name().into(),
                key_fingerprint: k.fingerprint(),
                kdf: k.kdf().cloned(),
            }),
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("config serialises");
        v.push(b'\n');
        v
    }

    /// Parses a configuration object; the error says why it is not ours.
    pub fn from_bytes(data: &[u8]) -> Result<Self, String> {
        let c: StoreConfig =
            serde_json::from_slice(data).map_err(|e| format!("not JSON we wrote ({e})"))?;
        if c.format != STORE_FORMAT {
            return Err(format!("format {:?}, expected {STORE_FORMAT:?}", c.format));
        }
        match (c.version, &c.encryption) {
            (PLAIN_STORE_VERSION, None) => {}
            (SEALED_STORE_VERSION, Some(e)) if e.sealed_with().is_some() => {}
            (SEALED_STORE_VERSION, Some(e)) => {
                return Err(format!("unknown cipher {:?}", e.cipher));
            }
            (PLAIN_STORE_VERSION | SEALED_STORE_VERSION, _) => {
                return Err(format!(
                    "store version {} does not match its encryption setting",
                    c.version
                ));
            }
            (v, _) => {
                return Err(format!(
                    "store version {v} is not supported (this build reads {PLAIN_STORE_VERSION} and {SEALED_STORE_VERSION})"
                ));
            }
        }
        validate_chunk_size(c.chunk_size.into()).map_err(|e| e.to_string())?;
        Ok(c)
    }
}

/// Everything known about one backup. Stored framed and compressed at
/// `backups/<volume>/<id>.manifest`, written only after every chunk it names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub id: String,
    pub volume: String,
    pub snapshot: String,
    /// Creation times of the volume and snapshot in the pool the backup was
    /// taken from: an incremental backup trusts the engine diff against a
    /// local snapshot only if it is the very snapshot this manifest was made of.
    pub volume_created: u64,
    pub snapshot_created: u64,
    /// Volume size in bytes.
    pub size: u64,
    pub chunk_size: u32,
    /// Seconds since the Unix epoch.
    pub created: u64,
    /// Id of the backup of the same volume this one was made incrementally from.
    pub parent: Option<String>,
    /// Chunks and raw bytes this backup uploaded.
    pub new_chunks: u64,
    pub new_bytes: u64,
    /// Chunks and raw bytes already in the store (parent or dedup).
    pub reused_chunks: u64,
    pub reused_bytes: u64,
    /// Bytes this backup added to the store after compression and framing.
    pub stored_bytes: u64,
    /// Digest of chunk `i` (volume bytes `i * chunk_size ..`), hex; `None`
    /// for a chunk of zeros, which is not stored.
    pub chunks: Vec<Option<String>>,
}

impl Manifest {
    pub fn new_format() -> String {
        MANIFEST_FORMAT.to_string()
    }

    pub fn chunk_count(size: u64, chunk_size: u32) -> usize {
        size.div_ceil(u64::from(chunk_size)) as usize
    }

    /// Length of chunk `index` (the last one may be short).
    pub fn chunk_len(&self, index: usize) -> usize {
        let start = index as u64 * u64::from(self.chunk_size);
        (self.size - start).min(u64::from(self.chunk_size)) as usize
    }

    /// The digest of every stored chunk, parsed.
    pub fn digests(&self) -> impl Iterator<Item = (usize, Digest)> + '_ {
        self.chunks
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.as_deref().and_then(parse_digest).map(|d| (i, d)))
    }

    /// The manifest framed (and sealed) for its key in the store.
    pub(crate) fn encode(&self, sealing: &Sealing) -> bytes::Bytes {
        let json = serde_json::to_vec(self).expect("manifest serialises");
        let key = manifest_key(&self.volume, &self.id);
        sealing.encode(Kind::Manifest, &key, &json, 3)
    }

    /// The manifest framed for a plain (unencrypted) store: for tools and
    /// tests that rewrite a manifest in place. A sealed store's manifests
    /// can only be written by the store itself.
    pub fn encode_plain(&self) -> bytes::Bytes {
        self.encode(&Sealing::Plain)
    }

    /// Decodes and validates a plain store's manifest stored at `key`.
    pub fn decode_plain(key: &str, data: &[u8]) -> Result<Manifest, String> {
        Manifest::decode(&Sealing::Plain, key, data)
    }

    /// Decodes and validates the manifest stored at `key`; the error says
    /// why it is not one of ours.
    pub(crate) fn decode(sealing: &Sealing, key: &str, data: &[u8]) -> Result<Manifest, String> {
        let json = sealing
            .decode(Kind::Manifest, key, data, MAX_MANIFEST_LEN)
            .map_err(|e| e.to_string())?;
        let m: Manifest =
            serde_json::from_slice(&json).map_err(|e| format!("manifest JSON: {e}"))?;
        if m.format != MANIFEST_FORMAT {
            return Err(format!(
                "format {:?}, expected {MANIFEST_FORMAT:?}",
                m.format
            ));
        }
        validate_backup_id(&m.id).map_err(|e| e.to_string())?;
        ballast_engine::validate_name(&m.volume).map_err(|e| e.to_string())?;
        validate_chunk_size(m.chunk_size.into()).map_err(|e| e.to_string())?;
        if m.chunks.len() != Manifest::chunk_count(m.size, m.chunk_size) {
            return Err(format!(
                "{} chunk entries for a {} byte volume in {} byte chunks",
                m.chunks.len(),
                m.size,
                m.chunk_size
            ));
        }
        if let Some(bad) = m
            .chunks
            .iter()
            .flatten()
            .find(|c| parse_digest(c).is_none())
        {
            return Err(format!("bad chunk digest {bad:?}"));
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        let d = *blake3::hash(b"x").as_bytes();
        Manifest {
            format: Manifest::new_format(),
            id: "20260101T000000Z-00000001".into(),
            volume: "vol".into(),
            snapshot: "s1".into(),
            volume_created: 1,
            snapshot_created: 2,
            size: 3 * 65536 + 4096,
            chunk_size: 65536,
            created: 3,
            parent: None,
            new_chunks: 1,
            new_bytes: 65536,
            reused_chunks: 0,
            reused_bytes: 0,
            stored_bytes: 100,
            chunks: vec![Some(digest_hex(&d)), None, None, None],
        }
    }

    #[test]
    fn manifest_round_trip_and_validation() {
        let m = sample();
        let key = manifest_key(&m.volume, &m.id);
        let decode =
            |m: &Manifest| Manifest::decode(&Sealing::Plain, &key, &m.encode(&Sealing::Plain));
        assert_eq!(decode(&m).unwrap(), m);
        assert_eq!(m.chunk_len(3), 4096);
        assert_eq!(m.digests().count(), 1);

        let mut short = sample();
        short.chunks.pop();
        assert!(decode(&short).unwrap_err().contains("chunk entries"));
        let mut bad = sample();
        bad.chunks[1] = Some("zz".into());
        assert!(decode(&bad).unwrap_err().contains("bad chunk digest"));
        let mut evil = sample();
        evil.volume = "../x".into();
        assert!(decode(&evil).is_err());
        let e = Manifest::decode(
            &Sealing::Plain,
            &key,
            b"{\"format\":\"ballast-backup\", \"id\": \"x\"}",
        )
        .unwrap_err();
        assert!(e.contains("magic"), "{e}");
    }

    #[test]
    fn keys_round_trip() {
        let d = *blake3::hash(b"y").as_bytes();
        let k = chunk_key(&d);
        assert!(k.starts_with("chunks/"));
        assert_eq!(digest_of_key(&k), Some(d));
        assert_eq!(digest_of_key("chunks/00/00/abc"), None);
        assert_eq!(
            parse_manifest_key(&manifest_key("v1", "id-1")),
            Some(("v1", "id-1"))
        );
        assert_eq!(parse_manifest_key("backups/v1/x.tmp"), None);
    }

    #[test]
    fn chunk_sizes() {
        assert!(validate_chunk_size(1 << 20).is_ok());
        assert!(validate_chunk_size(64 << 10).is_ok());
        assert!(validate_chunk_size(16 << 20).is_ok());
        assert!(validate_chunk_size(32 << 10).is_err());
        assert!(validate_chunk_size(3 << 20).is_err());
        assert!(validate_chunk_size(32 << 20).is_err());
        let c = StoreConfig::new(1 << 20, 5, None);
        assert_eq!(StoreConfig::from_bytes(&c.to_bytes()).unwrap(), c);
        assert!(StoreConfig::from_bytes(b"{}").is_err());
        let key = BackupKey::generate();
        let sealed = StoreConfig::new(1 << 20, 5, Some(&key));
        assert_eq!(sealed.version, SEALED_STORE_VERSION);
        assert_eq!(StoreConfig::from_bytes(&sealed.to_bytes()).unwrap(), sealed);
        let text = String::from_utf8(sealed.to_bytes()).unwrap();
        assert!(text.contains(&key.fingerprint()), "{text}");
        // A sealed store that lost its encryption section is refused, not
        // taken for a plain one.
        let mut stripped = sealed.clone();
        stripped.encryption = None;
        assert!(StoreConfig::from_bytes(&stripped.to_bytes()).is_err());
    }
}
