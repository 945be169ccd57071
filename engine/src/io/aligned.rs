//! Page-aligned heap buffers, as `O_DIRECT` requires.

use std::alloc::{self, Layout};
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

const ALIGN: usize = 4096;

/// A 4096-byte-aligned byte buffer. Its length may be set anywhere up to
/// the capacity it was allocated with, so one allocation can serve
/// requests of different sizes (see [`BufPool`]).
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    cap: usize,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like a Vec<u8>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only hands out &[u8].
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes (`len` may be 0).
    pub fn new(len: usize) -> Self {
        if len == 0 {
            return AlignedBuf {
                ptr: NonNull::dangling(),
                len: 0,
                cap: 0,
            };
        }
        let layout = Self::layout(len);
        // SAFETY: layout has non-zero size.
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).unwrap_or_else(|| alloc::handle_alloc_error(layout));
        AlignedBuf { ptr, len, cap: len }
    }

    fn layout(len: usize) -> Layout {
        Layout::from_size_align(len, ALIGN).expect("buffer size overflows Layout")
    }

    pub(crate) fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Sets the length. Bytes up to the capacity are always initialised
    /// (zeroed at allocation, or whatever an earlier use left there).
    pub fn set_len(&mut self, len: usize) {
        assert!(len <= self.cap, "length {len} beyond capacity {}", self.cap);
        self.len = len;
    }
}

/// Largest buffer kept for reuse: the largest NBD request.
const MAX_POOLED: usize = 32 << 20;
/// Bytes of idle buffers kept per size class.
const BYTES_PER_CLASS: usize = 8 << 20;

/// Recycles aligned buffers by power-of-two size class, so the data path
/// does not allocate and zero a fresh buffer for every request. A recycled
/// buffer holds stale bytes; every user overwrites the whole length (a
/// read fills it or fails, a write copies its data in).
pub struct BufPool {
    classes: Vec<parking_lot::Mutex<Vec<AlignedBuf>>>,
}

impl Default for BufPool {
    fn default() -> Self {
        let classes = (MAX_POOLED / ALIGN).trailing_zeros() as usize + 1;
        BufPool {
            classes: (0..classes).map(|_| Default::default()).collect(),
        }
    }
}

impl BufPool {
    fn class(len: usize) -> usize {
        (len.max(ALIGN).next_power_of_two() / ALIGN).trailing_zeros() as usize
    }

    /// A buffer of `len` bytes with unspecified (but initialised) contents.
    pub fn get(&self, len: usize) -> AlignedBuf {
        let class = Self::class(len);
        let Some(slot) = self.classes.get(class) else {
            return AlignedBuf::new(len);
        };
        let mut buf = slot
            .lock()
            .pop()
            .unwrap_or_else(|| AlignedBuf::new(ALIGN << class));
        buf.set_len(len);
        buf
    }

    /// Gives a buffer back for reuse.
    pub fn put(&self, buf: AlignedBuf) {
        let cap = buf.capacity();
        if cap < ALIGN || !cap.is_power_of_two() {
            return;
        }
        if let Some(slot) = self.classes.get(Self::class(cap)) {
            let mut slot = slot.lock();
            if (slot.len() + 1) * cap <= BYTES_PER_CLASS.max(cap) {
                slot.push(buf);
            }
        }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if self.cap != 0 {
            // SAFETY: allocated in `new` with this exact layout.
            unsafe { alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.cap)) }
        }
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr is valid for len initialised bytes (or dangling with len 0).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and we hold &mut self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedBuf({} bytes)", self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_recycles_by_class() {
        let pool = BufPool::default();
        let mut a = pool.get(5000);
        assert_eq!(a.len(), 5000);
        assert_eq!(a.capacity(), 8192);
        assert_eq!(a.as_ptr() as usize % ALIGN, 0);
        a.fill(9);
        let ptr = a.as_ptr();
        pool.put(a);
        let b = pool.get(8192);
        assert_eq!(b.as_ptr(), ptr, "same class reuses the buffer");
        assert_eq!(b.len(), 8192);
        let huge = pool.get(MAX_POOLED * 2);
        assert_eq!(huge.len(), MAX_POOLED * 2);
        pool.put(huge);
    }
}
