//! Nodes of the block-map B-tree and their on-disk encoding.
//!
//! A leaf holds extents: runs of volume blocks stored in consecutive pool
//! blocks, each with its generation of birth and one crc32 per block. A
//! branch holds children: the first volume block each covers, the child's
//! node id and the child's birth. Every node records its own birth; a node
//! is never older than anything it points to, which is what lets a
//! traversal skip a whole subtree born before a given generation.
//!
//! Encoding (one sled value per node, sealed with a crc32):
//!
//! ```text
//! leaf:   0x01 | birth | count | { vstart - prev_end | len | zigzag(pstart - prev_pend)
//!                                  | node_birth - birth | len x crc32 (LE) }
//! branch: 0x02 | level (u8) | birth | count | { key - prev_key | id | node_birth - child_birth }
//! ```
//!
//! Integers are LEB128 varints. Extents and children are sorted by volume
//! block and never overlap.

use crate::codec::{put_varint, seal, unseal, unzigzag, varint_len, zigzag, Reader};
use crate::error::Result;

/// Most blocks in one extent record (1 MiB: 1 KiB of checksums).
pub(crate) const MAX_EXTENT: u64 = 256;
/// Largest encoded leaf; a leaf that would grow past it is split.
pub(crate) const LEAF_BYTES: usize = 8 * 1024;
/// Most children of a branch.
pub(crate) const FANOUT: usize = 256;

const KIND_LEAF: u8 = 1;
const KIND_BRANCH: u8 = 2;
/// Encoded bytes of a node's fixed part, beyond its entries (an upper
/// bound: kind, level, birth, count, seal).
const NODE_OVERHEAD: usize = 1 + 1 + 10 + 5 + 4;

/// A pointer to a node: its id and its birth, so a traversal can decide
/// whether to visit it without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct NodeRef {
    pub id: u64,
    pub birth: u64,
}

/// A branch's entry: the child covers volume blocks from `key` up to the
/// next entry's key (the first entry covers everything below it too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Child {
    pub key: u64,
    pub node: NodeRef,
}

/// One extent of a leaf, as read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ExtentRef<'a> {
    pub vstart: u64,
    pub pstart: u64,
    pub birth: u64,
    pub crcs: &'a [u32],
}

impl ExtentRef<'_> {
    pub(crate) fn len(&self) -> u64 {
        self.crcs.len() as u64
    }

    pub(crate) fn end(&self) -> u64 {
        self.vstart + self.len()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Head {
    vstart: u64,
    pstart: u64,
    birth: u64,
    len: u32,
    crc_at: u32,
}

/// A leaf: extents in volume order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Leaf {
    pub birth: u64,
    heads: Vec<Head>,
    crcs: Vec<u32>,
    /// Encoded size of the extents so far.
    bytes: usize,
}

impl Leaf {
    pub(crate) fn new(birth: u64) -> Self {
        Leaf {
            birth,
            heads: Vec::new(),
            crcs: Vec::new(),
            bytes: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.heads.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.heads.is_empty()
    }

    pub(crate) fn get(&self, i: usize) -> ExtentRef<'_> {
        let h = &self.heads[i];
        ExtentRef {
            vstart: h.vstart,
            pstart: h.pstart,
            birth: h.birth,
            crcs: &self.crcs[h.crc_at as usize..(h.crc_at + h.len) as usize],
        }
    }

    pub(crate) fn extents(&self) -> impl Iterator<Item = ExtentRef<'_>> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }

    /// Index of the first extent that ends after `vblock`.
    pub(crate) fn first_ending_after(&self, vblock: u64) -> usize {
        self.heads
            .partition_point(|h| h.vstart + u64::from(h.len) <= vblock)
    }

    fn prev_ends(&self) -> (u64, u64) {
        self.heads.last().map_or((0, 0), |h| {
            (h.vstart + u64::from(h.len), h.pstart + u64::from(h.len))
        })
    }

    /// Encoded bytes an extent would add after the current last one.
    pub(crate) fn cost(&self, e: &ExtentRef<'_>) -> usize {
        let (prev_end, prev_pend) = self.prev_ends();
        varint_len(e.vstart.saturating_sub(prev_end))
            + varint_len(e.len())
            + varint_len(zigzag(e.pstart.wrapping_sub(prev_pend) as i64))
            + varint_len(self.birth.saturating_sub(e.birth))
            + 4 * e.crcs.len()
    }

    /// Encoded size of the whole leaf.
    pub(crate) fn encoded_len(&self) -> usize {
        NODE_OVERHEAD + self.bytes
    }

    /// Appends an extent; it must start at or after the last one's end,
    /// hold 1..=[`MAX_EXTENT`] blocks and be no younger than the leaf.
    pub(crate) fn push(&mut self, e: ExtentRef<'_>) {
        debug_assert!(!e.crcs.is_empty() && e.len() <= MAX_EXTENT);
        debug_assert!(e.vstart >= self.prev_ends().0, "extents in order");
        debug_assert!(e.birth <= self.birth, "a leaf is no older than its extents");
        self.bytes += self.cost(&e);
        self.heads.push(Head {
            vstart: e.vstart,
            pstart: e.pstart,
            birth: e.birth,
            len: e.crcs.len() as u32,
            crc_at: self.crcs.len() as u32,
        });
        self.crcs.extend_from_slice(e.crcs);
    }

    /// Bytes this leaf takes in memory (for the cache's budget).
    pub(crate) fn mem_size(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.heads.capacity() * std::mem::size_of::<Head>()
            + self.crcs.capacity() * 4
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        out.push(KIND_LEAF);
        put_varint(&mut out, self.birth);
        put_varint(&mut out, self.heads.len() as u64);
        let (mut prev_end, mut prev_pend) = (0u64, 0u64);
        for e in self.extents() {
            put_varint(&mut out, e.vstart - prev_end);
            put_varint(&mut out, e.len());
            put_varint(&mut out, zigzag(e.pstart.wrapping_sub(prev_pend) as i64));
            put_varint(&mut out, self.birth - e.birth);
            for c in e.crcs {
                out.extend_from_slice(&c.to_le_bytes());
            }
            prev_end = e.end();
            prev_pend = e.pstart + e.len();
        }
        seal(out)
    }

    fn decode(r: &mut Reader<'_>) -> Result<Leaf> {
        let birth = r.varint()?;
        let count = r.varint()?;
        let mut leaf = Leaf::new(birth);
        let (mut prev_end, mut prev_pend) = (0u64, 0u64);
        let mut crcs = Vec::new();
        for _ in 0..count {
            let vstart = prev_end
                .checked_add(r.varint()?)
                .ok_or_else(|| r.corrupt("extent past the end of the address space"))?;
            let len = r.varint()?;
            if len == 0 || len > MAX_EXTENT {
                return Err(r.corrupt("bad extent length"));
            }
            let pstart = prev_pend.wrapping_add(unzigzag(r.varint()?) as u64);
            let age = r.varint()?;
            let ebirth = birth
                .checked_sub(age)
                .ok_or_else(|| r.corrupt("extent younger than its leaf"))?;
            crcs.clear();
            for _ in 0..len {
                crcs.push(r.u32_le()?);
            }
            let end = vstart
                .checked_add(len)
                .ok_or_else(|| r.corrupt("extent past the end of the address space"))?;
            pstart
                .checked_add(len)
                .ok_or_else(|| r.corrupt("extent past the end of the pool"))?;
            leaf.push(ExtentRef {
                vstart,
                pstart,
                birth: ebirth,
                crcs: &crcs,
            });
            prev_end = end;
            prev_pend = pstart + len;
        }
        Ok(leaf)
    }
}

/// A branch: children in volume order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Branch {
    pub birth: u64,
    /// 1 for a branch of leaves, and so on up.
    pub level: u8,
    pub children: Vec<Child>,
}

impl Branch {
    /// Index of the child covering `vblock` (the first child covers
    /// everything below the second one's key).
    pub(crate) fn child_for(&self, vblock: u64) -> usize {
        self.children
            .partition_point(|c| c.key <= vblock)
            .saturating_sub(1)
    }

    pub(crate) fn mem_size(&self) -> usize {
        std::mem::size_of::<Self>() + self.children.capacity() * std::mem::size_of::<Child>()
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(NODE_OVERHEAD + self.children.len() * 12);
        out.push(KIND_BRANCH);
        out.push(self.level);
        put_varint(&mut out, self.birth);
        put_varint(&mut out, self.children.len() as u64);
        let mut prev = 0u64;
        for c in &self.children {
            put_varint(&mut out, c.key - prev);
            put_varint(&mut out, c.node.id);
            put_varint(&mut out, self.birth - c.node.birth);
            prev = c.key;
        }
        seal(out)
    }

    fn decode(r: &mut Reader<'_>) -> Result<Branch> {
        let level = r.u8()?;
        if level == 0 {
            return Err(r.corrupt("branch at level 0"));
        }
        let birth = r.varint()?;
        let count = r.varint()?;
        if count == 0 || count > FANOUT as u64 {
            return Err(r.corrupt("bad branch size"));
        }
        let mut children = Vec::with_capacity(count as usize);
        let mut prev = 0u64;
        for i in 0..count {
            let delta = r.varint()?;
            if i > 0 && delta == 0 {
                return Err(r.corrupt("branch keys not increasing"));
            }
            let key = prev
                .checked_add(delta)
                .ok_or_else(|| r.corrupt("key past the end of the address space"))?;
            let id = r.varint()?;
            let age = r.varint()?;
            let cbirth = birth
                .checked_sub(age)
                .ok_or_else(|| r.corrupt("child younger than its branch"))?;
            children.push(Child {
                key,
                node: NodeRef { id, birth: cbirth },
            });
            prev = key;
        }
        Ok(Branch {
            birth,
            level,
            children,
        })
    }
}

/// A node of the block-map tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Node {
    Leaf(Leaf),
    Branch(Branch),
}

impl Node {
    pub(crate) fn birth(&self) -> u64 {
        match self {
            Node::Leaf(l) => l.birth,
            Node::Branch(b) => b.birth,
        }
    }

    #[cfg(test)]
    pub(crate) fn level(&self) -> u8 {
        match self {
            Node::Leaf(_) => 0,
            Node::Branch(b) => b.level,
        }
    }

    pub(crate) fn mem_size(&self) -> usize {
        match self {
            Node::Leaf(l) => l.mem_size(),
            Node::Branch(b) => b.mem_size(),
        }
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        match self {
            Node::Leaf(l) => l.encode(),
            Node::Branch(b) => b.encode(),
        }
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Node> {
        let body = unseal(bytes, "map node")?;
        let mut r = Reader::new(body, "map node");
        let node = match r.u8()? {
            KIND_LEAF => Node::Leaf(Leaf::decode(&mut r)?),
            KIND_BRANCH => Node::Branch(Branch::decode(&mut r)?),
            _ => return Err(r.corrupt("unknown node kind")),
        };
        if !r.is_empty() {
            return Err(r.corrupt("trailing bytes"));
        }
        Ok(node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    fn sample_leaf() -> Leaf {
        let mut l = Leaf::new(9);
        l.push(ExtentRef {
            vstart: 3,
            pstart: 1000,
            birth: 9,
            crcs: &[1, 2, 3],
        });
        l.push(ExtentRef {
            vstart: 10,
            pstart: 7,
            birth: 2,
            crcs: &[u32::MAX],
        });
        l.push(ExtentRef {
            vstart: u64::MAX - 300,
            pstart: u64::MAX - 5,
            birth: 0,
            crcs: &[5, 6],
        });
        l
    }

    #[test]
    fn nodes_round_trip() {
        let leaf = Node::Leaf(sample_leaf());
        let bytes = leaf.encode();
        if let Node::Leaf(l) = &leaf {
            assert!(bytes.len() <= l.encoded_len());
        }
        assert_eq!(Node::decode(&bytes).unwrap(), leaf);
        let branch = Node::Branch(Branch {
            birth: 5,
            level: 2,
            children: vec![
                Child {
                    key: 0,
                    node: NodeRef { id: 77, birth: 5 },
                },
                Child {
                    key: 4096,
                    node: NodeRef { id: 3, birth: 1 },
                },
            ],
        });
        assert_eq!(Node::decode(&branch.encode()).unwrap(), branch);
    }

    #[test]
    fn lookups_in_a_leaf() {
        let l = sample_leaf();
        assert_eq!(l.first_ending_after(0), 0);
        assert_eq!(l.first_ending_after(5), 0);
        assert_eq!(l.first_ending_after(6), 1);
        assert_eq!(l.first_ending_after(11), 2);
        assert_eq!(l.get(0).crcs, &[1, 2, 3]);
        let b = Branch {
            birth: 1,
            level: 1,
            children: [0, 10, 20]
                .iter()
                .map(|&key| Child {
                    key,
                    node: NodeRef { id: key, birth: 1 },
                })
                .collect(),
        };
        assert_eq!(b.child_for(0), 0);
        assert_eq!(b.child_for(9), 0);
        assert_eq!(b.child_for(10), 1);
        assert_eq!(b.child_for(1000), 2);
    }

    #[test]
    fn damaged_nodes_are_refused() {
        let bytes = Node::Leaf(sample_leaf()).encode();
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            assert!(
                matches!(Node::decode(&bad), Err(Error::Corrupt(_))),
                "byte {i}"
            );
        }
        for n in 0..bytes.len() {
            assert!(Node::decode(&bytes[..n]).is_err(), "truncated to {n}");
        }
        // Well-sealed but inconsistent contents are refused too.
        let cases: [Vec<u8>; 4] = [
            vec![KIND_BRANCH, 0, 1, 1, 0, 1, 0],
            vec![KIND_BRANCH, 1, 1, 0],
            vec![KIND_LEAF, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0],
            vec![KIND_LEAF, 1, 1, 0, 1, 1, 5, 0, 0, 0, 0],
        ];
        for body in cases {
            assert!(Node::decode(&seal(body.clone())).is_err(), "{body:?}");
        }
    }
}
