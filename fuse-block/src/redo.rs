//! The redo log: every write (and zeroing, and discard) the kernel has been
//! told is done but that no engine flush has made durable yet, kept in a
//! memfd that outlives the daemon.
//!
//! Why: a daemon killed with `kill -9` loses the engine's uncommitted map
//! changes, so writes it acknowledged since its last commit are gone from
//! the volume. While the daemon is down, the kernel's filesystem on top of
//! the loop device is still mounted and believes them written; a later
//! fsync answered by the next daemon would claim durability for data that
//! no longer exists. The holder process keeps this log's memfd (with the
//! `/dev/fuse` fd), and the next daemon replays the log onto the volume and
//! commits it before it answers a single request. What the kernel saw
//! acknowledged is therefore exactly what the volume holds afterwards.
//!
//! # Layout and invariants
//!
//! A header page, then a ring of `capacity` bytes. Positions are logical
//! byte offsets that only grow (`pos % capacity` is where a record lives),
//! so a record left over from an earlier lap never matches the position a
//! reader expects. A record is a 32-byte header (`pos`, `kind`, `done`,
//! volume `offset`, `len`) followed, for a write, by its data padded to 8
//! bytes; a record never straddles the end of the ring.
//!
//! * `head` is published only after the record header below it is written
//!   (under the log's lock): a reader never walks into an unwritten header.
//! * `done` is set only after the data is copied, and the kernel hears of
//!   the write only after that (and after the engine took the write): a
//!   record without `done` was never acknowledged and is skipped.
//! * `tail` moves past a record only after an engine flush that began when
//!   the record's engine write had already completed.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;

const MAGIC: u64 = u64::from_le_bytes(*b"BLSTREDO");
const VERSION: u64 = 1;
const HEADER: usize = 4096;
const RECORD: u64 = 32;
const DONE: u32 = 0x444f_4e45;

// Header fields, as offsets into the header page.
const H_MAGIC: usize = 0;
const H_VERSION: usize = 8;
const H_CAPACITY: usize = 16;
const H_HEAD: usize = 24;
const H_TAIL: usize = 32;

/// What a record replays as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Write = 1,
    Zeroes = 2,
    Trim = 3,
    /// Filler to the end of the ring: the next record is at the next lap.
    Wrap = 4,
}

impl Kind {
    fn from_u32(v: u32) -> Option<Kind> {
        Some(match v {
            1 => Kind::Write,
            2 => Kind::Zeroes,
            3 => Kind::Trim,
            4 => Kind::Wrap,
            _ => return None,
        })
    }
}

/// A complete record, as the next daemon replays it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    pub kind: Kind,
    pub offset: u64,
    pub len: u64,
    /// The written bytes, for [`Kind::Write`].
    pub data: &'a [u8],
}

struct Cursor {
    head: u64,
    tail: u64,
    /// Records whose engine write has not completed yet.
    in_flight: BTreeSet<u64>,
}

/// A log in a shared memory mapping of its memfd.
pub struct RedoLog {
    fd: OwnedFd,
    base: NonNull<u8>,
    capacity: u64,
    cursor: Mutex<Cursor>,
}

// SAFETY: the mapping is plain shared memory. The header words are only
// accessed as atomics; a record's bytes are written by the one writer that
// reserved them, before `done` is published, and read back only by
// `records`, which its callers run before any writer exists (a new daemon
// replaying the log before it serves).
unsafe impl Send for RedoLog {}
// SAFETY: as for Send above.
unsafe impl Sync for RedoLog {}

/// Space in the log, held from reservation until the write it records has
/// reached the engine.
#[must_use]
pub struct Ticket<'a> {
    log: &'a RedoLog,
    pos: u64,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.log.cursor.lock().unwrap().in_flight.remove(&self.pos);
    }
}

impl RedoLog {
    /// A new, empty log of `capacity` bytes (a multiple of 4 KiB).
    pub fn create(name: &str, capacity: usize) -> io::Result<RedoLog> {
        assert!(
            capacity.is_multiple_of(4096) && capacity >= 1 << 20,
            "log capacity"
        );
        let cname = CString::new(name).map_err(io::Error::other)?;
        // SAFETY: plain syscall with a valid C string.
        let raw = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: memfd_create just returned this descriptor to us.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let len = HEADER + capacity;
        // SAFETY: ftruncate on our own memfd.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let log = RedoLog::map(fd, capacity as u64)?;
        log.word(H_CAPACITY)
            .store(capacity as u64, Ordering::Relaxed);
        log.word(H_VERSION).store(VERSION, Ordering::Relaxed);
        log.word(H_MAGIC).store(MAGIC, Ordering::Release);
        Ok(log)
    }

    /// The log an earlier daemon left in `fd`.
    pub fn open(fd: OwnedFd) -> io::Result<RedoLog> {
        let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
        // SAFETY: libc::stat is plain data; all-zero is a valid value.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat fills `st`, which lives across the call.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let size = st.st_size as u64;
        if size < (HEADER as u64) + (1 << 20) {
            return Err(invalid("redo log: file too small"));
        }
        let log = RedoLog::map(fd, size - HEADER as u64)?;
        if log.word(H_MAGIC).load(Ordering::Acquire) != MAGIC
            || log.word(H_VERSION).load(Ordering::Relaxed) != VERSION
            || log.word(H_CAPACITY).load(Ordering::Relaxed) != log.capacity
        {
            return Err(invalid("redo log: bad header"));
        }
        let head = log.word(H_HEAD).load(Ordering::Acquire);
        let tail = log.word(H_TAIL).load(Ordering::Acquire);
        if tail > head || head - tail > log.capacity {
            return Err(invalid("redo log: head and tail out of order"));
        }
        *log.cursor.lock().unwrap() = Cursor {
            head,
            tail,
            in_flight: BTreeSet::new(),
        };
        Ok(log)
    }

    fn map(fd: OwnedFd, capacity: u64) -> io::Result<RedoLog> {
        let len = HEADER + capacity as usize;
        // SAFETY: a fresh shared mapping of the whole file; unmapped in Drop.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(RedoLog {
            fd,
            base: NonNull::new(ptr.cast()).expect("mmap returned non-null"),
            capacity,
            cursor: Mutex::new(Cursor {
                head: 0,
                tail: 0,
                in_flight: BTreeSet::new(),
            }),
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn word(&self, at: usize) -> &AtomicU64 {
        // SAFETY: `at` is an 8-aligned offset inside the header page, and
        // the mapping lives as long as `self`.
        unsafe { &*self.base.as_ptr().add(at).cast::<AtomicU64>() }
    }

    /// The record header at ring offset `at` (8-aligned, inside the ring).
    fn slot(&self, at: u64) -> *mut u8 {
        debug_assert!(at.is_multiple_of(8) && at + RECORD <= self.capacity);
        // SAFETY: inside the mapping.
        unsafe { self.base.as_ptr().add(HEADER + at as usize) }
    }

    fn done_flag(&self, at: u64) -> &AtomicU32 {
        // SAFETY: bytes 12..16 of a record header, 4-aligned.
        unsafe { &*self.slot(at).add(12).cast::<AtomicU32>() }
    }

    fn write_header(&self, at: u64, pos: u64, kind: Kind, offset: u64, len: u64) {
        let p = self.slot(at);
        // SAFETY: the 32 header bytes of a slot this writer owns.
        unsafe {
            p.cast::<u64>().write(pos);
            p.add(8).cast::<u32>().write(kind as u32);
            p.add(16).cast::<u64>().write(offset);
            p.add(24).cast::<u64>().write(len);
        }
        self.done_flag(at).store(0, Ordering::Relaxed);
    }

    /// The largest record this log takes.
    pub fn max_record(&self) -> u64 {
        self.capacity / 4
    }

    /// Bytes of records not yet made durable.
    pub fn used(&self) -> u64 {
        let c = self.cursor.lock().unwrap();
        c.head - c.tail
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Records `kind` of `len` bytes at volume `offset`, with `data` for a
    /// write. `None` when the log is full: flush, then try again.
    pub fn append(&self, kind: Kind, offset: u64, len: u64, data: &[u8]) -> Option<Ticket<'_>> {
        debug_assert!(kind != Kind::Wrap);
        let size = RECORD + (data.len() as u64).next_multiple_of(8);
        assert!(
            size <= self.max_record(),
            "record larger than the log allows"
        );
        let at;
        let pos;
        {
            let mut c = self.cursor.lock().unwrap();
            let mut p = c.head;
            let room = self.capacity - p % self.capacity;
            let skip = if room < size { room } else { 0 };
            if p + skip + size - c.tail > self.capacity {
                return None;
            }
            if skip > 0 {
                if room >= RECORD {
                    let at = p % self.capacity;
                    self.write_header(at, p, Kind::Wrap, 0, 0);
                    self.done_flag(at).store(DONE, Ordering::Release);
                }
                p += skip;
            }
            at = p % self.capacity;
            pos = p;
            self.write_header(at, pos, kind, offset, len);
            c.head = p + size;
            c.in_flight.insert(pos);
            self.word(H_HEAD).store(c.head, Ordering::Release);
        }
        if !data.is_empty() {
            // SAFETY: the reserved slot holds `size` bytes from `at`, which
            // no one else writes until the tail passes it.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    data.as_ptr(),
                    self.slot(at).add(RECORD as usize),
                    data.len(),
                )
            };
        }
        self.done_flag(at).store(DONE, Ordering::Release);
        Some(Ticket { log: self, pos })
    }

    /// Where a flush starting now may move the tail once it is durable:
    /// before the oldest record whose engine write is still under way.
    pub fn flush_point(&self) -> u64 {
        let c = self.cursor.lock().unwrap();
        c.in_flight.first().copied().unwrap_or(c.head)
    }

    /// Drops the records before `point` (a [`RedoLog::flush_point`] taken
    /// before a flush that has now completed).
    pub fn advance(&self, point: u64) {
        let mut c = self.cursor.lock().unwrap();
        if point > c.tail {
            c.tail = point;
            self.word(H_TAIL).store(point, Ordering::Release);
        }
    }

    /// The complete records from the tail to the head, oldest first.
    /// Only for a log no one is appending to.
    pub fn records(&self) -> io::Result<Vec<Record<'_>>> {
        let (tail, head) = {
            let c = self.cursor.lock().unwrap();
            (c.tail, c.head)
        };
        let corrupt =
            |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("redo log: {what}"));
        let mut out = Vec::new();
        let mut p = tail;
        while p < head {
            let at = p % self.capacity;
            let room = self.capacity - at;
            if room < RECORD {
                p += room;
                continue;
            }
            let s = self.slot(at);
            // SAFETY: a record header inside the mapping.
            let (rpos, kind, offset, len) = unsafe {
                (
                    s.cast::<u64>().read(),
                    s.add(8).cast::<u32>().read(),
                    s.add(16).cast::<u64>().read(),
                    s.add(24).cast::<u64>().read(),
                )
            };
            let done = self.done_flag(at).load(Ordering::Acquire) == DONE;
            if rpos != p {
                return Err(corrupt("record position does not match"));
            }
            let kind = Kind::from_u32(kind).ok_or_else(|| corrupt("unknown record kind"))?;
            if kind == Kind::Wrap {
                p += room;
                continue;
            }
            let data_len = if kind == Kind::Write { len } else { 0 };
            let size = RECORD + data_len.next_multiple_of(8);
            if size > room || p + size > head {
                return Err(corrupt("record runs past the end"));
            }
            if done {
                // SAFETY: the record's data bytes, inside the mapping.
                let data = unsafe {
                    std::slice::from_raw_parts(s.add(RECORD as usize), data_len as usize)
                };
                out.push(Record {
                    kind,
                    offset,
                    len,
                    data,
                });
            }
            p += size;
        }
        Ok(out)
    }
}

impl Drop for RedoLog {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, with its length.
        unsafe { libc::munmap(self.base.as_ptr().cast(), HEADER + self.capacity as usize) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reopen(log: &RedoLog) -> RedoLog {
        RedoLog::open(log.fd().try_clone_to_owned().unwrap()).unwrap()
    }

    #[test]
    fn records_survive_in_the_memfd_and_flushed_ones_are_dropped() {
        let log = RedoLog::create("test", 1 << 20).unwrap();
        let a = log.append(Kind::Write, 4096, 4, b"abcd").unwrap();
        drop(a);
        let point = log.flush_point();
        let b = log.append(Kind::Trim, 8192, 65536, &[]).unwrap();
        drop(b);
        // A writer that died before copying its data: reserved, not done.
        let c = log.append(Kind::Write, 0, 4, b"zzzz").unwrap();
        log.done_flag(c.pos % log.capacity)
            .store(0, Ordering::Release);
        std::mem::forget(c);

        let other = reopen(&log);
        let records = other.records().unwrap();
        assert_eq!(records.len(), 2, "the incomplete record is skipped");
        assert_eq!(
            (records[0].kind, records[0].offset, records[0].data),
            (Kind::Write, 4096, &b"abcd"[..])
        );
        assert_eq!((records[1].kind, records[1].len), (Kind::Trim, 65536));

        log.advance(point);
        let reopened = reopen(&log);
        let after = reopened.records().unwrap();
        assert_eq!(after.len(), 1, "the flushed write is gone");
        assert_eq!(after[0].kind, Kind::Trim);
    }

    #[test]
    fn the_ring_wraps_and_refuses_when_full() {
        let log = RedoLog::create("test", 1 << 20).unwrap();
        let block = vec![7u8; 200 * 1024];
        let mut held = Vec::new();
        while let Some(t) = log.append(Kind::Write, 0, block.len() as u64, &block) {
            held.push(t);
        }
        assert_eq!(held.len(), 5, "five 200 KiB records fit in 1 MiB");
        let point_with_all_in_flight = log.flush_point();
        drop(held);
        let len = block.len() as u64;
        assert!(
            log.append(Kind::Write, 0, len, &block).is_none(),
            "full until flushed"
        );
        log.advance(point_with_all_in_flight);
        assert!(
            log.append(Kind::Write, 0, len, &block).is_none(),
            "nothing was applied at that point"
        );
        log.advance(log.flush_point());
        for i in 0..20u64 {
            let t = log
                .append(Kind::Write, i * 4096, block.len() as u64, &block)
                .unwrap();
            drop(t);
            if i % 3 == 2 {
                log.advance(log.flush_point());
            }
        }
        let reopened = reopen(&log);
        let left = reopened.records().unwrap();
        assert_eq!(left.len(), 2, "records 18 and 19 were not flushed");
        assert_eq!(left[1].offset, 19 * 4096);
        assert!(
            left.iter().all(|r| r.data == &block[..]),
            "wrapped records are intact"
        );
    }

    #[test]
    fn a_damaged_log_is_refused() {
        let log = RedoLog::create("test", 1 << 20).unwrap();
        log.word(H_MAGIC).store(0, Ordering::Release);
        let fd = log.fd().try_clone_to_owned().unwrap();
        assert!(RedoLog::open(fd).is_err());
    }
}
