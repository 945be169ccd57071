//! Protocol conformance at the byte level: option haggling, exact error
//! values, pipelining, and malformed input.

mod common;

use std::io::Write;

use ballast_nbd::proto::*;
use common::raw::Raw;
use common::Harness;

const MIB: u64 = 1024 * 1024;

fn harness() -> Harness {
    let h = Harness::memory();
    h.exports().create_volume("vol", 8 * MIB);
    h
}

#[test]
fn list_info_and_meta_context_options() {
    let h = harness();
    h.exports().create_snapshot("vol", "s1");
    let mut c = Raw::connect(&h.socket);
    let hs_flags = c.greet(FLAG_C_FIXED_NEWSTYLE);
    assert_eq!(hs_flags, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);

    assert_eq!(c.list(), ["vol", "vol@s1"]);

    // NBD_OPT_LIST with data is invalid.
    c.option(OPT_LIST, b"x");
    assert_eq!(c.option_reply().1, REP_ERR_INVALID);

    // Unknown options are refused, their payload skipped; STARTTLS is
    // refused by policy on a server without TLS.
    c.option(0x4242, &[7u8; 1000]);
    assert_eq!(
        c.option_reply(),
        (
            0x4242,
            REP_ERR_UNSUP,
            b"option not supported by this server".to_vec()
        )
    );
    c.option(OPT_STARTTLS, &[]);
    assert_eq!(c.option_reply().1, REP_ERR_POLICY);

    // Meta contexts need structured replies first.
    let mut meta = Raw::name_payload("vol");
    meta.extend_from_slice(&0u32.to_be_bytes());
    c.option(OPT_LIST_META_CONTEXT, &meta);
    assert_eq!(c.option_reply().1, REP_ERR_INVALID);
    c.option(OPT_STRUCTURED_REPLY, &[]);
    assert_eq!(c.option_reply().1, REP_ACK);
    c.option(OPT_LIST_META_CONTEXT, &meta);
    let (_, kind, data) = c.option_reply();
    assert_eq!(
        (kind, &data[4..]),
        (REP_META_CONTEXT, BASE_ALLOCATION.as_bytes())
    );
    assert_eq!(c.option_reply().1, REP_ACK);
    // Unknown namespaces are ignored, not errors.
    let mut query = Raw::name_payload("vol");
    query.extend_from_slice(&1u32.to_be_bytes());
    query.extend_from_slice(&Raw::name_payload("qemu:dirty-bitmap:x"));
    c.option(OPT_SET_META_CONTEXT, &query);
    assert_eq!(c.option_reply().1, REP_ACK);
    // A truncated query list is invalid.
    c.option(OPT_SET_META_CONTEXT, &query[..query.len() - 3]);
    assert_eq!(c.option_reply().1, REP_ERR_INVALID);

    // INFO on the snapshot: read-only, with name, description, block size.
    let mut info = Raw::name_payload("vol@s1");
    info.extend_from_slice(&3u16.to_be_bytes());
    for r in [INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE] {
        info.extend_from_slice(&r.to_be_bytes());
    }
    c.option(OPT_INFO, &info);
    let mut seen = Vec::new();
    loop {
        let (_, kind, data) = c.option_reply();
        if kind == REP_ACK {
            break;
        }
        assert_eq!(kind, REP_INFO);
        let ty = u16::from_be_bytes([data[0], data[1]]);
        match ty {
            INFO_EXPORT => {
                assert_eq!(u64::from_be_bytes(data[2..10].try_into().unwrap()), 8 * MIB);
                let flags = u16::from_be_bytes(data[10..12].try_into().unwrap());
                assert_ne!(flags & FLAG_READ_ONLY, 0);
                assert_ne!(flags & FLAG_CAN_MULTI_CONN, 0);
                assert_ne!(flags & FLAG_SEND_DF, 0);
            }
            INFO_NAME => assert_eq!(&data[2..], b"vol@s1"),
            INFO_DESCRIPTION => assert!(!data[2..].is_empty()),
            INFO_BLOCK_SIZE => {
                let v: Vec<u32> = data[2..]
                    .chunks(4)
                    .map(|b| u32::from_be_bytes(b.try_into().unwrap()))
                    .collect();
                assert_eq!(v, [1, 4096, 32 * 1024 * 1024]);
            }
            other => panic!("unexpected info {other}"),
        }
        seen.push(ty);
    }
    seen.sort();
    assert_eq!(
        seen,
        [INFO_EXPORT, INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE]
    );

    // Unknown export: an error reply, and the session goes on.
    let mut go = Raw::name_payload("nope");
    go.extend_from_slice(&0u16.to_be_bytes());
    c.option(OPT_GO, &go);
    assert_eq!(c.option_reply().1, REP_ERR_UNKNOWN);
    // A GO whose name length runs past the payload is invalid.
    c.option(OPT_GO, &go[..5]);
    assert_eq!(c.option_reply().1, REP_ERR_INVALID);

    c.option(OPT_ABORT, &[]);
    assert_eq!(c.option_reply().1, REP_ACK);
    assert!(c.closed());
}

#[test]
fn export_name_handshake_and_unknown_export() {
    let h = harness();
    // With NO_ZEROES negotiated: size and flags only.
    let mut c = Raw::connect(&h.socket);
    c.greet(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES);
    c.option(OPT_EXPORT_NAME, b"vol");
    let reply = c.read_n(10);
    assert_eq!(u64::from_be_bytes(reply[..8].try_into().unwrap()), 8 * MIB);
    c.request(0, CMD_READ, 1, 0, 4096, &[]);
    assert_eq!(c.simple_reply(), (0, 1));
    assert_eq!(c.read_n(4096), vec![0; 4096]);

    // Without NO_ZEROES: 124 zero bytes follow.
    let mut c = Raw::connect(&h.socket);
    c.greet(FLAG_C_FIXED_NEWSTYLE);
    c.option(OPT_EXPORT_NAME, b"vol");
    let reply = c.read_n(134);
    assert_eq!(&reply[10..], &[0u8; 124][..]);

    // Unknown name: the spec mandates a hard disconnect.
    let mut c = Raw::connect(&h.socket);
    c.greet(FLAG_C_FIXED_NEWSTYLE);
    c.option(OPT_EXPORT_NAME, b"missing");
    assert!(c.closed());

    // Unknown client flags: disconnect.
    let mut c = Raw::connect(&h.socket);
    c.greet(1 << 7);
    assert!(c.closed());
}

#[test]
fn commands_and_exact_error_values() {
    let h = harness();
    let dev = h.exports().device("vol");
    let mut c = Raw::connect(&h.socket);
    let (size, flags) = c.go("vol", true, true);
    assert_eq!(size, 8 * MIB);
    for f in [
        FLAG_HAS_FLAGS,
        FLAG_SEND_FLUSH,
        FLAG_SEND_FUA,
        FLAG_SEND_TRIM,
        FLAG_SEND_WRITE_ZEROES,
        FLAG_SEND_FAST_ZERO,
        FLAG_SEND_DF,
        FLAG_CAN_MULTI_CONN,
        FLAG_SEND_CACHE,
    ] {
        assert_ne!(flags & f, 0, "flag {f:#x} missing");
    }
    assert_eq!(flags & FLAG_READ_ONLY, 0);

    // Write with FUA, read back as one OFFSET_DATA chunk.
    let data: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
    let flushes = *dev.flushes.lock().unwrap();
    c.request(CMD_FLAG_FUA, CMD_WRITE, 10, 4096, data.len() as u32, &data);
    let r = c.chunk();
    assert_eq!((r.kind, r.handle), (REPLY_TYPE_NONE, 10));
    assert_eq!(*dev.flushes.lock().unwrap(), flushes + 1, "FUA must flush");
    c.request(CMD_FLAG_DF, CMD_READ, 11, 4096, data.len() as u32, &[]);
    let r = c.chunk();
    assert_eq!(
        (r.kind, r.handle, r.flags),
        (REPLY_TYPE_OFFSET_DATA, 11, REPLY_FLAG_DONE)
    );
    assert_eq!(u64::from_be_bytes(r.payload[..8].try_into().unwrap()), 4096);
    assert_eq!(&r.payload[8..], &data[..]);

    // Errors, one per rule.
    let cases: &[(u16, u16, u64, u32, u32)] = &[
        (0, CMD_READ, 8 * MIB - 4096, 8192, 22), // read past the end: EINVAL
        (0, CMD_TRIM, 8 * MIB, 1, 22),           // trim past the end: EINVAL
        (0, CMD_WRITE_ZEROES, 8 * MIB - 1, 2, 28), // zeroing past the end: ENOSPC
        (0, CMD_BLOCK_STATUS, u64::MAX, 1, 22),  // overflow: EINVAL
        (0, 42, 0, 0, 22),                       // unknown command: EINVAL
        (1 << 9, CMD_READ, 0, 512, 22),          // unknown flag: EINVAL
        (CMD_FLAG_REQ_ONE, CMD_WRITE_ZEROES, 0, 512, 22), // flag of another command
        (0, CMD_READ, 0, 33 * 1024 * 1024, 22),  // read larger than the maximum
    ];
    for (i, &(flags, cmd, offset, len, errno)) in cases.iter().enumerate() {
        c.request(flags, cmd, 100 + i as u64, offset, len, &[]);
        let r = c.chunk();
        assert_eq!(r.handle, 100 + i as u64);
        assert_eq!(r.kind, REPLY_TYPE_ERROR, "case {i}");
        assert_eq!(r.errno(), errno, "case {i}");
        assert_ne!(r.flags & REPLY_FLAG_DONE, 0);
    }
    // Write past the end: ENOSPC, and the payload is consumed.
    c.request(0, CMD_WRITE, 200, 8 * MIB - 512, 1024, &[1u8; 1024]);
    assert_eq!(c.chunk().errno(), 28);

    // Zero-length requests are answered, not disconnected.
    c.request(0, CMD_READ, 201, 0, 0, &[]);
    let r = c.chunk();
    assert_eq!(
        (r.kind, r.handle, r.flags),
        (REPLY_TYPE_NONE, 201, REPLY_FLAG_DONE)
    );
    for (handle, cmd) in [
        (202, CMD_WRITE),
        (203, CMD_TRIM),
        (204, CMD_WRITE_ZEROES),
        (205, CMD_CACHE),
        (206, CMD_FLUSH),
    ] {
        c.request(0, cmd, handle, 4096, 0, &[]);
        let r = c.chunk();
        assert_eq!((r.kind, r.handle), (REPLY_TYPE_NONE, handle));
    }

    // Block status: data at [4096, 69632), hole elsewhere; REQ_ONE gives one extent.
    c.request(
        CMD_FLAG_FAST_ZERO | CMD_FLAG_NO_HOLE,
        CMD_WRITE_ZEROES,
        300,
        8192,
        8192,
        &[],
    );
    assert_eq!(c.chunk().kind, REPLY_TYPE_NONE);
    c.request(0, CMD_BLOCK_STATUS, 301, 0, 1 << 20, &[]);
    let r = c.chunk();
    assert_eq!(
        (r.kind, r.flags),
        (REPLY_TYPE_BLOCK_STATUS, REPLY_FLAG_DONE)
    );
    assert_eq!(
        u32::from_be_bytes(r.payload[..4].try_into().unwrap()),
        BASE_ALLOCATION_ID
    );
    let extents: Vec<(u32, u32)> = r.payload[4..]
        .chunks(8)
        .map(|d| {
            (
                u32::from_be_bytes(d[..4].try_into().unwrap()),
                u32::from_be_bytes(d[4..].try_into().unwrap()),
            )
        })
        .collect();
    let hz = STATE_HOLE | STATE_ZERO;
    assert_eq!(
        extents,
        [
            (4096, hz),
            (4096, 0),
            (8192, hz),
            (65536 - 12288, 0),
            ((1 << 20) - 69632, hz)
        ]
    );
    c.request(CMD_FLAG_REQ_ONE, CMD_BLOCK_STATUS, 302, 4096, 100, &[]);
    let r = c.chunk();
    assert_eq!(&r.payload[4..], &[0, 0, 0, 100, 0, 0, 0, 0]);
    let mut zeroed = data.clone();
    zeroed[4096..12288].fill(0);
    assert_eq!(&dev.contents()[4096..4096 + data.len()], &zeroed[..]);

    // Pipelining: many requests in flight, every one answered once.
    let mut pipelined = Vec::new();
    for i in 0..64u64 {
        let handle = 1000 + i;
        if i % 2 == 0 {
            c.request(
                0,
                CMD_WRITE,
                handle,
                i * 65536,
                65536,
                &vec![i as u8; 65536],
            );
        } else {
            c.request(0, CMD_READ, handle, (i - 1) * 65536, 4096, &[]);
        }
        pipelined.push(handle);
    }
    let mut answered = Vec::new();
    for _ in 0..64 {
        let r = c.chunk();
        assert_ne!(
            r.kind & 0x8000,
            0x8000,
            "pipelined request {} failed",
            r.handle
        );
        answered.push(r.handle);
    }
    answered.sort();
    assert_eq!(answered, pipelined);

    // DISC: no reply, connection closed.
    c.request(0, CMD_DISC, 9999, 0, 0, &[]);
    assert!(c.closed());
}

#[test]
fn snapshot_refuses_writes_and_simple_replies_carry_errors() {
    let h = harness();
    h.exports().device("vol");
    let mut c = Raw::connect(&h.socket);
    c.go("vol", false, false);
    c.request(0, CMD_WRITE, 1, 0, 4096, &[9u8; 4096]);
    assert_eq!(c.simple_reply(), (0, 1));
    h.exports().create_snapshot("vol", "s");
    c.request(0, CMD_WRITE, 2, 0, 4096, &[7u8; 4096]);
    assert_eq!(c.simple_reply(), (0, 2));
    // Simple-reply READ error: header with the error, no payload; the
    // stream stays in sync for the next reply.
    c.request(0, CMD_READ, 3, 8 * MIB, 1, &[]);
    assert_eq!(c.simple_reply(), (22, 3));
    c.request(CMD_FLAG_DF, CMD_READ, 4, 0, 1, &[]);
    assert_eq!(
        c.simple_reply(),
        (22, 4),
        "DF without structured replies is invalid"
    );
    c.request(0, CMD_BLOCK_STATUS, 5, 0, 4096, &[]);
    assert_eq!(c.simple_reply(), (22, 5), "block status without a context");
    c.request(0, CMD_READ, 6, 0, 4, &[]);
    assert_eq!(c.simple_reply(), (0, 6));
    assert_eq!(c.read_n(4), [7u8; 4]);

    let mut s = Raw::connect(&h.socket);
    let (_, flags) = s.go("vol@s", false, false);
    assert_ne!(flags & FLAG_READ_ONLY, 0);
    for (handle, cmd) in [(1, CMD_WRITE), (2, CMD_TRIM), (3, CMD_WRITE_ZEROES)] {
        let data = if cmd == CMD_WRITE {
            vec![1u8; 512]
        } else {
            vec![]
        };
        s.request(0, cmd, handle, 0, 512, &data);
        assert_eq!(s.simple_reply(), (1, handle), "EPERM for command {cmd}");
    }
    s.request(0, CMD_READ, 4, 0, 4, &[]);
    assert_eq!(s.simple_reply(), (0, 4));
    assert_eq!(s.read_n(4), [9u8; 4]);
    assert_eq!(
        &h.exports().device("vol@s").contents()[..4096],
        &[9u8; 4096][..]
    );
}

#[test]
fn malformed_input_closes_only_that_connection() {
    let h = harness();
    let dev = h.exports().device("vol");
    let before = dev.contents();

    // A healthy connection that must survive everything below.
    let mut good = Raw::connect(&h.socket);
    good.go("vol", true, false);

    // Bad option magic.
    let mut c = Raw::connect(&h.socket);
    c.greet(FLAG_C_FIXED_NEWSTYLE);
    c.s.write_all(&[0xde; 16]).unwrap();
    assert!(c.closed());

    // Truncated option: header promises more than is sent, then EOF.
    let mut c = Raw::connect(&h.socket);
    c.greet(FLAG_C_FIXED_NEWSTYLE);
    let mut msg = IHAVEOPT.to_be_bytes().to_vec();
    msg.extend_from_slice(&OPT_GO.to_be_bytes());
    msg.extend_from_slice(&100u32.to_be_bytes());
    msg.extend_from_slice(&[0, 0, 0, 3, b'v']);
    c.s.write_all(&msg).unwrap();
    c.s.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(c.closed());

    // Huge option length: refused without reading it into memory.
    let mut c = Raw::connect(&h.socket);
    c.greet(FLAG_C_FIXED_NEWSTYLE);
    let mut msg = IHAVEOPT.to_be_bytes().to_vec();
    msg.extend_from_slice(&OPT_EXPORT_NAME.to_be_bytes());
    msg.extend_from_slice(&u32::MAX.to_be_bytes());
    c.s.write_all(&msg).unwrap();
    assert!(c.closed());

    // Bad request magic in transmission.
    let mut c = Raw::connect(&h.socket);
    c.go("vol", true, false);
    c.s.write_all(&[0x55; 28]).unwrap();
    assert!(c.closed());

    // Oversize write: hard disconnect, nothing written.
    let mut c = Raw::connect(&h.socket);
    c.go("vol", true, false);
    c.request(0, CMD_WRITE, 1, 0, 64 * 1024 * 1024, &[0xff; 4096]);
    assert!(c.closed());

    // Truncated write payloads then EOF: within the read buffer, and past
    // it (where the rest is received straight from the socket).
    for (len, sent) in [(8192, 100), (MIB as u32, 300_000)] {
        let mut c = Raw::connect(&h.socket);
        c.go("vol", false, false);
        c.request(0, CMD_WRITE, 1, 0, len, &vec![0xee; sent]);
        c.s.shutdown(std::net::Shutdown::Write).unwrap();
        assert!(c.closed());
    }

    // Unknown command: an error reply, the connection stays up.
    let mut c = Raw::connect(&h.socket);
    c.go("vol", false, false);
    c.request(0, 0x77, 5, 0, 0, &[]);
    assert_eq!(c.simple_reply(), (22, 5));
    c.request(0, CMD_FLUSH, 6, 0, 0, &[]);
    assert_eq!(c.simple_reply(), (0, 6));

    assert_eq!(dev.contents(), before, "malformed input changed data");
    good.request(0, CMD_WRITE, 7, 0, 4, b"live");
    assert_eq!(good.chunk().kind, REPLY_TYPE_NONE);
    good.request(0, CMD_READ, 8, 0, 4, &[]);
    assert_eq!(&good.chunk().payload[8..], b"live");
}

#[test]
fn disconnect_and_shutdown_answer_requests_in_flight() {
    let mut h = harness();
    *h.exports().device("vol").delay.lock().unwrap() = std::time::Duration::from_millis(300);

    // Replies go out as requests complete: a fast flush overtakes a slow read.
    let mut c = Raw::connect(&h.socket);
    c.go("vol", false, false);
    c.request(0, CMD_READ, 10, 0, 512, &[]);
    c.request(0, CMD_FLUSH, 11, 0, 0, &[]);
    assert_eq!(c.simple_reply(), (0, 11));
    assert_eq!(c.simple_reply(), (0, 10));
    assert_eq!(c.read_n(512), vec![0; 512]);

    // NBD_CMD_DISC right behind a slow read: the read is still answered.
    c.request(0, CMD_READ, 1, 0, 4096, &[]);
    c.request(0, CMD_DISC, 2, 0, 0, &[]);
    assert_eq!(c.simple_reply(), (0, 1));
    assert_eq!(c.read_n(4096), vec![0; 4096]);
    assert!(c.closed());

    // Server shutdown with a slow write in flight: answered, then closed.
    let mut c = Raw::connect(&h.socket);
    c.go("vol", true, false);
    c.request(0, CMD_WRITE, 3, 0, 4096, &[0x33; 4096]);
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(h.shutdown(std::time::Duration::from_secs(10)));
    let r = c.chunk();
    assert_eq!((r.kind, r.handle), (REPLY_TYPE_NONE, 3));
    assert!(c.closed());
    assert_eq!(
        &h.exports().device("vol").contents()[..4096],
        &[0x33; 4096][..]
    );
}

#[test]
fn pipelined_writes_of_every_size_land_intact() {
    let h = harness();
    let mut c = Raw::connect(&h.socket);
    c.go("vol", false, false);
    // Sent back to back, so payloads start in the server's read buffer,
    // straddle it, or exceed it (64 KiB).
    let sizes = [
        100usize, 70_000, 3, 200_000, 4096, 65_536, 1, 65_535, 300_000,
    ];
    let mut expected = Vec::new();
    for (i, &len) in sizes.iter().enumerate() {
        let data: Vec<u8> = (0..len).map(|j| (i * 31 + j * 7) as u8).collect();
        let offset = expected.len() as u64;
        c.request(0, CMD_WRITE, i as u64, offset, len as u32, &data);
        expected.extend_from_slice(&data);
    }
    let mut answered: Vec<u64> = (0..sizes.len())
        .map(|_| c.simple_reply())
        .map(|(err, handle)| {
            assert_eq!(err, 0);
            handle
        })
        .collect();
    answered.sort();
    assert_eq!(answered, (0..sizes.len() as u64).collect::<Vec<_>>());
    c.request(0, CMD_READ, 99, 0, expected.len() as u32, &[]);
    assert_eq!(c.simple_reply(), (0, 99));
    assert!(
        c.read_n(expected.len()) == expected,
        "data read back differs"
    );
    assert!(h.exports().device("vol").contents()[..expected.len()] == expected[..]);
}

#[test]
fn payload_sent_in_slow_pieces_lands_intact() {
    let h = harness();
    let mut c = Raw::connect(&h.socket);
    c.go("vol", false, false);
    let data: Vec<u8> = (0..MIB as usize)
        .map(|j| (j * 13 + j / 4096) as u8)
        .collect();
    c.request(0, CMD_WRITE, 7, 4096, MIB as u32, &[]);
    // Pauses far longer than the server polls for a piece, so it has to go
    // back to waiting for the socket between pieces.
    for piece in data.chunks(300_000) {
        std::thread::sleep(std::time::Duration::from_millis(30));
        c.s.write_all(piece).unwrap();
    }
    assert_eq!(c.simple_reply(), (0, 7));
    let contents = h.exports().device("vol").contents();
    assert!(
        contents[4096..4096 + data.len()] == data[..],
        "data differs"
    );
    assert!(contents[..4096].iter().all(|&b| b == 0));
}

#[test]
fn connection_limit_and_handshake_timeout() {
    let limits = ballast_nbd::Limits {
        max_connections: 2,
        handshake_timeout: std::time::Duration::from_millis(500),
    };
    let h = Harness::memory_with(limits);
    h.exports().create_volume("vol", MIB);
    let mut a = Raw::connect(&h.socket);
    a.go("vol", false, false);
    let mut b = Raw::connect(&h.socket);
    b.go("vol", false, false);
    // A third client is closed without a greeting.
    let mut c = Raw::connect(&h.socket);
    assert!(c.closed());
    // A slot frees up when a client leaves.
    a.request(0, CMD_DISC, 1, 0, 0, &[]);
    assert!(a.closed());
    std::thread::sleep(std::time::Duration::from_millis(100));
    let mut d = Raw::connect(&h.socket);
    d.go("vol", false, false);
    d.request(0, CMD_FLUSH, 2, 0, 0, &[]);
    assert_eq!(d.simple_reply(), (0, 2));
    // Transmission has no timeout; a stalled handshake does.
    b.request(0, CMD_DISC, 3, 0, 0, &[]);
    assert!(b.closed());
    std::thread::sleep(std::time::Duration::from_millis(100));
    let mut e = Raw::connect(&h.socket);
    e.greet(FLAG_C_FIXED_NEWSTYLE);
    let started = std::time::Instant::now();
    assert!(e.closed());
    assert!(started.elapsed() >= std::time::Duration::from_millis(300));
    std::thread::sleep(std::time::Duration::from_millis(600));
    d.request(0, CMD_FLUSH, 4, 0, 0, &[]);
    assert_eq!(d.simple_reply(), (0, 4));
}
