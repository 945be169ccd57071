//! The io_uring backend.
//!
//! Read and write completions run as task work of the thread that submitted
//! them, so the thread that waits for completions is best the one that
//! submitted: anything else adds a hand-off between threads, and each
//! hand-off is a wake-up (tens of microseconds on a busy virtual machine).
//! Two ways to drive the ring follow from that:
//!
//! - **On a tokio runtime** (the daemon): callers queue their operation and
//!   wake a driver task on the same runtime, which submits everything queued
//!   in one `io_uring_enter` once the other ready tasks have run (each enter
//!   that submits costs a doorbell write, a VM exit on a virtual disk) and
//!   reaps when the kernel signals an eventfd on completion. With one
//!   request thread, a request's socket read, submission, completion and
//!   reply all happen on that thread.
//! - **On a thread of its own** (no runtime: tests, tools): requests arrive
//!   on a channel; an eventfd read kept armed in the ring wakes the thread
//!   out of `io_uring_enter`, and senders only write that eventfd while the
//!   thread is (about to be) blocked there.
//!
//! Either way a request's buffer is owned by the ring's slot table from
//! submission until its completion is reaped, and the ring is never torn
//! down while the kernel may still use a buffer.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};

use io_uring::{opcode, squeue, types, IoUring};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::runtime::Handle;
use tokio::sync::Notify;

use super::aligned::AlignedBuf;
use super::request::{stopped, Op, Request};

const RING_ENTRIES: u32 = 256;
/// Operations in the kernel at once; the rest wait in the backlog. One
/// entry stays free for the thread driver's wake-up read.
const MAX_IN_FLIGHT: usize = RING_ENTRIES as usize - 1;
/// `user_data` of the thread driver's eventfd read; request slots use
/// their index.
const WAKE: u64 = u64::MAX;

pub(super) struct UringIo {
    driver: Driver,
}

enum Driver {
    Runtime {
        ring: Arc<Mutex<Ring>>,
        /// Wakes the driver task to submit what was queued.
        queued: Arc<Notify>,
        driver: tokio::task::JoinHandle<()>,
    },
    Thread {
        tx: Option<crossbeam_channel::Sender<Request>>,
        wake: OwnedFd,
        /// Set by the thread before it blocks in `io_uring_enter`; a sender
        /// that clears it owes the thread a wake-up.
        sleeping: Arc<AtomicBool>,
        thread: Option<JoinHandle<()>>,
    },
}

impl UringIo {
    /// Starts the ring on `file`: reaped by a task on `runtime` if given,
    /// otherwise by a thread of its own.
    pub(super) fn start(file: File, runtime: Option<&Handle>) -> io::Result<UringIo> {
        let ring = Ring::new(file)?;
        let driver = match runtime {
            Some(handle) => {
                let signal = eventfd(libc::EFD_NONBLOCK)?;
                ring.ring.submitter().register_eventfd(signal.as_raw_fd())?;
                let signal = {
                    let _entered = handle.enter();
                    // SAFETY: the AsyncFd owns the descriptor, which stays
                    // open and the same until the AsyncFd is dropped.
                    unsafe { AsyncFd::register_with_interest(signal, Interest::READABLE) }
                        .map_err(io::Error::from)?
                };
                let ring = Arc::new(Mutex::new(ring));
                let queued = Arc::new(Notify::new());
                let driver = handle.spawn(drive(ring.clone(), signal, queued.clone()));
                Driver::Runtime {
                    ring,
                    queued,
                    driver,
                }
            }
            None => {
                let wake = eventfd(0)?;
                let (tx, rx) = crossbeam_channel::unbounded();
                let sleeping = Arc::new(AtomicBool::new(false));
                let worker = Worker {
                    ring,
                    rx,
                    wake_fd: wake.as_raw_fd(),
                    sleeping: sleeping.clone(),
                    wake_buf: Box::leak(Box::new(0)),
                    wake_armed: false,
                };
                let thread = thread::Builder::new()
                    .name("ballast-uring".into())
                    .spawn(move || worker.run())?;
                Driver::Thread {
                    tx: Some(tx),
                    wake,
                    sleeping,
                    thread: Some(thread),
                }
            }
        };
        Ok(UringIo { driver })
    }

    pub(super) fn send(&self, req: Request) -> Result<(), Request> {
        match &self.driver {
            Driver::Runtime { ring, queued, .. } => {
                let mut ring = lock(ring);
                if ring.broken {
                    return Err(req);
                }
                ring.backlog.push_back(req);
                ring.start_backlog();
                drop(ring);
                queued.notify_one();
                Ok(())
            }
            Driver::Thread {
                tx, wake, sleeping, ..
            } => {
                let tx = tx.as_ref().expect("sender lives until drop");
                tx.send(req).map_err(|e| e.into_inner())?;
                // Pairs with the fence in `Worker::wait`: either the thread
                // sees the request before blocking, or this sees it blocking.
                fence(Ordering::SeqCst);
                if sleeping.swap(false, Ordering::SeqCst) {
                    kick(wake);
                }
                Ok(())
            }
        }
    }
}

impl Drop for UringIo {
    fn drop(&mut self) {
        match &mut self.driver {
            Driver::Runtime { ring, driver, .. } => {
                driver.abort();
                lock(ring).drain();
            }
            Driver::Thread {
                tx, wake, thread, ..
            } => {
                *tx = None;
                kick(wake);
                if let Some(t) = thread.take() {
                    let _ = t.join();
                }
            }
        }
    }
}

fn lock(ring: &Mutex<Ring>) -> MutexGuard<'_, Ring> {
    // A panic while holding the lock cannot leave the slot table half
    // updated in a way that matters more than the panic itself.
    ring.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn eventfd(flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: eventfd has no memory-safety preconditions.
    let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | flags) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: raw is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

fn kick(wake: &OwnedFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a valid u64 to our eventfd. A failure
    // (counter overflow) means a wake-up is already pending.
    unsafe { libc::write(wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
}

/// The runtime driver: submits when callers queued something, reaps when
/// the kernel signals `signal` (it does on every completion).
async fn drive(ring: Arc<Mutex<Ring>>, signal: AsyncFd<OwnedFd>, queued: Arc<Notify>) {
    loop {
        tokio::select! {
            biased;
            ready = signal.readable() => {
                let mut ready = match ready {
                    Ok(ready) => ready,
                    Err(e) => {
                        tracing::error!("io_uring completion signal failed: {e}");
                        lock(&ring).fail_everything(&e);
                        return;
                    }
                };
                let mut count = 0u64;
                // SAFETY: reads 8 bytes into a valid u64 from our eventfd.
                unsafe {
                    libc::read(
                        signal.get_ref().as_raw_fd(),
                        (&mut count as *mut u64).cast(),
                        8,
                    )
                };
                // The counter is reset before the queue is read, so a
                // completion posted from here on signals again; clearing
                // readiness cannot lose it (tokio keeps readiness that
                // arrived after this guard was made).
                ready.clear_ready();
            }
            _ = queued.notified() => {
                // Let the other ready tasks queue theirs first: one enter,
                // one doorbell for all of them.
                tokio::task::yield_now().await;
            }
        }
        let mut ring = lock(&ring);
        ring.reap();
        ring.start_backlog();
        ring.submit();
    }
}

/// The ring and every request it holds.
struct Ring {
    ring: IoUring,
    file: File,
    /// Requests in the kernel, by `user_data`. A request's buffer stays here
    /// until its completion is reaped.
    slots: Vec<Option<Request>>,
    free: Vec<usize>,
    /// Requests waiting for room in the ring, and requests resumed after a
    /// short transfer or EAGAIN.
    backlog: VecDeque<Request>,
    /// `io_uring_enter` failed for good: every request was failed and new
    /// ones are refused.
    broken: bool,
}

impl Ring {
    fn new(file: File) -> io::Result<Ring> {
        Ok(Ring {
            ring: IoUring::new(RING_ENTRIES)?,
            file,
            slots: Vec::new(),
            free: Vec::new(),
            backlog: VecDeque::new(),
            broken: false,
        })
    }

    fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    fn push(&mut self, sqe: squeue::Entry) -> bool {
        // SAFETY: every buffer an SQE points at is owned by a Request kept in
        // `slots` (or the thread driver's leaked wake buffer) until its
        // completion is reaped.
        unsafe { self.ring.submission().push(&sqe).is_ok() }
    }

    /// Moves backlog requests into the ring while it has room.
    fn start_backlog(&mut self) {
        while self.in_flight() < MAX_IN_FLIGHT {
            let Some(req) = self.backlog.pop_front() else {
                break;
            };
            if let Err(req) = self.start(req) {
                self.backlog.push_front(req);
                break;
            }
        }
    }

    /// Queues `req`'s next step; gives it back if the SQ is full.
    fn start(&mut self, mut req: Request) -> Result<(), Request> {
        let slot = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        };
        let fd = types::Fd(self.file.as_raw_fd());
        let remaining = (req.buf.len() - req.done) as u32;
        let offset = req.offset + req.done as u64;
        // SAFETY: done <= len, so the pointer stays inside the buffer.
        let ptr = unsafe { req.buf.as_mut_ptr().add(req.done) };
        let sqe = match req.op {
            Op::Read => opcode::Read::new(fd, ptr, remaining).offset(offset).build(),
            Op::Write => opcode::Write::new(fd, ptr, remaining)
                .offset(offset)
                .build(),
            Op::SyncData => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
        }
        .user_data(slot as u64);
        self.slots[slot] = Some(req);
        if self.push(sqe) {
            Ok(())
        } else {
            let req = self.slots[slot].take().expect("just stored");
            self.free.push(slot);
            Err(req)
        }
    }

    /// Submits queued entries without waiting. Transient refusals leave
    /// them queued for the next call; a hard failure fails everything.
    fn submit(&mut self) {
        if self.ring.submission().is_empty() {
            return;
        }
        if let Err(e) = self.ring.submit() {
            self.on_enter_error(e);
        }
    }

    fn on_enter_error(&mut self, e: io::Error) {
        if !matches!(
            e.raw_os_error(),
            Some(libc::EINTR | libc::EBUSY | libc::EAGAIN)
        ) {
            tracing::error!("io_uring_enter failed: {e}");
            self.fail_everything(&e);
        }
    }

    /// Completes every request whose completion is in. Requests that must
    /// go on (short transfer, EAGAIN) go back to the front of the backlog.
    /// Returns whether the thread driver's wake-up read completed.
    fn reap(&mut self) -> bool {
        let mut woke = false;
        let completions: Vec<(u64, i32)> = self
            .ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        for (user_data, res) in completions {
            if user_data == WAKE {
                woke = true;
                continue;
            }
            let slot = user_data as usize;
            let Some(mut req) = self.slots[slot].take() else {
                continue;
            };
            self.free.push(slot);
            if res == -libc::EINTR || res == -libc::EAGAIN {
                self.backlog.push_front(req);
                continue;
            }
            if res < 0 {
                req.finish(Err(io::Error::from_raw_os_error(-res)));
                continue;
            }
            if req.op == Op::SyncData {
                req.finish(Ok(()));
                continue;
            }
            if res == 0 && !req.buf.is_empty() {
                let kind = match req.op {
                    Op::Read => io::ErrorKind::UnexpectedEof,
                    _ => io::ErrorKind::WriteZero,
                };
                req.finish(Err(io::Error::new(kind, "short transfer on pool file")));
                continue;
            }
            req.done += res as usize;
            if req.done < req.buf.len() {
                self.backlog.push_front(req);
            } else {
                req.finish(Ok(()));
            }
        }
        woke
    }

    /// Waits until nothing is in the kernel; requests not started yet fail.
    fn drain(&mut self) {
        loop {
            // Also what reaping put back (short transfers): nobody waits.
            for req in self.backlog.drain(..) {
                req.finish(Err(stopped()));
            }
            if self.in_flight() == 0 || self.broken {
                return;
            }
            if let Err(e) = self.ring.submit_and_wait(1) {
                self.on_enter_error(e);
            }
            self.reap();
        }
    }

    fn fail_everything(&mut self, e: &io::Error) {
        self.broken = true;
        // Only reached when io_uring_enter itself breaks; in-flight requests
        // may still be owned by the kernel, so their buffers are leaked
        // rather than freed.
        for req in self.slots.drain(..).flatten() {
            let Request { reply, buf, .. } = req;
            std::mem::forget(buf);
            reply.send(
                AlignedBuf::new(0),
                Err(io::Error::new(e.kind(), e.to_string())),
            );
        }
        self.free.clear();
        for req in self.backlog.drain(..) {
            req.finish(Err(io::Error::new(e.kind(), e.to_string())));
        }
    }
}

/// The thread driver: submits and reaps on a thread of its own. It exits
/// once every sender is gone and nothing is in flight.
struct Worker {
    ring: Ring,
    rx: crossbeam_channel::Receiver<Request>,
    wake_fd: RawFd,
    sleeping: Arc<AtomicBool>,
    /// Target of the armed eventfd read. Leaked on purpose: the kernel may
    /// touch it until the ring is torn down, which is after `run` returns.
    wake_buf: &'static mut u64,
    wake_armed: bool,
}

impl Worker {
    fn run(mut self) {
        let mut closed = false;
        loop {
            if !closed {
                loop {
                    match self.rx.try_recv() {
                        Ok(req) => self.ring.backlog.push_back(req),
                        Err(crossbeam_channel::TryRecvError::Empty) => break,
                        Err(crossbeam_channel::TryRecvError::Disconnected) => {
                            closed = true;
                            break;
                        }
                    }
                }
            }
            if closed && self.ring.in_flight() == 0 && self.ring.backlog.is_empty() {
                return;
            }
            if !self.wake_armed && !closed {
                let sqe = opcode::Read::new(
                    types::Fd(self.wake_fd),
                    (self.wake_buf as *mut u64).cast(),
                    8,
                )
                .build()
                .user_data(WAKE);
                if self.ring.push(sqe) {
                    self.wake_armed = true;
                }
            }
            self.ring.start_backlog();
            if let Err(e) = self.wait(closed) {
                self.ring.on_enter_error(e);
                if self.ring.broken {
                    return;
                }
            }
            if self.ring.reap() {
                self.wake_armed = false;
            }
        }
    }

    /// Submits what is queued and, unless a request arrived meanwhile,
    /// blocks until something completes (a wake-up included).
    fn wait(&mut self, closed: bool) -> io::Result<usize> {
        if closed {
            return self.ring.ring.submit_and_wait(1);
        }
        self.sleeping.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if !self.rx.is_empty() {
            self.sleeping.store(false, Ordering::SeqCst);
            return self.ring.ring.submit();
        }
        let result = self.ring.ring.submit_and_wait(1);
        self.sleeping.store(false, Ordering::SeqCst);
        result
    }
}
