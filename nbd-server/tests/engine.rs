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

#[test]
fn extended_headers_carry_64_bit_lengths() {
    const GIB: u64 = 1 << 30;
    let h = Harness::engine();
    h.create_volume("big", 16 * GIB);
    let mut c = Raw::connect(&h.socket);
    c.greet(FLAG_C_FIXED_NEWSTYLE);
    c.option(OPT_EXTENDED_HEADERS, &[1]);
    assert_eq!(
        c.option_reply().1,
        REP_ERR_INVALID,
        "the option takes no data"
    );
    c.option(OPT_EXTENDED_HEADERS, &[]);
    assert_eq!(c.option_reply().1, REP_ACK);
    c.option(OPT_EXTENDED_HEADERS, &[]);
    assert_eq!(c.option_reply().1, REP_ERR_INVALID, "negotiated twice");
    c.option(OPT_STRUCTURED_REPLY, &[]);
    assert_eq!(c.option_reply().1, REP_ERR_EXT_HEADER_REQD);
    drop(c);

    let mut c = Raw::connect(&h.socket);
    c.go_extended("big", true);
    let data = vec![0xc3u8; 1 << 20];
    for (i, at) in [0, 5 * GIB, 15 * GIB].into_iter().enumerate() {
        c.request(0, CMD_WRITE, i as u64, at, data.len() as u32, &data);
        let r = c.chunk();
        // Success is a NONE chunk echoing the request offset, never a simple reply.
        assert_eq!(
            (r.kind, r.flags, r.handle, r.offset),
            (REPLY_TYPE_NONE, REPLY_FLAG_DONE, i as u64, at)
        );
    }
    c.request(0, CMD_READ, 10, 5 * GIB, 4096, &[]);
    let r = c.chunk();
    assert_eq!((r.kind, r.offset), (REPLY_TYPE_OFFSET_DATA, 5 * GIB));
    assert_eq!(
        u64::from_be_bytes(r.payload[..8].try_into().unwrap()),
        5 * GIB
    );
    assert_eq!(&r.payload[8..], &data[..4096]);

    // One 10 GiB zeroing request: more than a 32-bit length can say.
    c.request64(0, CMD_WRITE_ZEROES, 11, 4 * GIB, 10 * GIB, &[]);
    assert_eq!(c.chunk().kind, REPLY_TYPE_NONE);
    c.request64(0, CMD_BLOCK_STATUS, 12, 0, 16 * GIB, &[]);
    let r = c.chunk();
    assert_eq!(r.kind, REPLY_TYPE_BLOCK_STATUS_EXT);
    assert_eq!(
        u32::from_be_bytes(r.payload[..4].try_into().unwrap()),
        BASE_ALLOCATION_ID
    );
    let count = u32::from_be_bytes(r.payload[4..8].try_into().unwrap()) as usize;
    assert_eq!(r.payload.len(), 8 + 16 * count);
    let extents: Vec<(u64, u64)> = r.payload[8..]
        .chunks(16)
        .map(|d| {
            (
                u64::from_be_bytes(d[..8].try_into().unwrap()),
                u64::from_be_bytes(d[8..].try_into().unwrap()),
            )
        })
        .collect();
    let hz = u64::from(STATE_HOLE | STATE_ZERO);
    // Queries stop at 4 GiB - 1 per request; the client asks again for the rest.
    assert_eq!(extents, [(MIB, 0), (u64::from(u32::MAX) - MIB, hz)]);
    c.request64(0, CMD_BLOCK_STATUS, 13, 14 * GIB, 2 * GIB, &[]);
    let r = c.chunk();
    let tail: Vec<u64> = r.payload[8..]
        .chunks(8)
        .map(|d| u64::from_be_bytes(d.try_into().unwrap()))
        .collect();
    assert_eq!(tail, [GIB, hz, MIB, 0, GIB - MIB, hz]);
    let mut zero = vec![0u8; 4096];
    c.request(0, CMD_READ, 14, 5 * GIB, 4096, &[]);
    zero.splice(0..0, (5 * GIB).to_be_bytes());
    assert_eq!(c.chunk().payload, zero, "zeroed by the 10 GiB request");

    // Errors are extended error chunks; a PAYLOAD_LEN payload is skipped.
    c.request64(0, CMD_TRIM, 15, 8 * GIB, 9 * GIB, &[]);
    let r = c.chunk();
    assert_eq!(
        (r.kind, r.errno(), r.offset),
        (REPLY_TYPE_ERROR, 22, 8 * GIB)
    );
    c.request64(
        CMD_FLAG_PAYLOAD_LEN,
        CMD_BLOCK_STATUS,
        16,
        0,
        12,
        &[0u8; 12],
    );
    assert_eq!(c.chunk().errno(), 22);
    c.request(CMD_FLAG_PAYLOAD_LEN, CMD_WRITE, 20, 0, 4, b"ext!");
    assert_eq!(
        c.chunk().kind,
        REPLY_TYPE_NONE,
        "PAYLOAD_LEN on a write is harmless"
    );
    c.request64(0, CMD_TRIM, 17, 4 * GIB, 4 * GIB, &[]);
    assert_eq!(c.chunk().kind, REPLY_TYPE_NONE);
    c.request64(0, CMD_READ, 18, 0, 64 << 20, &[]);
    assert_eq!(c.chunk().errno(), 22, "reads stay capped at 32 MiB");
    c.request64(0, CMD_WRITE, 19, 0, 1 << 40, &[]);
    assert!(c.closed(), "a 1 TiB write payload is a hard disconnect");
}
