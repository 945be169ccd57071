//! Real NBD clients against the in-process server: qemu-io, qemu-img,
//! libnbd's nbdinfo and nbdcopy, fio's nbd engine, and the `nbd` crate.

mod common;

use std::process::Command;

use common::{random_file, require, run, run_failing, Harness};

const MIB: u64 = 1024 * 1024;

fn qemu_io(uri: &str, cmds: &[&str]) -> String {
    let mut cmd = Command::new("qemu-io");
    cmd.args(["-f", "raw"]);
    for c in cmds {
        cmd.args(["-c", c]);
    }
    cmd.arg(uri);
    let out = run(&mut cmd);
    assert!(!out.contains("Pattern verification failed"), "{out}");
    assert!(!out.contains("failed:"), "{out}");
    out
}

#[test]
fn qemu_io_volume_and_snapshot() {
    if !require("qemu-io") {
        return;
    }
    let h = Harness::engine();
    h.create_volume("vol", 16 * MIB);
    for uri in [h.unix_uri("vol"), h.tcp_uri("vol")] {
        qemu_io(
            &uri,
            &[
                "write -P 0xab 0 2M",
                "read -P 0xab 0 2M",
                "write -z 1M 512k",
                "read -P 0 1M 512k",
                "read -P 0xab 1536k 512k",
                "write -z -u 4M 1M",
                "read -P 0 4M 1M",
                "write -f -P 0xcd 6M 64k",
                "read -P 0xcd 6M 64k",
                "discard 0 512k",
                "read -P 0 0 512k",
                "flush",
            ],
        );
    }
    let data = h.contents("vol");
    assert!(data[..512 * 1024].iter().all(|&b| b == 0));
    assert!(data[512 * 1024..MIB as usize].iter().all(|&b| b == 0xab));
    assert!(data[6 * MIB as usize..6 * MIB as usize + 65536]
        .iter()
        .all(|&b| b == 0xcd));

    // The snapshot reads the volume as it was and refuses writes.
    h.snapshot("vol", "s1");
    qemu_io(&h.unix_uri("vol"), &["write -P 0x11 512k 512k"]);
    let snap = h.unix_uri("vol@s1");
    let out = run(Command::new("qemu-io").args([
        "-r",
        "-f",
        "raw",
        "-c",
        "read -P 0xab 512k 512k",
        "-c",
        "read -P 0 0 512k",
        &snap,
    ]));
    assert!(!out.contains("failed"), "{out}");
    let before = h.contents("vol@s1");
    let out = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write -P 0x22 0 4k", &snap])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success(),
        "write to a snapshot succeeded: {text}"
    );
    assert!(
        text.contains("Permission denied") || text.contains("Operation not permitted"),
        "{text}"
    );
    assert_eq!(h.contents("vol@s1"), before);
}

#[test]
fn nbdinfo_list_and_map() {
    if !require("nbdinfo") || !require("qemu-io") {
        return;
    }
    let h = Harness::engine();
    h.create_volume("alpha", 8 * MIB);
    h.create_volume("beta", 4 * MIB);
    qemu_io(
        &h.unix_uri("alpha"),
        &["write -P 1 0 1M", "write -P 2 3M 1M", "discard 3M 512k"],
    );
    h.snapshot("alpha", "monday");

    let out = run(Command::new("nbdinfo").arg(h.unix_uri("alpha")));
    assert!(out.contains(&format!("export-size: {}", 8 * MIB)), "{out}");
    assert!(out.contains("can_multi_conn: true"), "{out}");
    assert!(out.contains("can_fast_zero: true"), "{out}");
    assert!(out.contains("is_read_only: false"), "{out}");
    assert!(out.contains("block_size_preferred: 4096"), "{out}");
    let out = run(Command::new("nbdinfo").arg(h.tcp_uri("alpha@monday")));
    assert!(out.contains("is_read_only: true"), "{out}");

    let out = run(Command::new("nbdinfo").args(["--list", "--json", &h.unix_uri("")]));
    for name in ["alpha", "alpha@monday", "beta"] {
        assert!(
            out.contains(&format!("\"export-name\": \"{name}\"")),
            "{name} missing from {out}"
        );
    }

    // --map: data in [0,1M) and [3.5M,4M), holes (reading as zero) elsewhere.
    let out = run(Command::new("nbdinfo").args(["--map", "--totals", &h.unix_uri("alpha")]));
    // Totals: 1.5 MiB data (type 0), the rest hole+zero (type 3).
    let totals: Vec<(u64, u32)> = out
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0].parse().unwrap(), f[2].parse().unwrap())
        })
        .collect();
    assert_eq!(
        totals,
        [(3 * MIB / 2, 0), (8 * MIB - 3 * MIB / 2, 3)],
        "{out}"
    );
    let out = run(Command::new("nbdinfo").args(["--map", &h.unix_uri("alpha")]));
    let map: Vec<(u64, u64, u32)> = out
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
            )
        })
        .collect();
    let m = MIB;
    assert_eq!(
        map,
        [
            (0, m, 0),
            (m, 2 * m + m / 2, 3),
            (3 * m + m / 2, m / 2, 0),
            (4 * m, 4 * m, 3)
        ],
        "{out}"
    );
}

#[test]
fn nbdcopy_round_trip_64mib() {
    if !require("nbdcopy") {
        return;
    }
    let h = Harness::engine();
    h.create_volume("vol", 64 * MIB);
    let src = h.path("src.img");
    let data = random_file(&src, 64 * MIB as usize);
    run(Command::new("nbdcopy").arg(&src).arg(h.unix_uri("vol")));
    assert!(h.contents("vol") == data, "nbdcopy in: data differs");
    let dst = h.path("dst.img");
    run(Command::new("nbdcopy").arg(h.tcp_uri("vol")).arg(&dst));
    assert!(
        std::fs::read(&dst).unwrap() == data,
        "nbdcopy out: data differs"
    );
}

#[test]
fn qemu_img_map_and_convert() {
    if !require("qemu-img") {
        return;
    }
    let h = Harness::engine();
    h.create_volume("vol", 16 * MIB);
    // A sparse source image: 1 MiB of data at 2 MiB, zeros elsewhere.
    let src = h.path("src.raw");
    let mut data = vec![0u8; 16 * MIB as usize];
    let chunk = random_file(&h.path("chunk"), MIB as usize);
    data[2 * MIB as usize..3 * MIB as usize].copy_from_slice(&chunk);
    std::fs::write(&src, &data).unwrap();
    run(Command::new("qemu-img")
        .args(["convert", "-n", "-f", "raw", "-O", "raw"])
        .arg(&src)
        .arg(h.unix_uri("vol")));
    assert!(h.contents("vol") == data);

    let out = run(Command::new("qemu-img").args([
        "map",
        "--output=json",
        "-f",
        "raw",
        &h.unix_uri("vol"),
    ]));
    let data_ranges: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("\"data\": true"))
        .collect();
    assert_eq!(data_ranges.len(), 1, "{out}");
    assert!(
        data_ranges[0].contains(&format!("\"start\": {}, \"length\": {}", 2 * MIB, MIB)),
        "{out}"
    );

    let dst = h.path("dst.raw");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "raw", &h.tcp_uri("vol")])
        .arg(&dst));
    assert!(std::fs::read(&dst).unwrap() == data);
}

#[test]
fn fio_nbd_engine_verifies_with_several_connections() {
    if !require("fio") {
        return;
    }
    let h = Harness::engine();
    h.create_volume("vol", 64 * MIB);
    let uri = h.unix_uri("vol");
    let out = run(Command::new("fio").current_dir(h.dir.path()).args([
        "--name=verify",
        "--verify_state_save=0",
        "--ioengine=nbd",
        &format!("--uri={uri}"),
        "--rw=randwrite",
        "--bs=4k",
        "--bsrange=4k-64k",
        "--iodepth=16",
        "--numjobs=4",
        "--size=16m",
        "--offset_increment=16m",
        "--verify=crc32c",
        "--do_verify=1",
        "--verify_fatal=1",
        "--group_reporting",
    ]));
    assert!(out.contains("err= 0"), "{out}");
}

#[test]
fn nbd_crate_client_over_tcp() {
    use std::io::{Read, Seek, SeekFrom, Write};
    let h = Harness::engine();
    h.create_volume("vol", 4 * MIB);
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", h.port)).unwrap();
    let export = nbd::client::handshake(&mut tcp, b"vol").unwrap();
    assert_eq!(export.size, 4 * MIB);
    let mut client = nbd::client::NbdClient::new(&mut tcp, &export);
    client.seek(SeekFrom::Start(8192)).unwrap();
    client.write_all(&[0x5a; 8192]).unwrap();
    client.seek(SeekFrom::Start(4096)).unwrap();
    let mut back = vec![0u8; 16384];
    client.read_exact(&mut back).unwrap();
    assert_eq!(&back[..4096], &[0u8; 4096][..]);
    assert_eq!(&back[4096..12288], &[0x5a; 8192][..]);
    assert_eq!(&h.contents("vol")[8192..16384], &[0x5a; 8192][..]);
}

#[test]
fn snapshot_write_refused_by_qemu_img() {
    if !require("qemu-img") {
        return;
    }
    let h = Harness::engine();
    h.create_volume("vol", MIB);
    h.snapshot("vol", "s");
    let src = h.path("src");
    random_file(&src, MIB as usize);
    run_failing(
        Command::new("qemu-img")
            .args(["convert", "-n", "-f", "raw", "-O", "raw"])
            .arg(&src)
            .arg(h.unix_uri("vol@s")),
    );
    assert!(h.contents("vol@s").iter().all(|&b| b == 0));
}
