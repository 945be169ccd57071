//! When the kernel refuses io_uring (Docker's default seccomp profile makes
//! `io_uring_setup` fail with EPERM), a pool opened with `IoMode::Auto`
//! falls back to the pread/pwrite thread pool and works; `IoMode::Uring`
//! fails with a clear error instead.
//!
//! The filter is installed in a child process (seccomp cannot be undone).

use std::collections::BTreeMap;
use std::process::Command;

use ballast_engine::{IoMode, Pool, PoolConfig};
use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

fn refuse_io_uring() {
    let rules = BTreeMap::from([(libc::SYS_io_uring_setup, vec![])]);
    let arch = TargetArch::try_from(std::env::consts::ARCH).expect("supported architecture");
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .unwrap();
    let program: BpfProgram = filter.try_into().unwrap();
    seccompiler::apply_filter_all_threads(&program).unwrap();
}

#[test]
#[ignore = "started by auto_mode_falls_back_when_io_uring_is_refused"]
fn io_fallback_child() {
    let dir = std::env::var("FALLBACK_DIR").unwrap();
    refuse_io_uring();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let forced = Pool::open(PoolConfig {
            io: IoMode::Uring,
            ..PoolConfig::new(&dir)
        });
        let err = forced
            .err()
            .expect("io_uring must be refused under the filter");
        println!("FORCED-ERROR {err}");
        let pool = Pool::open(PoolConfig::new(&dir)).unwrap();
        pool.create_volume("v", 1 << 20).await.unwrap();
        let v = pool.open_volume("v").unwrap();
        v.write(4096, &[7u8; 8192]).await.unwrap();
        v.flush().await.unwrap();
        let mut back = [0u8; 8192];
        v.read(4096, &mut back).await.unwrap();
        assert!(back.iter().all(|&b| b == 7));
        println!("IO-MODE {}", pool.stats().io);
    });
}

#[test]
fn auto_mode_falls_back_when_io_uring_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "io_fallback_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("FALLBACK_DIR", dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("IO-MODE sync"), "{stdout}");
    assert!(stdout.contains("FORCED-ERROR"), "{stdout}");
    // Outside the filter the same pool opens with io_uring and the data is there.
    let pool = Pool::open(PoolConfig::new(dir.path())).unwrap();
    assert_eq!(pool.stats().io, "uring");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut back = [0u8; 8192];
    rt.block_on(pool.open_volume("v").unwrap().read(4096, &mut back))
        .unwrap();
    assert!(back.iter().all(|&b| b == 7));
}
