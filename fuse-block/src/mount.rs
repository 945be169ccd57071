//! Mounting and unmounting the FUSE filesystem, and reaching its
//! connection in `/sys/fs/fuse/connections`.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::session::MAX_IO;

/// The filesystem type shown in `/proc/mounts`.
pub const FSTYPE: &str = "fuse.ballast";

fn cstr(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)
}

/// Opens `/dev/fuse` and mounts a new connection on `dir` (root only: the
/// file is the mounting user's alone, with kernel permission checks).
/// The kernel then waits for the INIT reply before any other request.
pub fn mount(dir: &Path, source: &str) -> io::Result<OwnedFd> {
    let dev = CString::new("/dev/fuse").expect("no NUL");
    // SAFETY: open(2) with a valid path.
    let raw = unsafe { libc::open(dev.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: open just returned it.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let options = format!(
        "fd={},rootmode=40000,user_id=0,group_id=0,default_permissions,max_read={MAX_IO}",
        fd.as_raw_fd()
    );
    let source = CString::new(source).map_err(io::Error::other)?;
    let target = cstr(dir)?;
    let fstype = CString::new(FSTYPE).expect("no NUL");
    let options = CString::new(options).expect("no NUL");
    // SAFETY: mount(2) with valid C strings.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            options.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// `umount2(dir)`; `lazy` detaches it even while it is busy.
pub fn unmount(dir: &Path, lazy: bool) -> io::Result<()> {
    let target = cstr(dir)?;
    let flags = if lazy { libc::MNT_DETACH } else { 0 };
    // SAFETY: umount2 with a valid C string.
    if unsafe { libc::umount2(target.as_ptr(), flags) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The FUSE connection mounted on `dir` (its device minor, the name of
/// its directory in `/sys/fs/fuse/connections`), read from mountinfo so
/// that a connection no one serves is never touched.
pub fn connection(dir: &Path) -> Option<u32> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let dir = escape(dir.as_os_str().as_bytes());
    text.lines().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        let fields: Vec<&str> = before.split(' ').collect();
        let fstype = after.split(' ').next()?;
        if fstype != FSTYPE || fields.get(4)?.as_bytes() != dir.as_slice() {
            return None;
        }
        let (major, minor) = fields.get(2)?.split_once(':')?;
        (major == "0").then(|| minor.parse().ok())?
    })
}

/// A path as mountinfo shows it (octal escapes for blanks and `\\`).
fn escape(path: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.len());
    for &b in path {
        match b {
            b' ' | b'\t' | b'\n' | b'\\' => out.extend_from_slice(format!("\\{b:03o}").as_bytes()),
            _ => out.push(b),
        }
    }
    out
}

/// Aborts FUSE connection `id`: every request waiting on it, and every
/// later one, fails with an I/O error.
pub fn abort(id: u32) -> io::Result<()> {
    std::fs::write(format!("/sys/fs/fuse/connections/{id}/abort"), "1")
}
