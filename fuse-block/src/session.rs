//! The filesystem: a root directory holding one file, the volume. What
//! each FUSE request does, independent of how it arrived (`/dev/fuse` or
//! io_uring).
//!
//! The server keeps no per-open or per-lookup state: inode numbers and the
//! file handle are constants, so a daemon that takes over a running FUSE
//! connection answers the kernel's cached inodes and open files as the old
//! one did.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::{debug, error, warn};

use crate::abi::{self, fattr, fopen, init, opcode, Attr, Body, InHeader, InitIn, InitOut, IoIn};
use crate::backing::{errno, Backing};
use crate::redo::{Kind, RedoLog, Ticket};

/// The file's inode and name in the root directory.
pub(crate) const FILE_ID: u64 = 2;
pub const FILE_NAME: &str = "disk";

/// The largest read or write the kernel sends (256 pages).
pub const MAX_IO: u32 = 1 << 20;
const MAX_PAGES: u16 = (MAX_IO / 4096) as u16;
/// Requests the kernel keeps in flight for asynchronous direct I/O (a loop
/// device queues up to 128).
const MAX_BACKGROUND: u16 = 128;
/// Nothing about the two inodes changes while mounted.
const ATTR_VALID: Duration = Duration::from_secs(3600);

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const DT_DIR: u32 = 4;
const DT_REG: u32 = 8;

/// What a request is answered with.
pub(crate) enum Reply<Buf> {
    /// Nothing: FORGET, INTERRUPT.
    None,
    Error(i32),
    /// A reply body (possibly empty).
    Body(Vec<u8>),
    /// The data of a READ.
    Data(Buf),
}

impl<Buf: AsRef<[u8]>> Reply<Buf> {
    pub(crate) fn error(&self) -> i32 {
        match self {
            Reply::Error(e) => -e,
            _ => 0,
        }
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Reply::None | Reply::Error(_) => &[],
            Reply::Body(b) => b,
            Reply::Data(d) => d.as_ref(),
        }
    }
}

/// How the connection was negotiated in INIT; a daemon taking over a
/// connection reuses it (the kernel does not send INIT again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Negotiated {
    pub minor: u32,
}

/// One served file.
pub(crate) struct Session<B: Backing> {
    backing: B,
    log: RedoLog,
    size: u64,
    time: u64,
    background_flush: AtomicBool,
}

impl<B: Backing> Session<B> {
    pub(crate) fn new(backing: B, log: RedoLog) -> ballast_engine::Result<Arc<Self>> {
        let size = backing.size()?;
        let time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Ok(Arc::new(Session {
            backing,
            log,
            size,
            time,
            background_flush: AtomicBool::new(false),
        }))
    }

    pub(crate) fn log(&self) -> &RedoLog {
        &self.log
    }

    pub(crate) fn backing(&self) -> &B {
        &self.backing
    }

    /// Applies what an earlier daemon acknowledged but did not commit,
    /// then commits it. Run before serving a taken-over connection.
    pub(crate) async fn replay(&self) -> Result<usize, ReplayError> {
        let records = self.log.records().map_err(ReplayError::Log)?;
        let n = records.len();
        for r in &records {
            let done = match r.kind {
                Kind::Write => self.backing.write(r.offset, r.data).await,
                Kind::Zeroes => self.backing.write_zeroes(r.offset, r.len).await,
                Kind::Trim => self.backing.trim(r.offset, r.len).await,
                Kind::Wrap => Ok(()),
            };
            done.map_err(ReplayError::Engine)?;
        }
        let point = self.log.flush_point();
        self.backing.flush().await.map_err(ReplayError::Engine)?;
        self.log.advance(point);
        Ok(n)
    }

    /// Answers one request. `op` is the operation's fixed argument struct
    /// and `payload` what follows it (a write's data, a looked-up name).
    pub(crate) async fn handle(
        self: &Arc<Self>,
        header: &InHeader,
        op: &[u8],
        payload: &[u8],
    ) -> Reply<B::Buf> {
        match self.dispatch(header, op, payload).await {
            Ok(reply) => reply,
            Err(errno) => Reply::Error(errno),
        }
    }

    async fn dispatch(
        self: &Arc<Self>,
        h: &InHeader,
        op: &[u8],
        payload: &[u8],
    ) -> Result<Reply<B::Buf>, i32> {
        let malformed = |e: abi::Malformed| {
            warn!(opcode = h.opcode, "{e}");
            libc::EINVAL
        };
        Ok(match h.opcode {
            opcode::READ => {
                self.expect_file(h)?;
                let io = IoIn::parse(op).map_err(malformed)?;
                let len = self.clamp(io.offset, io.size);
                if len == 0 {
                    return Ok(Reply::Body(Vec::new()));
                }
                let data = self.backing.read(io.offset, len).await.map_err(|e| {
                    error!(offset = io.offset, len, "read failed: {e}");
                    errno(&e)
                })?;
                Reply::Data(data)
            }
            opcode::WRITE => {
                self.expect_file(h)?;
                let io = IoIn::parse(op).map_err(malformed)?;
                let data = payload
                    .get(..io.size as usize)
                    .ok_or_else(|| malformed(abi::Malformed("write shorter than its size")))?;
                self.write(io.offset, data).await?;
                let mut b = Body::default();
                b.u32(io.size).u32(0);
                Reply::Body(b.0)
            }
            opcode::FSYNC | opcode::FLUSH => {
                self.expect_file(h)?;
                self.flush().await.map_err(|e| {
                    error!("flush failed: {e}");
                    errno(&e)
                })?;
                Reply::Body(Vec::new())
            }
            opcode::FALLOCATE => {
                self.expect_file(h)?;
                let f = abi::FallocateIn::parse(op).map_err(malformed)?;
                self.fallocate(f).await?;
                Reply::Body(Vec::new())
            }
            opcode::GETATTR => Reply::Body(self.attr_out(self.attr(h.nodeid)?)),
            opcode::SETATTR => {
                let s = abi::SetattrIn::parse(op).map_err(malformed)?;
                let attr = self.attr(h.nodeid)?;
                if s.valid & (fattr::MODE | fattr::UID | fattr::GID) != 0
                    || (s.valid & fattr::SIZE != 0 && s.size != attr.size)
                {
                    // The volume's size is ballast's to change; times are
                    // accepted and ignored.
                    return Err(libc::EPERM);
                }
                Reply::Body(self.attr_out(attr))
            }
            opcode::LOOKUP => {
                let name = payload.split(|&b| b == 0).next().unwrap_or_default();
                if h.nodeid != abi::ROOT_ID || name != FILE_NAME.as_bytes() {
                    return Err(libc::ENOENT);
                }
                let mut b = Body::default();
                b.u64(FILE_ID)
                    .u64(1) // generation: the same for every daemon
                    .u64(ATTR_VALID.as_secs())
                    .u64(ATTR_VALID.as_secs())
                    .u32(0)
                    .u32(0);
                self.file_attr().encode(&mut b);
                Reply::Body(b.0)
            }
            opcode::OPEN => {
                self.expect_file(h)?;
                let mut b = Body::default();
                b.u64(0)
                    .u32(fopen::DIRECT_IO | fopen::PARALLEL_DIRECT_WRITES)
                    .u32(0);
                Reply::Body(b.0)
            }
            opcode::OPENDIR => {
                if h.nodeid != abi::ROOT_ID {
                    return Err(libc::ENOTDIR);
                }
                let mut b = Body::default();
                b.u64(0).u32(0).u32(0);
                Reply::Body(b.0)
            }
            opcode::READDIR => {
                if h.nodeid != abi::ROOT_ID {
                    return Err(libc::ENOTDIR);
                }
                let io = IoIn::parse(op).map_err(malformed)?;
                Reply::Body(readdir(io.offset, io.size as usize))
            }
            opcode::STATFS => {
                let blocks = self.size / 4096;
                let mut b = Body::default();
                b.u64(blocks)
                    .u64(0)
                    .u64(0)
                    .u64(2)
                    .u64(0)
                    .u32(4096)
                    .u32(255)
                    .u32(4096)
                    .u32(0)
                    .zeros(24);
                Reply::Body(b.0)
            }
            opcode::RELEASE | opcode::RELEASEDIR | opcode::FSYNCDIR | opcode::DESTROY => {
                Reply::Body(Vec::new())
            }
            opcode::FORGET | opcode::BATCH_FORGET | opcode::INTERRUPT => Reply::None,
            other => {
                debug!(opcode = other, "unsupported FUSE operation");
                return Err(libc::ENOSYS);
            }
        })
    }

    fn expect_file(&self, h: &InHeader) -> Result<(), i32> {
        match h.nodeid {
            FILE_ID => Ok(()),
            abi::ROOT_ID => Err(libc::EISDIR),
            _ => Err(libc::ENOENT),
        }
    }

    /// A read at `offset` of up to `size` bytes stops at the end of file.
    fn clamp(&self, offset: u64, size: u32) -> usize {
        self.size.saturating_sub(offset).min(u64::from(size)) as usize
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<(), i32> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            // The file cannot grow: the volume has a fixed size.
            _ => Err(libc::ENOSPC),
        }
    }

    async fn write(self: &Arc<Self>, offset: u64, data: &[u8]) -> Result<(), i32> {
        self.check_range(offset, data.len() as u64)?;
        let ticket = self
            .log_append(Kind::Write, offset, data.len() as u64, data)
            .await?;
        let written = self.backing.write(offset, data).await;
        drop(ticket);
        self.maybe_flush_in_background();
        written.map_err(|e| {
            error!(offset, len = data.len(), "write failed: {e}");
            errno(&e)
        })
    }

    async fn fallocate(self: &Arc<Self>, f: abi::FallocateIn) -> Result<(), i32> {
        use abi::{FALLOC_FL_KEEP_SIZE as KEEP, FALLOC_FL_PUNCH_HOLE as PUNCH};
        let kind = match f.mode {
            m if m == PUNCH | KEEP => Kind::Trim,
            m if m & !KEEP == abi::FALLOC_FL_ZERO_RANGE => Kind::Zeroes,
            // Reserving space is not something a thin volume promises.
            _ => return Err(libc::EOPNOTSUPP),
        };
        self.check_range(f.offset, f.length)?;
        let ticket = self.log_append(kind, f.offset, f.length, &[]).await?;
        let done = match kind {
            Kind::Trim => self.backing.trim(f.offset, f.length).await,
            _ => self.backing.write_zeroes(f.offset, f.length).await,
        };
        drop(ticket);
        done.map_err(|e| {
            error!(
                offset = f.offset,
                len = f.length,
                "discard/zeroing failed: {e}"
            );
            errno(&e)
        })
    }

    /// Space in the redo log for a record, flushing to make room.
    async fn log_append<'a>(
        &'a self,
        kind: Kind,
        offset: u64,
        len: u64,
        data: &[u8],
    ) -> Result<Ticket<'a>, i32> {
        loop {
            if let Some(ticket) = self.log.append(kind, offset, len, data) {
                return Ok(ticket);
            }
            let before = self.log.used();
            self.flush().await.map_err(|e| {
                error!("flush to make room in the redo log failed: {e}");
                errno(&e)
            })?;
            if self.log.used() >= before {
                // The oldest record's engine write is still under way.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }

    /// One engine flush; the redo log drops what it made durable.
    pub(crate) async fn flush(&self) -> ballast_engine::Result<()> {
        let point = self.log.flush_point();
        self.backing.flush().await?;
        self.log.advance(point);
        Ok(())
    }

    /// Keeps the log from filling under writers that never fsync.
    fn maybe_flush_in_background(self: &Arc<Self>) {
        if self.log.used() < self.log.capacity() / 2
            || self.background_flush.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let session = Arc::clone(self);
        tokio::spawn(async move {
            if let Err(e) = session.flush().await {
                error!("background flush of the redo log failed: {e}");
            }
            session.background_flush.store(false, Ordering::Release);
        });
    }

    fn attr(&self, nodeid: u64) -> Result<Attr, i32> {
        match nodeid {
            abi::ROOT_ID => Ok(Attr {
                ino: abi::ROOT_ID,
                size: 0,
                blocks: 0,
                time: self.time,
                mode: S_IFDIR | 0o700,
                nlink: 2,
            }),
            FILE_ID => Ok(self.file_attr()),
            _ => Err(libc::ENOENT),
        }
    }

    fn file_attr(&self) -> Attr {
        Attr {
            ino: FILE_ID,
            size: self.size,
            blocks: self.size / 512,
            time: self.time,
            mode: S_IFREG | 0o600,
            nlink: 1,
        }
    }

    fn attr_out(&self, attr: Attr) -> Vec<u8> {
        let mut b = Body::default();
        b.u64(ATTR_VALID.as_secs()).u32(0).u32(0);
        attr.encode(&mut b);
        b.0
    }
}

/// The INIT reply for `args`, and what it negotiated.
pub(crate) fn negotiate(args: &[u8]) -> Result<(InitOut, Negotiated), i32> {
    let init_in = InitIn::parse(args).map_err(|e| {
        warn!("{e}");
        libc::EINVAL
    })?;
    if init_in.major != abi::KERNEL_VERSION || init_in.minor < abi::MIN_MINOR_VERSION {
        error!(
            major = init_in.major,
            minor = init_in.minor,
            "the kernel's FUSE protocol is too old (7.{} needed)",
            abi::MIN_MINOR_VERSION
        );
        return Err(libc::EPROTO);
    }
    let want = init::ASYNC_READ
        | init::BIG_WRITES
        | init::ASYNC_DIO
        | init::PARALLEL_DIROPS
        | init::MAX_PAGES
        | init::INIT_EXT;
    let flags = want & init_in.flags | init::INIT_EXT;
    let negotiated = Negotiated {
        minor: init_in.minor.min(abi::KERNEL_MINOR_VERSION),
    };
    Ok((
        InitOut {
            minor: negotiated.minor,
            max_readahead: init_in.max_readahead,
            flags,
            max_background: MAX_BACKGROUND,
            congestion_threshold: MAX_BACKGROUND / 4 * 3,
            max_write: MAX_IO,
            max_pages: MAX_PAGES,
        },
        negotiated,
    ))
}

/// The root directory's entries from position `offset`, at most `size`
/// bytes of them.
fn readdir(offset: u64, size: usize) -> Vec<u8> {
    let entries: [(u64, u32, &[u8]); 3] = [
        (abi::ROOT_ID, DT_DIR, b"."),
        (abi::ROOT_ID, DT_DIR, b".."),
        (FILE_ID, DT_REG, FILE_NAME.as_bytes()),
    ];
    let mut b = Body::default();
    for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
        let mut one = Body::default();
        abi::dirent(&mut one, *ino, i as u64 + 1, *kind, name);
        if b.0.len() + one.0.len() > size {
            break;
        }
        b.0.extend_from_slice(&one.0);
    }
    b.0
}

/// A taken-over connection's redo log could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("the redo log is unreadable: {0}")]
    Log(#[source] std::io::Error),
    #[error("replaying the redo log failed: {0}")]
    Engine(#[source] ballast_engine::Error),
}
