//! A volume's map changes since the last checkpoint, in memory.
//!
//! Writes and trims land here (and in the journal) rather than in the
//! on-disk tree; a checkpoint merges them into the tree in one batch (see
//! `crate::checkpoint`). An overlay entry is either data or an explicit
//! hole (a trim, or all-zero blocks, over whatever the tree holds); a block
//! the overlay has no entry for reads through to the tree.

use std::collections::BTreeMap;
use std::ops::Range;

use crate::extent::{Data, Piece};

/// Largest data entry built by joining adjacent writes (16 MiB).
const MAX_JOINED: u64 = 4096;

#[derive(Debug, Default)]
pub(crate) struct Overlay {
    /// vstart -> entry; entries never overlap.
    entries: BTreeMap<u64, Entry>,
    /// Memory held, by the estimate of [`entry_size`].
    bytes: usize,
}

#[derive(Debug, Clone)]
struct Entry {
    len: u64,
    data: Option<Data>,
}

/// Memory an entry takes: its node share in the map, the entry, its crcs.
fn entry_size(e: &Entry) -> usize {
    64 + std::mem::size_of::<Entry>() + e.data.as_ref().map_or(0, |d| d.crcs.capacity() * 4)
}

impl Overlay {
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Maps the blocks `pieces` cover (sorted, contiguous, data or holes),
    /// replacing whatever the overlay said about them.
    pub(crate) fn set(&mut self, pieces: &[Piece]) {
        let (Some(first), Some(last)) = (pieces.first(), pieces.last()) else {
            return;
        };
        self.clear(first.vstart, last.end());
        for p in pieces {
            self.insert(
                p.vstart,
                Entry {
                    len: p.len,
                    data: p.data.clone(),
                },
            );
        }
    }

    /// Removes every entry inside `[from, to)`, cutting those that straddle
    /// its edges.
    fn clear(&mut self, from: u64, to: u64) {
        // An entry starting before `from` that reaches into the range.
        if let Some((&s, e)) = self.entries.range(..from).next_back() {
            if s + e.len > from {
                let e = self.take(s);
                let left = cut(s, &e, s, from);
                if s + e.len > to {
                    self.put(to, cut(s, &e, to, s + e.len));
                }
                self.put(s, left);
            }
        }
        let inside: Vec<u64> = self.entries.range(from..to).map(|(&s, _)| s).collect();
        for s in inside {
            let e = self.take(s);
            if s + e.len > to {
                self.put(to, cut(s, &e, to, s + e.len));
            }
        }
    }

    fn take(&mut self, at: u64) -> Entry {
        let e = self.entries.remove(&at).expect("entry exists");
        self.bytes -= entry_size(&e);
        e
    }

    fn put(&mut self, at: u64, e: Entry) {
        self.bytes += entry_size(&e);
        self.entries.insert(at, e);
    }

    /// Inserts an entry into a cleared range, joining it to the entry
    /// before it when the two continue each other.
    fn insert(&mut self, at: u64, e: Entry) {
        if let Some((&s, prev)) = self.entries.range(..at).next_back() {
            let joins = s + prev.len == at
                && prev.len + e.len <= MAX_JOINED
                && match (&prev.data, &e.data) {
                    (None, None) => true,
                    (Some(a), Some(b)) => a.pstart + prev.len == b.pstart && a.birth == b.birth,
                    _ => false,
                };
            if joins {
                let mut prev = self.take(s);
                prev.len += e.len;
                if let (Some(a), Some(b)) = (&mut prev.data, e.data) {
                    a.crcs.extend_from_slice(&b.crcs);
                }
                self.put(s, prev);
                return;
            }
        }
        self.put(at, e);
    }

    /// What the overlay says about `[from, to)`: the pieces it maps (data
    /// or holes, clipped to the range) and the gaps it has nothing for.
    pub(crate) fn get(&self, from: u64, to: u64) -> (Vec<Piece>, Vec<Range<u64>>) {
        let mut pieces = Vec::new();
        let mut gaps = Vec::new();
        let mut at = from;
        let start = self
            .entries
            .range(..from)
            .next_back()
            .filter(|(&s, e)| s + e.len > from)
            .map_or(from, |(&s, _)| s);
        for (&s, e) in self.entries.range(start..to) {
            let p = Piece {
                vstart: s,
                len: e.len,
                data: e.data.clone(),
            };
            let Some(p) = p.clip(from, to) else { continue };
            if p.vstart > at {
                gaps.push(at..p.vstart);
            }
            at = p.end();
            pieces.push(p);
        }
        if at < to {
            gaps.push(at..to);
        }
        (pieces, gaps)
    }

    /// Every entry in order: the edits a checkpoint merges into the tree.
    pub(crate) fn edits(&self) -> Vec<Piece> {
        self.entries
            .iter()
            .map(|(&s, e)| Piece {
                vstart: s,
                len: e.len,
                data: e.data.clone(),
            })
            .collect()
    }
}

/// The part `[from, to)` of entry `e` starting at `s`.
fn cut(s: u64, e: &Entry, from: u64, to: u64) -> Entry {
    let p = Piece {
        vstart: s,
        len: e.len,
        data: e.data.clone(),
    }
    .clip(from, to)
    .expect("cut inside the entry");
    Entry {
        len: p.len,
        data: p.data,
    }
}

/// What `layers` (newest first) say about `[from, to)`: the pieces some
/// layer maps, sorted, and the gaps none of them has anything for.
pub(crate) fn layered(layers: &[&Overlay], from: u64, to: u64) -> (Vec<Piece>, Vec<Range<u64>>) {
    let mut known = Vec::new();
    let mut gaps = vec![Range {
        start: from,
        end: to,
    }];
    for layer in layers {
        let mut next = Vec::new();
        for g in gaps {
            let (p, rest) = layer.get(g.start, g.end);
            known.extend(p);
            next.extend(rest);
        }
        gaps = next;
        if gaps.is_empty() {
            break;
        }
    }
    known.sort_unstable_by_key(|p| p.vstart);
    (known, gaps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn data(vstart: u64, len: u64, pstart: u64) -> Piece {
        Piece {
            vstart,
            len,
            data: Some(Data {
                pstart,
                birth: 1,
                crcs: (0..len).map(|i| (pstart + i) as u32).collect(),
            }),
        }
    }

    /// Block -> Some(pblock) for data, None for an explicit hole.
    fn flatten(o: &Overlay, span: u64) -> BTreeMap<u64, Option<u64>> {
        let (pieces, _) = o.get(0, span);
        let mut out = BTreeMap::new();
        for p in pieces {
            for i in 0..p.len {
                let d = p.data.as_ref().map(|d| {
                    assert_eq!(d.crcs[i as usize], (d.pstart + i) as u32);
                    d.pstart + i
                });
                out.insert(p.vstart + i, d);
            }
        }
        out
    }

    proptest! {
        #[test]
        fn matches_a_model(ops in prop::collection::vec((0u64..300, 1u64..40, prop::option::of(0u64..10_000)), 1..80)) {
            let span = 400;
            let mut o = Overlay::default();
            let mut model = BTreeMap::new();
            for (s, l, p) in ops {
                let piece = match p {
                    Some(p) => data(s, l, p),
                    None => Piece::hole(s, l),
                };
                o.set(std::slice::from_ref(&piece));
                for i in 0..l {
                    model.insert(s + i, p.map(|p| p + i));
                }
                prop_assert_eq!(flatten(&o, span), model.clone());
                let expect: usize = o.entries.values().map(entry_size).sum();
                prop_assert_eq!(o.bytes(), expect);
            }
            // Gaps are exactly the blocks never set.
            let (_, gaps) = o.get(0, span);
            let gap_blocks: usize = gaps.iter().map(|g| (g.end - g.start) as usize).sum();
            prop_assert_eq!(gap_blocks, span as usize - model.len());
        }
    }

    #[test]
    fn adjacent_writes_join_and_layers_stack() {
        let mut o = Overlay::default();
        for i in 0..8 {
            o.set(&[data(i * 4, 4, 100 + i * 4)]);
        }
        assert_eq!(o.entries.len(), 1, "contiguous writes are one entry");
        let mut older = Overlay::default();
        older.set(&[data(30, 10, 500), Piece::hole(40, 5)]);
        let (known, gaps) = layered(&[&o, &older], 0, 50);
        let shape: Vec<_> = known
            .iter()
            .map(|p| (p.vstart, p.len, p.data.is_some()))
            .collect();
        assert_eq!(shape, vec![(0, 32, true), (32, 8, true), (40, 5, false)]);
        assert_eq!(gaps, vec![45..50]);
    }
}
