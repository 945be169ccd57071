//! Property tests over whole connections: arbitrary bytes and arbitrary
//! sequences of well-formed messages never panic the server, every
//! connection ends, and garbage never changes data.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once, OnceLock};
use std::time::Duration;

use ballast_nbd::proto::*;
use ballast_nbd::{CancellationToken, ExportProvider, Limits, Server, Tls, TlsConfig};
use common::MemExports;
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

static PANICKED: AtomicBool = AtomicBool::new(false);
static HOOK: Once = Once::new();

fn watch_panics() {
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICKED.store(true, Ordering::SeqCst);
            default(info);
        }));
    });
}

/// A TLS configuration that requires TLS, with a PSK nobody here has.
fn tls() -> Arc<Tls> {
    static TLS: OnceLock<Arc<Tls>> = OnceLock::new();
    TLS.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("ballast-fuzz-{}.psk", std::process::id()));
        std::fs::write(&path, "alice:00112233445566778899aabbccddeeff\n").unwrap();
        let config = TlsConfig {
            required: true,
            psk: Some(path.clone()),
            ..Default::default()
        };
        let tls = Arc::new(Tls::new(&config).unwrap());
        let _ = std::fs::remove_file(&path);
        tls
    })
    .clone()
}

/// Feeds `input` to one server connection and returns once it has ended.
fn drive(exports: Arc<MemExports>, input: Vec<u8>) {
    let provider: Arc<dyn ExportProvider> = exports;
    converse(Server::new(provider), input, None);
}

/// Sends `first` to one connection of `server`; if `then` is given, waits
/// for the server's ACK to STARTTLS (or the end of the connection) and
/// sends `then`. Returns once the connection has ended.
fn converse(server: Arc<Server>, first: Vec<u8>, then: Option<Vec<u8>>) {
    watch_panics();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let (client, conn) = tokio::io::duplex(1 << 16);
        let shutdown = CancellationToken::new();
        let serving = tokio::spawn(async move { server.serve_connection(conn, &shutdown).await });
        let (mut rd, mut wr) = tokio::io::split(client);
        let (acked, on_ack) = tokio::sync::oneshot::channel::<()>();
        let drain = tokio::spawn(async move {
            let mut ack = OPTION_REPLY_MAGIC.to_be_bytes().to_vec();
            ack.extend_from_slice(&OPT_STARTTLS.to_be_bytes());
            ack.extend_from_slice(&REP_ACK.to_be_bytes());
            ack.extend_from_slice(&0u32.to_be_bytes());
            let (mut seen, mut acked, mut buf) = (Vec::new(), Some(acked), [0u8; 4096]);
            // Dropping `acked` at the end of the stream wakes the waiter too.
            while let Ok(n @ 1..) = rd.read(&mut buf).await {
                seen.extend_from_slice(&buf[..n]);
                if seen.windows(ack.len()).any(|w| w == ack) {
                    if let Some(acked) = acked.take() {
                        let _ = acked.send(());
                    }
                }
            }
        });
        let _ = wr.write_all(&first).await;
        if let Some(then) = then {
            let waited = tokio::time::timeout(Duration::from_secs(10), on_ack).await;
            assert!(waited.is_ok(), "no answer to STARTTLS");
            let _ = wr.write_all(&then).await;
        }
        let _ = wr.shutdown().await;
        let ended = tokio::time::timeout(Duration::from_secs(10), serving).await;
        assert!(ended.is_ok(), "connection did not end after EOF");
        assert!(ended.unwrap().is_ok(), "connection task panicked");
        drop(wr);
        let _ = tokio::time::timeout(Duration::from_secs(10), drain).await;
    });
    assert!(!PANICKED.load(Ordering::SeqCst), "a task panicked");
}

fn exports() -> Arc<MemExports> {
    let exports = Arc::new(MemExports::default());
    let dev = exports.create_volume("vol", 1 << 20);
    let init: Vec<u8> = (0..1u32 << 20).map(|i| (i * 7 % 256) as u8).collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(ballast_nbd::BlockDevice::write(dev.as_ref(), 0, &init))
        .unwrap();
    exports.create_snapshot("vol", "s");
    exports
}

fn option(opt: u32, data: &[u8]) -> Vec<u8> {
    let mut m = IHAVEOPT.to_be_bytes().to_vec();
    m.extend_from_slice(&opt.to_be_bytes());
    m.extend_from_slice(&(data.len() as u32).to_be_bytes());
    m.extend_from_slice(data);
    m
}

fn message() -> impl Strategy<Value = Vec<u8>> {
    let name = prop_oneof![
        Just("vol".to_string()),
        Just("vol@s".to_string()),
        "[a-z@]{0,6}"
    ];
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64),
        (0u32..12, proptest::collection::vec(any::<u8>(), 0..64)).prop_map(|(o, d)| option(o, &d)),
        (name.clone(), any::<bool>()).prop_map(|(n, go)| {
            let mut p = (n.len() as u32).to_be_bytes().to_vec();
            p.extend_from_slice(n.as_bytes());
            p.extend_from_slice(&1u16.to_be_bytes());
            p.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
            option(if go { OPT_GO } else { OPT_INFO }, &p)
        }),
        name.prop_map(|n| {
            let mut p = (n.len() as u32).to_be_bytes().to_vec();
            p.extend_from_slice(n.as_bytes());
            p.extend_from_slice(&1u32.to_be_bytes());
            p.extend_from_slice(&(BASE_ALLOCATION.len() as u32).to_be_bytes());
            p.extend_from_slice(BASE_ALLOCATION.as_bytes());
            option(OPT_SET_META_CONTEXT, &p)
        }),
        Just(option(OPT_STRUCTURED_REPLY, &[])),
        Just(option(OPT_EXTENDED_HEADERS, &[])),
        (
            any::<u16>(),
            0u16..10,
            any::<u64>(),
            prop_oneof![0u64..(2 << 20), any::<u64>()],
            prop_oneof![0u32..70000, any::<u32>()],
            any::<bool>()
        )
            .prop_map(|(flags, cmd, handle, offset, len, extended)| {
                let magic = if extended {
                    EXTENDED_REQUEST_MAGIC
                } else {
                    REQUEST_MAGIC
                };
                let mut m = magic.to_be_bytes().to_vec();
                m.extend_from_slice(&(flags & 0x3f).to_be_bytes());
                m.extend_from_slice(&cmd.to_be_bytes());
                m.extend_from_slice(&handle.to_be_bytes());
                m.extend_from_slice(&offset.to_be_bytes());
                if extended {
                    m.extend_from_slice(&u64::from(len).to_be_bytes());
                } else {
                    m.extend_from_slice(&len.to_be_bytes());
                }
                let payload = cmd == CMD_WRITE || (extended && flags & 0x20 != 0);
                if payload && len <= 70000 {
                    m.extend(std::iter::repeat_n(0xa5, len as usize));
                }
                m
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn garbage_never_changes_data(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let exports = exports();
        let before = exports.device("vol").contents();
        drive(exports.clone(), bytes);
        prop_assert!(exports.device("vol").contents() == before);
    }

    #[test]
    fn message_sequences_never_panic(client_flags in 0u32..4, msgs in proptest::collection::vec(message(), 0..24)) {
        let exports = exports();
        let snapshot = exports.device("vol@s").contents();
        let mut input = client_flags.to_be_bytes().to_vec();
        for m in msgs {
            input.extend_from_slice(&m);
        }
        drive(exports.clone(), input);
        prop_assert!(exports.device("vol@s").contents() == snapshot, "a read-only export changed");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// A server requiring TLS, fed well-formed options, then STARTTLS, and
    /// once STARTTLS is acknowledged, bytes that are no TLS (or look like
    /// TLS records but are not).
    #[test]
    fn tls_required_server_survives_anything(
        options in proptest::collection::vec((0u32..12, proptest::collection::vec(any::<u8>(), 0..64)), 0..8),
        records in proptest::collection::vec(
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..512),
                (20u8..24, any::<u16>(), proptest::collection::vec(any::<u8>(), 0..512)).prop_map(|(kind, len, body)| {
                    let mut r = vec![kind, 3, 3];
                    r.extend_from_slice(&len.to_be_bytes());
                    r.extend_from_slice(&body);
                    r
                }),
            ],
            0..4,
        ),
    ) {
        let exports = exports();
        let before = exports.device("vol").contents();
        let mut prefix = (FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).to_be_bytes().to_vec();
        for (o, d) in options {
            prefix.extend_from_slice(&option(o, &d));
        }
        prefix.extend_from_slice(&option(OPT_STARTTLS, &[]));
        let provider: Arc<dyn ExportProvider> = exports.clone();
        converse(Server::with_tls(provider, Limits::default(), tls()), prefix, Some(records.concat()));
        prop_assert!(exports.device("vol").contents() == before);
    }
}
