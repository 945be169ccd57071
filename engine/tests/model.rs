//! Model-based property test: random sequences of volume, snapshot and
//! data operations run against the engine and against a plain in-memory
//! model; after every step each volume and snapshot must read back exactly
//! as the model says, allocation queries must agree with the data, and
//! snapshot diffs must cover every block that differs.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;

use ballast_engine::{BlockState, IoMode, Pool, PoolConfig, BLOCK_SIZE};
use proptest::prelude::*;

const BS: u64 = BLOCK_SIZE;
const VOLS: usize = 3;
const SNAPS: usize = 3;
const MAX_BLOCKS: u64 = 8;

#[derive(Debug, Clone)]
enum Op {
    Create {
        vol: usize,
        blocks: u64,
    },
    Write {
        vol: usize,
        offset: u64,
        len: u64,
        seed: u8,
        zero: bool,
    },
    Trim {
        vol: usize,
        offset: u64,
        len: u64,
    },
    WriteZeroes {
        vol: usize,
        offset: u64,
        len: u64,
    },
    Read {
        vol: usize,
        offset: u64,
        len: u64,
    },
    Snapshot {
        vol: usize,
        snap: usize,
    },
    DeleteSnapshot {
        vol: usize,
        snap: usize,
    },
    Clone {
        vol: usize,
        from: usize,
        snap: usize,
    },
    DeleteVolume {
        vol: usize,
    },
    Rename {
        vol: usize,
        to: usize,
    },
    Grow {
        vol: usize,
        blocks: u64,
    },
    /// To the newest snapshot (`older`: to the one before it, refused).
    Revert {
        vol: usize,
        older: bool,
    },
    Flush,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    let vol = 0..VOLS;
    let snap = 0..SNAPS;
    // Offsets and lengths are fractions of the volume, resolved at run time
    // so that most operations are in range.
    // Block-aligned ones are common, as with real clients (and they take
    // the engine's no-copy paths).
    let off = prop_oneof![0..(MAX_BLOCKS * BS), (0..MAX_BLOCKS).prop_map(|b| b * BS)];
    let len = prop_oneof![
        1..512u64,
        1..(3 * BS),
        Just(BS),
        (1..4u64).prop_map(|n| n * BS),
        0..2u64
    ];
    prop_oneof![
        2 => (vol.clone(), 1..=MAX_BLOCKS).prop_map(|(vol, blocks)| Op::Create { vol, blocks }),
        8 => (vol.clone(), off.clone(), len.clone(), any::<u8>(), prop::bool::weighted(0.15))
            .prop_map(|(vol, offset, len, seed, zero)| Op::Write { vol, offset, len, seed, zero }),
        2 => (vol.clone(), off.clone(), len.clone()).prop_map(|(vol, offset, len)| Op::Trim { vol, offset, len }),
        2 => (vol.clone(), off.clone(), len.clone())
            .prop_map(|(vol, offset, len)| Op::WriteZeroes { vol, offset, len }),
        2 => (vol.clone(), off, len).prop_map(|(vol, offset, len)| Op::Read { vol, offset, len }),
        3 => (vol.clone(), snap.clone()).prop_map(|(vol, snap)| Op::Snapshot { vol, snap }),
        2 => (vol.clone(), snap.clone()).prop_map(|(vol, snap)| Op::DeleteSnapshot { vol, snap }),
        2 => (vol.clone(), vol.clone(), snap).prop_map(|(vol, from, snap)| Op::Clone { vol, from, snap }),
        1 => vol.clone().prop_map(|vol| Op::DeleteVolume { vol }),
        1 => (vol.clone(), vol.clone()).prop_map(|(vol, to)| Op::Rename { vol, to }),
        1 => (vol.clone(), 1..=MAX_BLOCKS).prop_map(|(vol, blocks)| Op::Grow { vol, blocks }),
        2 => (vol, prop::bool::weighted(0.2)).prop_map(|(vol, older)| Op::Revert { vol, older }),
        2 => Just(Op::Flush),
        1 => Just(Op::Reopen),
    ]
}

fn vname(i: usize) -> String {
    format!("v{i}")
}

fn sname(i: usize) -> String {
    format!("s{i}")
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    let mut x = u32::from(seed) | 0x100;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

#[derive(Default)]
struct Model {
    vols: BTreeMap<String, Vec<u8>>,
    /// (volume, snapshot) -> contents, in creation order per volume.
    snaps: BTreeMap<(String, String), (u64, Vec<u8>)>,
    /// (volume, snapshot) -> clones made from it.
    clones: BTreeMap<(String, String), Vec<String>>,
    origin: BTreeMap<String, (String, String)>,
    seq: u64,
}

impl Model {
    fn has_clones(&self, v: &str, s: &str) -> bool {
        self.clones
            .get(&(v.into(), s.into()))
            .is_some_and(|c| !c.is_empty())
    }

    fn snaps_of(&self, v: &str) -> Vec<(String, Vec<u8>)> {
        let mut s: Vec<_> = self
            .snaps
            .iter()
            .filter(|((vv, _), _)| vv == v)
            .map(|((_, s), (seq, d))| (*seq, s.clone(), d.clone()))
            .collect();
        s.sort();
        s.into_iter().map(|(_, n, d)| (n, d)).collect()
    }
}

/// Clamps an (offset, len) to a volume of `size` bytes most of the time,
/// leaving some requests out of range on purpose.
fn fit(offset: u64, len: u64, size: u64) -> (u64, u64) {
    if offset.is_multiple_of(7) {
        return (offset, len); // possibly out of range
    }
    let offset = offset % size;
    (offset, len.min(size - offset))
}

async fn check_all(pool: &Pool, model: &Model) {
    let mut names: Vec<String> = pool.volumes().into_iter().map(|v| v.name).collect();
    names.sort();
    let expected: Vec<String> = model.vols.keys().cloned().collect();
    assert_eq!(names, expected, "volume list");
    for (name, data) in &model.vols {
        let expected_origin = model.origin.get(name).map(|(v, s)| format!("{v}@{s}"));
        assert_eq!(
            pool.volume(name).unwrap().origin,
            expected_origin,
            "origin of {name}"
        );
        let h = pool.open_volume(name).unwrap();
        assert_eq!(h.size().unwrap(), data.len() as u64);
        check_contents(&h, data).await;
        let snaps = model.snaps_of(name);
        let listed: Vec<String> = pool
            .snapshots(name)
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(
            listed,
            snaps.iter().map(|s| s.0.clone()).collect::<Vec<_>>(),
            "snapshots of {name}"
        );
        for (sn, sdata) in &snaps {
            let sh = pool.open_snapshot(name, sn).unwrap();
            assert!(sh.read_only());
            check_contents(&sh, sdata).await;
            check_diff(pool, name, None, sn, None, sdata);
        }
        for w in snaps.windows(2) {
            check_diff(pool, name, Some(&w[0].0), &w[1].0, Some(&w[0].1), &w[1].1);
        }
    }
}

async fn check_contents(h: &ballast_engine::Volume, data: &[u8]) {
    let mut buf = vec![0xeeu8; data.len()];
    h.read(0, &mut buf).await.unwrap();
    assert!(
        buf == data,
        "contents of {}{:?} differ from the model",
        h.name(),
        h.snapshot()
    );
    let extents = h.block_status(0, data.len() as u64).unwrap();
    let mut pos = 0;
    for e in &extents {
        assert_eq!(e.offset, pos, "extents are contiguous");
        if e.state != BlockState::Data {
            let r = &data[e.offset as usize..(e.offset + e.len) as usize];
            assert!(
                r.iter().all(|&b| b == 0),
                "{:?} extent at {} holds data",
                e.state,
                e.offset
            );
        }
        pos += e.len;
    }
    assert_eq!(pos, data.len() as u64, "extents cover the volume");
}

fn check_diff(
    pool: &Pool,
    vol: &str,
    from: Option<&str>,
    to: &str,
    old: Option<&Vec<u8>>,
    new: &[u8],
) {
    let ranges = pool.diff(vol, from, to).unwrap();
    let covered = |b: u64| {
        ranges
            .iter()
            .any(|r| r.start <= b * BS && (b + 1) * BS <= r.end)
    };
    for b in 0..new.len() as u64 / BS {
        let nb = &new[(b * BS) as usize..((b + 1) * BS) as usize];
        let differs = match old {
            Some(o) if ((b + 1) * BS) as usize <= o.len() => {
                o[(b * BS) as usize..((b + 1) * BS) as usize] != *nb
            }
            _ => nb.iter().any(|&x| x != 0),
        };
        if differs {
            assert!(covered(b), "diff {vol} {from:?}..{to} misses block {b}");
        }
    }
}

/// How the pool does I/O: the thread pool, io_uring on a thread of its
/// own, or io_uring reaped on the test's runtime (as the daemon does).
#[derive(Debug, Clone, Copy)]
enum Backend {
    Sync,
    UringThread,
    UringRuntime,
}

async fn run(ops: Vec<Op>, backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = PoolConfig::new(dir.path());
    config.io = match backend {
        Backend::Sync => IoMode::Sync,
        Backend::UringThread | Backend::UringRuntime => IoMode::Uring,
    };
    config.runtime = matches!(backend, Backend::UringRuntime).then(tokio::runtime::Handle::current);
    let mut pool = Pool::open(config.clone()).unwrap();
    let mut m = Model::default();
    for op in ops {
        match op {
            Op::Create { vol, blocks } => {
                let r = pool.create_volume(&vname(vol), blocks * BS).await;
                match m.vols.entry(vname(vol)) {
                    Entry::Occupied(_) => assert!(r.is_err()),
                    Entry::Vacant(e) => {
                        r.unwrap();
                        e.insert(vec![0; (blocks * BS) as usize]);
                    }
                }
            }
            Op::Write {
                vol,
                offset,
                len,
                seed,
                zero,
            } => {
                let Some(data) = m.vols.get_mut(&vname(vol)) else {
                    assert!(pool.open_volume(&vname(vol)).is_err());
                    continue;
                };
                let (offset, len) = fit(offset, len, data.len() as u64);
                let bytes = if zero {
                    vec![0; len as usize]
                } else {
                    pattern(seed, len as usize)
                };
                let h = pool.open_volume(&vname(vol)).unwrap();
                // Half the writes go through a pool buffer, as NBD does.
                let r = if seed % 2 == 1 {
                    let mut buf = h.buffer(bytes.len());
                    buf.copy_from_slice(&bytes);
                    h.write_owned(offset, buf).await
                } else {
                    h.write(offset, &bytes).await
                };
                if offset + len <= data.len() as u64 {
                    r.unwrap();
                    data[offset as usize..(offset + len) as usize].copy_from_slice(&bytes);
                } else {
                    assert!(r.is_err(), "write past the end must fail");
                }
            }
            Op::Trim { vol, offset, len } | Op::WriteZeroes { vol, offset, len } => {
                let Some(data) = m.vols.get_mut(&vname(vol)) else {
                    continue;
                };
                let (offset, len) = fit(offset, len, data.len() as u64);
                let h = pool.open_volume(&vname(vol)).unwrap();
                let r = if matches!(op, Op::Trim { .. }) {
                    h.trim(offset, len).await
                } else {
                    h.write_zeroes(offset, len).await
                };
                if offset + len <= data.len() as u64 {
                    r.unwrap();
                    data[offset as usize..(offset + len) as usize].fill(0);
                } else {
                    assert!(r.is_err());
                }
            }
            Op::Read { vol, offset, len } => {
                let Some(data) = m.vols.get(&vname(vol)) else {
                    continue;
                };
                let (offset, len) = fit(offset, len, data.len() as u64);
                let mut buf = vec![0xaa; len as usize];
                let h = pool.open_volume(&vname(vol)).unwrap();
                let r = h.read(offset, &mut buf).await;
                // The owned-buffer read (no copy when one run of pool
                // blocks covers the range) must agree.
                let owned = h.read_owned(offset, len as usize).await;
                if offset + len <= data.len() as u64 {
                    r.unwrap();
                    let want = &data[offset as usize..(offset + len) as usize];
                    assert!(buf == want, "partial read");
                    assert!(*owned.unwrap() == *want, "owned read");
                } else {
                    assert!(r.is_err());
                    assert!(owned.is_err());
                }
            }
            Op::Snapshot { vol, snap } => {
                let r = pool.create_snapshot(&vname(vol), Some(&sname(snap))).await;
                let key = (vname(vol), sname(snap));
                match m.vols.get(&vname(vol)) {
                    Some(data) if !m.snaps.contains_key(&key) => {
                        r.unwrap();
                        m.seq += 1;
                        m.snaps.insert(key, (m.seq, data.clone()));
                    }
                    _ => assert!(r.is_err()),
                }
            }
            Op::DeleteSnapshot { vol, snap } => {
                let r = pool.delete_snapshot(&vname(vol), &sname(snap)).await;
                let key = (vname(vol), sname(snap));
                if m.snaps.contains_key(&key) && !m.has_clones(&key.0, &key.1) {
                    r.unwrap();
                    m.snaps.remove(&key);
                } else {
                    assert!(r.is_err());
                }
            }
            Op::Clone { vol, from, snap } => {
                let r = pool
                    .clone_volume(&vname(vol), &vname(from), &sname(snap))
                    .await;
                let key = (vname(from), sname(snap));
                match m.snaps.get(&key) {
                    Some((_, data)) if !m.vols.contains_key(&vname(vol)) => {
                        let info = r.unwrap();
                        assert_eq!(info.origin, Some(format!("{}@{}", key.0, key.1)));
                        m.vols.insert(vname(vol), data.clone());
                        m.clones.entry(key.clone()).or_default().push(vname(vol));
                        m.origin.insert(vname(vol), key);
                    }
                    _ => assert!(r.is_err()),
                }
            }
            Op::DeleteVolume { vol } => {
                let name = vname(vol);
                let r = pool.delete_volume(&name).await;
                let blocked = m
                    .snaps
                    .keys()
                    .any(|(v, s)| *v == name && m.has_clones(v, s));
                if m.vols.contains_key(&name) && !blocked {
                    r.unwrap();
                    m.vols.remove(&name);
                    m.snaps.retain(|(v, _), _| *v != name);
                    if let Some(origin) = m.origin.remove(&name) {
                        m.clones.get_mut(&origin).unwrap().retain(|c| *c != name);
                    }
                } else {
                    assert!(r.is_err());
                }
            }
            Op::Rename { vol, to } => {
                let (old, new) = (vname(vol), vname(to));
                let r = pool.rename_volume(&old, &new).await;
                if m.vols.contains_key(&old) && !m.vols.contains_key(&new) {
                    assert_eq!(r.unwrap().name, new);
                    let data = m.vols.remove(&old).unwrap();
                    m.vols.insert(new.clone(), data);
                    let renamed = |key: &(String, String)| {
                        if key.0 == old {
                            (new.clone(), key.1.clone())
                        } else {
                            key.clone()
                        }
                    };
                    m.snaps = std::mem::take(&mut m.snaps)
                        .into_iter()
                        .map(|(k, v)| (renamed(&k), v))
                        .collect();
                    m.clones = std::mem::take(&mut m.clones)
                        .into_iter()
                        .map(|(k, mut v)| {
                            for c in v.iter_mut().filter(|c| **c == old) {
                                *c = new.clone();
                            }
                            (renamed(&k), v)
                        })
                        .collect();
                    m.origin = std::mem::take(&mut m.origin)
                        .into_iter()
                        .map(|(k, v)| (if k == old { new.clone() } else { k }, renamed(&v)))
                        .collect();
                } else {
                    assert!(r.is_err());
                }
            }
            Op::Grow { vol, blocks } => {
                let Some(data) = m.vols.get_mut(&vname(vol)) else {
                    continue;
                };
                let new = data.len() as u64 + blocks * BS;
                pool.grow_volume(&vname(vol), new).await.unwrap();
                data.resize(new as usize, 0);
                // Shrinking and absurd sizes are refused and change nothing.
                assert!(pool
                    .grow_volume(&vname(vol), ballast_engine::MAX_VOLUME_SIZE + BS)
                    .await
                    .is_err());
                assert!(pool.grow_volume(&vname(vol), BS).await.is_err() || new == BS);
            }
            Op::Revert { vol, older } => {
                let name = vname(vol);
                let snaps = m.snaps_of(&name);
                let Some((newest, sdata)) = snaps.last().cloned() else {
                    assert!(pool.revert_volume(&name, &sname(0)).await.is_err());
                    continue;
                };
                if older && snaps.len() >= 2 {
                    let snap = &snaps[snaps.len() - 2].0;
                    let r = pool.revert_volume(&name, snap).await;
                    assert!(r.is_err(), "revert to {name}@{snap}, not the newest");
                    continue;
                }
                pool.revert_volume(&name, &newest).await.unwrap();
                let data = m.vols.get_mut(&name).unwrap();
                let len = data.len();
                *data = sdata;
                data.resize(len, 0);
            }
            Op::Flush => pool.flush().await.unwrap(),
            Op::Reopen => {
                pool.close().await.unwrap();
                drop(pool);
                pool = Pool::open(config.clone()).unwrap();
            }
        }
        check_all(&pool, &m).await;
    }
    // Space accounting: once every volume is deleted (clones before their
    // origins) and the deletes are committed, the pool holds no blocks.
    let mut left: Vec<String> = m.vols.keys().cloned().collect();
    while !left.is_empty() {
        let before = left.len();
        let mut still = Vec::new();
        for name in left {
            if pool.delete_volume(&name).await.is_err() {
                still.push(name);
            }
        }
        assert!(
            still.len() < before,
            "no volume could be deleted: {still:?}"
        );
        left = still;
    }
    pool.flush().await.unwrap();
    assert_eq!(pool.stats().used, 0, "blocks leaked");
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(96),
        ..ProptestConfig::default()
    })]

    #[test]
    fn engine_matches_model(
        ops in prop::collection::vec(op(), 1..60),
        backend in prop_oneof![Just(Backend::Sync), Just(Backend::UringThread), Just(Backend::UringRuntime)],
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(run(ops, backend));
    }
}
