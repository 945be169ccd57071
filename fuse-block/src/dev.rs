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
/// reused at once; a larger one (a large write) keeps the read buffer
/// until it is answered, and the buffer goes back to `spare` then.
const SMALL: usize = 16 * 1024;
/// Read buffers kept for reuse: enough for 1 MiB writes at the loop
/// device's usual depth, so that none is allocated (and zeroed, and
/// faulted in) per request.
const SPARE_BUFFERS: usize = 16;

/// The connection's `/dev/fuse` descriptor, non-blocking.
pub(crate) struct Device {
    fd: AsyncFd<OwnedFd>,
    spare: Mutex<Vec<Vec<u8>>>,
}

/// What one read of the device produced.
pub(crate) enum Received {
    Request(Request),
    /// The filesystem was unmounted or the connection aborted.
    Gone,
}

/// One request as read: the first `len` bytes of `buf`. A large request
/// keeps the whole read buffer (`buf.len() == BUF_LEN`), so that it can be
/// reused once the request is answered.
pub(crate) struct Request {
    buf: Vec<u8>,
    len: usize,
}

impl std::ops::Deref for Request {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
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

    /// Takes back a request's buffer for later reads, if it is a whole one.
    fn recycle(&self, request: Request) {
        self.recycle_buffer(request.buf);
    }

    fn recycle_buffer(&self, buf: Vec<u8>) {
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
                    self.recycle_buffer(buf);
                    return Ok(Received::Request(Request {
                        buf: request,
                        len: n,
                    }));
                }
                return Ok(Received::Request(Request { buf, len: n }));
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::FromRawFd;

    /// A connected pair of `SOCK_SEQPACKET` sockets: like `/dev/fuse`, one
    /// read returns one whole message.
    fn pair() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: socketpair(2) fills the two descriptors on success.
        let r =
            unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET, 0, fds.as_mut_ptr()) };
        assert_eq!(r, 0, "{}", io::Error::last_os_error());
        // SAFETY: both descriptors are new and owned by nobody else.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    fn message(len: usize, fill: u8) -> Vec<u8> {
        let mut m = vec![fill; len];
        m[..4].copy_from_slice(&(len as u32).to_le_bytes());
        m
    }

    async fn next(device: &Device) -> Request {
        match device.receive().await.unwrap() {
            Received::Request(r) => r,
            Received::Gone => panic!("the connection went away"),
        }
    }

    #[tokio::test]
    async fn large_requests_reuse_their_read_buffer() {
        let (ours, theirs) = pair();
        let device = Device::new(ours).unwrap();
        let peer = std::os::unix::net::UnixDatagram::from(theirs);
        let big = message(64 * 1024, 0x5a);
        peer.send(&big).unwrap();
        let first = next(&device).await;
        assert_eq!(&first[..], &big[..], "the request is the message, no more");
        let address = first.buf.as_ptr();
        device.recycle(first);
        assert_eq!(
            device.spare.lock().unwrap().len(),
            1,
            "an answered large request's buffer is kept for the next read"
        );

        let other = message(160 * 1024, 0xa5);
        peer.send(&other).unwrap();
        let second = next(&device).await;
        assert_eq!(&second[..], &other[..]);
        assert_eq!(
            second.buf.as_ptr(),
            address,
            "the answered request's buffer is read into again, not a new one"
        );

        // A small request is copied out and the read buffer is kept.
        device.recycle(second);
        peer.send(&message(4096 + 80, 1)).unwrap();
        let small = next(&device).await;
        assert_eq!(small.len(), 4096 + 80);
        assert_eq!(device.spare.lock().unwrap().len(), 1);
        device.recycle(small);
        assert_eq!(
            device.spare.lock().unwrap().len(),
            1,
            "a small request's copy is not kept"
        );
    }
}
