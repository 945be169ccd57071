//! A served file: mounting a new FUSE connection, taking over one an
//! earlier daemon left running, pausing for a restart, unmounting.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::abi::{self, opcode};
use crate::backing::Backing;
use crate::dev::{self, Device, Received};
use crate::mount;
use crate::redo::RedoLog;
use crate::session::{negotiate, Negotiated, ReplayError, Session, FILE_NAME};

/// Writes acknowledged but not yet committed that one file may hold in
/// its redo log; a flush starts in the background at half of it.
pub const LOG_CAPACITY: usize = 64 << 20;
/// How long the kernel gets to send INIT after the mount.
const INIT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an unmount waits for the filesystem to stop being busy.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// What the next daemon needs to know to take a connection over, kept
/// beside its descriptors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handoff {
    /// Where the connection is mounted.
    pub dir: PathBuf,
    /// The FUSE protocol minor agreed in INIT.
    pub minor: u32,
}

/// Why a file could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("cannot create {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot mount FUSE on {path}: {source}")]
    Mount {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("FUSE connection on {path}: {source}")]
    Connection {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the kernel did not start the FUSE connection on {path}: {reason}")]
    Init { path: PathBuf, reason: String },
    #[error("cannot create the redo log: {0}")]
    Log(#[source] io::Error),
    #[error("the volume cannot be served: {0}")]
    Volume(#[source] ballast_engine::Error),
    #[error("taking over the FUSE connection on {path}: {source}")]
    Replay {
        path: PathBuf,
        #[source]
        source: ReplayError,
    },
}

/// One volume served as `DIR/disk`.
pub struct FileExport<B: Backing> {
    dir: PathBuf,
    session: Arc<Session<B>>,
    device: Arc<Device>,
    negotiated: Negotiated,
    stop: CancellationToken,
    /// The serving task; taken by `suspend` and `unmount`.
    task: Option<JoinHandle<io::Result<()>>>,
}

impl<B: Backing> FileExport<B> {
    /// Mounts a new FUSE connection on `dir` serving `backing`; `name`
    /// labels the mount and the redo log.
    pub async fn mount(backing: B, dir: &Path, name: &str) -> Result<Self, ExportError> {
        std::fs::create_dir_all(dir).map_err(|source| ExportError::Dir {
            path: dir.to_path_buf(),
            source,
        })?;
        let log = RedoLog::create(&format!("ballast-redo:{name}"), LOG_CAPACITY)
            .map_err(ExportError::Log)?;
        let session = Session::new(backing, log).map_err(ExportError::Volume)?;
        let fd =
            mount::mount(dir, &format!("ballast:{name}")).map_err(|source| ExportError::Mount {
                path: dir.to_path_buf(),
                source,
            })?;
        let connection = |source| ExportError::Connection {
            path: dir.to_path_buf(),
            source,
        };
        let started = async {
            let device = Arc::new(Device::new(fd).map_err(connection)?);
            let negotiated = match tokio::time::timeout(INIT_TIMEOUT, init(&device)).await {
                Ok(Ok(n)) => n,
                Ok(Err(reason)) => {
                    return Err(ExportError::Init {
                        path: dir.to_path_buf(),
                        reason,
                    })
                }
                Err(_) => {
                    return Err(ExportError::Init {
                        path: dir.to_path_buf(),
                        reason: format!("no INIT within {INIT_TIMEOUT:?}"),
                    })
                }
            };
            Ok((device, negotiated))
        };
        let (device, negotiated) = match started.await {
            Ok(started) => started,
            Err(e) => {
                let _ = mount::unmount(dir, true);
                return Err(e);
            }
        };
        info!(dir = %dir.display(), minor = negotiated.minor, "serving a volume over FUSE");
        Ok(Self::start(dir, session, device, negotiated))
    }

    /// Takes over the connection an earlier daemon served on `dir`:
    /// `fuse` is its `/dev/fuse` descriptor and `log` its redo log, both
    /// kept by a holder across the restart. What the log holds is written
    /// and committed first; then the kernel resends every request the old
    /// daemon read and never answered.
    pub async fn take_over(
        backing: B,
        handoff: &Handoff,
        fuse: OwnedFd,
        log: OwnedFd,
    ) -> Result<Self, ExportError> {
        let dir = &handoff.dir;
        let log = RedoLog::open(log).map_err(ExportError::Log)?;
        let session = Session::new(backing, log).map_err(ExportError::Volume)?;
        let replayed = session
            .replay()
            .await
            .map_err(|source| ExportError::Replay {
                path: dir.clone(),
                source,
            })?;
        let connection = |source| ExportError::Connection {
            path: dir.clone(),
            source,
        };
        let device = Arc::new(Device::new(fuse).map_err(connection)?);
        device.notify_resend().map_err(connection)?;
        info!(dir = %dir.display(), replayed, "took over a FUSE connection");
        let negotiated = Negotiated {
            minor: handoff.minor,
        };
        Ok(Self::start(dir, session, device, negotiated))
    }

    fn start(
        dir: &Path,
        session: Arc<Session<B>>,
        device: Arc<Device>,
        negotiated: Negotiated,
    ) -> Self {
        let stop = CancellationToken::new();
        let task = tokio::spawn(dev::serve(
            Arc::clone(&session),
            Arc::clone(&device),
            stop.clone(),
        ));
        FileExport {
            dir: dir.to_path_buf(),
            session,
            device,
            negotiated,
            stop,
            task: Some(task),
        }
    }

    /// The served file.
    pub fn file(&self) -> PathBuf {
        self.dir.join(FILE_NAME)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What a holder keeps with [`FileExport::fds`].
    pub fn handoff(&self) -> Handoff {
        Handoff {
            dir: self.dir.clone(),
            minor: self.negotiated.minor,
        }
    }

    /// The `/dev/fuse` descriptor and the redo log's, for a holder.
    pub fn fds(&self) -> [BorrowedFd<'_>; 2] {
        [self.device.fd().as_fd(), self.session.log().fd()]
    }

    /// Whether requests are still being served (false once the
    /// filesystem is unmounted or the connection aborted).
    pub fn is_serving(&self) -> bool {
        self.task.as_ref().is_some_and(|t| !t.is_finished())
    }

    pub fn backing(&self) -> &B {
        self.session.backing()
    }

    /// Stops serving for a daemon restart: requests already read are
    /// answered, the rest wait in the kernel, and what was written is
    /// committed. The mount stays; a holder must keep the descriptors.
    pub async fn suspend(mut self) {
        self.stop.cancel();
        let Some(task) = self.task.take() else {
            return;
        };
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(dir = %self.dir.display(), "FUSE server failed: {e}"),
            Err(e) => warn!(dir = %self.dir.display(), "FUSE server task failed: {e}"),
        }
        if let Err(e) = self.session.flush().await {
            warn!(dir = %self.dir.display(), "final flush before the restart failed (the next daemon replays the redo log): {e}");
        }
    }

    /// Unmounts (once whatever had the file open let go of it) and waits
    /// for the server to end. A mount still busy after a few seconds is
    /// detached lazily.
    pub async fn unmount(mut self) -> io::Result<()> {
        let deadline = Instant::now() + BUSY_TIMEOUT;
        loop {
            match mount::unmount(&self.dir, false) {
                Ok(()) => break,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    warn!(dir = %self.dir.display(), "FUSE mount still busy; detaching it lazily");
                    mount::unmount(&self.dir, true)?;
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        self.stop.cancel();
        match self.task.take() {
            Some(task) => task.await.unwrap_or_else(|e| Err(io::Error::other(e))),
            None => Ok(()),
        }
    }
}

impl<B: Backing> Drop for FileExport<B> {
    /// An export dropped without [`FileExport::suspend`] or
    /// [`FileExport::unmount`] stops reading requests; the connection
    /// waits for whoever else holds its descriptor.
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Answers the kernel's INIT, the first request on a new connection.
async fn init(device: &Device) -> Result<Negotiated, String> {
    let request = match device.receive().await.map_err(|e| e.to_string())? {
        Received::Request(request) => request,
        Received::Gone => return Err("the connection went away".into()),
    };
    let (header, op, _) = dev::split(&request).map_err(|e| e.to_string())?;
    if header.opcode != opcode::INIT {
        return Err(format!("first request has opcode {}", header.opcode));
    }
    match negotiate(op) {
        Ok((out, negotiated)) => {
            let body = out.encode();
            let head = abi::out_header(abi::OUT_HEADER_LEN + body.len(), 0, header.unique);
            device.send(&[&head, &body]).map_err(|e| e.to_string())?;
            Ok(negotiated)
        }
        Err(errno) => {
            let head = abi::out_header(abi::OUT_HEADER_LEN, -errno, header.unique);
            let _ = device.send(&[&head]);
            Err(format!(
                "INIT refused ({})",
                io::Error::from_raw_os_error(errno)
            ))
        }
    }
}
