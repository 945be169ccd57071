//! The block map of one volume or snapshot: a copy-on-write B-tree of
//! extents (see [`node`]), shared between a snapshot and its volume.
//!
//! Nodes are never changed once written: [`merge`] applies a batch of
//! edits by writing new nodes for the paths it touches and pointing them at
//! every untouched subtree, so a snapshot that shares the old root keeps
//! seeing exactly what it saw. Each node it stops using is *disposed of*:
//! a node born after the newest snapshot (`shared_upto`) belongs to this
//! tree alone and becomes garbage; an older one is still some snapshot's,
//! and is reported dead so that deleting that snapshot can free it (see
//! `crate::space`).
//!
//! A lookup costs the tree's depth whatever the number of snapshots:
//! every tree is a complete map of its volume.

pub(crate) mod cache;
pub(crate) mod node;

use std::sync::Arc;

use crate::error::Result;
use crate::extent::Piece;
use node::{Branch, Child, ExtentRef, Leaf, Node, NodeRef, FANOUT, LEAF_BYTES, MAX_EXTENT};

/// Where nodes are read from.
pub(crate) trait NodeSource {
    fn node(&self, id: u64) -> Result<Arc<Node>>;
}

/// The data pieces of `[from, to)` in the tree at `root`, in order and
/// clipped to the range (holes are left out).
pub(crate) fn lookup(
    src: &impl NodeSource,
    root: Option<NodeRef>,
    from: u64,
    to: u64,
) -> Result<Vec<Piece>> {
    let mut out = Vec::new();
    if let Some(root) = root {
        if from < to {
            lookup_in(src, root, from, to, &mut out)?;
        }
    }
    Ok(out)
}

fn lookup_in(
    src: &impl NodeSource,
    at: NodeRef,
    from: u64,
    to: u64,
    out: &mut Vec<Piece>,
) -> Result<()> {
    match &*src.node(at.id)? {
        Node::Leaf(leaf) => {
            let mut i = leaf.first_ending_after(from);
            while i < leaf.len() {
                let e = leaf.get(i);
                if e.vstart >= to {
                    break;
                }
                out.extend(piece_of(&e).clip(from, to));
                i += 1;
            }
        }
        Node::Branch(b) => {
            // The child covering `from`, then every later one starting
            // before `to`.
            let first = b.child_for(from);
            for (i, c) in b.children.iter().enumerate().skip(first) {
                if i > first && c.key >= to {
                    break;
                }
                lookup_in(src, c.node, from, to, out)?;
            }
        }
    }
    Ok(())
}

fn piece_of(e: &ExtentRef<'_>) -> Piece {
    Piece {
        vstart: e.vstart,
        len: e.len(),
        data: Some(crate::extent::Data {
            pstart: e.pstart,
            birth: e.birth,
            crcs: e.crcs.to_vec(),
        }),
    }
}

/// Visits the tree at `root` pruned to what was born after generation
/// `after`: `node` sees every node born after it, `extent` every extent
/// born after it. A node born at or before `after` is skipped with its
/// whole subtree (nothing in it is younger than the node).
pub(crate) fn walk_born_after(
    src: &impl NodeSource,
    root: Option<NodeRef>,
    after: u64,
    node: &mut dyn FnMut(NodeRef),
    extent: &mut dyn FnMut(&ExtentRef<'_>),
) -> Result<()> {
    let Some(root) = root else { return Ok(()) };
    if root.birth <= after {
        return Ok(());
    }
    node(root);
    match &*src.node(root.id)? {
        Node::Leaf(leaf) => {
            for e in leaf.extents().filter(|e| e.birth > after) {
                extent(&e);
            }
        }
        Node::Branch(b) => {
            for c in &b.children {
                walk_born_after(src, Some(c.node), after, node, extent)?;
            }
        }
    }
    Ok(())
}

/// What a merge needs besides the tree, and what it reports back.
pub(crate) struct Merge<'a> {
    /// Birth of every node the merge writes.
    pub birth: u64,
    /// Nodes born at or before this generation are shared with a snapshot.
    pub shared_upto: u64,
    /// Next free node id.
    pub next_id: &'a mut u64,
    /// Takes each node the merge writes, with its id.
    pub sink: &'a mut dyn FnMut(u64, Node) -> Result<()>,
    /// Nodes this tree alone used and no longer does.
    pub garbage: Vec<u64>,
    /// Nodes shared with a snapshot that this tree no longer uses.
    pub dead: Vec<NodeRef>,
}

impl Merge<'_> {
    fn emit(&mut self, node: Node) -> Result<NodeRef> {
        let id = *self.next_id;
        *self.next_id += 1;
        let birth = node.birth();
        (self.sink)(id, node)?;
        Ok(NodeRef { id, birth })
    }

    fn dispose(&mut self, at: NodeRef) {
        if at.birth > self.shared_upto {
            self.garbage.push(at.id);
        } else {
            self.dead.push(at);
        }
    }

    /// Disposes of a subtree no longer referenced at all.
    fn dispose_subtree(&mut self, src: &impl NodeSource, at: NodeRef, level: u8) -> Result<()> {
        self.dispose(at);
        if level > 0 {
            if let Node::Branch(b) = &*src.node(at.id)? {
                for c in &b.children {
                    self.dispose_subtree(src, c.node, b.level - 1)?;
                }
            }
        }
        Ok(())
    }
}

/// Applies `edits` (sorted, disjoint pieces: data to map, holes to
/// unmap) to the tree at `root` and returns the new root.
pub(crate) fn merge(
    src: &impl NodeSource,
    root: Option<NodeRef>,
    edits: &[Piece],
    m: &mut Merge<'_>,
) -> Result<Option<NodeRef>> {
    debug_assert!(edits.windows(2).all(|w| w[0].end() <= w[1].vstart));
    if edits.is_empty() {
        return Ok(root);
    }
    let (mut kids, mut level) = match root {
        None => (rebuild_leaf(&Leaf::new(0), 0, edits, m)?, 0),
        Some(r) => {
            let node = src.node(r.id)?;
            m.dispose(r);
            match &*node {
                Node::Leaf(leaf) => (rebuild_leaf(leaf, 0, edits, m)?, 0),
                // The root's own children: a root left with one child is
                // replaced by that child.
                Node::Branch(b) => (apply_children(src, b, 0, u64::MAX, edits, m)?, b.level - 1),
            }
        }
    };
    while kids.len() > 1 {
        level += 1;
        kids = pack(kids, level, m)?;
    }
    Ok(kids.first().map(|c| c.node))
}

/// New children for branch `b` covering `[lo, hi)` with `edits` applied.
fn apply_children(
    src: &impl NodeSource,
    b: &Branch,
    lo: u64,
    hi: u64,
    edits: &[Piece],
    m: &mut Merge<'_>,
) -> Result<Vec<Child>> {
    let mut out = Vec::with_capacity(b.children.len() + 4);
    let mut rest = edits;
    for (i, child) in b.children.iter().enumerate() {
        let c_lo = if i == 0 { lo } else { child.key };
        let c_hi = b.children.get(i + 1).map_or(hi, |c| c.key);
        // Edits that start before this child's end; the last one may run
        // on into the next child.
        let n = rest.partition_point(|e| e.vstart < c_hi);
        let mine: Vec<Piece> = rest[..n]
            .iter()
            .filter_map(|e| e.clip(c_lo, c_hi))
            .collect();
        if rest[..n].last().is_some_and(|e| e.end() > c_hi) {
            rest = &rest[n - 1..];
        } else {
            rest = &rest[n..];
        }
        if mine.is_empty() {
            out.push(*child);
            continue;
        }
        let wiped = mine.len() == 1
            && mine[0].data.is_none()
            && mine[0].vstart == c_lo
            && mine[0].end() == c_hi;
        if wiped {
            m.dispose_subtree(src, child.node, b.level - 1)?;
            continue;
        }
        let node = src.node(child.node.id)?;
        m.dispose(child.node);
        let replaced = match &*node {
            Node::Leaf(leaf) => rebuild_leaf(leaf, c_lo, &mine, m)?,
            Node::Branch(cb) => {
                let kids = apply_children(src, cb, c_lo, c_hi, &mine, m)?;
                pack(kids, cb.level, m)?
            }
        };
        out.extend(replaced);
    }
    Ok(out)
}

/// Packs `kids` into as few branches of level `level` as fit, of even
/// size.
fn pack(kids: Vec<Child>, level: u8, m: &mut Merge<'_>) -> Result<Vec<Child>> {
    if kids.is_empty() {
        return Ok(Vec::new());
    }
    let groups = kids.len().div_ceil(FANOUT);
    let per = kids.len().div_ceil(groups);
    let mut out = Vec::with_capacity(groups);
    for group in kids.chunks(per) {
        let key = group[0].key;
        let node = m.emit(Node::Branch(Branch {
            birth: m.birth,
            level,
            children: group.to_vec(),
        }))?;
        out.push(Child { key, node });
    }
    Ok(out)
}

/// One extent being assembled into new leaves.
struct Seg {
    vstart: u64,
    pstart: u64,
    birth: u64,
    crcs: Vec<u32>,
}

/// New leaves holding `old`'s extents with `edits` applied; the first
/// one is keyed `lo`.
fn rebuild_leaf(old: &Leaf, lo: u64, edits: &[Piece], m: &mut Merge<'_>) -> Result<Vec<Child>> {
    // What is left of the old extents outside every edit, in order.
    let mut kept: Vec<Seg> = Vec::new();
    let mut ei = 0;
    for e in old.extents() {
        let mut s = e.vstart;
        while s < e.end() {
            while ei < edits.len() && edits[ei].end() <= s {
                ei += 1;
            }
            if let Some(ed) = edits.get(ei).filter(|ed| ed.vstart <= s) {
                s = ed.end().min(e.end());
                continue;
            }
            let upto = edits.get(ei).map_or(e.end(), |ed| ed.vstart.min(e.end()));
            let skip = (s - e.vstart) as usize;
            kept.push(Seg {
                vstart: s,
                pstart: e.pstart + skip as u64,
                birth: e.birth,
                crcs: e.crcs[skip..skip + (upto - s) as usize].to_vec(),
            });
            s = upto;
        }
    }
    // Interleave the edits' data.
    let mut segs: Vec<Seg> = Vec::with_capacity(kept.len() + edits.len());
    let mut kept = kept.into_iter().peekable();
    for ed in edits {
        while let Some(k) = kept.next_if(|k| k.vstart < ed.vstart) {
            push_seg(&mut segs, k);
        }
        if let Some(d) = &ed.data {
            push_seg(
                &mut segs,
                Seg {
                    vstart: ed.vstart,
                    pstart: d.pstart,
                    birth: d.birth,
                    crcs: d.crcs.clone(),
                },
            );
        }
    }
    for k in kept {
        push_seg(&mut segs, k);
    }

    let mut out = Vec::new();
    let mut leaf = Leaf::new(m.birth);
    let mut key = lo;
    for seg in &segs {
        for (i, crcs) in seg.crcs.chunks(MAX_EXTENT as usize).enumerate() {
            let skip = (i * MAX_EXTENT as usize) as u64;
            let e = ExtentRef {
                vstart: seg.vstart + skip,
                pstart: seg.pstart + skip,
                birth: seg.birth,
                crcs,
            };
            if !leaf.is_empty() && leaf.encoded_len() + leaf.cost(&e) > LEAF_BYTES {
                let full = std::mem::replace(&mut leaf, Leaf::new(m.birth));
                out.push(Child {
                    key,
                    node: m.emit(Node::Leaf(full))?,
                });
                key = e.vstart;
            }
            leaf.push(e);
        }
    }
    if !leaf.is_empty() {
        out.push(Child {
            key,
            node: m.emit(Node::Leaf(leaf))?,
        });
    }
    Ok(out)
}

/// Appends `seg`, joining it to the last one when they continue each
/// other in the volume and in the pool and were born together.
fn push_seg(segs: &mut Vec<Seg>, seg: Seg) {
    if let Some(last) = segs.last_mut() {
        let len = last.crcs.len() as u64;
        if last.vstart + len == seg.vstart
            && last.pstart + len == seg.pstart
            && last.birth == seg.birth
        {
            last.crcs.extend_from_slice(&seg.crcs);
            return;
        }
    }
    segs.push(seg);
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::extent::Data;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, HashMap};
    use std::sync::Mutex;

    /// Nodes in memory, for tests.
    #[derive(Default)]
    pub(crate) struct MemNodes(pub Mutex<HashMap<u64, Arc<Node>>>);

    impl NodeSource for MemNodes {
        fn node(&self, id: u64) -> Result<Arc<Node>> {
            Ok(self.0.lock().unwrap()[&id].clone())
        }
    }

    /// Every node reachable from `root`, checking the tree's invariants on
    /// the way.
    pub(crate) fn reachable(src: &MemNodes, root: Option<NodeRef>) -> Vec<u64> {
        let mut ids = Vec::new();
        if let Some(r) = root {
            check(src, r, 0, u64::MAX, None, &mut ids);
        }
        ids
    }

    fn check(src: &MemNodes, at: NodeRef, lo: u64, hi: u64, level: Option<u8>, ids: &mut Vec<u64>) {
        ids.push(at.id);
        let node = src.node(at.id).unwrap();
        assert_eq!(
            node.birth(),
            at.birth,
            "pointer birth matches node {}",
            at.id
        );
        if let Some(l) = level {
            assert_eq!(node.level(), l);
        }
        match &*node {
            Node::Leaf(leaf) => {
                assert!(Node::Leaf(leaf.clone()).encode().len() <= LEAF_BYTES);
                let mut prev = lo;
                for e in leaf.extents() {
                    assert!(e.vstart >= prev && e.end() <= hi, "extent in range");
                    assert!(e.birth <= leaf.birth);
                    prev = e.end();
                }
            }
            Node::Branch(b) => {
                assert!(!b.children.is_empty() && b.children.len() <= FANOUT);
                for (i, c) in b.children.iter().enumerate() {
                    assert!(c.node.birth <= b.birth);
                    let c_lo = if i == 0 { lo } else { c.key };
                    let c_hi = b.children.get(i + 1).map_or(hi, |n| n.key);
                    assert!(c_lo < c_hi, "keys increase");
                    check(src, c.node, c_lo, c_hi, Some(b.level - 1), ids);
                }
            }
        }
    }

    pub(crate) struct Harness {
        pub nodes: MemNodes,
        pub next_id: u64,
    }

    impl Harness {
        pub(crate) fn new() -> Self {
            Harness {
                nodes: MemNodes::default(),
                next_id: 1,
            }
        }

        /// Merges `edits` into `root`; returns the new root, the garbage
        /// and the dead.
        pub(crate) fn merge(
            &mut self,
            root: Option<NodeRef>,
            edits: &[Piece],
            birth: u64,
            shared_upto: u64,
        ) -> (Option<NodeRef>, Vec<u64>, Vec<NodeRef>) {
            let Harness { nodes, next_id } = self;
            let mut written = Vec::new();
            let mut sink = |id, node| {
                written.push((id, node));
                Ok(())
            };
            let mut m = Merge {
                birth,
                shared_upto,
                next_id,
                sink: &mut sink,
                garbage: Vec::new(),
                dead: Vec::new(),
            };
            let root = merge(&*nodes, root, edits, &mut m).unwrap();
            let (garbage, dead) = (m.garbage, m.dead);
            let mut map = nodes.0.lock().unwrap();
            for (id, node) in written {
                map.insert(id, Arc::new(node));
            }
            (root, garbage, dead)
        }
    }

    fn data_piece(vstart: u64, len: u64, pstart: u64, birth: u64) -> Piece {
        Piece {
            vstart,
            len,
            data: Some(Data {
                pstart,
                birth,
                crcs: (0..len).map(|i| (pstart + i) as u32 ^ 0x5a5a).collect(),
            }),
        }
    }

    /// The model: block -> (pblock, birth).
    type Model = BTreeMap<u64, (u64, u64)>;

    fn apply_model(model: &mut Model, edits: &[Piece]) {
        for e in edits {
            for i in 0..e.len {
                match &e.data {
                    Some(d) => model.insert(e.vstart + i, (d.pstart + i, d.birth)),
                    None => model.remove(&(e.vstart + i)),
                };
            }
        }
    }

    fn assert_matches(h: &Harness, root: Option<NodeRef>, model: &Model, span: u64) {
        let got = lookup(&h.nodes, root, 0, span).unwrap();
        let mut flat = BTreeMap::new();
        for p in &got {
            let d = p.data.as_ref().unwrap();
            for i in 0..p.len {
                flat.insert(p.vstart + i, (d.pstart + i, d.birth));
                assert_eq!(
                    d.crcs[i as usize],
                    (d.pstart + i) as u32 ^ 0x5a5a,
                    "crc follows its block"
                );
            }
        }
        assert_eq!(&flat, model);
        // Sub-range lookups agree too.
        for (from, to) in [(0, 1), (span / 3, span / 2), (span - 1, span)] {
            let part = lookup(&h.nodes, root, from, to).unwrap();
            let n: u64 = part.iter().map(|p| p.len).sum();
            assert_eq!(n as usize, model.range(from..to).count(), "{from}..{to}");
        }
    }

    /// Turns random (start, len, is_data) triples into sorted, disjoint
    /// edits, dropping those that overlap an earlier one.
    fn edits_from(raw: &[(u64, u64, bool)], span: u64, next_p: &mut u64, birth: u64) -> Vec<Piece> {
        let mut sorted: Vec<(u64, u64, bool)> = raw
            .iter()
            .map(|&(s, l, d)| {
                let s = s % span;
                (s, l.clamp(1, span - s), d)
            })
            .collect();
        sorted.sort_unstable();
        let mut out: Vec<Piece> = Vec::new();
        for (s, l, d) in sorted {
            if out.last().is_some_and(|p| p.end() > s) {
                continue;
            }
            out.push(if d {
                let p = data_piece(s, l, *next_p, birth);
                *next_p += l + 1;
                p
            } else {
                Piece::hole(s, l)
            });
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
        #[test]
        fn merges_match_a_model(
            rounds in prop::collection::vec(
                prop::collection::vec((0u64..60_000, 1u64..1500, prop::bool::weighted(0.8)), 1..60),
                1..10,
            )
        ) {
            let span = 60_000;
            let mut h = Harness::new();
            let mut model = Model::new();
            let mut root = None;
            let mut next_p = 1;
            for (gen, raw) in rounds.iter().enumerate() {
                let edits = edits_from(raw, span, &mut next_p, gen as u64 + 1);
                let before: std::collections::HashSet<u64> = reachable(&h.nodes, root).into_iter().collect();
                let (new_root, garbage, dead) = h.merge(root, &edits, gen as u64 + 1, 0);
                apply_model(&mut model, &edits);
                assert_matches(&h, new_root, &model, span);
                // Nothing is shared (shared_upto 0): every node no longer
                // reachable is garbage, and nothing reachable is.
                prop_assert!(dead.is_empty());
                let after: std::collections::HashSet<u64> = reachable(&h.nodes, new_root).into_iter().collect();
                let gone: std::collections::HashSet<u64> = before.difference(&after).copied().collect();
                let garbage: std::collections::HashSet<u64> = garbage.into_iter().collect();
                prop_assert_eq!(gone, garbage);
                root = new_root;
            }
        }
    }

    #[test]
    fn a_snapshot_keeps_its_view_and_dead_nodes_are_reported() {
        let mut h = Harness::new();
        let span = 1_000_000;
        // Generation 1: a large sequential fill.
        let fill: Vec<Piece> = (0..400)
            .map(|i| data_piece(i * 256, 256, 10_000 + i * 256, 1))
            .collect();
        let (snap, garbage, _) = h.merge(None, &fill, 1, 0);
        assert!(garbage.is_empty());
        let mut snap_model = Model::new();
        apply_model(&mut snap_model, &fill);
        let snap_nodes = reachable(&h.nodes, snap);
        assert!(snap_nodes.len() > 3, "several levels");
        // The snapshot (generation 1) is taken; the head writes at 2.
        let edits = vec![data_piece(5, 3, 900_000, 2), Piece::hole(50_000, 200)];
        let (head, garbage, dead) = h.merge(snap, &edits, 2, 1);
        assert!(garbage.is_empty(), "nothing exclusive yet");
        // The dead are exactly the snapshot's nodes the head stopped using.
        let head_nodes: std::collections::HashSet<u64> =
            reachable(&h.nodes, head).into_iter().collect();
        let expect: std::collections::HashSet<u64> = snap_nodes
            .iter()
            .copied()
            .filter(|id| !head_nodes.contains(id))
            .collect();
        let dead_ids: std::collections::HashSet<u64> = dead.iter().map(|d| d.id).collect();
        assert_eq!(dead_ids, expect);
        assert_matches(&h, snap, &snap_model, span);
        let mut head_model = snap_model.clone();
        apply_model(&mut head_model, &edits);
        assert_matches(&h, head, &head_model, span);
        // A second head merge at generation 2 replaces its own nodes: garbage.
        let (head2, garbage, dead) = h.merge(head, &[data_piece(6, 1, 990_000, 2)], 2, 1);
        assert!(
            !garbage.is_empty() && dead.is_empty(),
            "{garbage:?} {dead:?}"
        );
        apply_model(&mut head_model, &[data_piece(6, 1, 990_000, 2)]);
        assert_matches(&h, head2, &head_model, span);
        assert_matches(&h, snap, &snap_model, span);
        // What was born after the snapshot is what the head changed.
        let mut born = Vec::new();
        walk_born_after(&h.nodes, head2, 1, &mut |_| {}, &mut |e| {
            born.push((e.vstart, e.len()))
        })
        .unwrap();
        assert_eq!(born, vec![(5, 1), (6, 1), (7, 1)]);
    }

    #[test]
    fn sequential_extents_coalesce() {
        let mut h = Harness::new();
        let mut root = None;
        for i in 0..64 {
            let (r, _, _) = h.merge(root, &[data_piece(i * 16, 16, 5000 + i * 16, 1)], 1, 0);
            root = r;
        }
        let got = lookup(&h.nodes, root, 0, 4096).unwrap();
        assert_eq!(
            got.iter().map(|p| p.len).collect::<Vec<_>>(),
            vec![256, 256, 256, 256]
        );
    }

    #[test]
    fn unmapping_everything_empties_the_tree() {
        let mut h = Harness::new();
        let fill: Vec<Piece> = (0..2000)
            .map(|i| data_piece(i * 2, 1, i * 7 + 3, 1))
            .collect();
        let (root, _, _) = h.merge(None, &fill, 1, 0);
        let all = reachable(&h.nodes, root).len();
        let (root, garbage, _) = h.merge(root, &[Piece::hole(0, u64::MAX)], 1, 0);
        assert_eq!(root, None);
        assert_eq!(garbage.len(), all);
    }
}
