//! What a hydration keeps on disk, so a daemon killed mid-hydration
//! resumes it: `ROOT/hydrating/VOL/` holds
//!
//! | file | what | written |
//! |---|---|---|
//! | `backup` | the backup URL (no credentials) | once, before the volume exists |
//! | `manifest` | the backup's manifest, framed as a plain store frames it (crc-checked; local, beside the volume's plain data, even for an encrypted store) | once, before the volume exists |
//! | `key` | the name of the backup key the store is opened with (in `--backup-key-dir`; never the key) | once, before the volume exists, only for an encrypted store |
//! | `hold` | the key of the lock object holding the backup, once held | each time the backup is held |
//! | `local` | which chunks are local: magic `BHYD`, version 1, chunk count (u64 LE), one bit per chunk, crc32 | replaced atomically each time chunks settle |
//!
//! The directory is written under a temporary name and renamed into place
//! (then the parent fsync'd), so it is either whole or absent. A chunk's
//! bit is set only after its data is durable in the pool (`settle`).

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use ballast_backupstore::{BackupUrl, Manifest};

use super::super::error::OpError;

/// Directory of the hydration journals, under the pool root.
pub const DIR: &str = "hydrating";
const MAGIC: &[u8; 4] = b"BHYD";
const VERSION: u8 = 1;

/// One volume's hydration journal (its directory: cheap to clone, for
/// writes moved off the runtime's threads).
#[derive(Clone)]
pub struct Journal {
    dir: PathBuf,
}

/// A journal read back at start-up.
pub struct Loaded {
    pub journal: Journal,
    pub backup: BackupUrl,
    pub manifest: Manifest,
    pub local: Vec<bool>,
    /// The backup key's name, for an encrypted store.
    pub key: Option<String>,
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn write_synced(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut f = File::create(path)?;
    f.write_all(data)?;
    f.sync_all()
}

fn encode_local(local: &[bool]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + local.len() / 8 + 5);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[VERSION, 0, 0, 0]);
    out.extend_from_slice(&(local.len() as u64).to_le_bytes());
    for bits in local.chunks(8) {
        out.push(
            bits.iter()
                .enumerate()
                .fold(0u8, |b, (i, &l)| b | (u8::from(l) << i)),
        );
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn decode_local(data: &[u8], chunks: usize) -> Result<Vec<bool>, String> {
    let body_len = 16 + chunks.div_ceil(8);
    if data.len() != body_len + 4 {
        return Err(format!("{} bytes, expected {}", data.len(), body_len + 4));
    }
    let (body, crc) = data.split_at(body_len);
    if crc32fast::hash(body).to_le_bytes() != crc {
        return Err("checksum mismatch".into());
    }
    if &body[..4] != MAGIC || body[4] != VERSION {
        return Err("not a hydration bitmap of version 1".into());
    }
    let count = u64::from_le_bytes(body[8..16].try_into().expect("8 bytes"));
    if count != chunks as u64 {
        return Err(format!("{count} chunks, the manifest has {chunks}"));
    }
    Ok((0..chunks)
        .map(|i| body[16 + i / 8] & (1 << (i % 8)) != 0)
        .collect())
}

impl Journal {
    /// The journals under `root`, by volume name.
    pub fn list(root: &Path) -> Vec<(String, PathBuf)> {
        let Ok(entries) = fs::read_dir(root.join(DIR)) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| Some((e.file_name().to_str()?.to_owned(), e.path())))
            .filter(|(name, _)| !name.starts_with('.'))
            .collect()
    }

    /// Journals a hydration of `volume` from `backup` (durably) before the
    /// volume exists; `local` marks the chunks local from the start.
    pub fn create(
        root: &Path,
        volume: &str,
        backup: &BackupUrl,
        manifest: &Manifest,
        local: &[bool],
        key: Option<&str>,
    ) -> Result<Journal, OpError> {
        let parent = root.join(DIR);
        let dir = parent.join(volume);
        let temp = parent.join(format!(".{volume}.new"));
        let write = || -> io::Result<()> {
            fs::create_dir_all(&parent)?;
            if temp.exists() {
                fs::remove_dir_all(&temp)?;
            }
            fs::create_dir(&temp)?;
            write_synced(&temp.join("backup"), backup.to_string().as_bytes())?;
            write_synced(&temp.join("manifest"), &manifest.encode_plain())?;
            if let Some(key) = key {
                write_synced(&temp.join("key"), key.as_bytes())?;
            }
            write_synced(&temp.join("local"), &encode_local(local))?;
            sync_dir(&temp)?;
            fs::rename(&temp, &dir)?;
            sync_dir(&parent)
        };
        write().map_err(|e| OpError::journal(&parent, e))?;
        Ok(Journal { dir })
    }

    /// Reads the journal in `dir` back.
    pub fn load(dir: PathBuf) -> Result<Loaded, OpError> {
        let bad = |reason: String| OpError::BadJournal {
            dir: dir.clone(),
            reason,
        };
        let read = |name: &str| fs::read(dir.join(name)).map_err(|e| bad(format!("{name}: {e}")));
        let backup: BackupUrl = String::from_utf8_lossy(&read("backup")?)
            .parse()
            .map_err(|e| bad(format!("backup: {e}")))?;
        let manifest = Manifest::decode_plain("manifest", &read("manifest")?)
            .map_err(|e| bad(format!("manifest: {e}")))?;
        let key = match fs::read(dir.join("key")) {
            Ok(name) => Some(
                String::from_utf8(name)
                    .ok()
                    .filter(|n| ballast_engine::validate_name(n).is_ok())
                    .ok_or_else(|| bad("key: not a key name".into()))?,
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(bad(format!("key: {e}"))),
        };
        let local = decode_local(&read("local")?, manifest.chunks.len())
            .map_err(|e| bad(format!("local: {e}")))?;
        Ok(Loaded {
            journal: Journal { dir },
            backup,
            manifest,
            local,
            key,
        })
    }

    /// Replaces the bitmap of local chunks (atomically, durably).
    pub fn save_local(&self, local: &[bool]) -> io::Result<()> {
        let temp = self.dir.join(".local.new");
        write_synced(&temp, &encode_local(local))?;
        fs::rename(&temp, self.dir.join("local"))?;
        sync_dir(&self.dir)
    }

    /// Records the lock object holding the backup, so a successor can
    /// remove it after a crash.
    pub fn save_hold(&self, key: &str) -> io::Result<()> {
        let temp = self.dir.join(".hold.new");
        write_synced(&temp, key.as_bytes())?;
        fs::rename(&temp, self.dir.join("hold"))?;
        sync_dir(&self.dir)
    }

    /// The hold recorded by [`Journal::save_hold`], if any.
    pub fn hold(&self) -> Option<String> {
        fs::read_to_string(self.dir.join("hold")).ok()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Removes the journal: the hydration is over (or its volume gone).
    pub fn remove(&self) -> io::Result<()> {
        match fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => self.dir.parent().map_or(Ok(()), sync_dir),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bitmap_round_trips_and_damage_is_refused() {
        let local: Vec<bool> = (0..21).map(|i| i % 3 == 0).collect();
        let data = encode_local(&local);
        assert_eq!(decode_local(&data, 21).unwrap(), local);
        assert!(decode_local(&data, 20).is_err(), "wrong count");
        let mut flipped = data.clone();
        flipped[17] ^= 1;
        assert_eq!(decode_local(&flipped, 21).unwrap_err(), "checksum mismatch");
        assert!(decode_local(&data[..data.len() - 1], 21).is_err(), "short");
    }
}
