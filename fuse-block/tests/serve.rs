//! The FUSE server over a real pool, driven by the kernel: direct I/O on
//! the file, large writes in flight together, a loop device and ext4 on
//! top, one engine flush per fsync, discard, bad requests, and a takeover
//! of a running connection by a new server with the redo log replayed.
//!
//! Needs root, `/dev/fuse`, `losetup` and `mkfs.ext4`; under `CI=true` a
//! missing one is a failure.

use std::fs::{File, OpenOptions};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use ballast_engine::{Pool, PoolConfig, Volume};
use ballast_fuse::{Backing, FileExport};

const MIB: u64 = 1 << 20;

fn runnable() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let tools = ["losetup", "mkfs.ext4", "mount", "umount"].iter().all(|t| {
        Command::new("sh")
            .args(["-c", &format!("command -v {t} >/dev/null")])
            .status()
            .is_ok_and(|s| s.success())
    });
    if root && Path::new("/dev/fuse").exists() && tools {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "the FUSE tests need root, /dev/fuse, losetup and mkfs.ext4"
    );
    eprintln!("skipping: needs root, /dev/fuse, losetup, mkfs.ext4");
    false
}

/// A volume that counts what reaches the engine.
#[derive(Clone)]
struct Counted {
    volume: Volume,
    flushes: Arc<AtomicU64>,
    writes: Arc<AtomicU64>,
    trims: Arc<AtomicU64>,
}

impl Counted {
    fn new(volume: Volume) -> Counted {
        Counted {
            volume,
            flushes: Default::default(),
            writes: Default::default(),
            trims: Default::default(),
        }
    }
    fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::SeqCst)
    }
}

impl Backing for Counted {
    type Buf = ballast_engine::PooledBuf;
    fn size(&self) -> ballast_engine::Result<u64> {
        self.volume.size()
    }
    async fn read(&self, offset: u64, len: usize) -> ballast_engine::Result<Self::Buf> {
        self.volume.read_owned(offset, len).await
    }
    async fn write(&self, offset: u64, data: &[u8]) -> ballast_engine::Result<()> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.volume.write(offset, data).await
    }
    async fn write_zeroes(&self, offset: u64, len: u64) -> ballast_engine::Result<()> {
        self.volume.write_zeroes(offset, len).await
    }
    async fn trim(&self, offset: u64, len: u64) -> ballast_engine::Result<()> {
        self.trims.fetch_add(1, Ordering::SeqCst);
        self.volume.trim(offset, len).await
    }
    async fn flush(&self) -> ballast_engine::Result<()> {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        self.volume.flush().await
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    pool: Pool,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::Builder::new()
            .prefix("ballast-fuse-test-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let mut config = PoolConfig::new(dir.path().join("pool"));
        config.runtime = Some(tokio::runtime::Handle::current());
        let pool = Pool::open(config).unwrap();
        Fixture { dir, pool }
    }

    async fn volume(&self, name: &str, size: u64) -> Counted {
        self.pool.create_volume(name, size).await.unwrap();
        Counted::new(self.pool.open_volume(name).unwrap())
    }

    fn mnt(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// `len` bytes at a 4096-aligned address inside `storage`.
fn direct_buf(storage: &mut Vec<u8>, len: usize) -> &mut [u8] {
    storage.resize(len + 4096, 0);
    let pad = storage.as_ptr().align_offset(4096);
    &mut storage[pad..pad + len]
}

fn open_direct(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .unwrap()
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_io_reaches_the_engine_and_each_fsync_is_one_flush() {
    if !runnable() {
        return;
    }
    let f = Fixture::new();
    let vol = f.volume("v", 64 * MIB).await;
    let export = FileExport::mount(vol.clone(), &f.mnt("m"), "v")
        .await
        .unwrap();
    let file = export.file();
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 64 * MIB);
    let names: Vec<_> = std::fs::read_dir(f.mnt("m"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["disk"]);

    let before = vol.flushes();
    let path = file.clone();
    tokio::task::spawn_blocking(move || {
        let disk = open_direct(&path);
        let mut storage = Vec::new();
        let buf = direct_buf(&mut storage, 8192);
        buf.fill(0xab);
        disk.write_all_at(buf, MIB).unwrap();
        disk.sync_all().unwrap();
        // The last page of the file, then one past the end.
        disk.write_all_at(&buf[..4096], 64 * MIB - 4096).unwrap();
        let err = disk.write_at(&buf[..4096], 64 * MIB).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
        let mut storage2 = Vec::new();
        let back = direct_buf(&mut storage2, 8192);
        disk.read_exact_at(back, MIB).unwrap();
        assert!(back.iter().all(|&b| b == 0xab));
        // A read across the end stops there.
        assert_eq!(disk.read_at(back, 64 * MIB - 4096).unwrap(), 4096);
        assert_eq!(disk.read_at(back, 64 * MIB).unwrap(), 0);
    })
    .await
    .unwrap();
    // One fsync; the close sends FUSE_FLUSH, one more.
    assert_eq!(
        vol.flushes() - before,
        2,
        "one engine flush per fsync and per close"
    );
    let mut direct = vec![0u8; 8192];
    vol.volume.read(MIB, &mut direct).await.unwrap();
    assert!(
        direct.iter().all(|&b| b == 0xab),
        "the engine holds what was written"
    );

    // Permission bits and size are ballast's.
    let err = std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o666))
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EPERM));
    let err = OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(MIB)
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EPERM));

    export.unmount().await.unwrap();
    assert!(!file.exists());
}

/// Byte `i` of the `pass`-th write of chunk `chunk`: differs from chunk to
/// chunk, pass to pass and within a page.
fn pattern(chunk: u64, pass: u64, i: usize) -> u8 {
    (chunk as usize * 31 + pass as usize * 7 + i / 512) as u8
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_writes_in_flight_together_keep_their_own_bytes() {
    if !runnable() {
        return;
    }
    let f = Fixture::new();
    let vol = f.volume("big", 64 * MIB).await;
    let export = FileExport::mount(vol.clone(), &f.mnt("m"), "big")
        .await
        .unwrap();
    let file = export.file();
    // Eight writers of 1 MiB at once, twice over the same chunks: the read
    // buffers a request gave back are read into again while others are
    // still being written, and the second pass must replace the first.
    const CHUNKS: u64 = 16;
    for pass in 0..2 {
        let writers: Vec<_> = (0..8)
            .map(|w| {
                let path = file.clone();
                tokio::task::spawn_blocking(move || {
                    let disk = open_direct(&path);
                    let mut storage = Vec::new();
                    let buf = direct_buf(&mut storage, MIB as usize);
                    for chunk in (w..CHUNKS).step_by(8) {
                        for (i, b) in buf.iter_mut().enumerate() {
                            *b = pattern(chunk, pass, i);
                        }
                        disk.write_all_at(buf, chunk * MIB).unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.await.unwrap();
        }
    }
    let path = file.clone();
    tokio::task::spawn_blocking(move || {
        let disk = open_direct(&path);
        let mut storage = Vec::new();
        let back = direct_buf(&mut storage, MIB as usize);
        for chunk in 0..CHUNKS {
            disk.read_exact_at(back, chunk * MIB).unwrap();
            let bad = back
                .iter()
                .enumerate()
                .position(|(i, &b)| b != pattern(chunk, 1, i));
            assert_eq!(bad, None, "chunk {chunk} read back through the file");
        }
    })
    .await
    .unwrap();
    let mut direct = vec![0u8; MIB as usize];
    for chunk in 0..CHUNKS {
        vol.volume.read(chunk * MIB, &mut direct).await.unwrap();
        let bad = direct
            .iter()
            .enumerate()
            .position(|(i, &b)| b != pattern(chunk, 1, i));
        assert_eq!(bad, None, "chunk {chunk} in the engine");
    }
    export.unmount().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ext4_on_a_direct_io_loop_device() {
    if !runnable() {
        return;
    }
    let f = Fixture::new();
    let vol = f.volume("fs", 256 * MIB).await;
    let export = FileExport::mount(vol.clone(), &f.mnt("m"), "fs")
        .await
        .unwrap();
    let file = export.file();
    let target = f.mnt("fs");
    std::fs::create_dir_all(&target).unwrap();
    let (fsyncs, flushes, trims) = tokio::task::spawn_blocking({
        let (file, target, vol) = (file.clone(), target.clone(), vol.clone());
        move || {
            let device = run(
                "losetup",
                &["--find", "--show", "--direct-io=on", file.to_str().unwrap()],
            );
            let device = device.trim().to_string();
            let name = device.trim_start_matches("/dev/");
            let dio = std::fs::read_to_string(format!("/sys/block/{name}/loop/dio")).unwrap();
            assert_eq!(
                dio.trim(),
                "1",
                "the loop device does direct I/O on the FUSE file"
            );
            run("mkfs.ext4", &["-q", "-E", "nodiscard", &device]);
            // No background inode-table zeroing: it issues cache flushes of
            // its own, which a slow run would count among the fsyncs'.
            run(
                "mount",
                &["-o", "noinit_itable", &device, target.to_str().unwrap()],
            );
            let data = target.join("data");
            let before = vol.flushes();
            let mut fsyncs = 0;
            {
                let out = File::create(&data).unwrap();
                for i in 0..20u64 {
                    out.write_all_at(&[i as u8; 4096], i * 4096).unwrap();
                    out.sync_data().unwrap();
                    fsyncs += 1;
                }
            }
            let flushes = vol.flushes() - before;
            let trims_before = vol.trims.load(Ordering::SeqCst);
            std::fs::remove_file(&data).unwrap();
            run("fstrim", &[target.to_str().unwrap()]);
            let trims = vol.trims.load(Ordering::SeqCst) - trims_before;
            run("umount", &[target.to_str().unwrap()]);
            run("losetup", &["-d", &device]);
            (fsyncs, flushes, trims)
        }
    })
    .await
    .unwrap();
    // An fdatasync on ext4 is a journal commit: a cache flush before the
    // commit record and, the loop device offering no FUA, one after it.
    // Nothing on the attach path adds to that.
    assert!(
        (fsyncs..=2 * fsyncs).contains(&flushes),
        "{flushes} engine flushes for {fsyncs} fdatasyncs"
    );
    assert!(trims > 0, "fstrim reaches the engine as discards");
    export.unmount().await.unwrap();
}

/// A volume whose writes can be made to vanish after they are
/// acknowledged, as the uncommitted writes of a killed daemon do.
#[derive(Clone)]
struct Forgetful {
    inner: Counted,
    forget: Arc<AtomicBool>,
}

impl Backing for Forgetful {
    type Buf = ballast_engine::PooledBuf;
    fn size(&self) -> ballast_engine::Result<u64> {
        self.inner.size()
    }
    async fn read(&self, offset: u64, len: usize) -> ballast_engine::Result<Self::Buf> {
        self.inner.read(offset, len).await
    }
    async fn write(&self, offset: u64, data: &[u8]) -> ballast_engine::Result<()> {
        if self.forget.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.inner.write(offset, data).await
    }
    async fn write_zeroes(&self, offset: u64, len: u64) -> ballast_engine::Result<()> {
        self.inner.write_zeroes(offset, len).await
    }
    async fn trim(&self, offset: u64, len: u64) -> ballast_engine::Result<()> {
        self.inner.trim(offset, len).await
    }
    async fn flush(&self) -> ballast_engine::Result<()> {
        self.inner.flush().await
    }
}

fn runtime(threads: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn a_new_server_takes_over_and_replays_what_was_acknowledged() {
    if !runnable() {
        return;
    }
    let main = runtime(2);
    let f = main.block_on(async { Fixture::new() });
    let vol = main.block_on(f.volume("t", 64 * MIB));
    let forget = Arc::new(AtomicBool::new(false));
    // The first server runs on a runtime of its own, so that it can die
    // the way a killed daemon does: at once, answering nothing more.
    let first = runtime(1);
    let backing = Forgetful {
        inner: vol.clone(),
        forget: forget.clone(),
    };
    let export = first
        .block_on(FileExport::mount(backing, &f.mnt("m"), "t"))
        .unwrap();
    let file = export.file();
    // What a holder keeps across the restart.
    let [fuse, log] = export.fds();
    let (fuse, log): (OwnedFd, OwnedFd) = (
        fuse.try_clone_to_owned().unwrap(),
        log.try_clone_to_owned().unwrap(),
    );
    let handoff = export.handoff();

    let disk = open_direct(&file);
    let mut storage = Vec::new();
    let buf = direct_buf(&mut storage, 4096);
    buf.fill(1);
    disk.write_all_at(buf, 0).unwrap();
    disk.sync_all().unwrap();
    // Acknowledged, then lost with the daemon's uncommitted state.
    forget.store(true, Ordering::SeqCst);
    buf.fill(2);
    disk.write_all_at(buf, 4096).unwrap();
    first.shutdown_background();
    drop(export);

    let paused = std::thread::spawn(move || {
        let mut storage = Vec::new();
        let buf = direct_buf(&mut storage, 4096);
        buf.fill(3);
        disk.write_all_at(buf, 8192).unwrap();
        disk.sync_all().unwrap();
        let mut storage = Vec::new();
        let back = direct_buf(&mut storage, 3 * 4096);
        disk.read_exact_at(back, 0).unwrap();
        back.to_vec()
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(!paused.is_finished(), "I/O waits while no server runs");

    // A fresh volume handle, as a restarted daemon would have.
    let vol2 = Counted::new(f.pool.open_volume("t").unwrap());
    let again = main
        .block_on(FileExport::take_over(vol2.clone(), &handoff, fuse, log))
        .unwrap();
    let back = paused.join().unwrap();
    assert!(back[..4096].iter().all(|&b| b == 1), "the flushed write");
    assert!(
        back[4096..8192].iter().all(|&b| b == 2),
        "the acknowledged, uncommitted write was replayed from the redo log"
    );
    assert!(
        back[8192..].iter().all(|&b| b == 3),
        "the paused write completed"
    );
    main.block_on(again.unmount()).unwrap();
}
