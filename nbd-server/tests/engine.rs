//! The server over a real ballast pool: engine errors reach clients as the
//! right NBD error values, and shutdown drains connections.

mod common;

use std::os::unix::fs::FileExt;
use std::time::Duration;

use ballast_nbd::proto::*;
use common::raw::Raw;
use common::Harness;

const MIB: u64 = 1024 * 1024;

#[test]
fn full_pool_answers_enospc() {
    let h = Harness::engine_with(|c| c.max_size = Some(4 * MIB));
    h.create_volume("vol", 64 * MIB);
    let mut c = Raw::connect(&h.socket);
    c.go("vol", false, false);
    let chunk = vec![0x42u8; MIB as usize];
    let mut errors = Vec::new();
    for i in 0..16u64 {
        c.request(0, CMD_WRITE, i, i * MIB, MIB as u32, &chunk);
        let (error, handle) = c.simple_reply();
        assert_eq!(handle, i);
        errors.push(error);
    }
    assert_eq!(errors[0], 0, "the first MiB fits");
    assert_eq!(
        *errors.last().unwrap(),
        28,
        "a full pool is ENOSPC: {errors:?}"
    );
    // The connection and the data already written survive.
    c.request(0, CMD_READ, 99, 0, 4096, &[]);
    assert_eq!(c.simple_reply(), (0, 99));
    assert_eq!(c.read_n(4096), vec![0x42; 4096]);
}

#[test]
fn checksum_failure_is_eio_without_payload() {
    let h = Harness::engine();
    h.create_volume("vol", 4 * MIB);
    let mut c = Raw::connect(&h.socket);
    c.go("vol", false, false);
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 31 % 253) as u8 + 1).collect();
    c.request(CMD_FLAG_FUA, CMD_WRITE, 1, 8192, 4096, &pattern);
    assert_eq!(c.simple_reply(), (0, 1));

    // Corrupt the block where the pattern landed in the pool's data file.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(h.dir.path().join("pool/pool.data"))
        .unwrap();
    let len = file.metadata().unwrap().len();
    let mut block = vec![0u8; 4096];
    let at = (0..len / 4096)
        .map(|b| b * 4096)
        .find(|&off| {
            file.read_exact_at(&mut block, off).unwrap();
            block == pattern
        })
        .expect("written block not found in pool.data");
    file.write_all_at(&[0xff; 16], at + 100).unwrap();
    file.sync_all().unwrap();

    c.request(0, CMD_READ, 2, 8192, 4096, &[]);
    assert_eq!(c.simple_reply(), (5, 2), "checksum mismatch must be EIO");
    // No payload followed the error header: the next reply parses.
    c.request(0, CMD_READ, 3, 0, 512, &[]);
    assert_eq!(c.simple_reply(), (0, 3));
    assert_eq!(c.read_n(512), vec![0; 512]);

    // With structured replies the failure is an error chunk.
    let mut s = Raw::connect(&h.socket);
    s.go("vol", true, false);
    s.request(0, CMD_READ, 4, 8192, 4096, &[]);
    let r = s.chunk();
    assert_eq!((r.kind, r.handle), (REPLY_TYPE_ERROR, 4));
    assert_eq!(r.errno(), 5);
}

#[test]
fn names_are_validated_and_snapshots_listed() {
    let h = Harness::engine();
    h.create_volume("vol", MIB);
    h.snapshot("vol", "s1");
    let mut c = Raw::connect(&h.socket);
    c.greet(FLAG_C_FIXED_NEWSTYLE);
    for name in ["../vol", "vol@", "@s1", "vol@nope", "nope", ""] {
        let mut go = Raw::name_payload(name);
        go.extend_from_slice(&0u16.to_be_bytes());
        c.option(OPT_GO, &go);
        assert_eq!(c.option_reply().1, REP_ERR_UNKNOWN, "{name:?}");
    }
    c.option(OPT_LIST, &[]);
    let mut names = Vec::new();
    loop {
        let (_, kind, data) = c.option_reply();
        if kind == REP_ACK {
            break;
        }
        names.push(String::from_utf8(data[4..].to_vec()).unwrap());
    }
    assert_eq!(names, ["vol", "vol@s1"]);
}

#[test]
fn shutdown_drains_connections_and_closed_pool_is_eshutdown() {
    let mut h = Harness::engine();
    h.create_volume("vol", MIB);
    let mut c = Raw::connect(&h.socket);
    c.go("vol", false, false);
    // A pool closed under a live connection answers ESHUTDOWN.
    h.runtime().block_on(h.pool().close()).unwrap();
    c.request(0, CMD_WRITE, 1, 0, 4096, &[1u8; 4096]);
    assert_eq!(c.simple_reply(), (108, 1));

    let mut idle = Raw::connect(&h.socket);
    idle.greet(FLAG_C_FIXED_NEWSTYLE);
    assert!(
        h.shutdown(Duration::from_secs(10)),
        "listeners did not finish"
    );
    assert!(c.closed());
    assert!(idle.closed());
}
