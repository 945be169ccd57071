//! What a standby keeps beside its record, under `ROOT/standby/VOL/`: a
//! list too large for a metadata record (which holds at most 64 KiB),
//! named after the generation it belongs to and written durably
//! (temporary file, fsync, rename, directory fsync) before the record that
//! names it: `digests-N`, the chunk digests of the backup frozen as
//! `standby.N` (its manifest's, JSON), so the next apply compares without
//! the store.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::ops::error::OpError;

const DIR: &str = "standby";

pub(super) fn dir(root: &Path, volume: &str) -> PathBuf {
    root.join(DIR).join(volume)
}

fn write<T: Serialize + ?Sized>(dir: &Path, name: &str, value: &T) -> Result<(), OpError> {
    let bytes = serde_json::to_vec(value).expect("a list serialises");
    let durable = || -> std::io::Result<()> {
        fs::create_dir_all(dir)?;
        let temp = dir.join(format!(".{name}.new"));
        let mut f = File::create(&temp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        fs::rename(&temp, dir.join(name))?;
        File::open(dir)?.sync_all()
    };
    durable().map_err(|source| OpError::StandbyFiles {
        dir: dir.to_path_buf(),
        source,
    })
}

fn read<T: DeserializeOwned>(dir: &Path, name: &str) -> Result<T, OpError> {
    let path = dir.join(name);
    let bytes = fs::read(&path).map_err(|source| OpError::StandbyFiles {
        dir: dir.to_path_buf(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|e| OpError::StandbyFileDamaged {
        path,
        reason: e.to_string(),
    })
}

pub(super) fn write_digests(
    dir: &Path,
    generation: u64,
    digests: &[Option<String>],
) -> Result<(), OpError> {
    write(dir, &format!("digests-{generation}"), digests)
}

pub(super) fn digests(dir: &Path, generation: u64) -> Result<Vec<Option<String>>, OpError> {
    read(dir, &format!("digests-{generation}"))
}

/// Removes every file but `digests-{keep}`; a failure only costs space.
pub(super) fn keep_only(dir: &Path, keep: u64) {
    let keep = format!("digests-{keep}");
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_str() != Some(keep.as_str()) {
            if let Err(e) = fs::remove_file(entry.path()) {
                tracing::warn!("cannot remove {}: {e}", entry.path().display());
            }
        }
    }
}

/// Removes the standby's directory (at activation, or its volume gone).
pub(super) fn remove(dir: &Path) {
    if let Err(e) = fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!("cannot remove {}: {e}", dir.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_round_trip_and_a_damaged_one_is_a_clear_error() {
        let root = tempfile::tempdir().unwrap();
        let d = dir(root.path(), "sb");
        let digests = vec![Some("ab".repeat(32)), None];
        write_digests(&d, 3, &digests).unwrap();
        write_digests(&d, 4, &digests[..1]).unwrap();
        assert_eq!(super::digests(&d, 3).unwrap(), digests);
        assert!(super::digests(&d, 5).is_err(), "another generation");

        fs::write(d.join("digests-3"), b"{").unwrap();
        let e = super::digests(&d, 3).unwrap_err();
        assert!(matches!(e, OpError::StandbyFileDamaged { .. }), "{e}");
        assert!(e.to_string().contains("digests-3"), "{e}");

        keep_only(&d, 3);
        assert!(super::digests(&d, 4).is_err(), "other generations go");
        assert!(d.join("digests-3").exists());
        remove(&d);
        assert!(!d.exists());
    }
}
