//! The plugin protocol end to end through the driver, with a fake provider
//! and a fake host (the real attach/mount path is covered by the
//! workspace's Docker tests with a real dockerd).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ballast_docker::host::Via;
use ballast_docker::{
    handle, Attachment, Driver, FsType, Host, HostError, Layout, MountRequest, ProviderError,
    VolumeProvider, VolumeSummary,
};
use serde_json::{json, Value};

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "ballast-docker-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[derive(Default, Clone)]
struct FakeProvider {
    volumes: Arc<Mutex<BTreeMap<String, VolumeSummary>>>,
    calls: Arc<Mutex<Vec<String>>>,
}

impl FakeProvider {
    fn add(&self, name: &str, allocated: u64) {
        self.volumes.lock().unwrap().insert(
            name.into(),
            VolumeSummary {
                name: name.into(),
                size: 1 << 30,
                allocated,
                created: 1_700_000_000,
                origin: None,
            },
        );
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

impl VolumeProvider for FakeProvider {
    async fn create_volume(&self, name: &str, size: u64) -> Result<(), ProviderError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("create {name} {size}"));
        self.add(name, 0);
        Ok(())
    }

    async fn clone_volume(
        &self,
        name: &str,
        volume: &str,
        snapshot: &str,
    ) -> Result<(), ProviderError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("clone {name} {volume}@{snapshot}"));
        self.add(name, 4096);
        Ok(())
    }

    async fn restore_backup(
        &self,
        name: &str,
        url: &str,
        _key: Option<&str>,
        _wait: bool,
    ) -> Result<(), ProviderError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("restore {name} {url}"));
        Err(ProviderError::Operation(
            "restoring from a backup is not available yet".into(),
        ))
    }

    async fn delete_volume(&self, name: &str) -> Result<(), ProviderError> {
        self.calls.lock().unwrap().push(format!("delete {name}"));
        self.volumes.lock().unwrap().remove(name);
        Ok(())
    }

    fn volume(&self, name: &str) -> Result<Option<VolumeSummary>, ProviderError> {
        Ok(self.volumes.lock().unwrap().get(name).cloned())
    }

    fn volumes(&self) -> Result<Vec<VolumeSummary>, ProviderError> {
        Ok(self.volumes.lock().unwrap().values().cloned().collect())
    }

    fn nbd_socket(&self) -> PathBuf {
        PathBuf::from("/run/ballast/nbd.sock")
    }
}

#[derive(Clone)]
struct FakeHost {
    /// Formatting writes to the volume, as mkfs would.
    provider: FakeProvider,
    calls: Arc<Mutex<Vec<String>>>,
    fail_mounts: Arc<Mutex<bool>>,
    /// Attachments reported dead (their server gone, say).
    dead: Arc<Mutex<bool>>,
    /// Whether attachments recorded by an earlier daemon can be taken over.
    resumable: bool,
}

impl FakeHost {
    fn new(provider: &FakeProvider) -> FakeHost {
        FakeHost {
            provider: provider.clone(),
            calls: Arc::default(),
            fail_mounts: Arc::default(),
            dead: Arc::default(),
            resumable: false,
        }
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

impl Host for FakeHost {
    fn supports(&self, fstype: FsType) -> bool {
        fstype == FsType::Ext4
    }

    async fn mount(&self, request: &MountRequest) -> Result<Attachment, HostError> {
        // Slow enough that concurrent mounts would overlap without the lock.
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.calls.lock().unwrap().push(format!(
            "mount {} format={:?}",
            request.volume, request.format
        ));
        if *self.fail_mounts.lock().unwrap() {
            return Err(HostError("mount failed: no such device".into()));
        }
        if request.format.is_some() {
            if let Some(v) = self
                .provider
                .volumes
                .lock()
                .unwrap()
                .get_mut(&request.volume)
            {
                v.allocated += 1 << 20;
            }
        }
        std::fs::create_dir_all(request.target.join("data")).unwrap();
        Ok(Attachment {
            target: Some(request.target.clone()),
            device: "/dev/loop9".into(),
            via: Via::KernelNbd { index: 9 },
        })
    }

    async fn attach(&self, request: &MountRequest) -> Result<Attachment, HostError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("attach {}", request.volume));
        Ok(Attachment {
            target: None,
            device: "/dev/nbd3".into(),
            via: Via::KernelNbd { index: 3 },
        })
    }

    async fn unmount(&self, attachment: &Attachment) -> Result<(), HostError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("unmount {}", shown(attachment)));
        Ok(())
    }

    fn is_alive(&self, _attachment: &Attachment) -> bool {
        !*self.dead.lock().unwrap()
    }

    async fn release(&self, attachment: &Attachment) {
        *self.dead.lock().unwrap() = false;
        self.calls
            .lock()
            .unwrap()
            .push(format!("release {}", shown(attachment)));
    }

    async fn resume(&self, volume: &str, _attachment: &Attachment) -> bool {
        self.calls.lock().unwrap().push(format!("resume {volume}"));
        self.resumable
    }

    async fn clear_stale(&self, stale: &[Attachment], live: &[Attachment], _dir: &Path) {
        self.calls
            .lock()
            .unwrap()
            .push(format!("clear_stale {} live={}", stale.len(), live.len()));
    }

    async fn suspend(&self) {
        self.calls.lock().unwrap().push("suspend".into());
    }
}

/// An attachment's mount point, or its device when it is not mounted.
fn shown(attachment: &Attachment) -> String {
    attachment
        .target
        .as_ref()
        .unwrap_or(&attachment.device)
        .display()
        .to_string()
}

type TestDriver = Driver<FakeProvider, FakeHost>;

struct Fixture {
    dir: TempDir,
    provider: FakeProvider,
    host: FakeHost,
    driver: Arc<TestDriver>,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = TempDir::new();
        let provider = FakeProvider::default();
        let host = FakeHost::new(&provider);
        let driver = Arc::new(
            Driver::open(
                provider.clone(),
                host.clone(),
                Layout::new(dir.0.join("docker")),
            )
            .unwrap(),
        );
        Fixture {
            dir,
            provider,
            host,
            driver,
        }
    }

    /// A second driver on the same state directory, as after a restart.
    async fn restart(&mut self) {
        self.restart_with(false).await
    }

    /// A restart after which the host can (or cannot) take over the
    /// attachments the first driver recorded.
    async fn restart_with(&mut self, resumable: bool) {
        self.driver.shutdown().await;
        self.host = FakeHost::new(&self.provider);
        self.host.resumable = resumable;
        let driver = Driver::open(
            self.provider.clone(),
            self.host.clone(),
            Layout::new(self.dir.0.join("docker")),
        )
        .unwrap();
        driver.recover().await;
        self.driver = Arc::new(driver);
    }

    async fn call(&self, path: &str, body: Value) -> Value {
        let reply = handle(&self.driver, path, body.to_string().as_bytes()).await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.body);
        reply.body
    }

    fn mount_target(&self, name: &str) -> PathBuf {
        self.dir.0.join("docker/mounts").join(name)
    }
}

fn err(reply: &Value) -> &str {
    reply["Err"].as_str().unwrap_or("")
}

#[tokio::test]
async fn activates_as_a_local_volume_driver() {
    let f = Fixture::new();
    assert_eq!(
        f.call("/Plugin.Activate", json!({})).await,
        json!({"Implements": ["VolumeDriver"]})
    );
    assert_eq!(
        f.call("/VolumeDriver.Capabilities", json!({})).await,
        json!({"Capabilities": {"Scope": "local"}})
    );
    let reply = handle(&f.driver, "/VolumeDriver.Frobnicate", b"{}").await;
    assert_eq!(reply.status, 404);
    assert_eq!(
        err(&reply.body),
        "unknown plugin call /VolumeDriver.Frobnicate"
    );
}

#[tokio::test]
async fn create_accepts_null_opts_and_is_idempotent() {
    let f = Fixture::new();
    let reply = f
        .call("/VolumeDriver.Create", json!({"Name": "v1", "Opts": null}))
        .await;
    assert_eq!(err(&reply), "");
    let reply = f.call("/VolumeDriver.Create", json!({"Name": "v1"})).await;
    assert_eq!(err(&reply), "");
    let reply = f
        .call(
            "/VolumeDriver.Create",
            json!({"Name": "v1", "Opts": {"size": "2G"}}),
        )
        .await;
    assert_eq!(err(&reply), "");
    assert_eq!(
        f.provider.calls(),
        vec![format!("create v1 {}", 10u64 << 30)]
    );

    let reply = f
        .call(
            "/VolumeDriver.Create",
            json!({"Name": "v2", "Opts": {"size": "1G"}}),
        )
        .await;
    assert_eq!(err(&reply), "");
    assert_eq!(f.provider.calls()[1], format!("create v2 {}", 1u64 << 30));
}

#[tokio::test]
async fn create_rejects_bad_options_and_names_without_creating() {
    let f = Fixture::new();
    let reply = f
        .call(
            "/VolumeDriver.Create",
            json!({"Name": "v1", "Opts": {"sise": "1G"}}),
        )
        .await;
    assert_eq!(
        err(&reply),
        "unknown option(s) sise; known options: size, fstype, snapshot, backup, backup_key, hydrate"
    );
    let reply = f
        .call(
            "/VolumeDriver.Create",
            json!({"Name": "v1", "Opts": {"size": "huge"}}),
        )
        .await;
    assert!(err(&reply).starts_with("size=huge: "), "{reply}");
    let reply = f
        .call(
            "/VolumeDriver.Create",
            json!({"Name": "v1", "Opts": {"fstype": "xfs"}}),
        )
        .await;
    assert_eq!(
        err(&reply),
        "fstype=xfs needs mkfs.xfs on the host, which is not installed"
    );
    let reply = f
        .call("/VolumeDriver.Create", json!({"Name": "../etc"}))
        .await;
    assert!(
        err(&reply).starts_with("invalid name \"../etc\": "),
        "{reply}"
    );
    let reply = f.call("/VolumeDriver.Create", json!({"Opts": {}})).await;
    assert!(
        err(&reply).starts_with("malformed plugin request: "),
        "{reply}"
    );
    let reply = handle(&f.driver, "/VolumeDriver.Create", b"not json").await;
    assert!(err(&reply.body).starts_with("malformed plugin request: "));
    assert!(f.provider.calls().is_empty());
    assert!(f.host.calls().is_empty());
}

#[tokio::test]
async fn create_clones_snapshots_and_passes_backup_errors_through() {
    let f = Fixture::new();
    let reply = f
        .call(
            "/VolumeDriver.Create",
            json!({"Name": "c", "Opts": {"snapshot": "db@s1"}}),
        )
        .await;
    assert_eq!(err(&reply), "");
    let reply = f
        .call(
            "/VolumeDriver.Create",
            json!({"Name": "r", "Opts": {"backup": "s3://b/db"}}),
        )
        .await;
    assert_eq!(err(&reply), "restoring from a backup is not available yet");
    assert_eq!(
        f.provider.calls(),
        vec!["clone c db@s1", "restore r s3://b/db"]
    );

    // A clone already holds a filesystem: it is never formatted.
    f.call("/VolumeDriver.Mount", json!({"Name": "c", "ID": "a"}))
        .await;
    assert_eq!(f.host.calls(), vec!["mount c format=None"]);
}

#[tokio::test]
async fn get_and_list_cover_every_volume_mounted_or_not() {
    let f = Fixture::new();
    f.provider.add("made-by-cli", 8192);
    f.call(
        "/VolumeDriver.Create",
        json!({"Name": "v1", "Opts": {"size": "1G"}}),
    )
    .await;

    let got = f
        .call("/VolumeDriver.Get", json!({"Name": "made-by-cli"}))
        .await;
    assert_eq!(got["Volume"]["Name"], "made-by-cli");
    assert_eq!(got["Volume"]["Mountpoint"], "");
    assert_eq!(got["Volume"]["Status"]["size"], "1 GiB");
    assert_eq!(got["Volume"]["CreatedAt"], "2023-11-14T22:13:20Z");

    let got = f.call("/VolumeDriver.Get", json!({"Name": "nope"})).await;
    assert_eq!(err(&got), "no such volume: nope");

    f.call("/VolumeDriver.Mount", json!({"Name": "v1", "ID": "c1"}))
        .await;
    let list = f.call("/VolumeDriver.List", json!({})).await;
    let names: Vec<(&str, &str)> = list["Volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["Name"].as_str().unwrap(),
                v["Mountpoint"].as_str().unwrap(),
            )
        })
        .collect();
    let mountpoint = f.mount_target("v1").join("data");
    assert_eq!(
        names,
        vec![("made-by-cli", ""), ("v1", mountpoint.to_str().unwrap())]
    );
    let path = f.call("/VolumeDriver.Path", json!({"Name": "v1"})).await;
    assert_eq!(path["Mountpoint"], mountpoint.to_str().unwrap());
    let path = f
        .call("/VolumeDriver.Path", json!({"Name": "made-by-cli"}))
        .await;
    assert_eq!(path["Mountpoint"], "");
    // List needs no body at all.
    let reply = handle(&f.driver, "/VolumeDriver.List", b"").await;
    assert_eq!(reply.body["Volumes"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn mounts_are_counted_and_the_last_unmount_detaches() {
    let f = Fixture::new();
    f.call(
        "/VolumeDriver.Create",
        json!({"Name": "v1", "Opts": {"size": "1G"}}),
    )
    .await;
    let a = f
        .call("/VolumeDriver.Mount", json!({"Name": "v1", "ID": "a"}))
        .await;
    let b = f
        .call("/VolumeDriver.Mount", json!({"Name": "v1", "ID": "b"}))
        .await;
    let expected = f.mount_target("v1").join("data");
    assert_eq!(a["Mountpoint"], expected.to_str().unwrap());
    assert_eq!(b["Mountpoint"], a["Mountpoint"]);
    assert_eq!(f.host.calls(), vec!["mount v1 format=Some(Ext4)"]);

    let reply = f.call("/VolumeDriver.Remove", json!({"Name": "v1"})).await;
    assert_eq!(
        err(&reply),
        "volume v1 is mounted by 2 container(s); stop them before removing it"
    );

    assert_eq!(
        err(&f
            .call("/VolumeDriver.Unmount", json!({"Name": "v1", "ID": "a"}))
            .await),
        ""
    );
    assert_eq!(
        err(&f
            .call("/VolumeDriver.Unmount", json!({"Name": "v1", "ID": "zzz"}))
            .await),
        ""
    );
    assert_eq!(f.host.calls().len(), 1, "still mounted for b");
    let got = f.call("/VolumeDriver.Get", json!({"Name": "v1"})).await;
    assert_eq!(got["Volume"]["Mountpoint"], expected.to_str().unwrap());

    f.call("/VolumeDriver.Unmount", json!({"Name": "v1", "ID": "b"}))
        .await;
    let unmounted = format!("unmount {}", f.mount_target("v1").display());
    assert_eq!(f.host.calls()[1], unmounted);
    let got = f.call("/VolumeDriver.Get", json!({"Name": "v1"})).await;
    assert_eq!(got["Volume"]["Mountpoint"], "");

    // Mounted again: formatted already, so no format this time.
    f.call("/VolumeDriver.Mount", json!({"Name": "v1", "ID": "c"}))
        .await;
    assert_eq!(f.host.calls()[2], "mount v1 format=None");
    f.call("/VolumeDriver.Unmount", json!({"Name": "v1", "ID": "c"}))
        .await;

    assert_eq!(
        err(&f.call("/VolumeDriver.Remove", json!({"Name": "v1"})).await),
        ""
    );
    assert!(f.provider.volume("v1").unwrap().is_none());
    assert_eq!(
        err(&f.call("/VolumeDriver.Remove", json!({"Name": "v1"})).await),
        ""
    );
}

#[tokio::test]
async fn concurrent_mounts_of_one_volume_attach_once() {
    let f = Fixture::new();
    f.call(
        "/VolumeDriver.Create",
        json!({"Name": "v1", "Opts": {"size": "1G"}}),
    )
    .await;
    let mounts = (0..4).map(|i| {
        let driver = f.driver.clone();
        tokio::spawn(async move {
            let body = json!({"Name": "v1", "ID": format!("id{i}")}).to_string();
            handle(&driver, "/VolumeDriver.Mount", body.as_bytes()).await
        })
    });
    for m in mounts {
        assert_eq!(err(&m.await.unwrap().body), "");
    }
    assert_eq!(f.host.calls().len(), 1);
}

#[tokio::test]
async fn failed_mounts_are_reported_and_not_counted() {
    let f = Fixture::new();
    f.call(
        "/VolumeDriver.Create",
        json!({"Name": "v1", "Opts": {"size": "1G"}}),
    )
    .await;
    *f.host.fail_mounts.lock().unwrap() = true;
    let reply = f
        .call("/VolumeDriver.Mount", json!({"Name": "v1", "ID": "a"}))
        .await;
    assert_eq!(err(&reply), "volume v1: mount failed: no such device");
    // Not counted: the volume can be removed.
    assert_eq!(
        err(&f.call("/VolumeDriver.Remove", json!({"Name": "v1"})).await),
        ""
    );
    let reply = f
        .call("/VolumeDriver.Mount", json!({"Name": "gone", "ID": "a"}))
        .await;
    assert_eq!(err(&reply), "no such volume: gone");
}

#[tokio::test]
async fn mount_counts_survive_a_restart() {
    let mut f = Fixture::new();
    f.call(
        "/VolumeDriver.Create",
        json!({"Name": "v1", "Opts": {"size": "1G"}}),
    )
    .await;
    f.call(
        "/VolumeDriver.Create",
        json!({"Name": "idle", "Opts": {"size": "1G"}}),
    )
    .await;
    f.call("/VolumeDriver.Mount", json!({"Name": "v1", "ID": "a"}))
        .await;
    f.call("/VolumeDriver.Mount", json!({"Name": "v1", "ID": "b"}))
        .await;

    f.restart().await;
    // The old attachment cannot be taken over: it is torn down and the
    // volume mounted afresh.
    assert_eq!(
        f.host.calls(),
        vec!["resume v1", "clear_stale 1 live=0", "mount v1 format=None"]
    );
    let got = f.call("/VolumeDriver.Get", json!({"Name": "v1"})).await;
    assert_ne!(got["Volume"]["Mountpoint"], "");
    f.call("/VolumeDriver.Unmount", json!({"Name": "v1", "ID": "a"}))
        .await;
    assert_eq!(f.host.calls().len(), 3);
    f.call("/VolumeDriver.Unmount", json!({"Name": "v1", "ID": "b"}))
        .await;
    assert_eq!(f.host.calls().len(), 4);

    // "idle" was never mounted: still formatted on its first mount.
    f.restart().await;
    f.call("/VolumeDriver.Mount", json!({"Name": "idle", "ID": "x"}))
        .await;
    assert_eq!(
        f.host.calls(),
        vec!["clear_stale 0 live=0", "mount idle format=Some(Ext4)"]
    );
}

#[tokio::test]
async fn attachments_taken_over_after_a_restart_stay_mounted() {
    let mut f = Fixture::new();
    for name in ["held", "let-go"] {
        f.call(
            "/VolumeDriver.Create",
            json!({"Name": name, "Opts": {"size": "1G"}}),
        )
        .await;
        f.call("/VolumeDriver.Mount", json!({"Name": name, "ID": "a"}))
            .await;
    }
    let got = f.call("/VolumeDriver.Get", json!({"Name": "held"})).await;
    assert_eq!(got["Volume"]["Status"]["attached"], "kernel-nbd /dev/loop9");
    // The daemon dies after Docker's last Unmount of "let-go" was
    // counted but before the volume was detached.
    let path = f.dir.0.join("docker/state.json");
    let mut state: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    state["volumes"]["let-go"]["mount_ids"] = json!([]);
    std::fs::write(&path, state.to_string()).unwrap();

    f.restart_with(true).await;
    assert_eq!(
        f.host.calls()[..3],
        ["resume held", "resume let-go", "clear_stale 0 live=2"]
    );
    assert_eq!(
        f.host.calls()[3..],
        [format!("unmount {}", f.mount_target("let-go").display())],
        "taken over, and detached as no container holds it; nothing remounted"
    );
    let got = f.call("/VolumeDriver.Get", json!({"Name": "held"})).await;
    assert_ne!(got["Volume"]["Mountpoint"], "");
    let got = f.call("/VolumeDriver.Get", json!({"Name": "let-go"})).await;
    assert_eq!(got["Volume"]["Mountpoint"], "");
    // The taken-over attachment is unmounted when its container goes.
    f.call("/VolumeDriver.Unmount", json!({"Name": "held", "ID": "a"}))
        .await;
    assert_eq!(
        f.host.calls().last().unwrap(),
        &format!("unmount {}", f.mount_target("held").display())
    );
}

#[tokio::test]
async fn a_dead_mount_is_released_and_mounted_again() {
    let f = Fixture::new();
    f.call(
        "/VolumeDriver.Create",
        json!({"Name": "v1", "Opts": {"size": "1G"}}),
    )
    .await;
    f.call("/VolumeDriver.Mount", json!({"Name": "v1", "ID": "a"}))
        .await;
    *f.host.dead.lock().unwrap() = true;
    let b = f
        .call("/VolumeDriver.Mount", json!({"Name": "v1", "ID": "b"}))
        .await;
    assert_eq!(err(&b), "");
    let target = f.mount_target("v1");
    assert_eq!(
        f.host.calls(),
        vec![
            "mount v1 format=Some(Ext4)".to_string(),
            format!("release {}", target.display()),
            "mount v1 format=None".to_string(),
        ]
    );
    // Both IDs are still counted against the fresh mount.
    f.call("/VolumeDriver.Unmount", json!({"Name": "v1", "ID": "a"}))
        .await;
    assert_eq!(f.host.calls().len(), 3);
    f.call("/VolumeDriver.Unmount", json!({"Name": "v1", "ID": "b"}))
        .await;
    assert_eq!(f.host.calls()[3], format!("unmount {}", target.display()));
}

#[tokio::test]
async fn volumes_with_data_and_no_record_are_never_formatted() {
    let f = Fixture::new();
    f.provider.add("raw", 1 << 20);
    f.provider.add("blank", 0);
    f.call("/VolumeDriver.Mount", json!({"Name": "raw", "ID": "a"}))
        .await;
    f.call("/VolumeDriver.Mount", json!({"Name": "blank", "ID": "a"}))
        .await;
    assert_eq!(
        f.host.calls(),
        vec!["mount raw format=None", "mount blank format=Some(Ext4)"]
    );
}

/// dockerd's requests as they arrive on the socket: POST, no Content-Type.
#[tokio::test]
async fn serves_raw_http_without_content_type() {
    let f = Fixture::new();
    let socket = f.dir.0.join("plugin.sock");
    // A regular file where the socket goes is never deleted.
    std::fs::write(&socket, b"").unwrap();
    let refused = ballast_docker::bind(&socket).unwrap_err();
    assert!(refused.to_string().contains("is not a socket"), "{refused}");
    std::fs::remove_file(&socket).unwrap();
    let (listener, _socket_file) = ballast_docker::bind(&socket).unwrap();
    let mode = std::fs::metadata(&socket).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o660
    );
    let stop = stop_signal();
    let server = tokio::spawn(ballast_docker::serve(listener, f.driver.clone(), stop.1));

    let response = tokio::task::spawn_blocking({
        let socket = socket.clone();
        move || {
            let body = r#"{"Name":"v1","Opts":null}"#;
            let mut stream = UnixStream::connect(&socket).unwrap();
            write!(
                stream,
                "POST /VolumeDriver.Create HTTP/1.1\r\nHost: plugin\r\nAccept: application/vnd.docker.plugins.v1.2+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
            let mut response = String::new();
            stream.read_to_string(&mut response).unwrap();
            response
        }
    })
    .await
    .unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with(r#"{"Err":""}"#), "{response}");
    assert!(f.provider.volume("v1").unwrap().is_some());

    // A second bind while the first listens is refused; a stale one is replaced.
    assert!(ballast_docker::bind(&socket).is_err());
    let _ = stop.0.send(());
    server.await.unwrap();
    drop(ballast_docker::bind(&socket).unwrap());
}

/// A one-shot stop signal for `serve`.
fn stop_signal() -> (
    tokio::sync::oneshot::Sender<()>,
    impl std::future::Future<Output = ()>,
) {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    (tx, async move {
        let _ = rx.await;
    })
}

#[tokio::test]
async fn a_volume_attached_alone_and_a_docker_mount_exclude_each_other() {
    let f = Fixture::new();
    for name in ["alone", "docker"] {
        f.call(
            "/VolumeDriver.Create",
            json!({"Name": name, "Opts": {"size": "1G"}}),
        )
        .await;
    }
    let attached = f.driver.attach("alone").await.unwrap();
    assert_eq!(attached.target, None);
    assert_eq!(attached.to_string(), "kernel-nbd /dev/nbd3");
    assert_eq!(
        f.driver.attach("alone").await.unwrap(),
        attached,
        "idempotent"
    );
    assert_eq!(f.host.calls(), ["attach alone"]);
    let reply = f
        .call("/VolumeDriver.Mount", json!({"Name": "alone", "ID": "a"}))
        .await;
    assert_eq!(
        err(&reply),
        "volume alone is attached as /dev/nbd3 with `ballast attach`; run `ballast detach alone` first"
    );
    let got = f.call("/VolumeDriver.Get", json!({"Name": "alone"})).await;
    assert_eq!(got["Volume"]["Mountpoint"], "", "attached, not mounted");
    assert_eq!(got["Volume"]["Status"]["attached"], "kernel-nbd /dev/nbd3");
    let reply = f
        .call("/VolumeDriver.Remove", json!({"Name": "alone"}))
        .await;
    assert!(err(&reply).contains("ballast detach alone"), "{reply}");

    f.call("/VolumeDriver.Mount", json!({"Name": "docker", "ID": "a"}))
        .await;
    let e = f.driver.attach("docker").await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "volume docker is mounted for Docker; stop its containers before attaching it on its own"
    );
    assert!(f.driver.detach_alone("docker").await.is_err());

    f.driver.detach_alone("alone").await.unwrap();
    f.driver.detach_alone("alone").await.unwrap();
    assert_eq!(f.host.calls().last().unwrap(), "unmount /dev/nbd3");
    f.call("/VolumeDriver.Mount", json!({"Name": "alone", "ID": "b"}))
        .await;
    assert!(f.driver.attach("nope").await.is_err());
}
