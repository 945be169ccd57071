//! The descriptor holder: a small process that keeps each served file's
//! `/dev/fuse` descriptor and redo log open while the daemon restarts, so
//! the FUSE connections (and the filesystems on them) outlive the daemon.
//!
//! It speaks JSON datagrams on a `SOCK_SEQPACKET` unix socket (mode 0600,
//! peers must have the holder's uid), with descriptors passed as
//! `SCM_RIGHTS`:
//!
//! * `keep KEY META` + descriptors: hold them (replacing what KEY held);
//! * `take KEY`: answer META and copies of the descriptors, keep holding;
//! * `list`: the keys held;
//! * `release KEY`: close them.
//!
//! It holds nothing else and does nothing else; it exits once it has held
//! nothing for a few seconds, or when its socket is removed or replaced
//! (its daemon's root is gone: nothing will come back for what it holds).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::info;

/// Descriptors per entry, at most.
const MAX_FDS: usize = 4;
const MAX_MESSAGE: usize = 64 * 1024;
/// How long an empty holder waits for work before it exits.
const IDLE_EXIT: Duration = Duration::from_secs(5);
/// How long a new holder gets to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Request {
    Keep { key: String, meta: String },
    Take { key: String },
    List,
    Release { key: String },
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Response {
    ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    meta: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    keys: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// Runs the holder on `socket` until it has been empty for a while.
pub fn run(socket: &Path) -> io::Result<()> {
    let listener = listen(socket)?;
    let identity = |p: &Path| {
        std::fs::metadata(p).ok().map(|m| {
            (
                std::os::unix::fs::MetadataExt::dev(&m),
                std::os::unix::fs::MetadataExt::ino(&m),
            )
        })
    };
    let ours = identity(socket);
    let mut held: BTreeMap<String, (String, Vec<OwnedFd>)> = BTreeMap::new();
    let mut empty_since = Some(Instant::now());
    loop {
        let mut pfd = libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll(2) on one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, 1000) };
        if n < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return Err(io::Error::last_os_error());
        }
        if n > 0 {
            // SAFETY: accept4(2) on our listening socket.
            let raw = unsafe {
                libc::accept4(
                    listener.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_CLOEXEC,
                )
            };
            if raw >= 0 {
                // SAFETY: accept4 returned a new descriptor.
                let conn = unsafe { OwnedFd::from_raw_fd(raw) };
                serve_one(&conn, &mut held);
            }
        }
        if identity(socket) != ours {
            return Ok(());
        }
        if !held.is_empty() {
            empty_since = None;
        } else if empty_since.get_or_insert_with(Instant::now).elapsed() > IDLE_EXIT {
            let _ = std::fs::remove_file(socket);
            return Ok(());
        }
    }
}

fn serve_one(conn: &OwnedFd, held: &mut BTreeMap<String, (String, Vec<OwnedFd>)>) {
    // SAFETY: geteuid has no preconditions.
    if peer_uid(conn).ok() != Some(unsafe { libc::geteuid() }) {
        return;
    }
    let Ok((bytes, fds)) = receive(conn) else {
        return;
    };
    let mut out_fds: Vec<OwnedFd> = Vec::new();
    let response = match serde_json::from_slice::<Request>(&bytes) {
        Err(e) => Response {
            error: Some(format!("malformed request: {e}")),
            ..Default::default()
        },
        Ok(Request::Keep { key, meta }) if !fds.is_empty() => {
            held.insert(key, (meta, fds));
            Response {
                ok: true,
                ..Default::default()
            }
        }
        Ok(Request::Keep { .. }) => Response {
            error: Some("keep without descriptors".into()),
            ..Default::default()
        },
        Ok(Request::Take { key }) => match held.get(&key) {
            Some((meta, fds)) => match fds.iter().map(|fd| fd.try_clone()).collect() {
                Ok(copies) => {
                    out_fds = copies;
                    Response {
                        ok: true,
                        meta: Some(meta.clone()),
                        ..Default::default()
                    }
                }
                Err(e) => Response {
                    error: Some(e.to_string()),
                    ..Default::default()
                },
            },
            None => Response::default(),
        },
        Ok(Request::List) => Response {
            ok: true,
            keys: held.keys().cloned().collect(),
            ..Default::default()
        },
        Ok(Request::Release { key }) => {
            held.remove(&key);
            Response {
                ok: true,
                ..Default::default()
            }
        }
    };
    let bytes = serde_json::to_vec(&response).expect("serialisable");
    let borrowed: Vec<BorrowedFd<'_>> = out_fds.iter().map(|f| f.as_fd()).collect();
    let _ = send(conn, &bytes, &borrowed);
}

/// The daemon's side: where the holder listens and how to start one.
#[derive(Debug, Clone)]
pub struct Holder {
    socket: PathBuf,
    /// Program and arguments that run a holder on `socket`.
    command: Vec<OsString>,
}

/// What a holder answered to `take`.
pub struct Taken {
    pub meta: String,
    pub fds: Vec<OwnedFd>,
}

impl Holder {
    pub fn new(socket: PathBuf, command: Vec<OsString>) -> Holder {
        Holder { socket, command }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Hands `fds` and `meta` to the holder under `key`, starting a
    /// holder if none runs.
    pub fn keep(&self, key: &str, meta: &str, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let request = Request::Keep {
            key: key.into(),
            meta: meta.into(),
        };
        let response = match self.call(&request, fds) {
            Err(e) if not_running(&e) => {
                self.start()?;
                self.call(&request, fds)?
            }
            other => other?,
        }
        .0;
        check(&response)
    }

    /// Copies of what `key` holds, `None` if it holds nothing (or no holder
    /// runs).
    pub fn take(&self, key: &str) -> io::Result<Option<Taken>> {
        let request = Request::Take { key: key.into() };
        let (response, fds) = match self.call(&request, &[]) {
            Err(e) if not_running(&e) => return Ok(None),
            other => other?,
        };
        if let Some(e) = response.error {
            return Err(io::Error::other(e));
        }
        Ok(match (response.ok, response.meta) {
            (true, Some(meta)) => Some(Taken { meta, fds }),
            _ => None,
        })
    }

    /// The keys held (none if no holder runs).
    pub fn keys(&self) -> io::Result<Vec<String>> {
        match self.call(&Request::List, &[]) {
            Err(e) if not_running(&e) => Ok(Vec::new()),
            Err(e) => Err(e),
            Ok((response, _)) => {
                check(&response)?;
                Ok(response.keys)
            }
        }
    }

    /// Closes what `key` holds.
    pub fn release(&self, key: &str) -> io::Result<()> {
        match self.call(&Request::Release { key: key.into() }, &[]) {
            Err(e) if not_running(&e) => Ok(()),
            Err(e) => Err(e),
            Ok((response, _)) => check(&response),
        }
    }

    fn call(
        &self,
        request: &Request,
        fds: &[BorrowedFd<'_>],
    ) -> io::Result<(Response, Vec<OwnedFd>)> {
        let conn = seqpacket()?;
        let addr = sockaddr(&self.socket)?;
        // SAFETY: connect(2) with a valid sockaddr_un.
        let rc = unsafe {
            libc::connect(
                conn.as_raw_fd(),
                (&addr as *const libc::sockaddr_un).cast(),
                size_of::<libc::sockaddr_un>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        set_timeout(&conn, Duration::from_secs(5))?;
        send(
            &conn,
            &serde_json::to_vec(request).expect("serialisable"),
            fds,
        )?;
        let (bytes, fds) = receive(&conn)?;
        let response = serde_json::from_slice(&bytes)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        Ok((response, fds))
    }

    /// Starts a holder in a process group of its own, so that signals to
    /// the daemon's group (and a service manager stopping the daemon's
    /// main process) leave it alone; waits until it listens.
    fn start(&self) -> io::Result<()> {
        let (program, args) = self
            .command
            .split_first()
            .ok_or_else(|| io::Error::other("no holder command"))?;
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()?;
        info!(pid = child.id(), socket = %self.socket.display(), "started the FUSE descriptor holder");
        // Reap it whenever it exits, so it never lingers as a zombie.
        std::thread::spawn(move || child.wait());
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.call(&Request::List, &[]) {
                Ok(_) => return Ok(()),
                Err(e) if not_running(&e) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

fn check(response: &Response) -> io::Result<()> {
    match (&response.error, response.ok) {
        (Some(e), _) => Err(io::Error::other(e.clone())),
        (None, true) => Ok(()),
        (None, false) => Err(io::Error::other("the holder refused the request")),
    }
}

fn not_running(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOENT) | Some(libc::ECONNREFUSED)
    )
}

fn seqpacket() -> io::Result<OwnedFd> {
    // SAFETY: socket(2).
    let raw = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socket returned a new descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

fn sockaddr(path: &Path) -> io::Result<libc::sockaddr_un> {
    // SAFETY: an all-zero sockaddr_un is valid.
    let mut addr: libc::sockaddr_un = unsafe { zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::other(format!(
            "socket path too long: {}",
            path.display()
        )));
    }
    for (dst, &src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    Ok(addr)
}

fn listen(path: &Path) -> io::Result<OwnedFd> {
    let fd = seqpacket()?;
    let addr = sockaddr(path)?;
    let _ = std::fs::remove_file(path);
    // Private from the start: bind under a umask that leaves only the owner.
    // SAFETY: umask has no preconditions.
    let old = unsafe { libc::umask(0o177) };
    // SAFETY: bind(2) with a valid sockaddr_un.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            size_of::<libc::sockaddr_un>() as libc::socklen_t,
        )
    };
    // SAFETY: restores the previous umask.
    unsafe { libc::umask(old) };
    // SAFETY: listen(2) on the bound socket.
    if rc != 0 || unsafe { libc::listen(fd.as_raw_fd(), 16) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

fn peer_uid(conn: &OwnedFd) -> io::Result<u32> {
    // SAFETY: an all-zero ucred is valid.
    let mut cred: libc::ucred = unsafe { zeroed() };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt(2) into a ucred of the right size.
    let rc = unsafe {
        libc::getsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.uid)
}

fn set_timeout(conn: &OwnedFd, timeout: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: 0,
    };
    for opt in [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO] {
        // SAFETY: setsockopt(2) with a timeval.
        let rc = unsafe {
            libc::setsockopt(
                conn.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&tv as *const libc::timeval).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

const CMSG_SPACE: usize = 64;

fn send(conn: &OwnedFd, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    assert!(fds.len() <= MAX_FDS);
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    let mut control = [0u64; CMSG_SPACE / 8];
    // SAFETY: an all-zero msghdr is valid.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let data_len = raw.len() * size_of::<RawFd>();
        // SAFETY: CMSG_* arithmetic on a control buffer large enough for
        // MAX_FDS descriptors (checked above).
        unsafe {
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE(data_len as u32) as usize;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(data_len as u32) as usize;
            std::ptr::copy_nonoverlapping(raw.as_ptr(), libc::CMSG_DATA(cmsg).cast(), raw.len());
        }
    }
    // SAFETY: sendmsg(2) with buffers that outlive the call.
    let n = unsafe { libc::sendmsg(conn.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn receive(conn: &OwnedFd) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut bytes = vec![0u8; MAX_MESSAGE];
    let mut iov = libc::iovec {
        iov_base: bytes.as_mut_ptr().cast(),
        iov_len: bytes.len(),
    };
    let mut control = [0u64; CMSG_SPACE / 8];
    // SAFETY: an all-zero msghdr is valid.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = CMSG_SPACE;
    // SAFETY: recvmsg(2) into buffers we own.
    let n = unsafe { libc::recvmsg(conn.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    // SAFETY: walking the control messages the kernel filled in; each
    // SCM_RIGHTS payload is an array of descriptors now ours.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                let count =
                    ((*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / size_of::<RawFd>();
                for i in 0..count {
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "message or descriptors truncated",
        ));
    }
    bytes.truncate(n as usize);
    Ok((bytes, fds))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ballast-holder-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn keeps_takes_lists_and_releases_descriptors() {
        let dir = tempdir();
        let socket = dir.join("holder.sock");
        let server = std::thread::spawn({
            let socket = socket.clone();
            move || run(&socket)
        });
        let holder = Holder::new(socket.clone(), Vec::new());
        let deadline = Instant::now() + Duration::from_secs(5);
        while holder.keys().is_err() || !socket.exists() {
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(holder.take("v").unwrap().map(|t| t.meta), None);

        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(dir.join("f"))
            .unwrap();
        use std::io::Write;
        (&file).write_all(b"held").unwrap();
        let fd = file.as_fd();
        holder.keep("v", "{\"dir\":\"/x\"}", &[fd]).unwrap();
        drop(file);
        assert_eq!(holder.keys().unwrap(), ["v"]);
        let taken = holder.take("v").unwrap().unwrap();
        assert_eq!(taken.meta, "{\"dir\":\"/x\"}");
        let copy = std::fs::File::from(taken.fds.into_iter().next().unwrap());
        let mut back = String::new();
        use std::io::{Read, Seek};
        (&copy).rewind().unwrap();
        (&copy).read_to_string(&mut back).unwrap();
        assert_eq!(back, "held", "the descriptor is the one kept");

        // A bogus request is answered with an error, and changes nothing.
        let conn = seqpacket().unwrap();
        let addr = sockaddr(&socket).unwrap();
        assert_eq!(
            // SAFETY: connect(2) with a valid sockaddr_un.
            unsafe {
                libc::connect(
                    conn.as_raw_fd(),
                    (&addr as *const libc::sockaddr_un).cast(),
                    size_of::<libc::sockaddr_un>() as u32,
                )
            },
            0
        );
        send(&conn, b"{not json", &[]).unwrap();
        let (reply, _) = receive(&conn).unwrap();
        assert!(String::from_utf8_lossy(&reply).contains("malformed request"));
        assert_eq!(holder.keys().unwrap(), ["v"]);

        holder.release("v").unwrap();
        assert!(holder.keys().unwrap().is_empty());
        // Empty, it exits by itself and removes its socket.
        server.join().unwrap().unwrap();
        assert!(!socket.exists());
        assert!(holder.keys().unwrap().is_empty(), "no holder: nothing held");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
