//! The data file's I/O path: one async interface, two implementations.
//!
//! The io_uring driver runs a ring reaped by a task on the caller's
//! tokio runtime or by a thread of its own; the sync driver runs
//! `pread`/`pwrite` on a small thread pool, for hosts where `io_uring_setup`
//! is refused (Docker's default seccomp profile, old kernels). Both take
//! ownership of an [`AlignedBuf`] for the duration of the operation, so a
//! caller that stops waiting (a cancelled future) can never leave the kernel
//! writing into freed memory.

mod aligned;
#[cfg(feature = "test-seams")]
mod faults;
mod request;
mod sync;
mod uring;

use std::fmt;
use std::fs::File;
use std::io;
use std::str::FromStr;

use tokio::runtime::Handle;

use request::{stopped, Completion, Op, Reply, Request};

pub use aligned::{AlignedBuf, BufPool};
#[cfg(feature = "test-seams")]
pub use faults::Faults;

/// Which I/O backend a pool uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IoMode {
    /// io_uring when the kernel allows it, otherwise the thread pool (logged once).
    #[default]
    Auto,
    /// io_uring or fail.
    Uring,
    /// The pread/pwrite thread pool.
    Sync,
}

impl FromStr for IoMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(IoMode::Auto),
            "uring" | "io_uring" | "io-uring" => Ok(IoMode::Uring),
            "sync" | "threads" => Ok(IoMode::Sync),
            _ => Err(format!(
                "unknown I/O mode {s:?}: expected auto, uring or sync"
            )),
        }
    }
}

impl fmt::Display for IoMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IoMode::Auto => "auto",
            IoMode::Uring => "uring",
            IoMode::Sync => "sync",
        })
    }
}

/// A started I/O backend bound to one file.
pub struct Backend {
    driver: Driver,
    #[cfg(feature = "test-seams")]
    faults: Option<std::sync::Arc<Faults>>,
}

enum Driver {
    Uring(uring::UringIo),
    Sync(sync::SyncIo),
}

impl Backend {
    /// Starts the backend `mode` asks for on `file`. An io_uring is reaped
    /// on `runtime` if given (see [`uring`]), which must then run as long as
    /// the backend does I/O.
    pub fn start(file: File, mode: IoMode, runtime: Option<&Handle>) -> io::Result<Backend> {
        let driver = match mode {
            IoMode::Sync => Driver::Sync(sync::SyncIo::start(file)?),
            IoMode::Uring => Driver::Uring(uring::UringIo::start(file, runtime)?),
            IoMode::Auto => {
                let fallback = file.try_clone()?;
                match uring::UringIo::start(file, runtime) {
                    Ok(io) => Driver::Uring(io),
                    Err(e) => {
                        tracing::warn!(
                            "io_uring unavailable ({e}); using the pread/pwrite thread pool"
                        );
                        Driver::Sync(sync::SyncIo::start(fallback)?)
                    }
                }
            }
        };
        Ok(Backend {
            driver,
            #[cfg(feature = "test-seams")]
            faults: None,
        })
    }

    /// Fails the operations `faults` plans to fail (a test seam).
    #[cfg(feature = "test-seams")]
    pub fn with_faults(mut self, faults: Option<std::sync::Arc<Faults>>) -> Self {
        self.faults = faults;
        self
    }

    /// The backend in use, for logs and stats.
    pub fn mode(&self) -> IoMode {
        match self.driver {
            Driver::Uring(_) => IoMode::Uring,
            Driver::Sync(_) => IoMode::Sync,
        }
    }

    /// Fills `buf` from `offset`. The buffer comes back whatever the outcome.
    pub async fn read(&self, offset: u64, buf: AlignedBuf) -> (AlignedBuf, io::Result<()>) {
        self.submit(Op::Read, offset, buf).await
    }

    /// Writes all of `buf` at `offset`.
    pub async fn write(&self, offset: u64, buf: AlignedBuf) -> (AlignedBuf, io::Result<()>) {
        self.submit(Op::Write, offset, buf).await
    }

    /// `fdatasync` of the file.
    pub async fn sync_data(&self) -> io::Result<()> {
        self.submit(Op::SyncData, 0, AlignedBuf::new(0)).await.1
    }

    /// Starts reading `buf.len()` bytes at `offset` now; the read runs
    /// whether or not anyone awaits the [`Pending`] (if nobody does, the
    /// buffer is dropped when it completes).
    pub fn start_read(&self, offset: u64, buf: AlignedBuf) -> Pending {
        self.send(Op::Read, offset, buf)
    }

    /// Starts writing all of `buf` at `offset` now and calls `then` with
    /// the buffer and the outcome when it completes, on whichever thread
    /// reaps it (so `then` must be quick and take only locks nothing holds
    /// while doing I/O). `then` runs exactly once, with an error if the
    /// backend stops first.
    pub fn write_then(
        &self,
        offset: u64,
        buf: AlignedBuf,
        then: impl FnOnce(AlignedBuf, io::Result<()>) + Send + 'static,
    ) {
        let request = Request {
            op: Op::Write,
            offset,
            buf,
            done: 0,
            reply: Reply::Call(Completion(Some(Box::new(then)))),
        };
        if let Err(request) = self.dispatch(request) {
            request.finish(Err(stopped()));
        }
    }

    async fn submit(&self, op: Op, offset: u64, buf: AlignedBuf) -> (AlignedBuf, io::Result<()>) {
        self.send(op, offset, buf).wait().await
    }

    fn send(&self, op: Op, offset: u64, buf: AlignedBuf) -> Pending {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let request = Request {
            op,
            offset,
            buf,
            done: 0,
            reply: Reply::Channel(tx),
        };
        Pending(
            self.dispatch(request)
                .map(|()| rx)
                .map_err(|request| request.buf),
        )
    }

    /// Hands `request` to the backend; gives it back if the backend has
    /// stopped.
    fn dispatch(&self, request: Request) -> Result<(), Request> {
        #[cfg(feature = "test-seams")]
        if let Some(f) = &self.faults {
            if f.fails(request.op) {
                request.finish(Err(io::Error::from_raw_os_error(libc::EIO)));
                return Ok(());
            }
        }
        match &self.driver {
            Driver::Uring(u) => u.send(request),
            Driver::Sync(s) => s.send(request),
        }
    }
}

/// An operation handed to the backend: its buffer and outcome, once it
/// completes. Holds the buffer itself if the backend refused it.
pub struct Pending(
    Result<tokio::sync::oneshot::Receiver<(AlignedBuf, io::Result<()>)>, AlignedBuf>,
);

impl Pending {
    pub async fn wait(self) -> (AlignedBuf, io::Result<()>) {
        match self.0 {
            Ok(rx) => match rx.await {
                Ok(reply) => reply,
                // The worker dropped the request without answering: it only
                // does that while shutting down, and the buffer went with it.
                Err(_) => (AlignedBuf::new(0), Err(stopped())),
            },
            Err(buf) => (buf, Err(stopped())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::OpenOptionsExt;

    fn roundtrip(mode: IoMode, on_runtime: bool) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
            .unwrap();
        file.set_len(1 << 20).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        let io = Backend::start(file, mode, on_runtime.then(|| rt.handle())).unwrap();
        assert_eq!(io.mode(), mode);
        rt.block_on(async {
            let mut buf = AlignedBuf::new(8192);
            buf.fill(0x5a);
            let (_, r) = io.write(4096, buf).await;
            r.unwrap();
            io.sync_data().await.unwrap();
            let (buf, r) = io.read(4096, AlignedBuf::new(8192)).await;
            r.unwrap();
            assert!(buf.iter().all(|&b| b == 0x5a));
            let (buf, r) = io.read(0, AlignedBuf::new(4096)).await;
            r.unwrap();
            assert!(buf.iter().all(|&b| b == 0));
        });
    }

    #[test]
    fn uring_roundtrip_on_its_thread() {
        roundtrip(IoMode::Uring, false);
    }

    #[test]
    fn uring_roundtrip_on_the_runtime() {
        roundtrip(IoMode::Uring, true);
    }

    #[test]
    fn sync_roundtrip() {
        roundtrip(IoMode::Sync, false);
    }

    #[test]
    fn parses_modes() {
        assert_eq!("sync".parse::<IoMode>().unwrap(), IoMode::Sync);
        assert_eq!("io_uring".parse::<IoMode>().unwrap(), IoMode::Uring);
        assert!("fast".parse::<IoMode>().is_err());
    }
}
