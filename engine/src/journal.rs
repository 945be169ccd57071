//! The journal: map changes committed since the last checkpoint, in a ring
//! of blocks inside the data file.
//!
//! A commit appends one record (every map change since the previous
//! commit, with its effects on free space) and then syncs the data file
//! once: that single `fdatasync` makes both the data writes and the record
//! durable. The metadata store is written only by checkpoints, off the
//! commit path (see `crate::checkpoint`).
//!
//! # Records
//!
//! A record starts on a block boundary with a [`HEADER_LEN`]-byte header
//! (magic, sequence number, length, payload length, payload crc32, header
//! crc32) followed by the payload; it never wraps around the end of the
//! ring (a record that does not fit at the end goes to block 0). Sequence
//! numbers increase by one per record and are never reused, so a stale
//! record from an earlier lap is never mistaken for the next one.
//!
//! # Replay
//!
//! Opening a pool reads the records after the checkpoint's position,
//! in order, until a block does not hold the next sequence number (at its
//! position or, when the ring wrapped, at block 0). Commits run one at a
//! time and each waits for its sync before the next record is written, so
//! only the *last* record found can be one whose sync never completed:
//! its record may be on disk while some of its data is not. Replay
//! therefore checks the data that record maps against the record's own
//! checksums and drops the record unless all of it is there (it was never
//! acknowledged as durable, so dropping it loses nothing that was promised).
//! This lets a commit write its record while its data writes are still in
//! flight.

use crate::codec::{put_varint, Reader};
use crate::error::{Error, Result};
use crate::extent::Run;
use crate::BLOCK_SIZE;

const BS: u64 = BLOCK_SIZE;
const MAGIC: u32 = 0x424a_524e; // "BJRN"
/// Bytes of a record header.
pub(crate) const HEADER_LEN: usize = 32;

/// One map change or one of its effects, as journalled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
    /// Volume `uid`'s blocks `vstart..` now live in pool blocks
    /// `pstart..` (born in generation `birth`), one crc32 per block.
    Map {
        uid: u64,
        vstart: u64,
        pstart: u64,
        birth: u64,
        crcs: Vec<u32>,
    },
    /// Volume `uid`'s blocks `[vstart, vstart + len)` are a hole.
    Unmap { uid: u64, vstart: u64, len: u64 },
    /// Pool blocks volume `uid`'s head alone referenced and no longer
    /// does.
    Free { uid: u64, run: Run },
    /// Pool blocks volume `uid`'s head stopped referencing in generation
    /// `death` while a snapshot still does (see `crate::space`).
    Dead(Death),
}

/// A run of pool blocks that left a volume's head while a snapshot kept it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Death {
    pub uid: u64,
    pub death: u64,
    pub vstart: u64,
    pub run: Run,
    pub birth: u64,
}

const TAG_MAP: u8 = 1;
const TAG_UNMAP: u8 = 2;
const TAG_FREE: u8 = 3;
const TAG_DEAD: u8 = 4;

impl Op {
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Op::Map {
                uid,
                vstart,
                pstart,
                birth,
                crcs,
            } => {
                out.push(TAG_MAP);
                for v in [*uid, *vstart, *pstart, *birth, crcs.len() as u64] {
                    put_varint(out, v);
                }
                for c in crcs {
                    out.extend_from_slice(&c.to_le_bytes());
                }
            }
            Op::Unmap { uid, vstart, len } => {
                out.push(TAG_UNMAP);
                for v in [*uid, *vstart, *len] {
                    put_varint(out, v);
                }
            }
            Op::Free { uid, run } => {
                out.push(TAG_FREE);
                put_varint(out, *uid);
                put_varint(out, run.start);
                put_varint(out, run.len);
            }
            Op::Dead(d) => {
                out.push(TAG_DEAD);
                for v in [d.uid, d.death, d.vstart, d.run.start, d.run.len, d.birth] {
                    put_varint(out, v);
                }
            }
        }
    }

    /// Decodes a record's payload.
    pub(crate) fn decode_all(payload: &[u8]) -> Result<Vec<Op>> {
        let mut r = Reader::new(payload, "journal record");
        let mut ops = Vec::new();
        while !r.is_empty() {
            let op = match r.u8()? {
                TAG_MAP => {
                    let (uid, vstart, pstart, birth) =
                        (r.varint()?, r.varint()?, r.varint()?, r.varint()?);
                    let len = r.varint()?;
                    if len == 0 || len > (payload.len() / 4) as u64 {
                        return Err(r.corrupt("bad map length"));
                    }
                    let mut crcs = Vec::with_capacity(len as usize);
                    for _ in 0..len {
                        crcs.push(r.u32_le()?);
                    }
                    Op::Map {
                        uid,
                        vstart,
                        pstart,
                        birth,
                        crcs,
                    }
                }
                TAG_UNMAP => Op::Unmap {
                    uid: r.varint()?,
                    vstart: r.varint()?,
                    len: r.varint()?,
                },
                TAG_FREE => Op::Free {
                    uid: r.varint()?,
                    run: Run::new(r.varint()?, r.varint()?),
                },
                TAG_DEAD => {
                    let (uid, death, vstart) = (r.varint()?, r.varint()?, r.varint()?);
                    let run = Run::new(r.varint()?, r.varint()?);
                    Op::Dead(Death {
                        uid,
                        death,
                        vstart,
                        run,
                        birth: r.varint()?,
                    })
                }
                _ => return Err(r.corrupt("unknown operation")),
            };
            ops.push(op);
        }
        Ok(ops)
    }
}

/// A position in the journal: the sequence number expected there and the
/// block (counted from the ring's start) it is expected at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Pos {
    pub seq: u64,
    pub block: u64,
}

/// The ring's bookkeeping: where records go and how much room is left.
/// Owned by the commit path (under the pool's commit lock).
#[derive(Debug)]
pub(crate) struct Ring {
    /// First block of the ring in the data file.
    start: u64,
    /// Blocks in the ring.
    blocks: u64,
    /// Where the next record goes.
    head: Pos,
    /// The oldest record still needed (the last checkpoint's position).
    tail: Pos,
}

impl Ring {
    /// A ring whose records from `tail` on have been replayed up to `head`.
    pub(crate) fn new(start: u64, blocks: u64, tail: Pos, head: Pos) -> Self {
        Ring {
            start,
            blocks,
            head,
            tail,
        }
    }

    pub(crate) fn head(&self) -> Pos {
        self.head
    }

    /// Blocks in use from the tail to the head.
    pub(crate) fn used(&self) -> u64 {
        if self.head.seq == self.tail.seq {
            0
        } else if self.head.block > self.tail.block {
            self.head.block - self.tail.block
        } else {
            self.blocks - self.tail.block + self.head.block
        }
    }

    pub(crate) fn capacity(&self) -> u64 {
        self.blocks
    }

    /// Where a record of `len` blocks would go, if it fits without
    /// overwriting a record still needed.
    fn place(&self, len: u64) -> Option<u64> {
        if len > self.blocks {
            return None;
        }
        let at = if self.head.block + len <= self.blocks {
            self.head.block
        } else {
            0
        };
        if self.head.seq == self.tail.seq {
            return Some(at);
        }
        // Records live from the tail to the head, wrapping; equal blocks
        // with records in between mean the ring is full.
        let (h, t) = (self.head.block, self.tail.block);
        let clear = if h > t {
            // Free: [h, blocks) and [0, t).
            at == h || len <= t
        } else {
            // Free: [h, t), and no second wrap.
            at == h && at + len <= t
        };
        clear.then_some(at)
    }

    fn blocks_for(payload_len: usize) -> u64 {
        (HEADER_LEN + payload_len).div_ceil(BS as usize) as u64
    }

    /// Whether a record of `payload_len` bytes fits with `reserve` blocks
    /// left over.
    pub(crate) fn fits(&self, payload_len: usize, reserve: u64) -> bool {
        self.place(Self::blocks_for(payload_len) + reserve)
            .is_some()
    }

    /// Lays out a record with `payload`: returns its data-file offset and
    /// its bytes (whole blocks), and moves the head past it; `None` if the
    /// ring has no room for it and `reserve` blocks more until the next
    /// checkpoint.
    pub(crate) fn append(&mut self, payload: &[u8], reserve: u64) -> Option<(u64, Vec<u8>)> {
        let len = Self::blocks_for(payload.len());
        self.place(len + reserve)?;
        let at = self.place(len)?;
        let bytes = encode_record(self.head.seq, len, payload);
        let offset = (self.start + at) * BS;
        self.head = Pos {
            seq: self.head.seq + 1,
            block: at + len,
        };
        Some((offset, bytes))
    }

    /// A checkpoint covering everything before `tail` is durable.
    pub(crate) fn trim(&mut self, tail: Pos) {
        self.tail = tail;
    }
}

fn encode_record(seq: u64, blocks: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity((blocks * BS) as usize);
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&(blocks as u32).to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    let header_crc = crc32fast::hash(&out);
    out.extend_from_slice(&header_crc.to_le_bytes());
    out.resize(HEADER_LEN, 0);
    out.extend_from_slice(payload);
    out.resize((blocks * BS) as usize, 0);
    out
}

/// A record's header, if `block` starts one.
struct Header {
    seq: u64,
    blocks: u64,
    payload_len: usize,
    payload_crc: u32,
}

fn decode_header(block: &[u8]) -> Option<Header> {
    let mut r = Reader::new(&block[..HEADER_LEN], "journal header");
    let magic = r.u32_le().ok()?;
    let seq = r.u64_le().ok()?;
    let blocks = u64::from(r.u32_le().ok()?);
    let payload_len = r.u32_le().ok()? as usize;
    let payload_crc = r.u32_le().ok()?;
    let header_crc = r.u32_le().ok()?;
    if magic != MAGIC || crc32fast::hash(&block[..24]) != header_crc {
        return None;
    }
    if blocks == 0 || (HEADER_LEN + payload_len).div_ceil(BS as usize) as u64 != blocks {
        return None;
    }
    Some(Header {
        seq,
        blocks,
        payload_len,
        payload_crc,
    })
}

/// A record found by replay.
#[derive(Debug)]
pub(crate) struct Record {
    pub ops: Vec<Op>,
    /// Where the record after it is expected.
    pub next: Pos,
}

/// Reads the ring's blocks for replay.
pub(crate) trait RingReader {
    /// Reads `blocks` blocks of the ring starting at ring block `at`.
    fn read(&mut self, at: u64, blocks: u64) -> Result<Vec<u8>>;
}

/// The records from `from` on, in order, stopping at the first position
/// that does not hold the next one. The last record returned may still
/// need its data checked (see the module documentation).
pub(crate) fn replay(
    reader: &mut impl RingReader,
    ring_blocks: u64,
    from: Pos,
) -> Result<Vec<Record>> {
    let mut out = Vec::new();
    let mut at = from;
    loop {
        let found = read_record(reader, ring_blocks, at)?.or(if at.block != 0 {
            read_record(
                reader,
                ring_blocks,
                Pos {
                    seq: at.seq,
                    block: 0,
                },
            )?
        } else {
            None
        });
        let Some(record) = found else { break };
        at = record.next;
        out.push(record);
    }
    Ok(out)
}

fn read_record(reader: &mut impl RingReader, ring_blocks: u64, at: Pos) -> Result<Option<Record>> {
    if at.block >= ring_blocks {
        return Ok(None);
    }
    let first = reader.read(at.block, 1)?;
    let Some(h) = decode_header(&first) else {
        return Ok(None);
    };
    if h.seq != at.seq || at.block + h.blocks > ring_blocks {
        return Ok(None);
    }
    let bytes = if h.blocks == 1 {
        first
    } else {
        reader.read(at.block, h.blocks)?
    };
    let payload = &bytes[HEADER_LEN..HEADER_LEN + h.payload_len];
    if crc32fast::hash(payload) != h.payload_crc {
        return Ok(None);
    }
    let ops = Op::decode_all(payload).map_err(|e| match e {
        Error::Corrupt(m) => Error::Corrupt(format!("{m} (record {})", at.seq)),
        other => other,
    })?;
    Ok(Some(Record {
        ops,
        next: Pos {
            seq: at.seq + 1,
            block: at.block + h.blocks,
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct MemRing(Vec<u8>);

    impl RingReader for MemRing {
        fn read(&mut self, at: u64, blocks: u64) -> Result<Vec<u8>> {
            Ok(self.0[(at * BS) as usize..((at + blocks) * BS) as usize].to_vec())
        }
    }

    fn ops(n: u64) -> Vec<Op> {
        vec![
            Op::Map {
                uid: n,
                vstart: 3,
                pstart: 1 << 40,
                birth: 2,
                crcs: vec![1, 2, u32::MAX],
            },
            Op::Unmap {
                uid: 1,
                vstart: u64::MAX - 9,
                len: 9,
            },
            Op::Free {
                uid: 2,
                run: Run::new(5, 6),
            },
            Op::Dead(Death {
                uid: 1,
                death: 4,
                vstart: 8,
                run: Run::new(99, 2),
                birth: 1,
            }),
        ]
    }

    fn payload(ops: &[Op], pad: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for op in ops {
            op.encode(&mut out);
        }
        // Padding with more unmaps makes records of several blocks.
        for i in 0..pad {
            Op::Unmap {
                uid: 9,
                vstart: i as u64,
                len: 1,
            }
            .encode(&mut out);
        }
        out
    }

    #[test]
    fn ops_round_trip_and_garbage_is_refused() {
        let p = payload(&ops(7), 0);
        assert_eq!(Op::decode_all(&p).unwrap(), ops(7));
        assert!(Op::decode_all(&[9]).is_err());
        assert!(Op::decode_all(&p[..p.len() - 1]).is_err());
        assert!(Op::decode_all(&[TAG_MAP, 1, 1, 1, 1, 0xff, 0xff, 0x03]).is_err());
    }

    /// Appends records to a ring of 16 blocks, trimming behind, past
    /// several wraps; replay from any checkpoint finds exactly the records
    /// after it, and stale records of earlier laps are never taken.
    #[test]
    fn records_wrap_and_replay() {
        let blocks = 16;
        let mut disk = MemRing(vec![0; (blocks * BS) as usize]);
        let start = Pos { seq: 1, block: 0 };
        let mut ring = Ring::new(0, blocks, start, start);
        let mut written: Vec<(Pos, Vec<Op>)> = Vec::new();
        let mut checkpoint = start;
        for n in 0..60u64 {
            let ops = ops(n);
            let pad = [0, 500, 1500, 2500][n as usize % 4];
            let p = payload(&ops, pad);
            let before = ring.head();
            let Some((offset, bytes)) = ring.append(&p, 0) else {
                // Full: checkpoint everything written so far.
                checkpoint = ring.head();
                ring.trim(checkpoint);
                written.clear();
                let (offset, bytes) = ring.append(&p, 0).expect("room after a checkpoint");
                disk.0[offset as usize..offset as usize + bytes.len()].copy_from_slice(&bytes);
                written.push((before, Op::decode_all(&p).unwrap()));
                continue;
            };
            disk.0[offset as usize..offset as usize + bytes.len()].copy_from_slice(&bytes);
            written.push((before, Op::decode_all(&p).unwrap()));
            assert!(ring.used() <= blocks);
            let found = replay(&mut disk, blocks, checkpoint).unwrap();
            assert_eq!(found.len(), written.len(), "after record {n}");
            for (rec, (_, ops)) in found.iter().zip(&written) {
                assert_eq!(&rec.ops, ops);
            }
            assert_eq!(found.last().unwrap().next, ring.head());
        }
    }

    #[test]
    fn a_torn_record_ends_the_log() {
        let blocks = 8;
        let mut disk = MemRing(vec![0; (blocks * BS) as usize]);
        let start = Pos { seq: 10, block: 0 };
        let mut ring = Ring::new(0, blocks, start, start);
        for pad in [0, 1000] {
            let (offset, bytes) = ring.append(&payload(&ops(1), pad), 0).unwrap();
            disk.0[offset as usize..offset as usize + bytes.len()].copy_from_slice(&bytes);
        }
        assert_eq!(replay(&mut disk, blocks, start).unwrap().len(), 2);
        // Part of the second record's payload never reached the disk.
        let second = (ring.head().block - 2) * BS;
        disk.0[second as usize + HEADER_LEN + 3000] ^= 1;
        assert_eq!(replay(&mut disk, blocks, start).unwrap().len(), 1);
        // A damaged header is no record either.
        disk.0[3] ^= 1;
        assert!(replay(&mut disk, blocks, start).unwrap().is_empty());
    }

    #[test]
    fn a_full_ring_refuses_until_trimmed() {
        let mut ring = Ring::new(1, 4, Pos { seq: 1, block: 0 }, Pos { seq: 1, block: 0 });
        let one = payload(&ops(1), 0);
        for _ in 0..4 {
            assert!(ring.append(&one, 0).is_some());
        }
        assert!(ring.append(&one, 0).is_none(), "would overwrite the tail");
        let head = ring.head();
        ring.trim(Pos { seq: 3, block: 2 });
        let (offset, _) = ring.append(&one, 0).unwrap();
        assert_eq!(offset, BS, "wrapped to the ring's first block");
        assert_eq!(
            ring.head(),
            Pos {
                seq: head.seq + 1,
                block: 1
            }
        );
        assert!(ring.append(&one, 0).is_some());
        assert!(ring.append(&one, 0).is_none());
    }
}
