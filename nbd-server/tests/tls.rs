//! NBD_OPT_STARTTLS at the byte level, with OpenSSL as the client: what a
//! server requiring TLS answers before it, that haggling starts over
//! inside TLS, PSK and certificate authentication and their failures, the
//! allow list, and bad input that must end only its own connection.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ballast_nbd::proto::*;
use ballast_nbd::{Limits, Tls, TlsConfig};
use common::pki::{psk_file, Pki, ALICE_SUBJECT};
use common::raw::Raw;
use common::Harness;
use openssl::ssl::{Ssl, SslConnector, SslFiletype, SslMethod, SslVersion};

const MIB: u64 = 1024 * 1024;

/// Credentials for one test: a PKI and a PSK file for alice and bob.
struct Creds {
    dir: tempfile::TempDir,
    pki: Pki,
    psk: PathBuf,
}

impl Creds {
    fn new() -> Creds {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::create(&dir.path().join("pki"));
        let (psk, _) = psk_file(dir.path(), "keys.psk", &["alice", "bob"]);
        Creds { dir, pki, psk }
    }

    fn psk_config(&self, required: bool) -> TlsConfig {
        TlsConfig {
            required,
            psk: Some(self.psk.clone()),
            ..Default::default()
        }
    }

    fn cert_config(&self, required: bool, client_ca: bool) -> TlsConfig {
        TlsConfig {
            required,
            certificate: Some((self.pki.server_cert.clone(), self.pki.server_key.clone())),
            client_ca: client_ca.then(|| self.pki.ca.clone()),
            ..Default::default()
        }
    }

    /// The key of `user` in the PSK file.
    fn key(&self, user: &str) -> Vec<u8> {
        let text = std::fs::read_to_string(&self.psk).unwrap();
        let hex = text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{user}:")))
            .unwrap();
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    }

    fn allow(&self, text: &str) -> PathBuf {
        let path = self.dir.path().join("allow");
        std::fs::write(&path, text).unwrap();
        path
    }
}

fn harness(config: TlsConfig) -> Harness {
    harness_with(config, Limits::default())
}

fn harness_with(config: TlsConfig, limits: Limits) -> Harness {
    let tls = Arc::new(Tls::new(&config).unwrap());
    let h = Harness::memory_tls(tls, limits);
    h.exports().create_volume("vol", 8 * MIB);
    h
}

/// A TLS 1.3 client that authenticates with a PSK.
fn psk_client(user: &str, key: Vec<u8>) -> Ssl {
    let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
    b.set_min_proto_version(Some(SslVersion::TLS1_3)).unwrap();
    b.set_ciphersuites("TLS_AES_128_GCM_SHA256").unwrap();
    let user = user.to_string();
    b.set_psk_client_callback(move |_ssl, _hint, identity, psk| {
        identity[..user.len()].copy_from_slice(user.as_bytes());
        identity[user.len()] = 0;
        psk[..key.len()].copy_from_slice(&key);
        Ok(key.len())
    });
    b.build()
        .configure()
        .unwrap()
        .into_ssl("localhost")
        .unwrap()
}

/// A TLS 1.3 client that checks the server's certificate against
/// `dir/ca-cert.pem` and presents `dir/client-cert.pem` if there is one.
fn cert_client(dir: &Path) -> Ssl {
    let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
    b.set_min_proto_version(Some(SslVersion::TLS1_3)).unwrap();
    b.set_ca_file(dir.join("ca-cert.pem")).unwrap();
    if dir.join("client-cert.pem").exists() {
        b.set_certificate_file(dir.join("client-cert.pem"), SslFiletype::PEM)
            .unwrap();
        b.set_private_key_file(dir.join("client-key.pem"), SslFiletype::PEM)
            .unwrap();
    }
    b.build()
        .configure()
        .unwrap()
        .into_ssl("localhost")
        .unwrap()
}

/// A connection in transmission over TLS (alice's PSK), to show that
/// other connections' failures leave it alone.
fn serving(h: &Harness, creds: &Creds) -> Raw {
    let mut c = greeted(h);
    c.starttls(psk_client("alice", creds.key("alice"))).unwrap();
    c.select_and_go("vol", false);
    c
}

fn greeted(h: &Harness) -> Raw {
    let mut c = Raw::connect(&h.socket);
    c.greet(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES);
    c
}

fn info_payload(name: &str) -> Vec<u8> {
    let mut p = Raw::name_payload(name);
    p.extend_from_slice(&0u16.to_be_bytes());
    p
}

/// Reads and checks one 4 KiB block over an established connection.
fn read_block(c: &mut Raw, handle: u64) -> Vec<u8> {
    c.request(0, CMD_READ, handle, 0, 4096, &[]);
    let (error, got) = c.simple_reply();
    assert_eq!((error, got), (0, handle));
    c.read_n(4096)
}

#[test]
fn required_tls_answers_everything_but_starttls_with_tls_reqd() {
    let creds = Creds::new();
    let h = harness(creds.psk_config(true));
    let mut c = greeted(&h);
    for (option, data) in [
        (OPT_LIST, vec![]),
        (OPT_INFO, info_payload("vol")),
        (OPT_GO, info_payload("vol")),
        (OPT_STRUCTURED_REPLY, vec![]),
        (OPT_EXTENDED_HEADERS, vec![]),
        (OPT_LIST_META_CONTEXT, info_payload("vol")),
        (0x4242, vec![7; 1000]),
        (OPT_GO, vec![0; 100 * 1024]),
    ] {
        c.option(option, &data);
        let (opt, kind, msg) = c.option_reply();
        assert_eq!((opt, kind), (option, REP_ERR_TLS_REQD), "option {option}");
        assert!(String::from_utf8_lossy(&msg).contains("requires TLS"));
    }
    // STARTTLS carries no data.
    c.option(OPT_STARTTLS, b"x");
    assert_eq!(c.option_reply().1, REP_ERR_INVALID);
    // ABORT is still honoured.
    c.option(OPT_ABORT, &[]);
    assert_eq!(c.option_reply(), (OPT_ABORT, REP_ACK, vec![]));
    assert!(c.closed());

    // EXPORT_NAME cannot be refused politely: the server hangs up without
    // sending the export's size or anything else.
    let mut c = greeted(&h);
    c.option(OPT_EXPORT_NAME, b"vol");
    assert!(c.closed(), "the server sent something after EXPORT_NAME");
}

#[test]
fn starttls_forgets_plain_text_options_and_haggling_starts_over() {
    let creds = Creds::new();
    let h = harness(creds.cert_config(false, false));
    // TLS offered: a plain client is served.
    let mut plain = greeted(&h);
    assert_eq!(plain.list(), ["vol"]);
    plain.select_and_go("vol", false);
    plain.request(0, CMD_WRITE, 1, 0, 4096, &[0x5a; 4096]);
    assert_eq!(plain.simple_reply(), (0, 1));

    let mut c = greeted(&h);
    c.option(OPT_STRUCTURED_REPLY, &[]);
    assert_eq!(c.option_reply().1, REP_ACK);
    c.starttls(cert_client(&creds.pki.anonymous_dir)).unwrap();
    assert_eq!(c.list(), ["vol"]);
    // Structured replies were negotiated in plain text only, so they are
    // off: the read gets a simple reply.
    c.select_and_go("vol", false);
    assert_eq!(read_block(&mut c, 2), vec![0x5a; 4096]);
    c.request(0, CMD_WRITE, 3, 4096, 4096, &[0xc3; 4096]);
    assert_eq!(c.simple_reply(), (0, 3));
    c.request(0, CMD_FLUSH, 4, 0, 0, &[]);
    assert_eq!(c.simple_reply(), (0, 4));
    assert!(h.exports().device("vol").contents()[4096..8192]
        .iter()
        .all(|&b| b == 0xc3));
}

#[test]
fn starttls_twice_answers_invalid_and_closes_only_that_connection() {
    let creds = Creds::new();
    let h = harness(creds.psk_config(true));
    let mut serving = serving(&h, &creds);

    let mut c = greeted(&h);
    c.starttls(psk_client("bob", creds.key("bob"))).unwrap();
    c.option(OPT_STARTTLS, &[]);
    let (opt, kind, _) = c.option_reply();
    assert_eq!((opt, kind), (OPT_STARTTLS, REP_ERR_INVALID));
    assert!(c.closed());

    // The other connection is still served, and new ones are accepted.
    assert_eq!(read_block(&mut serving, 7), vec![0; 4096]);
    let mut next = greeted(&h);
    next.starttls(psk_client("bob", creds.key("bob"))).unwrap();
    assert_eq!(next.list(), ["vol"]);
}

#[test]
fn malformed_tls_records_close_only_that_connection() {
    let creds = Creds::new();
    let h = harness(creds.psk_config(true));
    let mut serving = serving(&h, &creds);

    // Garbage where the ClientHello belongs.
    let mut c = greeted(&h);
    c.option(OPT_STARTTLS, &[]);
    assert_eq!(c.option_reply().1, REP_ACK);
    let mut garbage = vec![0x16, 0x03, 0x01, 0xff, 0xff];
    garbage.extend_from_slice(&[0xab; 4096]);
    // The server may hang up before it has taken all of it.
    let _ = c.s.write_all(&garbage);
    assert!(c.closed());

    // A record that fails authentication inside an established session:
    // an application-data record with a corrupted body.
    let mut c = greeted(&h);
    c.starttls(psk_client("bob", creds.key("bob"))).unwrap();
    let common::raw::Conn::Tls(tls) = &mut c.s else {
        unreachable!()
    };
    let mut bogus = vec![0x17, 0x03, 0x03, 0x00, 0x20];
    bogus.extend_from_slice(&[0x42; 0x20]);
    tls.get_mut().write_all(&bogus).unwrap();
    assert!(c.closed());

    assert_eq!(read_block(&mut serving, 9), vec![0; 4096]);
}

#[test]
fn plain_bytes_sent_before_the_starttls_ack_close_the_connection() {
    let creds = Creds::new();
    let h = harness(creds.psk_config(true));
    let mut c = greeted(&h);
    // STARTTLS and, in the same write, what would be a plain-text option:
    // it must never be taken as part of the TLS session.
    let mut both = IHAVEOPT.to_be_bytes().to_vec();
    both.extend_from_slice(&OPT_STARTTLS.to_be_bytes());
    both.extend_from_slice(&0u32.to_be_bytes());
    both.extend_from_slice(&IHAVEOPT.to_be_bytes());
    both.extend_from_slice(&OPT_LIST.to_be_bytes());
    both.extend_from_slice(&0u32.to_be_bytes());
    c.s.write_all(&both).unwrap();
    assert_eq!(c.option_reply().1, REP_ACK);
    assert!(c.closed());
}

#[test]
fn wrong_psk_or_unknown_user_fails_the_handshake() {
    let creds = Creds::new();
    let h = harness(creds.psk_config(true));
    let mut wrong_key = creds.key("alice");
    wrong_key[0] ^= 1;
    for client in [
        psk_client("alice", wrong_key),
        psk_client("carol", creds.key("alice")),
        cert_client(&creds.pki.anonymous_dir),
    ] {
        let mut c = greeted(&h);
        assert!(c.starttls(client).is_err());
        assert!(c.closed());
    }
    let mut c = greeted(&h);
    c.starttls(psk_client("alice", creds.key("alice"))).unwrap();
    assert_eq!(c.list(), ["vol"]);
}

#[test]
fn client_certificates_must_come_from_the_client_ca() {
    let creds = Creds::new();
    let h = harness(creds.cert_config(true, true));
    for dir in [&creds.pki.stranger_dir, &creds.pki.anonymous_dir] {
        let mut c = greeted(&h);
        // TLS 1.3 clients finish their side before the server checks their
        // certificate; the server's verdict then ends the connection.
        if c.starttls(cert_client(dir)).is_ok() {
            let mut list = IHAVEOPT.to_be_bytes().to_vec();
            list.extend_from_slice(&OPT_LIST.to_be_bytes());
            list.extend_from_slice(&0u32.to_be_bytes());
            // The server may have hung up already.
            let _ = c.s.write_all(&list);
        }
        assert!(c.closed(), "{} was let in", dir.display());
    }
    let mut c = greeted(&h);
    c.starttls(cert_client(&creds.pki.alice_dir)).unwrap();
    assert_eq!(c.list(), ["vol"]);
}

#[test]
fn allow_list_hides_and_refuses_exports_per_identity() {
    let creds = Creds::new();
    let mut config = creds.cert_config(true, true);
    config.psk = Some(creds.psk.clone());
    config.allow = Some(creds.allow(&format!("alice: vol vol@*\n{ALICE_SUBJECT}: other\n")));
    let h = harness(config);
    h.exports().create_snapshot("vol", "s1");
    h.exports().create_volume("other", MIB);

    let mut alice = greeted(&h);
    alice
        .starttls(psk_client("alice", creds.key("alice")))
        .unwrap();
    assert_eq!(alice.list(), ["vol", "vol@s1"]);
    alice.option(OPT_GO, &info_payload("other"));
    let (_, kind, msg) = alice.option_reply();
    assert_eq!(kind, REP_ERR_UNKNOWN, "{}", String::from_utf8_lossy(&msg));
    alice.option(OPT_INFO, &info_payload("vol@s1"));
    assert_eq!(alice.option_reply().1, REP_INFO);

    // bob is on no line: he sees nothing and opens nothing.
    let mut bob = greeted(&h);
    bob.starttls(psk_client("bob", creds.key("bob"))).unwrap();
    assert!(bob.list().is_empty());
    bob.option(OPT_GO, &info_payload("vol"));
    assert_eq!(bob.option_reply().1, REP_ERR_UNKNOWN);
    bob.option(OPT_EXPORT_NAME, b"vol");
    assert!(bob.closed());

    // alice's certificate is another identity, with its own line.
    let mut cert = greeted(&h);
    cert.starttls(cert_client(&creds.pki.alice_dir)).unwrap();
    assert_eq!(cert.list(), ["other"]);
    cert.select_and_go("other", false);
}

#[test]
fn without_tls_starttls_is_refused_by_policy() {
    let h = Harness::memory();
    h.exports().create_volume("vol", MIB);
    let mut c = greeted(&h);
    c.option(OPT_STARTTLS, &[]);
    assert_eq!(c.option_reply().1, REP_ERR_POLICY);
    assert_eq!(c.list(), ["vol"]);
}

#[test]
fn a_client_stalling_in_the_tls_handshake_is_timed_out() {
    let creds = Creds::new();
    let limits = Limits {
        handshake_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    let h = harness_with(creds.psk_config(true), limits);
    let mut c = greeted(&h);
    c.option(OPT_STARTTLS, &[]);
    assert_eq!(c.option_reply().1, REP_ACK);
    let started = std::time::Instant::now();
    assert!(c.closed());
    assert!(started.elapsed() < Duration::from_secs(10));
}
