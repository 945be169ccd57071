//! How a store's objects are named and framed: in the clear (chunk ids are
//! BLAKE3 of the content) or sealed under a backup key (chunk ids are a
//! keyed BLAKE3, chunks and manifests sealed by the store's cipher, see
//! `aead.rs`, with their own subkeys). Under one key equal chunks still get
//! equal ids, so dedup works, while the ids say nothing to whoever holds
//! only the store.

use std::sync::Arc;

use bytes::Bytes;
use zeroize::Zeroizing;

use crate::aead::{Aead, Cipher};
use crate::frame::{self, FrameError, Kind, Seal};
use crate::key::{
    BackupKey, CHUNK_ID_CONTEXT, CHUNK_SEAL_CONTEXT, GCM_CHUNK_SEAL_CONTEXT,
    GCM_MANIFEST_SEAL_CONTEXT, MANIFEST_SEAL_CONTEXT,
};

/// The subkeys of one backup key.
pub(crate) struct Keys {
    chunk_id: Zeroizing<[u8; 32]>,
    chunks: Aead,
    manifests: Aead,
}

/// The `blake3::derive_key` context of the subkey that seals objects of
/// `kind` with `cipher`: each cipher has its own, so no key is ever used
/// by two.
fn seal_context(cipher: Cipher, kind: Kind) -> &'static str {
    match (cipher, kind) {
        (Cipher::XChaCha20Poly1305, Kind::Chunk) => CHUNK_SEAL_CONTEXT,
        (Cipher::XChaCha20Poly1305, Kind::Manifest) => MANIFEST_SEAL_CONTEXT,
        (Cipher::Aes256Gcm, Kind::Chunk) => GCM_CHUNK_SEAL_CONTEXT,
        (Cipher::Aes256Gcm, Kind::Manifest) => GCM_MANIFEST_SEAL_CONTEXT,
    }
}

/// A store's way with its objects, fixed by its configuration.
#[derive(Clone)]
pub(crate) enum Sealing {
    Plain,
    Sealed(Arc<Keys>),
}

/// Shows which, never a key.
impl std::fmt::Debug for Sealing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Sealing::Plain => "Plain",
            Sealing::Sealed(_) => "Sealed",
        })
    }
}

impl Sealing {
    /// Sealing under `key` with `cipher`, the store's.
    pub(crate) fn with_key(key: &BackupKey, cipher: Cipher) -> Sealing {
        let aead = |kind| Aead::new(cipher, &key.derive(seal_context(cipher, kind)));
        Sealing::Sealed(Arc::new(Keys {
            chunk_id: key.derive(CHUNK_ID_CONTEXT),
            chunks: aead(Kind::Chunk),
            manifests: aead(Kind::Manifest),
        }))
    }

    /// The id (content address, `manifest::Digest`) of a chunk of data.
    pub(crate) fn chunk_id(&self, raw: &[u8]) -> [u8; 32] {
        match self {
            Sealing::Plain => *blake3::hash(raw).as_bytes(),
            Sealing::Sealed(k) => *blake3::keyed_hash(&k.chunk_id, raw).as_bytes(),
        }
    }

    fn seal<'a>(&'a self, kind: Kind, object_key: &'a str) -> Option<Seal<'a>> {
        match self {
            Sealing::Plain => None,
            Sealing::Sealed(k) => Some(Seal {
                aead: match kind {
                    Kind::Chunk => &k.chunks,
                    Kind::Manifest => &k.manifests,
                },
                object_key,
            }),
        }
    }

    /// Frames (and seals) an object to be stored at `object_key`.
    pub(crate) fn encode(&self, kind: Kind, object_key: &str, raw: &[u8], level: i32) -> Bytes {
        frame::encode(kind, raw, level, self.seal(kind, object_key))
    }

    /// Checks (and opens) an object read from `object_key`.
    pub(crate) fn decode(
        &self,
        kind: Kind,
        object_key: &str,
        data: &[u8],
        max_len: u64,
    ) -> Result<Vec<u8>, FrameError> {
        frame::decode(kind, data, max_len, self.seal(kind, object_key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AES: Cipher = Cipher::Aes256Gcm;

    #[test]
    fn chunk_ids_are_keyed_and_stable_under_one_key() {
        let key = BackupKey::generate();
        let (a, b) = (Sealing::with_key(&key, AES), Sealing::with_key(&key, AES));
        let other = Sealing::with_key(&BackupKey::generate(), AES);
        let data = b"some block of data";
        assert_eq!(a.chunk_id(data), b.chunk_id(data));
        assert_ne!(a.chunk_id(data), other.chunk_id(data));
        assert_ne!(a.chunk_id(data), Sealing::Plain.chunk_id(data));
        assert_eq!(
            Sealing::Plain.chunk_id(data),
            *blake3::hash(data).as_bytes()
        );
        // Chunk and manifest subkeys differ: a chunk does not open as a
        // manifest even at the same key.
        let f = a.encode(Kind::Chunk, "k", data, 3);
        assert_eq!(b.decode(Kind::Chunk, "k", &f, 1 << 20).unwrap(), data);
        let mut as_manifest = f.to_vec();
        as_manifest[5] = Kind::Manifest as u8;
        let crc = crc32fast::hash(&as_manifest[..28]);
        as_manifest[28..32].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            a.decode(Kind::Manifest, "k", &as_manifest, 1 << 20),
            Err(FrameError::Authentication)
        );
    }

    #[test]
    fn the_two_ciphers_share_chunk_ids_and_refuse_each_others_frames() {
        let key = BackupKey::generate();
        let aes = Sealing::with_key(&key, AES);
        let chacha = Sealing::with_key(&key, Cipher::XChaCha20Poly1305);
        let data = b"the same block under both ciphers";
        assert_eq!(aes.chunk_id(data), chacha.chunk_id(data));
        for (sealing, cipher) in [(&aes, AES), (&chacha, Cipher::XChaCha20Poly1305)] {
            let f = sealing.encode(Kind::Chunk, "k", data, 3);
            assert_eq!(f[7], cipher.frame_id());
            assert_eq!(sealing.decode(Kind::Chunk, "k", &f, 1 << 20).unwrap(), data);
        }
        // A frame of the other cipher is refused unopened.
        let f = chacha.encode(Kind::Chunk, "k", data, 3);
        assert_eq!(
            aes.decode(Kind::Chunk, "k", &f, 1 << 20),
            Err(FrameError::Cipher(Cipher::XChaCha20Poly1305.frame_id()))
        );
    }
}
