//! Engine micro-benchmarks: the `ballast_engine` API alone, no NBD.
//!
//! `cargo bench --bench engine` measures:
//! - 4 KiB random writes and reads, one at a time (latency) and 32 in
//!   flight (throughput), on a 1 GiB volume;
//! - 1 MiB sequential writes and reads;
//! - snapshot create (durable, commit included) on a volume with 100k
//!   mapped extents.
//!
//! Under `cargo test` (no `--bench` flag) each benchmark runs once on a
//! small setup, as a smoke test.

use std::time::Duration;

use ballast_engine::{Pool, PoolConfig, Volume, BLOCK_SIZE};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use futures::future::join_all;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const VOL_SIZE: u64 = 1 << 30;
const MIB: usize = 1 << 20;

fn benchmarking() -> bool {
    std::env::args().any(|a| a == "--bench")
}

struct Fixture {
    _dir: tempfile::TempDir,
    pool: Pool,
    vol: Volume,
    rt: tokio::runtime::Runtime,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| ".".into()))
        .expect("temp dir for the pool (set BENCH_DIR to choose its filesystem)");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pool = Pool::open(PoolConfig::new(dir.path())).unwrap();
    let vol = rt.block_on(async {
        pool.create_volume("bench", VOL_SIZE).await.unwrap();
        pool.open_volume("bench").unwrap()
    });
    Fixture {
        _dir: dir,
        pool,
        vol,
        rt,
    }
}

fn random_data(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    StdRng::seed_from_u64(seed).fill(&mut v[..]);
    v
}

fn fill(f: &Fixture, bytes: u64) {
    let chunk = random_data(8 * MIB, 1);
    f.rt.block_on(async {
        let mut off = 0;
        while off < bytes {
            f.vol.write(off, &chunk).await.unwrap();
            off += chunk.len() as u64;
        }
        f.vol.flush().await.unwrap();
    });
}

fn random_4k(c: &mut Criterion) {
    let f = fixture();
    let span = if benchmarking() { VOL_SIZE } else { 64 << 20 };
    fill(&f, span);
    let blocks = span / BLOCK_SIZE;
    let data = random_data(4096, 2);
    let mut rng = StdRng::seed_from_u64(3);
    let mut g = c.benchmark_group("4k-random");
    g.throughput(Throughput::Bytes(4096));
    g.bench_function("write-qd1", |b| {
        b.to_async(&f.rt).iter(|| {
            let off = rng.gen_range(0..blocks) * BLOCK_SIZE;
            let (vol, data) = (&f.vol, &data);
            async move { vol.write(off, data).await.unwrap() }
        })
    });
    g.bench_function("read-qd1", |b| {
        b.to_async(&f.rt).iter(|| {
            let off = rng.gen_range(0..blocks) * BLOCK_SIZE;
            let vol = &f.vol;
            async move {
                let mut buf = vec![0u8; 4096];
                vol.read(off, &mut buf).await.unwrap();
            }
        })
    });
    g.throughput(Throughput::Bytes(32 * 4096));
    g.bench_function("write-qd32", |b| {
        b.to_async(&f.rt).iter(|| {
            let offs: Vec<u64> = (0..32)
                .map(|_| rng.gen_range(0..blocks) * BLOCK_SIZE)
                .collect();
            let (vol, data) = (&f.vol, &data);
            async move {
                join_all(offs.into_iter().map(|o| vol.write(o, data))).await;
            }
        })
    });
    g.bench_function("read-qd32", |b| {
        b.to_async(&f.rt).iter(|| {
            let offs: Vec<u64> = (0..32)
                .map(|_| rng.gen_range(0..blocks) * BLOCK_SIZE)
                .collect();
            let vol = &f.vol;
            async move {
                join_all(offs.into_iter().map(|o| async move {
                    let mut buf = vec![0u8; 4096];
                    vol.read(o, &mut buf).await.unwrap();
                }))
                .await;
            }
        })
    });
    g.finish();
}

fn sequential_1m(c: &mut Criterion) {
    let f = fixture();
    let span = if benchmarking() { VOL_SIZE } else { 64 << 20 };
    fill(&f, span);
    let data = random_data(MIB, 4);
    let mut g = c.benchmark_group("1m-sequential");
    g.throughput(Throughput::Bytes(MIB as u64));
    let mut off = 0u64;
    g.bench_function("write", |b| {
        b.to_async(&f.rt).iter(|| {
            let o = off;
            off = (off + MIB as u64) % span;
            let (vol, data) = (&f.vol, &data);
            async move { vol.write(o, data).await.unwrap() }
        })
    });
    let mut off = 0u64;
    g.bench_function("read", |b| {
        b.to_async(&f.rt).iter(|| {
            let o = off;
            off = (off + MIB as u64) % span;
            let vol = &f.vol;
            async move {
                let mut buf = vec![0u8; MIB];
                vol.read(o, &mut buf).await.unwrap();
            }
        })
    });
    g.finish();
}

fn snapshot_create(c: &mut Criterion) {
    let f = fixture();
    // One-block extents separated by holes, so none coalesce.
    let extents: u64 = if benchmarking() { 100_000 } else { 1_000 };
    let data = random_data(4096, 5);
    f.rt.block_on(async {
        for i in 0..extents {
            f.vol.write(i * 2 * BLOCK_SIZE, &data).await.unwrap();
        }
        f.vol.flush().await.unwrap();
    });
    let mapped = f.vol.block_status(0, VOL_SIZE).unwrap();
    assert!(
        mapped
            .iter()
            .filter(|e| e.state == ballast_engine::BlockState::Data)
            .count() as u64
            >= extents
    );
    let mut g = c.benchmark_group("snapshot");
    let mut n = 0u64;
    g.bench_with_input(
        BenchmarkId::new("create", format!("{extents}-extents")),
        &extents,
        |b, _| {
            b.to_async(&f.rt).iter(|| {
                n += 1;
                let (pool, name) = (&f.pool, format!("s{n}"));
                async move { pool.create_snapshot("bench", Some(&name)).await.unwrap() }
            })
        },
    );
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    targets = random_4k, sequential_1m, snapshot_create
}
criterion_main!(benches);
