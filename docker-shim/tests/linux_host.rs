//! The real host path on this machine: nbdfuse + loop device (or kernel
//! NBD where the module is loaded), mkfs, mount, unmount, and the clean-up
//! after a daemon died with volumes mounted. nbdkit plays the NBD server.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ballast_docker::host::mountinfo::{is_mount_point, mounts};
use ballast_docker::host::Via;
use ballast_docker::{FsType, Host, LinuxHost, MountRequest};

/// Root, /dev/fuse, nbdfuse, nbdkit and mkfs.ext4; under CI=true a
/// missing one fails the test instead of skipping it.
fn runnable() -> bool {
    let mut missing = Vec::new();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        missing.push("root".to_string());
    }
    if !Path::new("/dev/fuse").exists() {
        missing.push("/dev/fuse".into());
    }
    for tool in ["nbdfuse", "nbdkit", "mkfs.ext4", "losetup", "blkid"] {
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

/// A temp dir with an nbdkit serving a sparse file; on drop everything
/// under the dir is unmounted and detached and nbdkit is stopped.
struct Fixture {
    dir: PathBuf,
    socket: PathBuf,
    nbdkit: Option<Child>,
}

impl Fixture {
    fn new(test: &str) -> Fixture {
        let dir = std::env::temp_dir().join(format!("ballast-host-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let disk = std::fs::File::create(dir.join("disk.img")).unwrap();
        disk.set_len(1 << 30).unwrap();
        let mut f = Fixture {
            socket: dir.join("nbd.sock"),
            dir,
            nbdkit: None,
        };
        f.start_server();
        f
    }

    fn start_server(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
        let child = Command::new("nbdkit")
            .args(["-f", "-U"])
            .arg(&self.socket)
            .arg("file")
            .arg(self.dir.join("disk.img"))
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        self.nbdkit = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.socket.exists() {
            assert!(Instant::now() < deadline, "nbdkit did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server, as a `kill -9` of the daemon would.
    fn kill_server(&mut self) {
        if let Some(mut child) = self.nbdkit.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn request(&self, format: Option<FsType>) -> MountRequest {
        MountRequest {
            volume: "v1".into(),
            nbd_socket: self.socket.clone(),
            target: self.dir.join("docker/mounts/v1"),
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
        self.kill_server();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn loops_on(dir: &Path) -> usize {
    let out = Command::new("losetup")
        .args(["-n", "-O", "BACK-FILE", "-l"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.trim().starts_with(dir.to_str().unwrap()))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn formats_mounts_unmounts_and_recovers_after_a_crash() {
    if !runnable() {
        return;
    }
    let mut f = Fixture::new("crash");
    let host = LinuxHost::new(&f.docker_dir());
    let target = f.request(None).target;

    // A blank device with no format allowed is refused, and nothing leaks.
    let e = host.mount(&f.request(None)).await.unwrap_err();
    assert!(e.to_string().contains("holds no filesystem"), "{e}");
    assert!(!is_mount_point(&target));
    assert_eq!(loops_on(&f.dir), 0);

    let attachment = host.mount(&f.request(Some(FsType::Ext4))).await.unwrap();
    assert!(is_mount_point(&target));
    let data = target.join("data");
    std::fs::write(data.join("hello"), b"first mount").unwrap();
    assert!(!data.join("lost+found").exists() && target.join("lost+found").exists());
    host.unmount(&attachment).await.unwrap();
    assert!(!is_mount_point(&target));
    assert_eq!(loops_on(&f.dir), 0);

    // Already formatted: mounted as is, the file still there.
    let mut attachment = host.mount(&f.request(Some(FsType::Ext4))).await.unwrap();
    assert_eq!(std::fs::read(data.join("hello")).unwrap(), b"first mount");
    std::fs::write(data.join("second"), b"synced").unwrap();
    Command::new("sync").status().unwrap();
    assert!(host.is_alive(&attachment));

    // nbdfuse dies under a running daemon: the mount is seen dead,
    // released, and mounted again with the data intact.
    if let Via::Fuse { pid, .. } = &attachment.via {
        // SAFETY: kill(2) on the nbdfuse our host started.
        unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while host.is_alive(&attachment) {
            assert!(
                Instant::now() < deadline,
                "a killed nbdfuse still looks alive"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        host.release(&attachment).await;
        assert!(!is_mount_point(&target));
        attachment = host.mount(&f.request(None)).await.unwrap();
        assert_eq!(std::fs::read(data.join("second")).unwrap(), b"synced");
    }

    // The daemon dies: its NBD server goes, the mount stays behind, dead.
    f.kill_server();
    drop(host);
    f.start_server();
    let host = LinuxHost::new(&f.docker_dir());
    host.clear_stale(std::slice::from_ref(&attachment), &f.docker_dir())
        .await;
    assert!(!is_mount_point(&target));
    assert!(mounts().iter().all(|m| !m.mount_point.starts_with(&f.dir)));
    let loop_name = attachment.device.file_name().unwrap().to_str().unwrap();
    assert!(
        !Path::new(&format!("/sys/block/{loop_name}/loop/backing_file")).exists(),
        "the crashed attachment's loop device is still attached"
    );

    let attachment = host.mount(&f.request(None)).await.unwrap();
    assert_eq!(std::fs::read(data.join("second")).unwrap(), b"synced");
    host.unmount(&attachment).await.unwrap();
    assert!(mounts().iter().all(|m| !m.mount_point.starts_with(&f.dir)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn formats_xfs_when_asked() {
    if !runnable() {
        return;
    }
    let f = Fixture::new("xfs");
    let host = LinuxHost::new(&f.docker_dir());
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
        .find(|m| m.mount_point == attachment.target)
        .expect("mounted");
    assert_eq!(mounted.fstype, "xfs");
    std::fs::write(attachment.target.join("data/x"), b"xfs").unwrap();
    host.unmount(&attachment).await.unwrap();
    // Mounted again without a format request: still XFS, data intact.
    let attachment = host.mount(&f.request(None)).await.unwrap();
    assert_eq!(
        std::fs::read(attachment.target.join("data/x")).unwrap(),
        b"xfs"
    );
    host.unmount(&attachment).await.unwrap();
}
