//! TLS pre-shared keys in the key-file format of GnuTLS' `psktool`, which
//! nbdkit (`--tls-psk`) and qemu (`tls-creds-psk`, `keys.psk`) read too:
//! one `USERNAME:HEXKEY` a line.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Longest username OpenSSL accepts as a PSK identity.
const MAX_USERNAME: usize = 128;
/// Longest key OpenSSL's PSK callback can take.
const MAX_KEY: usize = 256;

/// Why a key file cannot be used. Never quotes a key.
#[derive(Debug, thiserror::Error)]
pub enum PskError {
    #[error("cannot read PSK file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("PSK file {path} line {line}: {reason}")]
    Line {
        path: PathBuf,
        line: usize,
        reason: &'static str,
    },
    #[error("PSK file {0} holds no keys")]
    Empty(PathBuf),
}

/// The keys of a PSK file, by username. Zeroed when dropped; `Debug`
/// shows usernames only.
pub struct PskKeys {
    keys: HashMap<String, Key>,
}

struct Key(Vec<u8>);

impl Drop for Key {
    fn drop(&mut self) {
        for b in self.0.iter_mut() {
            // SAFETY: `b` is a valid, aligned, exclusive reference; a
            // volatile write keeps the compiler from eliding the wipe.
            unsafe { std::ptr::write_volatile(b, 0) };
        }
    }
}

impl PskKeys {
    pub fn load(path: &Path) -> Result<PskKeys, PskError> {
        let text = std::fs::read_to_string(path).map_err(|source| PskError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|err| match err {
            ParseError::Line(line, reason) => PskError::Line {
                path: path.to_path_buf(),
                line,
                reason,
            },
            ParseError::Empty => PskError::Empty(path.to_path_buf()),
        })
    }

    /// Parses the text of a key file. Blank lines and lines starting with
    /// `#` are skipped.
    fn parse(text: &str) -> Result<PskKeys, ParseError> {
        let mut keys = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |reason| ParseError::Line(i + 1, reason);
            let (user, hex) = line
                .split_once(':')
                .ok_or(bad("expected USERNAME:HEXKEY"))?;
            if user.is_empty() {
                return Err(bad("empty username"));
            }
            if user.len() > MAX_USERNAME {
                return Err(bad("username longer than 128 bytes"));
            }
            let key =
                Key(decode_hex(hex).ok_or(bad("the key is not an even number of hex digits"))?);
            if key.0.is_empty() || key.0.len() > MAX_KEY {
                return Err(bad("the key must be 1 to 256 bytes"));
            }
            if keys.insert(user.to_string(), key).is_some() {
                return Err(bad("username listed twice"));
            }
        }
        if keys.is_empty() {
            return Err(ParseError::Empty);
        }
        Ok(PskKeys { keys })
    }

    /// The key of `username`.
    pub fn get(&self, username: &str) -> Option<&[u8]> {
        self.keys.get(username).map(|k| k.0.as_slice())
    }
}

impl fmt::Debug for PskKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut users: Vec<&String> = self.keys.keys().collect();
        users.sort();
        f.debug_struct("PskKeys").field("users", &users).finish()
    }
}

#[derive(Debug)]
enum ParseError {
    Line(usize, &'static str),
    Empty,
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    let digits = hex.as_bytes();
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    digits
        .chunks(2)
        .map(|pair| {
            let hi = (pair[0] as char).to_digit(16)?;
            let lo = (pair[1] as char).to_digit(16)?;
            Some((hi * 16 + lo) as u8)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line_error(text: &str) -> (usize, &'static str) {
        match PskKeys::parse(text) {
            Err(ParseError::Line(line, reason)) => (line, reason),
            Err(ParseError::Empty) => panic!("{text:?}: empty"),
            Ok(keys) => panic!("{text:?} parsed: {keys:?}"),
        }
    }

    #[test]
    fn parses_psktool_files() {
        let keys = PskKeys::parse("# made by psktool\nalice:00ff10\n\n  bob:DEADbeef  \n").unwrap();
        assert_eq!(keys.get("alice"), Some(&[0x00, 0xff, 0x10][..]));
        assert_eq!(keys.get("bob"), Some(&[0xde, 0xad, 0xbe, 0xef][..]));
        assert_eq!(keys.get("carol"), None);
        // Debug never shows keys.
        assert_eq!(
            format!("{keys:?}"),
            r#"PskKeys { users: ["alice", "bob"] }"#
        );
    }

    #[test]
    fn refuses_malformed_lines_by_number() {
        assert_eq!(line_error("a:00\nnocolon\n").0, 2);
        assert_eq!(line_error(":00").1, "empty username");
        assert_eq!(
            line_error("a:0").1,
            "the key is not an even number of hex digits"
        );
        assert_eq!(
            line_error("a:zz").1,
            "the key is not an even number of hex digits"
        );
        assert_eq!(line_error("a:").1, "the key must be 1 to 256 bytes");
        assert_eq!(
            line_error(&format!("a:{}", "00".repeat(257))).1,
            "the key must be 1 to 256 bytes"
        );
        assert_eq!(
            line_error(&format!("{}:00", "u".repeat(129))).1,
            "username longer than 128 bytes"
        );
        assert_eq!(line_error("a:00\na:11").1, "username listed twice");
        assert!(matches!(
            PskKeys::parse("# nothing\n"),
            Err(ParseError::Empty)
        ));
    }

    #[test]
    fn errors_name_the_file_and_line_but_not_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.psk");
        std::fs::write(&path, "alice:00112233\nbob:0011223\n").unwrap();
        let err = PskKeys::load(&path).unwrap_err().to_string();
        assert!(err.contains("keys.psk line 2"), "{err}");
        assert!(!err.contains("0011223"), "{err}");
        let err = PskKeys::load(&dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("cannot read PSK file"), "{err}");
    }
}
