//! What the backend hands its drivers: one operation ([`Request`]) and
//! where its buffer and outcome go when it completes ([`Reply`]), shared
//! by the io_uring and the thread-pool drivers.

use std::io;

use super::aligned::AlignedBuf;

/// The error of an operation the backend stopped before it could run.
pub(super) fn stopped() -> io::Error {
    io::Error::other("I/O backend has stopped")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Op {
    Read,
    Write,
    SyncData,
}

/// One operation travelling to a worker and back.
pub(super) struct Request {
    pub(super) op: Op,
    pub(super) offset: u64,
    pub(super) buf: AlignedBuf,
    /// Bytes already transferred (short reads/writes are resumed).
    pub(super) done: usize,
    pub(super) reply: Reply,
}

impl Request {
    pub(super) fn finish(self, result: io::Result<()>) {
        self.reply.send(self.buf, result);
    }
}

/// Where a finished operation's buffer and outcome go.
pub(super) enum Reply {
    /// To a [`super::Pending`]. If the caller has gone away, the buffer is
    /// dropped.
    Channel(tokio::sync::oneshot::Sender<(AlignedBuf, io::Result<()>)>),
    /// To a callback ([`super::Backend::write_then`]).
    Call(Completion),
}

impl Reply {
    pub(super) fn send(self, buf: AlignedBuf, result: io::Result<()>) {
        match self {
            Reply::Channel(tx) => {
                let _ = tx.send((buf, result));
            }
            Reply::Call(mut call) => {
                if let Some(f) = call.0.take() {
                    f(buf, result);
                }
            }
        }
    }
}

type Callback = Box<dyn FnOnce(AlignedBuf, io::Result<()>) + Send>;

/// A [`Reply::Call`] callback. A request dropped unfinished (the backend
/// stopped without answering it) still runs its callback, with an error,
/// so whoever counts on the callback is never left waiting.
pub(super) struct Completion(pub(super) Option<Callback>);

impl Drop for Completion {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f(AlignedBuf::new(0), Err(stopped()));
        }
    }
}
