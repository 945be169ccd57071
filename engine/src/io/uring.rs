//! The io_uring backend: one thread owns the ring.
//!
//! Requests arrive on a channel; an `eventfd` read is kept armed in the ring
//! so a new request wakes the thread out of `io_uring_enter`. The thread
//! exits once every sender is gone and nothing is in flight, so buffers are
//! never released while the kernel may still use them.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::thread::{self, JoinHandle};

use io_uring::{opcode, squeue, types, IoUring};

use super::{Op, Request};

const RING_ENTRIES: u32 = 256;
/// `user_data` of the eventfd read; request slots use their index.
const WAKE: u64 = u64::MAX;

pub struct UringIo {
    tx: Option<crossbeam_channel::Sender<Request>>,
    wake: OwnedFd,
    thread: Option<JoinHandle<()>>,
}

impl UringIo {
    pub fn start(file: File) -> io::Result<UringIo> {
        let ring = IoUring::new(RING_ENTRIES)?;
        // SAFETY: eventfd has no memory-safety preconditions.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: raw is a fresh descriptor we own.
        let wake = unsafe { OwnedFd::from_raw_fd(raw) };
        let (tx, rx) = crossbeam_channel::unbounded();
        let wake_fd = wake.as_raw_fd();
        let thread = thread::Builder::new()
            .name("ballast-uring".into())
            .spawn(move || Worker::new(ring, file, rx, wake_fd).run())?;
        Ok(UringIo {
            tx: Some(tx),
            wake,
            thread: Some(thread),
        })
    }

    pub(super) fn send(&self, req: Request) -> Result<(), Request> {
        let tx = self.tx.as_ref().expect("sender lives until drop");
        tx.send(req).map_err(|e| e.into_inner())?;
        self.kick();
        Ok(())
    }

    fn kick(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64 to our eventfd. A failure
        // (counter overflow) means a wake-up is already pending.
        unsafe { libc::write(self.wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }
}

impl Drop for UringIo {
    fn drop(&mut self) {
        self.tx = None;
        self.kick();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Worker {
    ring: IoUring,
    file: File,
    rx: crossbeam_channel::Receiver<Request>,
    wake_fd: RawFd,
    /// Target of the armed eventfd read. Leaked on purpose: the kernel may
    /// touch it until the ring is torn down, which is after `run` returns.
    wake_buf: &'static mut u64,
    wake_armed: bool,
    slots: Vec<Option<Request>>,
    free: Vec<usize>,
    backlog: VecDeque<Request>,
}

impl Worker {
    fn new(
        ring: IoUring,
        file: File,
        rx: crossbeam_channel::Receiver<Request>,
        wake_fd: RawFd,
    ) -> Self {
        Worker {
            ring,
            file,
            rx,
            wake_fd,
            wake_buf: Box::leak(Box::new(0)),
            wake_armed: false,
            slots: Vec::new(),
            free: Vec::new(),
            backlog: VecDeque::new(),
        }
    }

    fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    fn run(mut self) {
        let mut closed = false;
        loop {
            if !closed {
                loop {
                    match self.rx.try_recv() {
                        Ok(req) => self.backlog.push_back(req),
                        Err(crossbeam_channel::TryRecvError::Empty) => break,
                        Err(crossbeam_channel::TryRecvError::Disconnected) => {
                            closed = true;
                            break;
                        }
                    }
                }
            }
            if closed && self.in_flight() == 0 && self.backlog.is_empty() {
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
                if self.push(sqe) {
                    self.wake_armed = true;
                }
            }
            while self.in_flight() < (RING_ENTRIES as usize - 1) {
                let Some(req) = self.backlog.pop_front() else {
                    break;
                };
                if let Err(req) = self.start(req) {
                    self.backlog.push_front(req);
                    break;
                }
            }
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
                Err(e) => {
                    tracing::error!("io_uring_enter failed: {e}");
                    self.fail_everything(e);
                    return;
                }
            }
            self.reap();
        }
    }

    fn push(&mut self, sqe: squeue::Entry) -> bool {
        // SAFETY: every buffer an SQE points at is owned by a Request kept in
        // `slots` (or the leaked wake buffer) until its completion is reaped.
        unsafe { self.ring.submission().push(&sqe).is_ok() }
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

    fn reap(&mut self) {
        let completions: Vec<(u64, i32)> = self
            .ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        for (user_data, res) in completions {
            if user_data == WAKE {
                self.wake_armed = false;
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
    }

    fn fail_everything(&mut self, e: io::Error) {
        // Only reached when io_uring_enter itself breaks; in-flight requests
        // may still be owned by the kernel, so their buffers are leaked
        // rather than freed.
        for req in self.slots.drain(..).flatten() {
            let Request { reply, buf, .. } = req;
            std::mem::forget(buf);
            let _ = reply.send((
                super::AlignedBuf::new(0),
                Err(io::Error::new(e.kind(), e.to_string())),
            ));
        }
        for req in self.backlog.drain(..) {
            req.finish(Err(io::Error::new(e.kind(), e.to_string())));
        }
    }
}
