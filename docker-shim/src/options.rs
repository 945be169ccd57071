//! The `-o key=value` options of `docker volume create -d ballast`.

use std::collections::HashMap;

use ballast_engine::{parse_size, parse_snapshot_ref, validate_name};

use crate::error::DriverError;
use crate::host::FsType;

/// Every option the driver accepts.
pub const KNOWN_OPTIONS: &[&str] = &[
    "size",
    "fstype",
    "snapshot",
    "backup",
    "backup_key",
    "hydrate",
];

/// Size of a new volume when `size` is not given.
const DEFAULT_SIZE: u64 = 10 << 30;

/// Where a new volume's data comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A fresh, empty volume of `size` bytes, formatted on first mount.
    Empty { size: u64 },
    /// A clone of `volume@snapshot` (already holds a filesystem).
    Snapshot { volume: String, snapshot: String },
    /// A restore of the backup at this URL, with the named backup key (in
    /// the daemon's key directory) for an encrypted destination: instant
    /// (served at once, hydrated in the background) unless `wait`
    /// (`hydrate=wait`: every chunk local before `Create` returns).
    Backup {
        url: String,
        key: Option<String>,
        wait: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateOptions {
    pub source: Source,
    pub fstype: FsType,
}

impl CreateOptions {
    /// Checks Docker's `Opts` (which dockerd may send as `null`).
    pub fn parse(opts: Option<&HashMap<String, String>>) -> Result<CreateOptions, DriverError> {
        let empty = HashMap::new();
        let opts = opts.unwrap_or(&empty);
        let mut unknown: Vec<&str> = opts
            .keys()
            .map(String::as_str)
            .filter(|k| !KNOWN_OPTIONS.contains(k))
            .collect();
        if !unknown.is_empty() {
            unknown.sort_unstable();
            return Err(invalid(format!(
                "unknown option(s) {}; known options: {}",
                unknown.join(", "),
                KNOWN_OPTIONS.join(", ")
            )));
        }
        let fstype = match opts.get("fstype") {
            None => FsType::Ext4,
            Some(s) => s.parse().map_err(invalid)?,
        };
        let size = opts
            .get("size")
            .map(|s| parse_size(s).map_err(|e| invalid(format!("size={s}: {e}"))))
            .transpose()?;
        let source = match (opts.get("snapshot"), opts.get("backup")) {
            (Some(_), Some(_)) => {
                return Err(invalid("snapshot and backup cannot be combined".into()))
            }
            (Some(reference), None) => {
                let (volume, snapshot) = parse_snapshot_ref(reference)
                    .map_err(|e| invalid(format!("snapshot={reference}: {e}")))?;
                validate_name(volume).map_err(|e| invalid(format!("snapshot={reference}: {e}")))?;
                validate_name(snapshot)
                    .map_err(|e| invalid(format!("snapshot={reference}: {e}")))?;
                Source::Snapshot {
                    volume: volume.to_string(),
                    snapshot: snapshot.to_string(),
                }
            }
            (None, Some(url)) => Source::Backup {
                url: url.clone(),
                key: opts.get("backup_key").cloned(),
                wait: match opts.get("hydrate").map(String::as_str) {
                    None | Some("background") => false,
                    Some("wait") => true,
                    Some(other) => {
                        return Err(invalid(format!(
                            "hydrate={other}: expected wait or background"
                        )))
                    }
                },
            },
            (None, None) => Source::Empty {
                size: size.unwrap_or(DEFAULT_SIZE),
            },
        };
        if opts.contains_key("hydrate") && !matches!(source, Source::Backup { .. }) {
            return Err(invalid("hydrate only applies with backup".into()));
        }
        if let Some(key) = opts.get("backup_key") {
            if !matches!(source, Source::Backup { .. }) {
                return Err(invalid("backup_key goes with backup".into()));
            }
            validate_name(key).map_err(|e| invalid(format!("backup_key={key}: {e}")))?;
        }
        if size.is_some() && !matches!(source, Source::Empty { .. }) {
            return Err(invalid(
                "size cannot be combined with snapshot or backup: the volume takes the size of its source"
                    .into(),
            ));
        }
        if opts.contains_key("fstype") && !matches!(source, Source::Empty { .. }) {
            return Err(invalid(
                "fstype cannot be combined with snapshot or backup: the volume keeps its source's filesystem"
                    .into(),
            ));
        }
        Ok(CreateOptions { source, fstype })
    }
}

fn invalid(message: String) -> DriverError {
    DriverError::InvalidOption(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<CreateOptions, String> {
        let opts: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        CreateOptions::parse(Some(&opts)).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_to_ten_gib_ext4() {
        let options = CreateOptions::parse(None).unwrap();
        assert_eq!(options.source, Source::Empty { size: 10 << 30 });
        assert_eq!(options.fstype, FsType::Ext4);
        assert_eq!(parse(&[]).unwrap(), options);
    }

    #[test]
    fn reads_size_fstype_snapshot_and_backup() {
        let options = parse(&[("size", "1G"), ("fstype", "xfs")]).unwrap();
        assert_eq!(options.source, Source::Empty { size: 1 << 30 });
        assert_eq!(options.fstype, FsType::Xfs);
        assert_eq!(
            parse(&[("snapshot", "db@nightly")]).unwrap().source,
            Source::Snapshot {
                volume: "db".into(),
                snapshot: "nightly".into()
            }
        );
        assert_eq!(
            parse(&[("backup", "s3://bucket/db")]).unwrap().source,
            Source::Backup {
                url: "s3://bucket/db".into(),
                key: None,
                wait: false
            }
        );
        assert_eq!(
            parse(&[("backup", "s3://b/db"), ("hydrate", "wait")])
                .unwrap()
                .source,
            Source::Backup {
                url: "s3://b/db".into(),
                key: None,
                wait: true
            }
        );
        assert!(parse(&[("backup", "s3://b/db"), ("hydrate", "later")]).is_err());
        assert!(
            parse(&[("hydrate", "wait")]).is_err(),
            "hydrate without backup"
        );
        assert_eq!(
            parse(&[("backup", "s3://bucket/db"), ("backup_key", "prod")])
                .unwrap()
                .source,
            Source::Backup {
                url: "s3://bucket/db".into(),
                key: Some("prod".into()),
                wait: false
            }
        );
        assert!(parse(&[("backup_key", "prod")]).is_err());
        assert!(parse(&[("backup", "s3://b/d"), ("backup_key", "../k")]).is_err());
    }

    #[test]
    fn rejects_unknown_options_listing_the_known_ones() {
        let e = parse(&[("sizee", "1G"), ("colour", "red")]).unwrap_err();
        assert_eq!(
            e,
            "unknown option(s) colour, sizee; known options: size, fstype, snapshot, backup, backup_key, hydrate"
        );
    }

    #[test]
    fn rejects_bad_values() {
        assert!(parse(&[("size", "lots")])
            .unwrap_err()
            .starts_with("size=lots: "));
        assert!(parse(&[("fstype", "ntfs")])
            .unwrap_err()
            .contains("ext4, xfs"));
        assert!(parse(&[("snapshot", "nosnap")])
            .unwrap_err()
            .starts_with("snapshot=nosnap: "));
        assert!(parse(&[("snapshot", "../x@y")]).is_err());
        assert!(parse(&[("snapshot", "a@b"), ("backup", "s3://x")]).is_err());
        assert!(parse(&[("snapshot", "a@b"), ("size", "1G")]).is_err());
        assert!(parse(&[("backup", "s3://x"), ("fstype", "xfs")]).is_err());
    }
}
