//! Mounting and unmounting the FUSE filesystem.

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
pub(crate) fn mount(dir: &Path, source: &str) -> io::Result<OwnedFd> {
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
