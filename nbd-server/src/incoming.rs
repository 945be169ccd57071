//! The read side of a connection, and polling receive for write payloads.
//!
//! A client sends a large write's payload in pieces no bigger than its
//! socket send buffer (about 200 KiB on a unix socket by default). If the
//! server waits for readiness between pieces, it goes to sleep after each
//! one, the client fills its buffer and goes to sleep too, and every piece
//! costs both sides a wake-up while neither copies. So while a payload is
//! known to be on its way, the server polls the socket for a short while
//! before it waits ([`PAYLOAD_POLL`]): it drains each piece as it lands,
//! the client's buffer never fills, and both copy at the same time. Once a
//! piece fails to come within the poll, the rest of that payload is
//! awaited as usual, so a slow client costs at most one poll per payload.
//!
//! Requests themselves are awaited as usual: between requests the client
//! may well be idle, and polling there would only hold up the replies and
//! completions that share the thread.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use tokio::io::AsyncRead;

/// How long a payload read polls before it waits for readiness: long
/// enough to cover a client's wake-up and next send, short enough that a
/// client that stalls mid-payload costs little.
pub(crate) const PAYLOAD_POLL: Duration = Duration::from_micros(50);

/// The read side of a connection.
pub(crate) trait Incoming: AsyncRead + Unpin {
    /// Receives into `buf` what has arrived, polling for up to `limit`
    /// while nothing has: `Some(Ok(0))` at end of stream,
    /// `Some(Err(WouldBlock))` if nothing came within `limit`. `None` if
    /// this transport cannot receive outside its reactor; the caller then
    /// awaits a read.
    fn recv_polling(&mut self, buf: &mut [u8], limit: Duration) -> Option<io::Result<usize>> {
        let _ = (buf, limit);
        None
    }
}

impl Incoming for tokio::net::unix::OwnedReadHalf {
    fn recv_polling(&mut self, buf: &mut [u8], limit: Duration) -> Option<io::Result<usize>> {
        Some(recv_polling(self.as_ref().as_raw_fd(), buf, limit))
    }
}

impl Incoming for tokio::net::tcp::OwnedReadHalf {
    fn recv_polling(&mut self, buf: &mut [u8], limit: Duration) -> Option<io::Result<usize>> {
        Some(recv_polling(self.as_ref().as_raw_fd(), buf, limit))
    }
}

/// Any stream served through [`crate::Server::serve_connection`]: no
/// polling.
impl<T: AsyncRead> Incoming for tokio::io::ReadHalf<T> {}

impl Incoming for Box<dyn Incoming + Send> {
    fn recv_polling(&mut self, buf: &mut [u8], limit: Duration) -> Option<io::Result<usize>> {
        (**self).recv_polling(buf, limit)
    }
}

/// Non-blocking `recv` on `fd`, retried until data, end of stream, an
/// error, or `limit`.
///
/// This reads behind tokio's back, so tokio may still think the socket
/// readable. That is harmless: its next read finds nothing, clears the
/// readiness and waits for the next edge, which any data arriving later
/// raises.
fn recv_polling(fd: RawFd, buf: &mut [u8], limit: Duration) -> io::Result<usize> {
    let start = Instant::now();
    loop {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes, and `fd`
        // stays open while the read half that owns it is borrowed.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        match err.kind() {
            io::ErrorKind::Interrupted => {}
            io::ErrorKind::WouldBlock if start.elapsed() < limit => std::hint::spin_loop(),
            _ => return Err(err),
        }
    }
}
