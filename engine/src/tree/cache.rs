//! The node cache: decoded map nodes, by id, within a fixed byte budget.
//!
//! Nodes are immutable once written (a change writes a new node under a
//! new id), so a cached node never goes stale; eviction is CLOCK (second
//! chance) per shard. A node is loaded outside the shard's lock, so a miss
//! never blocks other lookups of the shard; two threads missing the same
//! node both load it, and the second insert is dropped.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::node::Node;
use crate::error::Result;

const SHARDS: usize = 16;

pub(crate) struct NodeCache {
    shards: Vec<Mutex<Shard>>,
    budget_per_shard: usize,
    hits: AtomicU64,
    misses: AtomicU64,
}

#[derive(Default)]
struct Shard {
    slots: HashMap<u64, Slot>,
    /// Ids in CLOCK order with the stamp they were queued with; an entry
    /// whose stamp no longer matches its slot is stale and skipped.
    clock: VecDeque<(u64, u64)>,
    bytes: usize,
    stamp: u64,
}

struct Slot {
    node: Arc<Node>,
    size: usize,
    referenced: bool,
    stamp: u64,
}

impl NodeCache {
    pub(crate) fn new(budget: usize) -> Self {
        NodeCache {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            budget_per_shard: (budget / SHARDS).max(1),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn shard(&self, id: u64) -> &Mutex<Shard> {
        &self.shards[(id.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 60) as usize % SHARDS]
    }

    /// The node `id`, from the cache or else from `load`.
    pub(crate) fn get_or_load(
        &self,
        id: u64,
        load: impl FnOnce() -> Result<Node>,
    ) -> Result<Arc<Node>> {
        if let Some(slot) = self.shard(id).lock().slots.get_mut(&id) {
            slot.referenced = true;
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(slot.node.clone());
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let node = Arc::new(load()?);
        self.insert(id, node.clone());
        Ok(node)
    }

    /// Caches a node just written (or read).
    pub(crate) fn insert(&self, id: u64, node: Arc<Node>) {
        let size = node.mem_size() + std::mem::size_of::<Slot>() + 32;
        let mut shard = self.shard(id).lock();
        if shard.slots.contains_key(&id) {
            return;
        }
        shard.stamp += 1;
        let stamp = shard.stamp;
        shard.slots.insert(
            id,
            Slot {
                node,
                size,
                referenced: false,
                stamp,
            },
        );
        shard.clock.push_back((id, stamp));
        shard.bytes += size;
        shard.evict(self.budget_per_shard);
    }

    /// Forgets a node that no longer exists.
    pub(crate) fn remove(&self, id: u64) {
        let mut shard = self.shard(id).lock();
        if let Some(slot) = shard.slots.remove(&id) {
            shard.bytes -= slot.size;
        }
    }

    /// Bytes held, and lookups that hit and missed since the start.
    pub(crate) fn stats(&self) -> (u64, u64, u64) {
        let bytes = self.shards.iter().map(|s| s.lock().bytes as u64).sum();
        (
            bytes,
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }
}

impl Shard {
    fn evict(&mut self, budget: usize) {
        while self.bytes > budget {
            let Some((id, stamp)) = self.clock.pop_front() else {
                break;
            };
            let Some(slot) = self.slots.get_mut(&id).filter(|s| s.stamp == stamp) else {
                continue;
            };
            if slot.referenced {
                slot.referenced = false;
                self.clock.push_back((id, stamp));
                continue;
            }
            let size = slot.size;
            self.slots.remove(&id);
            self.bytes -= size;
        }
        // Stale queue entries are dropped as the hand passes them; keep
        // the queue from growing far past the live entries.
        if self.clock.len() > 2 * self.slots.len() + 64 {
            let slots = &self.slots;
            self.clock
                .retain(|(id, stamp)| slots.get(id).is_some_and(|s| s.stamp == *stamp));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::node::Leaf;

    fn leaf(birth: u64) -> Node {
        Node::Leaf(Leaf::new(birth))
    }

    #[test]
    fn stays_within_budget_and_keeps_hot_nodes() {
        let one = Arc::new(leaf(0)).mem_size() + std::mem::size_of::<Slot>() + 32;
        let cache = NodeCache::new(one * 4 * SHARDS);
        cache.get_or_load(7, || Ok(leaf(7))).unwrap();
        let mut loads = 0;
        for id in 100..10_100u64 {
            cache
                .get_or_load(id, || {
                    loads += 1;
                    Ok(leaf(id))
                })
                .unwrap();
            // Node 7 is read all the time and must survive.
            cache.get_or_load(7, || panic!("node 7 evicted")).ok();
        }
        assert_eq!(loads, 10_000);
        let (bytes, hits, _) = cache.stats();
        assert!(bytes as usize <= one * 4 * SHARDS, "{bytes}");
        assert!(hits >= 9_990);
        cache.remove(7);
        let mut reloaded = false;
        cache
            .get_or_load(7, || {
                reloaded = true;
                Ok(leaf(7))
            })
            .unwrap();
        assert!(reloaded);
    }

    #[test]
    fn load_errors_are_not_cached() {
        let cache = NodeCache::new(1 << 20);
        assert!(cache
            .get_or_load(1, || Err(crate::error::Error::Corrupt("x".into())))
            .is_err());
        assert_eq!(*cache.get_or_load(1, || Ok(leaf(3))).unwrap(), leaf(3));
    }
}
