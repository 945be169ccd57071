//! The classic transport: requests read from `/dev/fuse`, replies written
//! back to it, one task per request on the daemon's runtime.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::abi::{self, opcode, InHeader};
use crate::backing::Backing;
use crate::session::{Reply, Session, MAX_IO};

/// Room for the largest request: headers, `fuse_write_in`, `MAX_IO` bytes.
const BUF_LEN: usize = MAX_IO as usize + 4096;
/// A request at most this long is copied out of the read buffer, which is
/// reused at once; only large writes keep a buffer of their own.
const SMALL: usize = 16 * 1024;
/// Read buffers kept for reuse.
const SPARE_BUFFERS: usize = 8;

/// The connection's `/dev/fuse` descriptor, non-blocking.
pub(crate) struct Device {
    fd: AsyncFd<OwnedFd>,
    spare: Mutex<Vec<Vec<u8>>>,
}

/// What one read of the device produced.
pub(crate) enum Received {
    Request(Vec<u8>),
    /// The filesystem was unmounted or the connection aborted.
    Gone,
}

impl Device {
    pub(crate) fn new(fd: OwnedFd) -> io::Result<Device> {
        set_nonblocking(fd.as_raw_fd())?;
        // SAFETY: the OwnedFd is moved into the AsyncFd and stays open,
        // as the same descriptor, for as long as the AsyncFd lives.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }?;
        Ok(Device {
            fd,
            spare: Mutex::new(Vec::new()),
        })
    }

    pub(crate) fn raw(&self) -> RawFd {
        self.fd.get_ref().as_raw_fd()
    }

    pub(crate) fn fd(&self) -> &OwnedFd {
        self.fd.get_ref()
    }

    fn buffer(&self) -> Vec<u8> {
        self.spare
            .lock()
            .unwrap()
            .pop()
            .unwrap_or_else(|| vec![0u8; BUF_LEN])
    }

    fn recycle(&self, buf: Vec<u8>) {
        let mut spare = self.spare.lock().unwrap();
        if buf.len() == BUF_LEN && spare.len() < SPARE_BUFFERS {
            spare.push(buf);
        }
    }

    /// The next request, waiting for one.
    pub(crate) async fn receive(&self) -> io::Result<Received> {
        let mut buf = self.buffer();
        loop {
            let mut ready = self.fd.readable().await?;
            // SAFETY: read(2) into a buffer we own, of its length.
            let n = unsafe { libc::read(self.raw(), buf.as_mut_ptr().cast(), buf.len()) };
            if n >= 0 {
                let n = n as usize;
                if n <= SMALL {
                    let request = buf[..n].to_vec();
                    self.recycle(buf);
                    return Ok(Received::Request(request));
                }
                buf.truncate(n);
                return Ok(Received::Request(buf));
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN) => ready.clear_ready(),
                // A request interrupted before we could read it.
                Some(libc::EINTR) | Some(libc::ENOENT) => {}
                Some(libc::ENODEV) | Some(libc::ECONNABORTED) => return Ok(Received::Gone),
                _ => return Err(e),
            }
        }
    }

    /// Writes `parts` as one message (a reply or a notification).
    pub(crate) fn send(&self, parts: &[&[u8]]) -> io::Result<()> {
        let iov: Vec<libc::iovec> = parts
            .iter()
            .filter(|p| !p.is_empty())
            .map(|p| libc::iovec {
                iov_base: p.as_ptr() as *mut libc::c_void,
                iov_len: p.len(),
            })
            .collect();
        // SAFETY: writev(2) of buffers that outlive the call.
        let n = unsafe { libc::writev(self.raw(), iov.as_ptr(), iov.len() as libc::c_int) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Answers request `unique` with `reply`.
    pub(crate) fn reply<Buf: AsRef<[u8]>>(&self, unique: u64, reply: &Reply<Buf>) {
        if matches!(reply, Reply::None) {
            return;
        }
        let body = reply.bytes();
        let header = abi::out_header(abi::OUT_HEADER_LEN + body.len(), reply.error(), unique);
        if let Err(e) = self.send(&[&header, body]) {
            // ENOENT: the request was interrupted and is gone.
            if e.raw_os_error() != Some(libc::ENOENT) {
                warn!(unique, "cannot answer a FUSE request: {e}");
            }
        }
    }

    /// Asks the kernel to queue again every request the previous server
    /// read and never answered (Linux 6.9+).
    pub(crate) fn notify_resend(&self) -> io::Result<()> {
        let header = abi::out_header(abi::OUT_HEADER_LEN, abi::NOTIFY_RESEND, 0);
        self.send(&[&header])
    }
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above; only the file status flags change.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Splits a request read from the device into header, the operation's
/// fixed argument and its payload (the layout FUSE-over-io_uring uses).
pub(crate) fn split(request: &[u8]) -> Result<(InHeader, &[u8], &[u8]), abi::Malformed> {
    let header = InHeader::parse(request)?;
    let len = header.len as usize;
    if len < abi::IN_HEADER_LEN || len > request.len() {
        return Err(abi::Malformed("length field disagrees with the message"));
    }
    let args = &request[abi::IN_HEADER_LEN..len];
    Ok(match header.opcode {
        opcode::WRITE => {
            let cut = abi::WRITE_IN_LEN.min(args.len());
            (header, &args[..cut], &args[cut..])
        }
        opcode::LOOKUP => (header, &[][..], args),
        _ => (header, args, &[][..]),
    })
}

/// Serves requests until the connection goes away or `stop` is cancelled;
/// requests already read are answered before it returns.
pub(crate) async fn serve<B: Backing>(
    session: Arc<Session<B>>,
    device: Arc<Device>,
    stop: CancellationToken,
) -> io::Result<()> {
    let tracker = TaskTracker::new();
    let result = loop {
        let received = tokio::select! {
            () = stop.cancelled() => break Ok(()),
            r = device.receive() => r,
        };
        let request = match received {
            Ok(Received::Request(request)) => request,
            Ok(Received::Gone) => break Ok(()),
            Err(e) => break Err(e),
        };
        let (session, device) = (Arc::clone(&session), Arc::clone(&device));
        tracker.spawn(async move {
            let (header, op, payload) = match split(&request) {
                Ok(parts) => parts,
                Err(e) => {
                    // Without a trustworthy header there is no one to answer.
                    warn!("{e}");
                    return;
                }
            };
            let reply = if header.opcode == opcode::INIT {
                debug!("INIT on a running connection");
                Reply::Error(libc::EPROTO)
            } else {
                session.handle(&header, op, payload).await
            };
            device.reply(header.unique, &reply);
            device.recycle(request);
        });
    };
    tracker.close();
    tracker.wait().await;
    result
}
