//! Reverting a volume's head to its newest snapshot: the head's map
//! becomes the snapshot's, and what the head wrote since is freed. No data
//! is copied; the cost follows what the head changed since the snapshot
//! (metadata only), not the volume's size or the bytes written.
//!
//! For a head whose newest snapshot has generation `s` (see
//! `crate::space`), everything the head changed since `s` is:
//!
//! * blocks and nodes born after `s` that its tree maps: the head's alone;
//! * dead entries of its interval `(s, ∞)`: blocks and nodes born at or
//!   before `s` that it stopped using, all still the snapshot's.
//!
//! The revert writes, in one checkpoint's atomic batch, the head's record
//! with the snapshot's root, the removal of those dead entries (the head
//! uses their blocks again, so a later delete of the snapshot must not
//! free them), and the old head's tree as a deleted clone of the snapshot
//! (an `X` record, origin `s`, the snapshot's clone count raised). That
//! clone's reclaim is the one volume deletes use: it frees what its tree
//! holds born after `s`, with its cursor in the record, and a crash
//! resumes it at the next open like any interrupted delete.
//!
//! # Crash cases
//!
//! * Before the batch is durable: the head is as the last commit left it;
//!   nothing was freed.
//! * After: the head is the snapshot's map; the old tree is an
//!   interrupted delete, finished before any control operation.

use crate::checkpoint::Extra;
use crate::error::{Error, Result};
use crate::meta::{Origin, VolumeRecord};
use crate::name::validate_name;
use crate::pool::Pool;
use crate::shared::now;
use crate::VolumeInfo;

impl Pool {
    /// Brings volume `name` back to `snapshot`, which must be its newest:
    /// afterwards the head reads exactly as the snapshot does (and zeros
    /// past the snapshot's size if the volume grew since), and the
    /// snapshot stays. Writes in flight land before the revert (and are
    /// gone) or after it. Refused while a gate holds the volume.
    pub async fn revert_volume(&self, name: &str, snapshot: &str) -> Result<VolumeInfo> {
        validate_name(name)?;
        validate_name(snapshot)?;
        let inner = &self.inner;
        let _c = inner.control().await?;
        inner.check_writable()?;
        let install = {
            let st = inner.state.lock();
            let v = st.catalog.get(name)?;
            if let Some(gate) = inner.gates.get(v.rec.uid) {
                return Err(Error::InUse(format!(
                    "volume {name} cannot be reverted yet: {}",
                    gate.busy()
                )));
            }
            let snap = v.snapshot(snapshot)?;
            if let Some(newer) = v.snapshots.iter().find(|s| !s.deleting && s.gen > snap.gen) {
                return Err(Error::InvalidArgument(format!(
                    "volume {name} can be reverted only to its newest snapshot, {name}@{}",
                    newer.name
                )));
            }
            v.install.clone()
        };
        // As a snapshot does: writes pause, the overlay is empty and every
        // death of the head is in the metadata store.
        let writes = inner.checkpoint_paused(&install).await?;

        let (head, snap) = {
            let st = inner.state.lock();
            let v = st.catalog.get(name)?;
            debug_assert!(v.active.is_empty() && v.frozen.is_none());
            (v.rec.clone(), v.snapshot(snapshot)?.clone())
        };
        // Invariant: the newest snapshot is what the head shares.
        debug_assert_eq!(head.shared_upto, snap.gen);
        // The dead entries of the head's interval: all removed in the one
        // batch, so read whole rather than a page at a time.
        let mut extra = Extra::default();
        for d in inner
            .meta
            .deaths(head.uid, snap.gen, u64::MAX, None, usize::MAX)?
        {
            debug_assert!(d.birth <= snap.gen, "a dead run is a snapshot's");
            extra.batch.remove_death(&d);
        }
        for d in inner
            .meta
            .dead_nodes(head.uid, snap.gen, u64::MAX, None, usize::MAX)?
        {
            debug_assert!(d.node.birth <= snap.gen, "a dead node is a snapshot's");
            extra.batch.remove_dead_node(&d);
        }
        let old = VolumeRecord {
            uid: {
                let mut st = inner.state.lock();
                st.sb.next_uid += 1;
                st.sb.next_uid - 1
            },
            created: now(),
            origin: Some(Origin {
                uid: head.uid,
                gen: snap.gen,
            }),
            deleting: true,
            delete_tree: 0,
            delete_cursor: 0,
            ..head.clone()
        };
        let reverted = VolumeRecord {
            root: snap.root,
            own_blocks: 0,
            ..head.clone()
        };
        let mut held = snap.clone();
        held.clones += 1;
        extra.batch.snapshot(head.uid, &held);
        // The head's overlay is empty, so no frozen record of it overrides
        // these (see `checkpoint`); the superblock written carries the uid.
        extra.records = vec![reverted.clone(), old.clone()];
        inner.checkpoint_locked(extra).await?;
        let info = {
            let mut st = inner.state.lock();
            let v = st
                .catalog
                .by_uid_mut(head.uid)
                .expect("the control lock keeps the volume");
            v.rec.root = reverted.root;
            v.rec.own_blocks = 0;
            v.own_delta = 0;
            if let Some(s) = v.snapshots.iter_mut().find(|s| s.gen == snap.gen) {
                s.clones = held.clones;
            }
            st.volume_info(st.catalog.get(name)?)
        };
        drop(writes);
        tracing::info!(
            volume = name,
            snapshot,
            "volume reverted to its newest snapshot"
        );
        inner.reclaim_volume(old, Vec::new()).await?;
        Ok(info)
    }
}
