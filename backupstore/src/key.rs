//! Backup keys: a 256-bit secret kept in a key file, random or derived
//! from a passphrase with scrypt.
//!
//! ```text
//! {"format":"ballast-backup-key","version":1,"secret":"<64 hex>","kdf":{...}}
//! ```
//!
//! The secret never leaves this module except as subkeys derived from it
//! (`sealing.rs`) and its fingerprint, which names the key in store
//! configurations and messages. `Debug` shows the fingerprint only.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use crate::error::{Error, Result};

const KEY_FORMAT: &str = "ballast-backup-key";
const KEY_VERSION: u32 = 1;
/// A key file is a few hundred bytes; anything much larger is not one.
const MAX_KEY_FILE: u64 = 4096;

/// blake3 `derive_key` contexts: one per use of the secret, so no two uses
/// ever share key material.
pub(crate) const FINGERPRINT_CONTEXT: &str = "ballast backup key fingerprint v1";
pub(crate) const CHUNK_ID_CONTEXT: &str = "ballast backup chunk id v1";
pub(crate) const CHUNK_SEAL_CONTEXT: &str = "ballast backup chunk seal v1";
pub(crate) const MANIFEST_SEAL_CONTEXT: &str = "ballast backup manifest seal v1";
/// The sealing subkeys of an AES-256-GCM store (`aead.rs`): a cipher's
/// subkeys are its own, even where one key file serves stores of both.
pub(crate) const GCM_CHUNK_SEAL_CONTEXT: &str = "ballast backup chunk seal aes-256-gcm v1";
pub(crate) const GCM_MANIFEST_SEAL_CONTEXT: &str = "ballast backup manifest seal aes-256-gcm v1";

/// scrypt cost of a passphrase key: N = 2^17, r = 8, p = 1 (128 MiB, about
/// half a second), the strength restic and the scrypt paper recommend for
/// file encryption.
const SCRYPT_LOG_N: u8 = 17;
const SCRYPT_R: u32 = 8;
const SCRYPT_P: u32 = 1;

/// How a passphrase key was derived; with the passphrase, enough to derive
/// it again. Recorded in the key file and in the store configuration (none
/// of it is secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Always "scrypt".
    pub name: String,
    pub log_n: u8,
    pub r: u32,
    pub p: u32,
    /// 16 random bytes, hex.
    pub salt: String,
}

/// A backup key.
#[derive(Clone)]
pub struct BackupKey {
    secret: Zeroizing<[u8; 32]>,
    kdf: Option<KdfParams>,
}

impl std::fmt::Debug for BackupKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BackupKey({})", self.fingerprint())
    }
}

#[derive(Serialize, Deserialize)]
struct KeyFile {
    format: String,
    version: u32,
    secret: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kdf: Option<KdfParams>,
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        self.secret.zeroize();
    }
}

fn key_file_error(path: &Path, reason: impl Into<String>) -> Error {
    Error::KeyFile {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

pub(crate) fn hex_decode<const N: usize>(hex: &str) -> Option<[u8; N]> {
    if hex.len() != 2 * N || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; N];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl BackupKey {
    /// A new random key.
    pub fn generate() -> BackupKey {
        let mut secret = Zeroizing::new([0u8; 32]);
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut secret[..]);
        BackupKey { secret, kdf: None }
    }

    /// The key scrypt derives from `passphrase`: with `salt` (hex, as a key
    /// file or store configuration records it) the same key again, without
    /// it a new key under a new random salt.
    pub fn from_passphrase(passphrase: &[u8], salt: Option<&str>) -> Result<BackupKey> {
        if passphrase.is_empty() {
            return Err(Error::InvalidKey("the passphrase is empty".into()));
        }
        let salt: [u8; 16] = match salt {
            Some(hex) => hex_decode(hex)
                .ok_or_else(|| Error::InvalidKey(format!("salt {hex:?} is not 32 hex digits")))?,
            None => rand::random(),
        };
        let params = scrypt::Params::new(SCRYPT_LOG_N, SCRYPT_R, SCRYPT_P, 32)
            .expect("constant scrypt parameters are valid");
        let mut secret = Zeroizing::new([0u8; 32]);
        scrypt::scrypt(passphrase, &salt, &params, &mut secret[..])
            .expect("a 32 byte output is valid for scrypt");
        Ok(BackupKey {
            secret,
            kdf: Some(KdfParams {
                name: "scrypt".into(),
                log_n: SCRYPT_LOG_N,
                r: SCRYPT_R,
                p: SCRYPT_P,
                salt: hex_encode(&salt),
            }),
        })
    }

    /// Names the key (32 hex digits) without revealing it.
    pub fn fingerprint(&self) -> String {
        hex_encode(&self.derive(FINGERPRINT_CONTEXT)[..16])
    }

    /// How the key was derived from a passphrase, if it was.
    pub fn kdf(&self) -> Option<&KdfParams> {
        self.kdf.as_ref()
    }

    /// A subkey for one use of the secret.
    pub(crate) fn derive(&self, context: &str) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(blake3::derive_key(context, &self.secret[..]))
    }

    /// Writes the key to a new file `path`, mode 0600, durably; an existing
    /// file is never replaced.
    pub fn write_new(&self, path: &Path) -> Result<()> {
        let file = KeyFile {
            format: KEY_FORMAT.into(),
            version: KEY_VERSION,
            secret: hex_encode(&self.secret[..]),
            kdf: self.kdf.clone(),
        };
        let mut text = Zeroizing::new(serde_json::to_vec(&file).expect("key file serialises"));
        text.push(b'\n');
        let io = |source| Error::KeyFileIo {
            path: path.to_path_buf(),
            source,
        };
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        f.write_all(&text).and_then(|()| f.sync_all()).map_err(io)?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        File::open(dir).and_then(|d| d.sync_all()).map_err(io)
    }

    /// Reads a key file. One that others may read (group or world bits
    /// set) is refused: the key would not be secret.
    pub fn load(path: &Path) -> Result<BackupKey> {
        let io = |source| Error::KeyFileIo {
            path: path.to_path_buf(),
            source,
        };
        let mut f = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(io)?;
        let meta = f.metadata().map_err(io)?;
        if !meta.is_file() {
            return Err(key_file_error(path, "not a regular file"));
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(key_file_error(
                path,
                format!("mode {mode:04o} lets others read it; chmod 600 it"),
            ));
        }
        if meta.len() > MAX_KEY_FILE {
            return Err(key_file_error(path, "too large to be a key file"));
        }
        let mut text = Zeroizing::new(Vec::new());
        f.read_to_end(&mut text).map_err(io)?;
        Self::parse(&text).map_err(|reason| key_file_error(path, reason))
    }

    fn parse(text: &[u8]) -> Result<BackupKey, String> {
        let file: KeyFile = serde_json::from_slice(text)
            .map_err(|_| "not a ballast backup key file (not its JSON)".to_string())?;
        if file.format != KEY_FORMAT {
            return Err(format!("format {:?}, expected {KEY_FORMAT:?}", file.format));
        }
        if file.version != KEY_VERSION {
            return Err(format!(
                "key file version {} is not supported (this build reads {KEY_VERSION})",
                file.version
            ));
        }
        let secret = hex_decode::<32>(&file.secret)
            .ok_or_else(|| "the secret is not 64 hex digits".to_string())?;
        Ok(BackupKey {
            secret: Zeroizing::new(secret),
            kdf: file.kdf.clone(),
        })
    }
}

/// The path of key `name` in `dir`; `name` follows the rules of volume
/// names, so it cannot leave the directory.
pub fn key_path(dir: &Path, name: &str) -> Result<PathBuf> {
    ballast_engine::validate_name(name)?;
    Ok(dir.join(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn key_files_round_trip_with_mode_0600_and_never_replace() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let key = BackupKey::generate();
        key.write_new(&path).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let again = BackupKey::load(&path).unwrap();
        assert_eq!(again.fingerprint(), key.fingerprint());
        assert_eq!(again.derive(CHUNK_ID_CONTEXT), key.derive(CHUNK_ID_CONTEXT));
        assert!(matches!(
            BackupKey::generate().write_new(&path),
            Err(Error::KeyFileIo { .. })
        ));
        assert_eq!(
            BackupKey::load(&path).unwrap().fingerprint(),
            key.fingerprint()
        );
        assert_ne!(BackupKey::generate().fingerprint(), key.fingerprint());
        assert!(!format!("{key:?}").contains(&hex_encode(&key.secret[..])));
    }

    #[test]
    fn bad_key_files_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        BackupKey::generate().write_new(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let e = BackupKey::load(&path).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");

        let junk = dir.path().join("junk");
        fs::write(&junk, b"hello").unwrap();
        fs::set_permissions(&junk, fs::Permissions::from_mode(0o600)).unwrap();
        let e = BackupKey::load(&junk).unwrap_err().to_string();
        assert!(e.contains("not a ballast backup key file"), "{e}");
        assert!(BackupKey::load(&dir.path().join("none")).is_err());
        assert!(key_path(dir.path(), "../etc").is_err());
    }

    #[test]
    fn a_passphrase_gives_the_same_key_under_the_same_salt() {
        let a = BackupKey::from_passphrase(b"correct horse", None).unwrap();
        let salt = a.kdf().unwrap().salt.clone();
        let b = BackupKey::from_passphrase(b"correct horse", Some(&salt)).unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        let c = BackupKey::from_passphrase(b"correct horsf", Some(&salt)).unwrap();
        assert_ne!(a.fingerprint(), c.fingerprint());
        let d = BackupKey::from_passphrase(b"correct horse", None).unwrap();
        assert_ne!(a.fingerprint(), d.fingerprint(), "a new salt each time");
        assert!(BackupKey::from_passphrase(b"", None).is_err());
        assert!(BackupKey::from_passphrase(b"x", Some("zz")).is_err());
    }
}
