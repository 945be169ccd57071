//! Writes and checks the workload of benches/backup-restic.sh, which times
//! the daemon's backups and restores against restic's (the pool must not be
//! open in a daemon while this runs):
//!
//! ```text
//! backup-bench prepare POOL_DIR IMAGE SIZE_MIB   reference workload into volume "bench" and IMAGE
//! backup-bench change  POOL_DIR IMAGE            a 1% change (82 x 256 KiB) to both
//! backup-bench export  POOL_DIR VOL FILE         write VOL's bytes to FILE
//! ```
//!
//! Reference workload (DESIGN.md): per 1 MiB unit, 40% random data, 30%
//! zeros, 30% one repeated 1 MiB pattern.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::time::Instant;

use ballast_engine::{Pool, PoolConfig};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

const MIB: u64 = 1 << 20;
const VOLUME: &str = "bench";

fn usage() -> ! {
    eprintln!("usage: backup-bench prepare|change|export ... (see the source)");
    std::process::exit(2)
}

fn fail(e: impl std::fmt::Display) -> ! {
    eprintln!("error: {e}");
    std::process::exit(1)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first() else { usage() };
    if args.len() < 2 {
        usage()
    }
    let pool = Pool::open(PoolConfig::new(&args[1])).unwrap_or_else(|e| fail(e));
    let start = Instant::now();
    match (cmd.as_str(), &args[2..]) {
        ("prepare", [image, size]) => {
            prepare(&pool, image, size.parse().unwrap_or_else(|e| fail(e))).await
        }
        ("change", [image]) => change(&pool, image).await,
        ("export", [vol, file]) => export(&pool, vol, file).await,
        _ => usage(),
    }
    eprintln!("{cmd}: {:.2}s", start.elapsed().as_secs_f64());
    pool.close().await.unwrap_or_else(|e| fail(e));
}

async fn prepare(pool: &Pool, image: &str, size_mib: u64) {
    let size = size_mib * MIB;
    pool.create_volume(VOLUME, size)
        .await
        .unwrap_or_else(|e| fail(e));
    let vol = pool.open_volume(VOLUME).unwrap_or_else(|e| fail(e));
    let file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(image)
        .unwrap_or_else(|e| fail(e));
    file.set_len(size).unwrap_or_else(|e| fail(e));
    let mut rng = StdRng::seed_from_u64(1);
    let mut pattern = vec![0u8; MIB as usize];
    rng.fill_bytes(&mut pattern);
    let mut buf = vec![0u8; MIB as usize];
    for i in 0..size_mib {
        let data = match rng.gen_range(0..10) {
            0..=3 => {
                rng.fill_bytes(&mut buf);
                &buf
            }
            4..=6 => continue,
            _ => &pattern,
        };
        vol.write(i * MIB, data).await.unwrap_or_else(|e| fail(e));
        file.write_all_at(data, i * MIB).unwrap_or_else(|e| fail(e));
    }
    vol.flush().await.unwrap_or_else(|e| fail(e));
    file.sync_all().unwrap_or_else(|e| fail(e));
}

/// 82 runs of 256 KiB of new random data at random 256 KiB-aligned offsets.
async fn change(pool: &Pool, image: &str) {
    let vol = pool.open_volume(VOLUME).unwrap_or_else(|e| fail(e));
    let file = OpenOptions::new()
        .write(true)
        .open(image)
        .unwrap_or_else(|e| fail(e));
    let run = 256 << 10;
    let slots = vol.size().unwrap_or_else(|e| fail(e)) / run;
    let mut rng = StdRng::from_entropy();
    let mut buf = vec![0u8; run as usize];
    for _ in 0..82 {
        let off = rng.gen_range(0..slots) * run;
        rng.fill_bytes(&mut buf);
        vol.write(off, &buf).await.unwrap_or_else(|e| fail(e));
        file.write_all_at(&buf, off).unwrap_or_else(|e| fail(e));
    }
    vol.flush().await.unwrap_or_else(|e| fail(e));
    file.sync_all().unwrap_or_else(|e| fail(e));
}

async fn export(pool: &Pool, vol: &str, path: &str) {
    let v = pool.open_volume(vol).unwrap_or_else(|e| fail(e));
    let size = v.size().unwrap_or_else(|e| fail(e));
    let file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)
        .unwrap_or_else(|e| fail(e));
    let mut buf = vec![0u8; 4 * MIB as usize];
    let mut off = 0;
    while off < size {
        let n = (size - off).min(buf.len() as u64) as usize;
        v.read(off, &mut buf[..n]).await.unwrap_or_else(|e| fail(e));
        file.write_all_at(&buf[..n], off)
            .unwrap_or_else(|e| fail(e));
        off += n as u64;
    }
}
