//! The parts of the FUSE kernel ABI (`include/uapi/linux/fuse.h`, protocol
//! 7.45 on Linux 6.18) this server speaks: message headers and the argument
//! structs of the operations a one-file filesystem needs.
//!
//! Everything is decoded from and encoded to bytes by hand, in the host's
//! byte order (the kernel's), so a short or malformed message is an error
//! value, never an out-of-bounds read.

/// The protocol this server implements; the kernel's minor may be lower.
pub(crate) const KERNEL_VERSION: u32 = 7;
pub(crate) const KERNEL_MINOR_VERSION: u32 = 45;
/// The oldest minor with every field this server relies on (`flags2` in
/// INIT, `FOPEN_PARALLEL_DIRECT_WRITES`).
pub(crate) const MIN_MINOR_VERSION: u32 = 36;

pub(crate) const ROOT_ID: u64 = 1;

pub(crate) mod opcode {
    pub(crate) const LOOKUP: u32 = 1;
    pub(crate) const FORGET: u32 = 2;
    pub(crate) const GETATTR: u32 = 3;
    pub(crate) const SETATTR: u32 = 4;
    pub(crate) const OPEN: u32 = 14;
    pub(crate) const READ: u32 = 15;
    pub(crate) const WRITE: u32 = 16;
    pub(crate) const STATFS: u32 = 17;
    pub(crate) const RELEASE: u32 = 18;
    pub(crate) const FSYNC: u32 = 20;
    pub(crate) const FLUSH: u32 = 25;
    pub(crate) const INIT: u32 = 26;
    pub(crate) const OPENDIR: u32 = 27;
    pub(crate) const READDIR: u32 = 28;
    pub(crate) const RELEASEDIR: u32 = 29;
    pub(crate) const FSYNCDIR: u32 = 30;
    pub(crate) const INTERRUPT: u32 = 36;
    pub(crate) const DESTROY: u32 = 38;
    pub(crate) const BATCH_FORGET: u32 = 42;
    pub(crate) const FALLOCATE: u32 = 43;
}

/// INIT flags (`flags` holds bits 0-31, `flags2` bits 32-63).
pub(crate) mod init {
    pub(crate) const ASYNC_READ: u64 = 1 << 0;
    pub(crate) const BIG_WRITES: u64 = 1 << 5;
    pub(crate) const ASYNC_DIO: u64 = 1 << 15;
    pub(crate) const PARALLEL_DIROPS: u64 = 1 << 18;
    pub(crate) const MAX_PAGES: u64 = 1 << 22;
    pub(crate) const INIT_EXT: u64 = 1 << 30;
}

/// OPEN reply flags.
pub(crate) mod fopen {
    pub(crate) const DIRECT_IO: u32 = 1 << 0;
    pub(crate) const PARALLEL_DIRECT_WRITES: u32 = 1 << 6;
}

/// `fuse_notify_code`.
pub(crate) const NOTIFY_RESEND: i32 = 7;

/// `fuse_setattr_in.valid` bits.
pub(crate) mod fattr {
    pub(crate) const MODE: u32 = 1 << 0;
    pub(crate) const UID: u32 = 1 << 1;
    pub(crate) const GID: u32 = 1 << 2;
    pub(crate) const SIZE: u32 = 1 << 3;
}

/// `fallocate(2)` modes the file supports.
pub(crate) const FALLOC_FL_KEEP_SIZE: u32 = 0x01;
pub(crate) const FALLOC_FL_PUNCH_HOLE: u32 = 0x02;
pub(crate) const FALLOC_FL_ZERO_RANGE: u32 = 0x10;

pub(crate) const IN_HEADER_LEN: usize = 40;
pub(crate) const OUT_HEADER_LEN: usize = 16;
pub(crate) const WRITE_IN_LEN: usize = 40;

/// A message the kernel sent that this server cannot parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed FUSE message: {0}")]
pub(crate) struct Malformed(pub &'static str);

/// Reads fixed-size fields off the front of a byte slice.
pub(crate) struct Fields<'a> {
    bytes: &'a [u8],
}

impl<'a> Fields<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Fields { bytes }
    }

    fn take<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], Malformed> {
        let (head, rest) = self.bytes.split_first_chunk::<N>().ok_or(Malformed(what))?;
        self.bytes = rest;
        Ok(*head)
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, Malformed> {
        self.take(what).map(u32::from_ne_bytes)
    }

    pub(crate) fn u64(&mut self, what: &'static str) -> Result<u64, Malformed> {
        self.take(what).map(u64::from_ne_bytes)
    }
}

/// `fuse_in_header`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct InHeader {
    pub len: u32,
    pub opcode: u32,
    pub unique: u64,
    pub nodeid: u64,
}

impl InHeader {
    pub(crate) fn parse(bytes: &[u8]) -> Result<InHeader, Malformed> {
        let mut f = Fields::new(bytes);
        let header = InHeader {
            len: f.u32("header length")?,
            opcode: f.u32("opcode")?,
            unique: f.u64("unique")?,
            nodeid: f.u64("node id")?,
        };
        // uid, gid, pid, total_extlen, padding: the kernel checks access.
        if bytes.len() < IN_HEADER_LEN {
            return Err(Malformed("short header"));
        }
        Ok(header)
    }
}

/// `fuse_out_header` for a reply of `len` bytes in all.
pub(crate) fn out_header(len: usize, error: i32, unique: u64) -> [u8; OUT_HEADER_LEN] {
    let mut out = [0u8; OUT_HEADER_LEN];
    out[..4].copy_from_slice(&(len as u32).to_ne_bytes());
    out[4..8].copy_from_slice(&error.to_ne_bytes());
    out[8..].copy_from_slice(&unique.to_ne_bytes());
    out
}

/// Appends fields to a reply body.
#[derive(Default)]
pub(crate) struct Body(pub Vec<u8>);

impl Body {
    pub(crate) fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_ne_bytes());
        self
    }
    pub(crate) fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_ne_bytes());
        self
    }
    pub(crate) fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_ne_bytes());
        self
    }
    pub(crate) fn zeros(&mut self, n: usize) -> &mut Self {
        self.0.resize(self.0.len() + n, 0);
        self
    }
}

/// `fuse_init_in` (the fields this server reads).
#[derive(Debug, Clone, Copy)]
pub(crate) struct InitIn {
    pub major: u32,
    pub minor: u32,
    pub max_readahead: u32,
    /// `flags | flags2 << 32`.
    pub flags: u64,
}

impl InitIn {
    pub(crate) fn parse(args: &[u8]) -> Result<InitIn, Malformed> {
        let mut f = Fields::new(args);
        let major = f.u32("init major")?;
        let minor = f.u32("init minor")?;
        let max_readahead = f.u32("init max_readahead")?;
        let low = f.u32("init flags")?;
        // flags2 exists from 7.36; older kernels send a shorter message.
        let high = if u64::from(low) & init::INIT_EXT != 0 {
            f.u32("init flags2")?
        } else {
            0
        };
        Ok(InitIn {
            major,
            minor,
            max_readahead,
            flags: u64::from(low) | u64::from(high) << 32,
        })
    }
}

/// `fuse_init_out`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct InitOut {
    pub minor: u32,
    pub max_readahead: u32,
    pub flags: u64,
    pub max_background: u16,
    pub congestion_threshold: u16,
    pub max_write: u32,
    pub max_pages: u16,
}

impl InitOut {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut b = Body::default();
        b.u32(KERNEL_VERSION)
            .u32(self.minor)
            .u32(self.max_readahead)
            .u32(self.flags as u32)
            .u16(self.max_background)
            .u16(self.congestion_threshold)
            .u32(self.max_write)
            .u32(1) // time_gran
            .u16(self.max_pages)
            .u16(0) // map_alignment
            .u32((self.flags >> 32) as u32)
            .u32(0) // max_stack_depth
            .u16(0) // request_timeout: none, a restarting daemon must not time out
            .zeros(22);
        b.0
    }
}

/// `fuse_attr`, for the two inodes of the filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Attr {
    pub ino: u64,
    pub size: u64,
    pub blocks: u64,
    pub time: u64,
    pub mode: u32,
    pub nlink: u32,
}

impl Attr {
    pub(crate) fn encode(&self, b: &mut Body) {
        b.u64(self.ino)
            .u64(self.size)
            .u64(self.blocks)
            .u64(self.time)
            .u64(self.time)
            .u64(self.time)
            .zeros(12) // atime/mtime/ctime nsec
            .u32(self.mode)
            .u32(self.nlink)
            .u32(0) // uid: root
            .u32(0) // gid
            .u32(0) // rdev
            .u32(4096) // blksize
            .u32(0); // flags
    }
}

/// `fuse_read_in` / `fuse_write_in`: file handle, offset and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IoIn {
    pub offset: u64,
    pub size: u32,
}

impl IoIn {
    pub(crate) fn parse(args: &[u8]) -> Result<IoIn, Malformed> {
        let mut f = Fields::new(args);
        let _fh = f.u64("io fh")?;
        let offset = f.u64("io offset")?;
        let size = f.u32("io size")?;
        Ok(IoIn { offset, size })
    }
}

/// `fuse_fallocate_in`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FallocateIn {
    pub offset: u64,
    pub length: u64,
    pub mode: u32,
}

impl FallocateIn {
    pub(crate) fn parse(args: &[u8]) -> Result<FallocateIn, Malformed> {
        let mut f = Fields::new(args);
        let _fh = f.u64("fallocate fh")?;
        Ok(FallocateIn {
            offset: f.u64("fallocate offset")?,
            length: f.u64("fallocate length")?,
            mode: f.u32("fallocate mode")?,
        })
    }
}

/// `fuse_setattr_in`: which attributes change, and the new size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SetattrIn {
    pub valid: u32,
    pub size: u64,
}

impl SetattrIn {
    pub(crate) fn parse(args: &[u8]) -> Result<SetattrIn, Malformed> {
        let mut f = Fields::new(args);
        let valid = f.u32("setattr valid")?;
        let _padding = f.u32("setattr padding")?;
        let _fh = f.u64("setattr fh")?;
        let size = f.u64("setattr size")?;
        Ok(SetattrIn { valid, size })
    }
}

/// One `fuse_dirent`, padded to 8 bytes.
pub(crate) fn dirent(b: &mut Body, ino: u64, off: u64, kind: u32, name: &[u8]) {
    b.u64(ino).u64(off).u32(name.len() as u32).u32(kind);
    b.0.extend_from_slice(name);
    let pad = (8 - name.len() % 8) % 8;
    b.zeros(pad);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_messages_are_errors_not_panics() {
        assert_eq!(
            InHeader::parse(&[0u8; 12]),
            Err(Malformed("unique")),
            "a header cut inside a field"
        );
        assert!(InHeader::parse(&[0u8; 39]).is_err());
        assert!(IoIn::parse(&[0u8; 19]).is_err());
        assert!(FallocateIn::parse(&[0u8; 27]).is_err());
        assert!(SetattrIn::parse(&[]).is_err());
        let mut init = Vec::new();
        init.extend_from_slice(&7u32.to_ne_bytes());
        init.extend_from_slice(&45u32.to_ne_bytes());
        init.extend_from_slice(&0u32.to_ne_bytes());
        init.extend_from_slice(&(init::INIT_EXT as u32).to_ne_bytes());
        assert_eq!(
            InitIn::parse(&init).unwrap_err(),
            Malformed("init flags2"),
            "INIT_EXT announces flags2"
        );
        // FUSE_OVER_IO_URING, bit 41: flags2 is bits 32-63.
        init.extend_from_slice(&(1u32 << 9).to_ne_bytes());
        let parsed = InitIn::parse(&init).unwrap();
        assert_eq!(parsed.flags, init::INIT_EXT | 1 << 41);
    }

    #[test]
    fn encodes_the_kernel_layouts() {
        let out = InitOut {
            minor: 45,
            max_readahead: 0,
            flags: init::ASYNC_DIO | init::INIT_EXT | 1 << 41,
            max_background: 128,
            congestion_threshold: 96,
            max_write: 1 << 20,
            max_pages: 256,
        }
        .encode();
        assert_eq!(out.len(), 64, "sizeof(struct fuse_init_out)");
        assert_eq!(
            &out[12..16],
            &((init::ASYNC_DIO | init::INIT_EXT) as u32).to_ne_bytes()
        );
        assert_eq!(&out[32..36], &(1u32 << 9).to_ne_bytes(), "flags2");

        let mut b = Body::default();
        Attr {
            ino: 2,
            size: 1 << 30,
            blocks: 0,
            time: 0,
            mode: 0o100600,
            nlink: 1,
        }
        .encode(&mut b);
        assert_eq!(b.0.len(), 88, "sizeof(struct fuse_attr)");

        let mut d = Body::default();
        dirent(&mut d, 2, 3, 8, b"disk");
        assert_eq!(d.0.len(), 32, "24-byte fuse_dirent + name padded to 8");
    }
}
