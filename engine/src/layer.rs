//! Layers and their block maps.
//!
//! A layer maps virtual block numbers to [`Mapping`]s. A volume reads through
//! its chain, head first: the first layer that maps a block decides what it
//! holds; a block no layer maps is a hole. Only the head of a volume is ever
//! written; every other layer is a frozen snapshot (or the origin snapshot of
//! a clone) and changes only when a snapshot delete merges it into its child.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

/// What one virtual block of a layer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mapping {
    /// Stored in pool block `pblock`, whose contents have crc32 `crc`.
    Data { pblock: u64, crc: u32 },
    /// Reads as zeros and hides whatever lower layers hold.
    Zero,
}

#[derive(Debug, Default)]
pub(crate) struct Layer {
    pub parent: Option<u64>,
    pub map: BTreeMap<u64, Mapping>,
    /// Number of `Mapping::Data` entries in `map`.
    pub data_blocks: u64,
    /// Layers whose parent is this one: the next layer of the same volume
    /// and every clone's head. A layer with more than one child is shared
    /// and can never be merged away.
    pub children: u32,
}

impl Layer {
    pub fn new(parent: Option<u64>) -> Self {
        Layer {
            parent,
            ..Default::default()
        }
    }

    pub fn insert(&mut self, vblock: u64, m: Mapping) -> Option<Mapping> {
        if matches!(m, Mapping::Data { .. }) {
            self.data_blocks += 1;
        }
        let old = self.map.insert(vblock, m);
        if matches!(old, Some(Mapping::Data { .. })) {
            self.data_blocks -= 1;
        }
        old
    }

    pub fn remove(&mut self, vblock: u64) -> Option<Mapping> {
        let old = self.map.remove(&vblock);
        if matches!(old, Some(Mapping::Data { .. })) {
            self.data_blocks -= 1;
        }
        old
    }
}

/// Every layer of the pool, by id.
#[derive(Debug, Default)]
pub(crate) struct Layers(pub HashMap<u64, Layer>);

impl Layers {
    pub fn get(&self, id: u64) -> &Layer {
        self.0
            .get(&id)
            .expect("layer ids in volume records always exist")
    }

    pub fn get_mut(&mut self, id: u64) -> &mut Layer {
        self.0
            .get_mut(&id)
            .expect("layer ids in volume records always exist")
    }

    /// The chain from `top` down to its root, as `(id, layer)`.
    pub fn chain(&self, top: u64) -> impl Iterator<Item = (u64, &Layer)> {
        let mut next = Some(top);
        std::iter::from_fn(move || {
            let id = next?;
            let layer = self.get(id);
            next = layer.parent;
            Some((id, layer))
        })
    }

    /// What block `vblock` holds as seen from `top`; `None` is a hole.
    pub fn resolve(&self, top: u64, vblock: u64) -> Option<Mapping> {
        self.chain(top)
            .find_map(|(_, l)| l.map.get(&vblock).copied())
    }

    /// The visible mapping of every mapped block in `blocks`, as seen from
    /// `top`. Costs the number of entries in range, not the range's length.
    pub fn resolve_range(&self, top: u64, blocks: Range<u64>) -> BTreeMap<u64, Mapping> {
        // A single block (a 4 KiB random read) is a point lookup, cheaper
        // than the two edge searches of a range.
        if blocks.end.checked_sub(blocks.start) == Some(1) {
            let found = self.resolve(top, blocks.start);
            return found.map(|m| (blocks.start, m)).into_iter().collect();
        }
        let mut out = BTreeMap::new();
        for (_, layer) in self.chain(top) {
            for (&vb, &m) in layer.map.range(blocks.clone()) {
                out.entry(vb).or_insert(m);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upper_layers_shadow_lower_ones() {
        let mut layers = Layers::default();
        let mut base = Layer::new(None);
        base.insert(1, Mapping::Data { pblock: 10, crc: 1 });
        base.insert(2, Mapping::Data { pblock: 11, crc: 2 });
        let mut top = Layer::new(Some(0));
        top.insert(2, Mapping::Zero);
        top.insert(3, Mapping::Data { pblock: 12, crc: 3 });
        layers.0.insert(0, base);
        layers.0.insert(1, top);
        assert_eq!(
            layers.resolve(1, 1),
            Some(Mapping::Data { pblock: 10, crc: 1 })
        );
        assert_eq!(layers.resolve(1, 2), Some(Mapping::Zero));
        assert_eq!(layers.resolve(1, 4), None);
        let r = layers.resolve_range(1, 0..10);
        assert_eq!(r.len(), 3);
        assert_eq!(r[&2], Mapping::Zero);
        // Single blocks take the point-lookup path: shadowed, inherited,
        // and a hole.
        assert_eq!(
            layers
                .resolve_range(1, 2..3)
                .into_iter()
                .collect::<Vec<_>>(),
            [(2, Mapping::Zero)]
        );
        assert_eq!(
            layers
                .resolve_range(1, 1..2)
                .into_iter()
                .collect::<Vec<_>>(),
            [(1, Mapping::Data { pblock: 10, crc: 1 })]
        );
        assert!(layers.resolve_range(1, 4..5).is_empty());
        assert_eq!(layers.get(1).data_blocks, 1);
    }
}
