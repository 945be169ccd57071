//! The real host path on this machine: a ballast pool served over the
//! daemon's own FUSE server, a direct-I/O loop device, mkfs, mount,
//! unmount; a new host taking over a running attachment, and the clean-up
//! of one that cannot be taken over.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use ballast_docker::host::mountinfo::{is_mount_point, mounts};
use ballast_docker::host::Via;
use ballast_docker::{AttachPath, FsType, Host, LinuxHost, MountRequest};
use ballast_engine::{Pool, PoolConfig};
use ballast_fuse::holder::Holder;

/// Root, /dev/fuse, losetup and mkfs.ext4; under CI=true a missing one
/// fails the test instead of skipping it.
fn runnable() -> bool {
    let mut missing = Vec::new();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        missing.push("root".to_string());
    }
    if !Path::new("/dev/fuse").exists() {
        missing.push("/dev/fuse".into());
    }
    for tool in ["mkfs.ext4", "losetup", "blkid"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .map_or(true, |s| !s.success())
        {
            missing.push(tool.into());
        }
    }
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "missing for the host tests: {missing:?} (run scripts/install-test-deps.sh)"
    );
    eprintln!("skipping: missing {missing:?}");
    false
}

/// A pool with volume `v1`, and a descriptor holder running in this
/// process; on drop everything under the dir is unmounted and detached.
struct Fixture {
    dir: PathBuf,
    pool: Pool,
    holder: Holder,
    holder_thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl Fixture {
    async fn new(test: &str) -> Fixture {
        let dir =
            PathBuf::from("/var/tmp").join(format!("ballast-host-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut config = PoolConfig::new(dir.join("pool"));
        config.runtime = Some(tokio::runtime::Handle::current());
        let pool = Pool::open(config).unwrap();
        pool.create_volume("v1", 512 << 20).await.unwrap();
        let socket = dir.join("holder.sock");
        let holder_thread = std::thread::spawn({
            let socket = socket.clone();
            move || ballast_fuse::holder::run(&socket)
        });
        while !socket.exists() {
            std::thread::sleep(Duration::from_millis(10));
        }
        Fixture {
            holder: Holder::new(socket, Vec::new()),
            dir,
            pool,
            holder_thread: Some(holder_thread),
        }
    }

    fn host(&self) -> LinuxHost {
        LinuxHost::new(
            &self.docker_dir(),
            self.pool.clone(),
            self.holder.clone(),
            Some(AttachPath::Fuse),
        )
    }

    fn request(&self, format: Option<FsType>) -> MountRequest {
        MountRequest {
            volume: "v1".into(),
            nbd_socket: self.dir.join("unused-nbd.sock"),
            target: self.docker_dir().join("mounts/v1"),
            format,
        }
    }

    fn docker_dir(&self) -> PathBuf {
        self.dir.join("docker")
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let mut points: Vec<PathBuf> = mounts()
            .into_iter()
            .map(|m| m.mount_point)
            .filter(|p| p.starts_with(&self.dir))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for p in points {
            let _ = Command::new("umount").arg("-l").arg(&p).status();
        }
        for device in loops_on(&self.dir) {
            let _ = Command::new("losetup").arg("-d").arg(device).status();
        }
        // The holder exits once its socket is gone.
        let _ = std::fs::remove_file(self.holder.socket());
        if let Some(t) = self.holder_thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn loops_on(dir: &Path) -> Vec<String> {
    let out = Command::new("losetup")
        .args(["-n", "-O", "NAME,BACK-FILE", "-l"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (name, file) = (f.next()?, f.next()?);
            file.starts_with(dir.to_str().unwrap())
                .then(|| name.to_string())
        })
        .collect()
}

/// File I/O on the volume never runs on an async worker: the FUSE server
/// behind it runs on this runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn formats_mounts_unmounts_and_takes_over_after_a_restart() {
    if !runnable() {
        return;
    }
    let f = Fixture::new("restart").await;
    let host = f.host();
    let target = f.request(None).target;
    let data = target.join("data");

    // A blank device with no format allowed is refused, and nothing leaks.
    let e = host.mount(&f.request(None)).await.unwrap_err();
    assert!(e.to_string().contains("holds no filesystem"), "{e}");
    assert!(!is_mount_point(&target));
    assert!(loops_on(&f.dir).is_empty());

    let attachment = host.mount(&f.request(Some(FsType::Ext4))).await.unwrap();
    assert!(matches!(attachment.via, Via::Fuse { .. }));
    assert!(
        attachment.to_string().starts_with("fuse /dev/loop"),
        "{attachment}"
    );
    let dio = std::fs::read_to_string(format!(
        "/sys/block/{}/loop/dio",
        attachment.device.file_name().unwrap().to_str().unwrap()
    ))
    .unwrap();
    assert_eq!(dio.trim(), "1", "the loop device does direct I/O");
    blocking({
        let data = data.clone();
        move || {
            std::fs::write(data.join("hello"), b"first mount").unwrap();
            assert!(!data.join("lost+found").exists());
        }
    })
    .await;
    assert!(target.join("lost+found").exists());
    host.unmount(&attachment).await.unwrap();
    assert!(!is_mount_point(&target));
    assert!(loops_on(&f.dir).is_empty());
    assert!(f.holder.keys().unwrap().is_empty(), "the holder let go");

    // Already formatted: mounted as is, the file still there.
    let attachment = host.mount(&f.request(Some(FsType::Ext4))).await.unwrap();
    assert!(host.is_alive(&attachment));
    assert_eq!(
        f.holder.keys().unwrap().len(),
        1,
        "the holder keeps the connection"
    );
    let file = data.join("hello");
    let content = blocking(move || std::fs::read(file).unwrap()).await;
    assert_eq!(content, b"first mount");

    // The daemon stops (its host paused), another one starts and takes
    // the attachment over: the filesystem never went away.
    host.suspend().await;
    drop(host);
    let host = f.host();
    assert!(!host.is_alive(&attachment), "not served by this daemon yet");
    assert!(host.resume("v1", &attachment).await);
    assert!(host.is_alive(&attachment));
    blocking({
        let data = data.clone();
        move || {
            assert_eq!(std::fs::read(data.join("hello")).unwrap(), b"first mount");
            let out = std::fs::File::create(data.join("after")).unwrap();
            std::io::Write::write_all(&mut &out, b"taken over").unwrap();
            out.sync_all().unwrap();
        }
    })
    .await;

    // A daemon that died without a word, and whose holder lost the
    // connection: it cannot be taken over, and is cleared away.
    drop(host);
    f.holder.release(&attachment_dir(&attachment)).unwrap();
    let host = f.host();
    assert!(!host.resume("v1", &attachment).await);
    host.clear_stale(std::slice::from_ref(&attachment), &[], &f.docker_dir())
        .await;
    assert!(!is_mount_point(&target));
    assert!(mounts().iter().all(|m| !m.mount_point.starts_with(&f.dir)));
    assert!(
        loops_on(&f.dir).is_empty(),
        "the stale loop device is detached"
    );

    // What was fsynced before is there when mounted afresh.
    let attachment = host.mount(&f.request(None)).await.unwrap();
    let file = data.join("after");
    assert_eq!(
        blocking(move || std::fs::read(file).unwrap()).await,
        b"taken over"
    );
    host.unmount(&attachment).await.unwrap();
    assert!(mounts().iter().all(|m| !m.mount_point.starts_with(&f.dir)));
}

fn attachment_dir(attachment: &ballast_docker::Attachment) -> String {
    match &attachment.via {
        Via::Fuse { dir } => dir.display().to_string(),
        Via::KernelNbd { .. } => unreachable!("a FUSE attachment"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn formats_xfs_when_asked() {
    if !runnable() {
        return;
    }
    let f = Fixture::new("xfs").await;
    let host = f.host();
    if !host.supports(FsType::Xfs) {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "mkfs.xfs is missing (xfsprogs)"
        );
        return;
    }
    let attachment = host.mount(&f.request(Some(FsType::Xfs))).await.unwrap();
    let mounted = mounts()
        .into_iter()
        .find(|m| Some(&m.mount_point) == attachment.target.as_ref())
        .expect("mounted");
    assert_eq!(mounted.fstype, "xfs");
    let file = attachment.target.as_ref().unwrap().join("data/x");
    blocking(move || std::fs::write(file, b"xfs").unwrap()).await;
    host.unmount(&attachment).await.unwrap();
    // Mounted again without a format request: still XFS, data intact.
    let attachment = host.mount(&f.request(None)).await.unwrap();
    let file = attachment.target.as_ref().unwrap().join("data/x");
    assert_eq!(blocking(move || std::fs::read(file).unwrap()).await, b"xfs");
    host.unmount(&attachment).await.unwrap();
}
