//! `/proc/self/mountinfo`: which filesystems are mounted where.

use std::path::{Path, PathBuf};

/// One mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub mount_point: PathBuf,
    pub fstype: String,
    pub source: String,
}

/// The current mounts; empty if mountinfo cannot be read.
pub fn mounts() -> Vec<Mount> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|text| parse(&text))
        .unwrap_or_default()
}

/// Whether something is mounted exactly on `path`.
pub fn is_mount_point(path: &Path) -> bool {
    mounts().iter().any(|m| m.mount_point == path)
}

/// Parses mountinfo text (see proc(5)): field 5 is the mount point, and
/// after the ` - ` separator come the filesystem type and the source.
pub fn parse(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let mount_point = before.split(' ').nth(4)?;
            let mut after = after.split(' ');
            let fstype = after.next()?;
            let source = after.next().unwrap_or("");
            Some(Mount {
                mount_point: PathBuf::from(unescape(mount_point)),
                fstype: fstype.to_string(),
                source: unescape(source),
            })
        })
        .collect()
}

/// Undoes the kernel's octal escapes (`\040` for a space, ...).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value =
                (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(value);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mount_points_types_and_sources() {
        let text = "\
44 27 7:0 / /var/lib/ballast/docker/mounts/db rw,relatime shared:1 - ext4 /dev/loop0 rw
43 27 0:39 / /tmp/with\\040space rw,nosuid - fuse /dev/fuse rw,user_id=0
garbage line
";
        let mounts = parse(text);
        assert_eq!(
            mounts,
            vec![
                Mount {
                    mount_point: "/var/lib/ballast/docker/mounts/db".into(),
                    fstype: "ext4".into(),
                    source: "/dev/loop0".into(),
                },
                Mount {
                    mount_point: "/tmp/with space".into(),
                    fstype: "fuse".into(),
                    source: "/dev/fuse".into(),
                },
            ]
        );
    }

    #[test]
    fn sees_the_root_mount() {
        assert!(is_mount_point(Path::new("/")));
    }
}
