//! `ballast attach` / `ballast detach`: a volume as a block device on the
//! host, by the same code that attaches Docker volumes, kept across a
//! `kill -9` of the daemon.

mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::process::Command;

use common::{fails, json, ok, Daemon, TempDir};

fn runnable() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let losetup = Command::new("sh")
        .args(["-c", "command -v losetup >/dev/null"])
        .status()
        .is_ok_and(|s| s.success());
    if root && Path::new("/dev/fuse").exists() && losetup {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "the attach tests need root, /dev/fuse and losetup"
    );
    eprintln!("skipping: needs root, /dev/fuse, losetup");
    false
}

/// `len` bytes at a 4096-aligned address inside `storage`.
fn aligned(storage: &mut Vec<u8>, len: usize) -> &mut [u8] {
    storage.resize(len + 4096, 0);
    let pad = storage.as_ptr().align_offset(4096);
    &mut storage[pad..pad + len]
}

fn write_block(device: &str, offset: u64, fill: u8) {
    let dev = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(device)
        .unwrap();
    let mut storage = Vec::new();
    let buf = aligned(&mut storage, 4096);
    buf.fill(fill);
    dev.write_all_at(buf, offset).unwrap();
    dev.sync_all().unwrap();
}

fn read_block(device: &str, offset: u64) -> Vec<u8> {
    let dev = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(device)
        .unwrap();
    let mut storage = Vec::new();
    let buf = aligned(&mut storage, 4096);
    dev.read_exact_at(buf, offset).unwrap();
    buf.to_vec()
}

fn start(dir: &TempDir) -> Daemon {
    Daemon::start_with(
        &dir.join("root"),
        &dir.join("control.sock"),
        &["--nbd-listen", "off"],
    )
}

#[test]
fn attach_detach_and_keep_the_device_across_a_crash() {
    if !runnable() {
        return;
    }
    let dir = TempDir::create();
    let mut daemon = start(&dir);
    let socket = daemon.socket.clone();
    ok(&socket, &["create", "raw", "--size", "64M"]);

    let device = ok(&socket, &["attach", "raw"]).trim().to_string();
    assert!(device.starts_with("/dev/loop"), "{device}");
    let attached = json(&socket, &["attach", "raw", "--json"]);
    assert_eq!(
        attached["device"],
        device.as_str(),
        "attaching again answers the same device"
    );
    assert_eq!(attached["via"], "fuse");
    write_block(&device, 1 << 20, 0x5a);

    // The daemon dies; the device stays and its I/O resumes once the next
    // daemon takes it over.
    daemon.kill9();
    let mut daemon = start(&dir);
    assert_eq!(
        read_block(&device, 1 << 20),
        vec![0x5a; 4096],
        "{}",
        daemon.log()
    );
    write_block(&device, 2 << 20, 0xa5);
    assert_eq!(ok(&socket, &["attach", "raw"]).trim(), device);

    let e = fails(&socket, &["delete", "raw"]);
    assert_eq!(
        e,
        format!("error: volume raw is attached (fuse {device}); detach it (or stop its containers) first")
    );
    assert_eq!(ok(&socket, &["detach", "raw"]), "raw\n");
    assert_eq!(
        ok(&socket, &["detach", "raw"]),
        "raw\n",
        "detaching twice is fine"
    );
    let backing = Path::new("/sys/block")
        .join(device.trim_start_matches("/dev/"))
        .join("loop/backing_file");
    assert!(!backing.exists(), "the loop device is gone");

    // Attached afresh, the data is there.
    let again = ok(&socket, &["attach", "raw"]).trim().to_string();
    assert_eq!(read_block(&again, 1 << 20), vec![0x5a; 4096]);
    assert_eq!(read_block(&again, 2 << 20), vec![0xa5; 4096]);
    ok(&socket, &["detach", "raw"]);

    let e = fails(&socket, &["attach", "nope"]);
    assert!(e.contains("no such volume: nope"), "{e}");
    let e = fails(&socket, &["attach", "../x"]);
    assert!(e.contains("invalid name"), "{e}");
    ok(&socket, &["delete", "raw"]);
    assert!(daemon.terminate().success());
}
