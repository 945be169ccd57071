//! The Docker volume driver driven by a real dockerd: volumes created,
//! shared, cloned from snapshots, removed, and kept working across a
//! `kill -9` of the ballast daemon, with bad input reaching the `docker`
//! CLI as a readable message.
//!
//! Uses a running dockerd if the default `docker` answers, otherwise starts
//! one on a private data-root/exec-root/socket (and stops only that PID).
//! The test image is built with `docker import` from busybox-static; no
//! registry is contacted. Under `CI=true` a missing tool is a failure.

mod backup_common;
mod common;
mod standby_common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{json, ok, Daemon};

/// Applets the test image links to busybox.
const APPLETS: &[&str] = &[
    "sh", "cat", "echo", "ls", "sleep", "sync", "mkdir", "dd", "touch",
];

/// What the test needs on the host, as (what, found).
fn prerequisites() -> Vec<(&'static str, bool)> {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let mut found = vec![
        ("root", root),
        ("/dev/fuse", Path::new("/dev/fuse").exists()),
        ("static busybox", static_busybox().is_some()),
    ];
    for tool in ["docker", "dockerd", "mkfs.ext4", "losetup", "blkid", "tar"] {
        found.push((tool, on_path(tool)));
    }
    found
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
}

/// busybox-static's binary (a dynamic busybox would not run in the image).
fn static_busybox() -> Option<PathBuf> {
    ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| fs::read(p).is_ok_and(|elf| is_static_elf64(&elf)))
}

/// A 64-bit ELF without a PT_INTERP program header (no dynamic loader).
fn is_static_elf64(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 {
        return false;
    }
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    let phentsize = u16::from_le_bytes([elf[0x36], elf[0x37]]) as usize;
    let phnum = u16::from_le_bytes([elf[0x38], elf[0x39]]) as usize;
    (0..phnum).all(|i| {
        let at = phoff + i * phentsize;
        elf.get(at..at + 4)
            .is_some_and(|t| u32::from_le_bytes(t.try_into().unwrap()) != PT_INTERP)
    })
}

fn runnable() -> bool {
    let missing: Vec<&str> = prerequisites()
        .into_iter()
        .filter(|(_, found)| !found)
        .map(|(what, _)| what)
        .collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "missing for the Docker tests: {missing:?} (run scripts/install-test-deps.sh)"
    );
    eprintln!("skipping the Docker tests: missing {missing:?}");
    false
}

/// A dockerd to talk to: the running one, or our own.
struct Docker {
    /// `-H` value for our own dockerd; `None` = the default daemon.
    host: Option<String>,
    child: Option<Child>,
    dir: PathBuf,
}

impl Docker {
    fn start(dir: &Path) -> Docker {
        let default = Docker {
            host: None,
            child: None,
            dir: dir.to_path_buf(),
        };
        if default.run(&["info"]).status.success() {
            return default;
        }
        let socket = dir.join("docker.sock");
        let log = fs::File::create(dir.join("dockerd.log")).unwrap();
        let child = Command::new("dockerd")
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .args(["--iptables=false", "--ip-masq=false", "--bridge=none"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut docker = Docker {
            host: Some(format!("unix://{}", socket.display())),
            child: Some(child),
            dir: dir.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !docker.run(&["info"]).status.success() {
            if let Some(status) = docker.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("dockerd exited ({status}):\n{}", docker.log());
            }
            assert!(
                Instant::now() < deadline,
                "dockerd did not start:\n{}",
                docker.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        docker
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut command = Command::new("docker");
        if let Some(host) = &self.host {
            command.args(["-H", host]);
        }
        command.args(args).stdin(Stdio::null()).output().unwrap()
    }

    /// Runs `docker args`, expecting success; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "docker {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs `docker args`, expecting failure; its stderr.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "docker {args:?} succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stderr).unwrap()
    }

    /// Imports a busybox-only image; returns its tag.
    fn import_busybox(&self, dir: &Path) -> String {
        let rootfs = dir.join("rootfs");
        fs::create_dir_all(rootfs.join("bin")).unwrap();
        fs::create_dir_all(rootfs.join("data")).unwrap();
        fs::copy(static_busybox().unwrap(), rootfs.join("bin/busybox")).unwrap();
        for applet in APPLETS {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
        let tarball = dir.join("rootfs.tar");
        let status = Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .arg("-cf")
            .arg(&tarball)
            .arg(".")
            .status()
            .unwrap();
        assert!(status.success());
        let tag = format!("ballast-test-busybox:{}", std::process::id());
        self.ok(&["import", tarball.to_str().unwrap(), &tag]);
        tag
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on the pid of the dockerd we started.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(20);
            while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Everything one run needs; torn down in a safe order even on failure.
struct Fixture {
    _serial: std::sync::MutexGuard<'static, ()>,
    dir: PathBuf,
    plugin: String,
    image: String,
    containers: Vec<String>,
    daemon: Option<Daemon>,
    docker: Option<Docker>,
}

/// The Docker tests run one at a time: each starts its own dockerd.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Fixture {
    fn new() -> Fixture {
        let serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let dir = std::env::temp_dir().join(format!("ballast-docker-e2e-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let docker = Docker::start(&dir);
        let image = docker.import_busybox(&dir);
        let mut fixture = Fixture {
            _serial: serial,
            plugin: format!("ballast-test-{}", std::process::id()),
            dir,
            image,
            containers: Vec::new(),
            daemon: None,
            docker: Some(docker),
        };
        fixture.start_daemon();
        fixture
    }

    fn docker(&self) -> &Docker {
        self.docker.as_ref().unwrap()
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("control.sock")
    }

    fn start_daemon(&mut self) {
        fs::create_dir_all(self.dir.join("keys")).unwrap();
        self.daemon = Some(Daemon::start_with(
            &self.dir.join("root"),
            &self.socket(),
            &[
                "--nbd-listen",
                "off",
                "--docker-plugin",
                &self.plugin,
                "--backup-key-dir",
                &self.dir.join("keys").display().to_string(),
            ],
        ));
    }

    fn daemon(&mut self) -> &mut Daemon {
        self.daemon.as_mut().unwrap()
    }

    /// `docker run --rm` of `script` with `volume` on /data; its stdout.
    fn run(&self, volume: &str, script: &str) -> String {
        let mount = format!("{volume}:/data");
        self.docker().ok(&[
            "run",
            "--rm",
            "--network",
            "none",
            "-v",
            &mount,
            &self.image,
            "sh",
            "-c",
            script,
        ])
    }

    /// A background container holding `volume`; returns its name.
    fn hold(&mut self, volume: &str) -> String {
        let name = format!(
            "ballast-holder-{}-{}",
            std::process::id(),
            self.containers.len()
        );
        let mount = format!("{volume}:/data");
        self.docker().ok(&[
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            "none",
            "-v",
            &mount,
            &self.image,
            "sleep",
            "600",
        ]);
        self.containers.push(name.clone());
        name
    }

    fn mountpoint(&self, volume: &str) -> String {
        self.docker()
            .ok(&["volume", "inspect", "--format", "{{.Mountpoint}}", volume])
            .trim()
            .to_string()
    }

    /// A readable failure message for the assertion at hand.
    fn context(&self) -> String {
        self.daemon.as_ref().map(Daemon::log).unwrap_or_default()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(docker) = &self.docker {
            for name in &self.containers {
                let _ = docker.run(&["rm", "-f", name]);
            }
            for volume in ["v1", "c1", "cli-made", "busy"] {
                let _ = docker.run(&["volume", "rm", "-f", volume]);
            }
            let _ = docker.run(&["rmi", &self.image]);
        }
        // Killed (Daemon's drop) rather than asked: a panic here would abort.
        self.daemon.take();
        self.docker.take();
        // Whatever a failed run left: filesystems first, then loop devices,
        // then the FUSE mounts (their nbdfuse exits with them).
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut points: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|p| p.starts_with(self.dir.to_str().unwrap()))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points.iter().filter(|p| !p.contains("/docker/fuse/")) {
            let _ = Command::new("umount").args(["-l", p]).status();
        }
        if let Ok(out) = Command::new("losetup")
            .args(["-n", "-O", "NAME,BACK-FILE", "-l"])
            .output()
        {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let mut fields = line.split_whitespace();
                if let (Some(dev), Some(file)) = (fields.next(), fields.next()) {
                    if file.starts_with(self.dir.to_str().unwrap()) {
                        let _ = Command::new("losetup").args(["-d", dev]).status();
                    }
                }
            }
        }
        for p in points.iter().filter(|p| p.contains("/docker/fuse/")) {
            let _ = Command::new("umount").args(["-l", p]).status();
        }
        let _ = fs::remove_file(format!("/run/docker/plugins/{}.sock", self.plugin));
        let _ = fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn docker_uses_ballast_volumes() {
    if !runnable() {
        return;
    }
    let mut f = Fixture::new();
    let driver = f.plugin.clone();
    let docker = |f: &Fixture, args: &[&str]| f.docker().ok(args);

    // Create, write from one container, read from the next.
    assert_eq!(
        docker(
            &f,
            &["volume", "create", "-d", &driver, "-o", "size=1G", "v1"]
        )
        .trim(),
        "v1"
    );
    f.run("v1", "echo hello > /data/greeting && sync");
    assert_eq!(f.run("v1", "cat /data/greeting"), "hello\n");
    // The container sees data/ inside the filesystem: no lost+found.
    assert_eq!(f.run("v1", "ls -a /data"), ".\n..\ngreeting\n");
    assert_eq!(
        f.mountpoint("v1"),
        "",
        "unmounted once no container uses it"
    );

    // Two containers hold the volume at once and see each other's writes.
    let holder = f.hold("v1");
    let mounted = f.mountpoint("v1");
    assert!(mounted.ends_with("/docker/mounts/v1/data"), "{mounted}");
    assert_eq!(
        f.run(
            "v1",
            "cat /data/greeting && echo second > /data/second && sync"
        ),
        "hello\n"
    );
    assert_eq!(
        docker(&f, &["exec", &holder, "cat", "/data/second"]),
        "second\n"
    );
    assert_eq!(f.mountpoint("v1"), mounted, "still mounted for the holder");

    // A schedule backs the volume up while a container has it mounted.
    let store = format!("file://{}", f.dir.join("mounted-store").display());
    let sched = |args: &[&str]| ok(&f.socket(), &[&["backup", "schedule"], args].concat());
    sched(&["set", "v1", "--dest", &store, "--every", "1h"]);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let list = json(&f.socket(), &["backup", "schedule", "list", "--json"]);
        if list[0]["successes"] == 1 {
            assert_eq!(list[0]["failures"], 0, "{list}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a scheduled run of a mounted volume: {list}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    sched(&["remove", "v1", "--dest", &store]);

    // ls and inspect show the driver's volumes.
    let listed = docker(
        &f,
        &[
            "volume",
            "ls",
            "--filter",
            &format!("driver={driver}"),
            "--format",
            "{{.Name}}",
        ],
    );
    assert_eq!(listed.lines().collect::<Vec<_>>(), vec!["v1"]);
    let inspected: serde_json::Value =
        serde_json::from_str(&docker(&f, &["volume", "inspect", "v1"])).unwrap();
    assert_eq!(inspected[0]["Driver"], driver.as_str());
    assert_eq!(inspected[0]["Status"]["size"], "1 GiB");

    // A clone of a snapshot taken with the ballast CLI sees its data.
    assert_eq!(
        ok(&f.socket(), &["snapshot", "create", "v1", "--name", "s1"]),
        "v1@s1\n"
    );
    docker(
        &f,
        &[
            "volume",
            "create",
            "-d",
            &driver,
            "-o",
            "snapshot=v1@s1",
            "c1",
        ],
    );
    assert_eq!(
        f.run("c1", "cat /data/greeting /data/second"),
        "hello\nsecond\n"
    );
    f.run("c1", "echo clone-only > /data/greeting && sync");
    assert_eq!(
        f.run("v1", "cat /data/greeting"),
        "hello\n",
        "the origin is untouched"
    );
    let origin = &ok(&f.socket(), &["inspect", "c1", "--json"]);
    assert!(origin.contains("\"origin\": \"v1@s1\""), "{origin}");

    // A volume made with the ballast CLI is a Docker volume too, formatted
    // on first use because nothing was ever written to it.
    ok(&f.socket(), &["create", "cli-made", "--size", "256M"]);
    let seen = docker(
        &f,
        &[
            "volume",
            "inspect",
            "--format",
            "{{.Driver}}:{{.Mountpoint}}",
            "cli-made",
        ],
    );
    assert_eq!(seen.trim(), format!("{driver}:"));
    assert_eq!(f.run("cli-made", "echo x > /data/x && cat /data/x"), "x\n");
    // `docker volume rm` takes the volume's backup schedules along.
    let dest = format!("file://{}", f.dir.join("store").display());
    ok(
        &f.socket(),
        &[
            "backup", "schedule", "set", "cli-made", "--dest", &dest, "--every", "1h",
        ],
    );
    docker(&f, &["volume", "rm", "cli-made"]);
    assert_eq!(
        ok(&f.socket(), &["backup", "schedule", "list", "--json"]).trim(),
        "[]"
    );

    // A second daemon cannot take over the plugin name of a live one.
    let out = Command::new(common::BIN)
        .args([
            "daemon",
            "--nbd-listen",
            "off",
            "--docker-plugin",
            &driver,
            "--root",
        ])
        .arg(f.dir.join("other"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("is in use by another plugin"),
        "{stderr}"
    );
    assert_eq!(
        f.run("v1", "cat /data/second"),
        "second\n",
        "the first daemon still serves"
    );

    let inspected: serde_json::Value =
        serde_json::from_str(&docker(&f, &["volume", "inspect", "v1"])).unwrap();
    let attached = inspected[0]["Status"]["attached"]
        .as_str()
        .unwrap_or_default();
    assert!(attached.starts_with("fuse /dev/loop"), "{inspected}");

    // kill -9 of the daemon while the holder has v1 mounted; after a
    // restart Docker keeps working with the volume, and so does the
    // container that held it all along.
    f.daemon().kill9();
    f.start_daemon();
    let after = f.run("v1", "cat /data/greeting /data/second");
    assert_eq!(after, "hello\nsecond\n", "{}", f.context());
    assert_eq!(
        docker(
            &f,
            &[
                "exec",
                &holder,
                "sh",
                "-c",
                "cat /data/second && echo kept > /data/kept && sync"
            ]
        ),
        "second\n",
        "{}",
        f.context()
    );
    f.run("v1", "echo after-restart > /data/third && sync");
    docker(&f, &["rm", "-f", &holder]);
    f.containers.clear();
    assert_eq!(f.mountpoint("v1"), "", "the last container's exit unmounts");
    assert_eq!(
        f.run("v1", "cat /data/third /data/kept"),
        "after-restart\nkept\n"
    );

    // Bad input reaches the docker CLI as the driver's message.
    let stderr = f
        .docker()
        .fails(&["volume", "create", "-d", &driver, "-o", "size=lots", "bad1"]);
    assert!(stderr.contains("size=lots: "), "{stderr}");
    let stderr = f.docker().fails(&[
        "volume",
        "create",
        "-d",
        &driver,
        "-o",
        "colour=red",
        "bad2",
    ]);
    assert!(
        stderr.contains(
            "unknown option(s) colour; known options: size, fstype, snapshot, backup, backup_key, hydrate"
        ),
        "{stderr}"
    );
    let long = "n".repeat(65);
    let stderr = f
        .docker()
        .fails(&["volume", "create", "-d", &driver, &long]);
    assert!(stderr.contains("invalid name"), "{stderr}");
    let stderr = f.docker().fails(&[
        "volume",
        "create",
        "-d",
        &driver,
        "-o",
        "snapshot=v1@nope",
        "bad3",
    ]);
    assert!(stderr.contains("nope"), "{stderr}");
    let stderr = f.docker().fails(&[
        "volume",
        "create",
        "-d",
        &driver,
        "-o",
        "backup=file:///x",
        "bad4",
    ]);
    assert!(stderr.contains("missing backup=<id> parameter"), "{stderr}");
    let names = ok(&f.socket(), &["list", "--json"]);
    assert!(
        !names.contains("bad"),
        "failed creates left nothing: {names}"
    );

    // backup= restores a new volume from a backup instantly, as `ballast
    // create --backup` does: served before its chunks are local, its
    // filesystem and files come back; hydrate=wait restores it fully first.
    let dest = format!("file://{}", f.dir.join("backups").display());
    let url = ok(&f.socket(), &["backup", "create", "v1", "--dest", &dest]);
    let from_backup = format!("backup={}", url.trim());
    docker(
        &f,
        &["volume", "create", "-d", &driver, "-o", &from_backup, "r1"],
    );
    assert!(
        f.daemon().log().contains("volume restored instantly"),
        "{}",
        f.context()
    );
    assert_eq!(
        f.run("r1", "cat /data/greeting /data/third"),
        "hello\nafter-restart\n"
    );
    docker(
        &f,
        &[
            "volume",
            "create",
            "-d",
            &driver,
            "-o",
            &from_backup,
            "-o",
            "hydrate=wait",
            "r2",
        ],
    );
    let r2 = json(&f.socket(), &["inspect", "r2", "--json"]);
    assert!(
        r2["hydration"].is_null(),
        "hydrate=wait is local at once: {r2}"
    );
    assert_eq!(
        f.run("r2", "cat /data/greeting /data/third"),
        "hello\nafter-restart\n"
    );
    // backup_key= names the key of an encrypted destination; the instant
    // restore reads through it.
    let keys = f.dir.join("keys");
    fs::create_dir_all(&keys).unwrap();
    let key_file = keys.join("prod").display().to_string();
    ok(
        &f.socket(),
        &["backup", "key", "create", "--file", &key_file],
    );
    let sealed = format!("file://{}", f.dir.join("sealed").display());
    let url = ok(
        &f.socket(),
        &["backup", "create", "v1", "--dest", &sealed, "--key", "prod"],
    );
    let from_sealed = format!("backup={}", url.trim());
    let stderr = f
        .docker()
        .fails(&["volume", "create", "-d", &driver, "-o", &from_sealed, "r3"]);
    assert!(stderr.contains("is encrypted"), "{stderr}");
    docker(
        &f,
        &[
            "volume",
            "create",
            "-d",
            &driver,
            "-o",
            &from_sealed,
            "-o",
            "backup_key=prod",
            "r3",
        ],
    );
    assert_eq!(
        f.run("r3", "cat /data/greeting /data/third"),
        "hello\nafter-restart\n"
    );
    docker(&f, &["volume", "rm", "r1"]);
    docker(&f, &["volume", "rm", "r2"]);
    docker(&f, &["volume", "rm", "r3"]);

    // A standby that follows v1's backups is not Docker's to remove until
    // it is activated.
    standby_common::follow(&f.socket(), "s1", &dest, "v1");
    standby_common::wait_for(&f.socket(), "s1", "applied a backup", |s| {
        s["applied_backup"].is_string() && s["applying_backup"].is_null()
    });
    let stderr = f.docker().fails(&["volume", "rm", "s1"]);
    assert!(stderr.contains("is a standby"), "{stderr}");
    ok(&f.socket(), &["standby", "activate", "s1"]);
    docker(&f, &["volume", "rm", "s1"]);

    // Remove: the clone first (it depends on v1's snapshot), then v1.
    docker(&f, &["volume", "rm", "c1"]);
    docker(&f, &["volume", "rm", "v1"]);
    assert_eq!(ok(&f.socket(), &["list", "--json"]).trim(), "[]");

    // A clean stop leaves no mount behind.
    let status = f.daemon().terminate();
    assert!(status.success(), "{}", f.context());
    f.daemon = None;
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let root = f.dir.join("root");
    assert!(!mounts.contains(root.to_str().unwrap()), "{mounts}");
}

#[test]
fn daemon_refuses_a_bad_plugin_name() {
    let dir = common::TempDir::create();
    let out = Command::new(common::BIN)
        .args(["daemon", "--root"])
        .arg(dir.join("root"))
        .args(["--docker-plugin", "../evil"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.starts_with("error: --docker-plugin: invalid name \"../evil\""),
        "{stderr}"
    );
    assert!(!Path::new("/run/docker/plugins/../evil.sock").exists());
    assert!(!dir.join("root").exists(), "nothing was created");
}

/// The acknowledged records in a container's log: the numbers N of its
/// "acked N" lines, and whether it reported a failure.
fn acked(logs: &str) -> (Vec<u64>, bool) {
    let numbers = logs
        .lines()
        .filter_map(|l| l.strip_prefix("acked "))
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    (numbers, logs.contains("failed"))
}

#[test]
fn running_containers_survive_daemon_restarts() {
    if !runnable() {
        return;
    }
    let mut f = Fixture::new();
    let driver = f.plugin.clone();
    f.docker()
        .ok(&["volume", "create", "-d", &driver, "-o", "size=1G", "busy"]);
    // A database's commit loop: append a record, fsync it, report it.
    let script = "i=0; while [ ! -e /data/stop ]; do i=$((i+1)); \
        echo \"record $i\" | dd of=/data/log oflag=append conv=notrunc,fsync 2>/dev/null \
        || { echo \"failed at $i\"; exit 1; }; echo \"acked $i\"; done";
    let name = format!("ballast-writer-{}", std::process::id());
    f.docker().ok(&[
        "run",
        "-d",
        "--name",
        &name,
        "--network",
        "none",
        "-v",
        "busy:/data",
        &f.image,
        "sh",
        "-c",
        script,
    ]);
    f.containers.push(name.clone());
    let progress = |f: &Fixture, beyond: usize| -> usize {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = f.docker().run(&["logs", &name]);
            let (numbers, failed) = acked(&String::from_utf8_lossy(&out.stdout));
            assert!(!failed, "the writer saw an I/O error:\n{}", f.context());
            if numbers.len() > beyond + 20 {
                return numbers.len();
            }
            assert!(
                Instant::now() < deadline,
                "the writer stalled at {} records:\n{}",
                numbers.len(),
                f.context()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let running = |f: &Fixture| {
        f.docker()
            .ok(&["inspect", "--format", "{{.State.Running}}", &name])
            .trim()
            == "true"
    };
    let n = progress(&f, 0);

    // kill -9: the writer's I/O waits for the next daemon.
    f.daemon().kill9();
    std::thread::sleep(Duration::from_secs(2));
    assert!(running(&f), "the writer died with the daemon");
    let out = f.docker().run(&["logs", &name]);
    let during = acked(&String::from_utf8_lossy(&out.stdout)).0.len();
    std::thread::sleep(Duration::from_millis(500));
    let out = f.docker().run(&["logs", &name]);
    assert_eq!(
        acked(&String::from_utf8_lossy(&out.stdout)).0.len(),
        during,
        "nothing is acknowledged while no daemon runs"
    );
    f.start_daemon();
    let n = progress(&f, n);

    // A restart the way a service manager does it: SIGTERM, then start.
    let status = f.daemon().terminate();
    assert!(status.success(), "{}", f.context());
    assert!(running(&f));
    f.start_daemon();
    progress(&f, n);

    f.docker().ok(&["exec", &name, "touch", "/data/stop"]);
    let code = f.docker().ok(&["wait", &name]);
    let logs = f.docker().ok(&["logs", &name]);
    assert_eq!(code.trim(), "0", "{logs}\n{}", f.context());
    let (numbers, failed) = acked(&logs);
    assert!(!failed);
    assert_eq!(
        numbers,
        (1..=numbers.len() as u64).collect::<Vec<_>>(),
        "records acknowledged in order"
    );
    f.docker().ok(&["rm", &name]);
    f.containers.clear();
    assert_eq!(
        f.mountpoint("busy"),
        "",
        "unmounted with its last container"
    );

    // Every acknowledged record is on the volume, read through a fresh
    // attachment after one more kill -9 and restart.
    f.daemon().kill9();
    f.start_daemon();
    let log = f.run("busy", "cat /data/log");
    let expected: String = numbers.iter().map(|i| format!("record {i}\n")).collect();
    assert_eq!(log, expected, "{}", f.context());
    f.docker().ok(&["volume", "rm", "busy"]);
}
