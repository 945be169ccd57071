//! Crash safety: a child process writes, trims and flushes a volume and is
//! killed with SIGKILL at a random moment. After reopening, the volume must
//! hold exactly the state after some prefix of its script that includes
//! every acknowledged flush (commits are atomic, and a full pool may commit
//! between flushes), every block must pass its checksum, and volumes from
//! earlier rounds must be untouched.
//!
//! The pool is capped at the live data plus a few blocks, so the allocator
//! reuses freed blocks almost at once: a block freed before the commit that
//! unreferences it is durable would show up here as a checksum failure.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use ballast_engine::{Error, IoMode, Pool, PoolConfig, BLOCK_SIZE};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const BS: u64 = BLOCK_SIZE;
const VOL_SIZE: u64 = 1 << 20;
const ROUNDS: u64 = 16;
/// How far past the last acknowledged flush a crash state is looked for.
const MAX_STEPS_PAST: usize = 1_000_000;

enum Step {
    Write(u64, Vec<u8>),
    Trim(u64, u64),
    Flush,
    /// Merge the changes into the on-disk maps and trim the journal.
    Checkpoint,
    Snapshot,
    /// Delete the oldest snapshot.
    DropSnapshot,
}

/// The child's deterministic script for `seed`.
fn script(seed: u64) -> impl Iterator<Item = Step> {
    let mut rng = StdRng::seed_from_u64(seed);
    std::iter::from_fn(move || {
        let roll = rng.gen_range(0..100);
        Some(if roll < 70 {
            let (offset, len) = if rng.gen_bool(0.3) {
                let off = rng.gen_range(0..VOL_SIZE - 1);
                (off, rng.gen_range(1..=(3 * BS).min(VOL_SIZE - off)))
            } else {
                let blocks = rng.gen_range(1..=8);
                (rng.gen_range(0..VOL_SIZE / BS - blocks) * BS, blocks * BS)
            };
            let mut data = vec![0u8; len as usize];
            rng.fill(&mut data[..]);
            Step::Write(offset, data)
        } else if roll < 92 {
            let off = rng.gen_range(0..VOL_SIZE - 1);
            Step::Trim(off, rng.gen_range(1..=(64 * BS).min(VOL_SIZE - off)))
        } else if roll < 96 {
            Step::Flush
        } else if roll < 98 {
            Step::Checkpoint
        } else if roll < 99 {
            Step::Snapshot
        } else {
            Step::DropSnapshot
        })
    })
}

/// Rounds take turns at the three ways to do I/O: the thread pool,
/// io_uring on a thread of its own, and io_uring reaped on the caller's
/// runtime (as the daemon does; call from inside that runtime).
fn config(dir: &std::path::Path, round: u64) -> PoolConfig {
    let (io, runtime) = match round % 3 {
        0 => (IoMode::Uring, None),
        1 => (IoMode::Sync, None),
        _ => (IoMode::Uring, Some(tokio::runtime::Handle::current())),
    };
    // A small cap makes the allocator wrap around and reuse freed blocks
    // within a round, which is where a premature free would show.
    // Room for this and every earlier round's volume, fully written, plus
    // one write.
    let cap = VOL_SIZE * (round + 1) + 64 * BS;
    let mut config = PoolConfig::new(dir);
    config.max_size = Some(cap);
    config.io = io;
    config.runtime = runtime;
    config
}

/// Runs inside the child process (started by `crash_recovery`).
#[test]
#[ignore = "started by crash_recovery as a child process"]
fn crash_child() {
    let dir = std::env::var("CRASH_DIR").expect("CRASH_DIR");
    let round: u64 = std::env::var("CRASH_ROUND").unwrap().parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    rt.block_on(async {
        let pool = Pool::open(config(dir.as_ref(), round)).unwrap();
        let name = format!("v{round}");
        let vol = pool.open_volume(&name).unwrap();
        println!("READY");
        for (i, step) in script(round).enumerate() {
            // Snapshots hold old blocks in a pool capped for the live data
            // alone: when it fills up, they go, oldest first.
            loop {
                let done = match &step {
                    Step::Write(off, data) => vol.write(*off, data).await,
                    Step::Trim(off, len) => vol.trim(*off, *len).await,
                    _ => Ok(()),
                };
                match done {
                    Ok(()) => break,
                    Err(Error::NoSpace(_)) => {
                        let oldest = pool.snapshots(&name).unwrap().into_iter().next();
                        let oldest = oldest.expect("the pool has room for the live data");
                        pool.delete_snapshot(&name, &oldest.name).await.unwrap();
                    }
                    Err(e) => panic!("step {i}: {e}"),
                }
            }
            match step {
                Step::Write(..) | Step::Trim(..) => {}
                Step::Flush => {
                    vol.flush().await.unwrap();
                    println!("FLUSHED {i}");
                }
                Step::Checkpoint => pool.checkpoint().await.unwrap(),
                Step::Snapshot => {
                    pool.create_snapshot(&name, Some(&format!("s{i}")))
                        .await
                        .unwrap();
                }
                Step::DropSnapshot => {
                    if let Some(s) = pool.snapshots(&name).unwrap().first() {
                        pool.delete_snapshot(&name, &s.name).await.unwrap();
                    }
                }
            }
        }
    });
}

/// The parts of a trim that become durable one by one, in the order the
/// engine does them: a partial block at each edge is a write of zeros of
/// its own, the whole blocks between are unmapped last. (A commit, such as
/// the one a full pool makes, may fall between them.)
fn trim_parts(off: u64, len: u64) -> Vec<(u64, u64)> {
    let end = off + len;
    let (first, last) = (off.div_ceil(BS) * BS, end / BS * BS);
    if first >= last {
        return vec![(off, len)];
    }
    let mut parts = Vec::new();
    if off < first {
        parts.push((off, first - off));
    }
    if end > last {
        parts.push((last, end - last));
    }
    parts.push((first, last - first));
    parts
}

/// Whether `got` is the volume state after some prefix of the script
/// that contains its first `acked_flushes` flushes.
fn is_prefix_state(round: u64, acked_flushes: usize, got: &[u8]) -> bool {
    let mut data = vec![0u8; VOL_SIZE as usize];
    let mut flushes = 0;
    if acked_flushes == 0 && got == data {
        return true;
    }
    for step in script(round).take(MAX_STEPS_PAST) {
        match step {
            Step::Write(off, d) => data[off as usize..off as usize + d.len()].copy_from_slice(&d),
            Step::Trim(off, len) => {
                for (o, l) in trim_parts(off, len) {
                    data[o as usize..(o + l) as usize].fill(0);
                    if flushes >= acked_flushes && got == data {
                        return true;
                    }
                }
            }
            Step::Flush => flushes += 1,
            Step::Checkpoint | Step::Snapshot | Step::DropSnapshot => {}
        }
        if flushes >= acked_flushes && got == data {
            return true;
        }
    }
    false
}

#[test]
fn crash_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let mut kill_rng = StdRng::seed_from_u64(0xba11a57);
    let mut verified: Vec<Vec<u8>> = Vec::new();
    for round in 0..ROUNDS {
        rt.block_on(async {
            let pool = Pool::open(config(dir.path(), round)).unwrap();
            // Earlier rounds' snapshots go, so each volume holds at most
            // its own size and the cap below stays tight.
            for v in pool.volumes() {
                for s in v.snapshots {
                    pool.delete_snapshot(&v.name, &s.name).await.unwrap();
                }
            }
            pool.create_volume(&format!("v{round}"), VOL_SIZE)
                .await
                .unwrap();
            pool.close().await.unwrap();
        });

        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "crash_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("CRASH_DIR", dir.path())
            .env("CRASH_ROUND", round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut last = None;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // libtest's own "test crash_child ... " precedes the first line.
                if line.ends_with("READY") {
                    let _ = tx.send(());
                } else if let Some(i) = line.strip_prefix("FLUSHED ") {
                    last = Some(i.parse::<usize>().unwrap());
                }
            }
            last
        });
        rx.recv_timeout(Duration::from_secs(30))
            .expect("child started");
        std::thread::sleep(Duration::from_millis(kill_rng.gen_range(10..400)));
        assert!(
            child.try_wait().unwrap().is_none(),
            "round {round}: the child stopped before it was killed (run crash_child to see why)"
        );
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let last_acked = reader.join().unwrap();

        let acked = last_acked.map_or(0, |i| count_flushes_upto(round, i));

        rt.block_on(async {
            let pool = Pool::open(config(dir.path(), round)).unwrap();
            let vol = pool.open_volume(&format!("v{round}")).unwrap();
            let mut got = vec![0u8; VOL_SIZE as usize];
            vol.read(0, &mut got)
                .await
                .expect("every block passes its checksum");
            assert!(
                is_prefix_state(round, acked, &got),
                "round {round}: volume is not a state at or after acknowledged flush {acked}"
            );
            for (r, want) in verified.iter().enumerate() {
                let mut old = vec![0u8; VOL_SIZE as usize];
                pool.open_volume(&format!("v{r}"))
                    .unwrap()
                    .read(0, &mut old)
                    .await
                    .unwrap();
                assert!(old == *want, "round {round} changed volume v{r}");
            }
            verified.push(got);
            pool.close().await.unwrap();
        });
    }
    // Across every crash, nothing leaked: once every volume and snapshot
    // is gone, so is every block and every map node.
    rt.block_on(async {
        let pool = Pool::open(config(dir.path(), ROUNDS)).unwrap();
        for v in pool.volumes() {
            pool.delete_volume(&v.name).await.unwrap();
        }
        pool.checkpoint().await.unwrap();
        pool.checkpoint().await.unwrap();
        assert_eq!(pool.stats().used, 0, "blocks leaked across crashes");
        let keys = pool.metadata_keys();
        assert_eq!(keys.get(&'N'), None, "map nodes leaked: {keys:?}");
        pool.close().await.unwrap();
    });
}

/// How many flushes the script has performed up to and including step `i`.
fn count_flushes_upto(round: u64, i: usize) -> usize {
    script(round)
        .take(i + 1)
        .filter(|s| matches!(s, Step::Flush))
        .count()
}
