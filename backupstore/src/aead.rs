//! The AEADs a sealed store can be sealed with, behind one interface.
//!
//! - AES-256-GCM (aws-lc), the cipher of every store initialised now: with
//!   AES-NI and carry-less multiply it seals several times faster than the
//!   portable XChaCha20-Poly1305 below, which was most of an encrypted
//!   backup's CPU. Its nonce is 96 random bits per object: sealing stays
//!   safe for 2^32 objects per subkey (NIST SP 800-38D's bound for random
//!   nonces), and a store writes each distinct chunk once, so that is 4 PiB
//!   of distinct 1 MiB chunks under one key.
//! - XChaCha20-Poly1305 (RustCrypto), the cipher of stores initialised by
//!   earlier builds; they are read and written with it as before.
//!
//! A store has one cipher, fixed in its configuration when it is
//! initialised; every frame also names its cipher, and a frame of another
//! cipher than the store's is refused unopened.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{KeyInit, Tag, XChaCha20Poly1305, XNonce};

/// Bytes of the tag of either cipher.
pub(crate) const TAG_LEN: usize = 16;
/// Bytes of the longer of the two nonces (XChaCha20's).
pub(crate) const MAX_NONCE_LEN: usize = 24;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cipher {
    XChaCha20Poly1305,
    Aes256Gcm,
}

impl Cipher {
    /// What a store initialised now is sealed with.
    pub(crate) const FOR_NEW_STORES: Cipher = Cipher::Aes256Gcm;

    /// Its name in a store's configuration.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Cipher::XChaCha20Poly1305 => "xchacha20poly1305",
            Cipher::Aes256Gcm => "aes-256-gcm",
        }
    }

    pub(crate) fn from_name(name: &str) -> Option<Cipher> {
        [Cipher::XChaCha20Poly1305, Cipher::Aes256Gcm]
            .into_iter()
            .find(|c| c.name() == name)
    }

    /// Its id in a sealed frame's header (byte 7).
    pub(crate) fn frame_id(self) -> u8 {
        match self {
            Cipher::XChaCha20Poly1305 => 1,
            Cipher::Aes256Gcm => 2,
        }
    }

    pub(crate) fn nonce_len(self) -> usize {
        match self {
            Cipher::XChaCha20Poly1305 => MAX_NONCE_LEN,
            Cipher::Aes256Gcm => 12,
        }
    }
}

/// The tag did not verify: the object was altered, or sealed under another
/// key or for another place.
#[derive(Debug)]
pub(crate) struct Unauthentic;

/// A cipher keyed with one subkey.
pub(crate) enum Aead {
    XChaCha20Poly1305(XChaCha20Poly1305),
    Aes256Gcm(LessSafeKey),
}

impl Aead {
    pub(crate) fn new(cipher: Cipher, key: &[u8; 32]) -> Aead {
        match cipher {
            Cipher::XChaCha20Poly1305 => Aead::XChaCha20Poly1305(XChaCha20Poly1305::new(
                chacha20poly1305::Key::from_slice(key),
            )),
            Cipher::Aes256Gcm => Aead::Aes256Gcm(LessSafeKey::new(
                UnboundKey::new(&AES_256_GCM, key).expect("AES-256-GCM takes a 32-byte key"),
            )),
        }
    }

    pub(crate) fn cipher(&self) -> Cipher {
        match self {
            Aead::XChaCha20Poly1305(_) => Cipher::XChaCha20Poly1305,
            Aead::Aes256Gcm(_) => Cipher::Aes256Gcm,
        }
    }

    /// Encrypts `buf` in place under `nonce` (of `cipher().nonce_len()`
    /// bytes), authenticating `ad` too; the tag.
    pub(crate) fn seal_in_place(&self, nonce: &[u8], ad: &[u8], buf: &mut [u8]) -> [u8; TAG_LEN] {
        let mut tag = [0u8; TAG_LEN];
        match self {
            Aead::XChaCha20Poly1305(c) => tag.copy_from_slice(
                &c.encrypt_in_place_detached(XNonce::from_slice(nonce), ad, buf)
                    .expect("XChaCha20-Poly1305 seals any object below 256 GiB"),
            ),
            Aead::Aes256Gcm(k) => tag.copy_from_slice(
                k.seal_in_place_separate_tag(gcm_nonce(nonce), Aad::from(ad), buf)
                    .expect("AES-256-GCM seals any object below 64 GiB")
                    .as_ref(),
            ),
        }
        tag
    }

    /// Authenticates `sealed` (with `ad`) against `tag` and returns it
    /// decrypted.
    pub(crate) fn open(
        &self,
        nonce: &[u8],
        ad: &[u8],
        sealed: &[u8],
        tag: &[u8],
    ) -> Result<Vec<u8>, Unauthentic> {
        match self {
            Aead::XChaCha20Poly1305(c) => {
                let mut buf = sealed.to_vec();
                c.decrypt_in_place_detached(
                    XNonce::from_slice(nonce),
                    ad,
                    &mut buf,
                    Tag::from_slice(tag),
                )
                .map_err(|_| Unauthentic)?;
                Ok(buf)
            }
            Aead::Aes256Gcm(k) => {
                let mut buf = vec![0u8; sealed.len()];
                k.open_separate_gather(gcm_nonce(nonce), Aad::from(ad), sealed, tag, &mut buf)
                    .map_err(|_| Unauthentic)?;
                Ok(buf)
            }
        }
    }
}

fn gcm_nonce(nonce: &[u8]) -> Nonce {
    Nonce::try_assume_unique_for_key(nonce).expect("a 12-byte AES-GCM nonce")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::hex_decode;

    #[test]
    fn names_and_ids_round_trip_and_differ() {
        for c in [Cipher::XChaCha20Poly1305, Cipher::Aes256Gcm] {
            assert_eq!(Cipher::from_name(c.name()), Some(c));
        }
        assert_eq!(Cipher::from_name("rot13"), None);
        assert_ne!(
            Cipher::XChaCha20Poly1305.frame_id(),
            Cipher::Aes256Gcm.frame_id()
        );
    }

    /// NIST's AES-256-GCM test vector (gcmEncryptExtIV256.rsp, Count 0 of
    /// the 96-bit IV, 128-bit plaintext, no AAD group) shows the cipher is
    /// the standard one, not only self-consistent.
    #[test]
    fn aes_256_gcm_matches_a_known_answer() {
        let key: [u8; 32] =
            hex_decode("31bdadd96698c204aa9ce1448ea94ae1fb4a9a0b3c9d773b51bb1822666b8f22").unwrap();
        let nonce: [u8; 12] = hex_decode("0d18e06c7c725ac9e362e1ce").unwrap();
        let plain: [u8; 16] = hex_decode("2db5168e932556f8089a0622981d017d").unwrap();
        let aead = Aead::new(Cipher::Aes256Gcm, &key);
        let mut buf = plain;
        let tag = aead.seal_in_place(&nonce, b"", &mut buf);
        assert_eq!(
            buf,
            hex_decode::<16>("fa4362189661d163fcd6a56d8bf0405a").unwrap()
        );
        assert_eq!(
            tag,
            hex_decode::<16>("d636ac1bbedd5cc3ee727dc2ab4a9489").unwrap()
        );
        assert_eq!(aead.open(&nonce, b"", &buf, &tag).unwrap(), plain);
        let mut bad = tag;
        bad[0] ^= 1;
        assert!(aead.open(&nonce, b"", &buf, &bad).is_err());
        assert!(aead.open(&nonce, b"ad", &buf, &tag).is_err());
    }
}
