//! Volume and snapshot names.
//!
//! Names reach file paths (Docker mountpoints), URLs (backups) and NBD export
//! names, so they are validated once, here, before anything else sees them:
//! `[A-Za-z0-9][A-Za-z0-9_.-]{0,63}`. That excludes `/`, `@`, `..` as a whole
//! name and every control character.

use crate::error::{Error, Result};

/// Longest accepted name, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// Checks `name` against `[A-Za-z0-9][A-Za-z0-9_.-]{0,63}`.
pub fn validate_name(name: &str) -> Result<()> {
    let bytes = name.as_bytes();
    let valid = !bytes.is_empty()
        && bytes.len() <= MAX_NAME_LEN
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if valid {
        Ok(())
    } else {
        Err(Error::InvalidName(name.to_string()))
    }
}

/// Splits `VOL@SNAP` into its parts, validating both.
pub fn parse_snapshot_ref(s: &str) -> Result<(&str, &str)> {
    let (vol, snap) = s.split_once('@').ok_or_else(|| {
        Error::InvalidArgument(format!(
            "{s:?} is not a snapshot reference: expected VOL@SNAP"
        ))
    })?;
    validate_name(vol)?;
    validate_name(snap)?;
    Ok((vol, snap))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for n in ["db", "a", "Vol-1.data_2", &"x".repeat(64)] {
            validate_name(n).unwrap();
        }
    }

    #[test]
    fn rejects_paths_and_oddities() {
        for n in [
            "",
            "../x",
            "a/b",
            ".hidden",
            "-x",
            "a@b",
            "sp ace",
            "é",
            &"x".repeat(65),
        ] {
            assert!(
                matches!(validate_name(n), Err(Error::InvalidName(_))),
                "{n:?}"
            );
        }
    }

    #[test]
    fn snapshot_refs() {
        assert_eq!(parse_snapshot_ref("v@s").unwrap(), ("v", "s"));
        assert!(parse_snapshot_ref("v").is_err());
        assert!(parse_snapshot_ref("v@../s").is_err());
        assert!(parse_snapshot_ref("@s").is_err());
    }
}
