//! The driver's persistent state: for each volume, the mount IDs Docker
//! holds and how the volume is attached. Written atomically (temporary
//! file, fsync, rename, fsync of the directory) after every change, so a
//! daemon killed at any point restarts with a consistent view.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::host::{Attachment, FsType};

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct State {
    #[serde(default)]
    pub volumes: BTreeMap<String, VolumeState>,
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct VolumeState {
    /// Mount IDs Docker has not unmounted yet.
    #[serde(default)]
    pub mount_ids: BTreeSet<String>,
    /// Set for a volume created empty by the driver and not formatted yet.
    #[serde(default)]
    pub format_as: Option<FsType>,
    /// Present while the volume is attached and mounted.
    #[serde(default)]
    pub attachment: Option<Attachment>,
}

impl VolumeState {
    /// Nothing worth remembering.
    fn is_empty(&self) -> bool {
        self.mount_ids.is_empty() && self.format_as.is_none() && self.attachment.is_none()
    }
}

/// The state file.
#[derive(Debug, Clone)]
pub(crate) struct StateFile {
    path: PathBuf,
}

impl StateFile {
    pub(crate) fn new(path: PathBuf) -> StateFile {
        StateFile { path }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// An absent file is an empty state.
    pub(crate) fn load(&self) -> io::Result<State> {
        match fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("corrupt state file: {e}"),
                )
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(e),
        }
    }

    pub(crate) fn save(&self, state: &State) -> io::Result<()> {
        let mut compact = state.clone();
        compact.volumes.retain(|_, v| !v.is_empty());
        let bytes = serde_json::to_vec_pretty(&compact)?;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let tmp = self.path.with_extension("json.tmp");
        {
            let mut file = File::create(&tmp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
        }
        fs::rename(&tmp, &self.path)?;
        File::open(dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_and_loads_atomically_dropping_empty_entries() {
        let dir = std::env::temp_dir().join(format!("ballast-docker-state-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let file = StateFile::new(dir.join("state.json"));
        assert_eq!(file.load().unwrap(), State::default());

        let mut state = State::default();
        state
            .volumes
            .entry("db".into())
            .or_default()
            .mount_ids
            .insert("abc".into());
        state.volumes.insert("idle".into(), VolumeState::default());
        file.save(&state).unwrap();
        assert!(!dir.join("state.json.tmp").exists());

        let loaded = file.load().unwrap();
        assert_eq!(loaded.volumes.len(), 1);
        assert_eq!(loaded.volumes["db"], state.volumes["db"]);

        fs::write(file.path(), b"{not json").unwrap();
        assert_eq!(file.load().unwrap_err().kind(), io::ErrorKind::InvalidData);
        fs::remove_dir_all(&dir).unwrap();
    }
}
