//! Test credentials made fresh for each test: a CA, a server certificate
//! for localhost / 127.0.0.1, client certificates signed by that CA and by
//! a CA nobody trusts, and PSK files with random keys. Files are laid out
//! as libnbd (`tls-certificates=DIR`) and qemu (`tls-creds-x509,dir=DIR`,
//! `tls-creds-psk,dir=DIR`) look for them.
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::{
    BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
};
use openssl::x509::{X509Name, X509};

pub struct Pki {
    pub dir: PathBuf,
    /// The CA that signed the server and the trusted clients.
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// A directory for libnbd and qemu clients: ca-cert.pem,
    /// client-cert.pem and client-key.pem of `CN=alice,O=ballast-test`.
    pub alice_dir: PathBuf,
    /// The same for `CN=bob,O=ballast-test`.
    pub bob_dir: PathBuf,
    /// A client whose certificate comes from a CA the server does not trust.
    pub stranger_dir: PathBuf,
    /// The CA only, for clients that present no certificate.
    pub anonymous_dir: PathBuf,
}

pub const ALICE_SUBJECT: &str = "CN=alice,O=ballast-test";
pub const BOB_SUBJECT: &str = "CN=bob,O=ballast-test";

struct Issuer {
    cert: X509,
    key: PKey<Private>,
}

fn key() -> PKey<Private> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap()
}

fn name(cn: &str) -> X509Name {
    let mut name = X509Name::builder().unwrap();
    name.append_entry_by_nid(Nid::ORGANIZATIONNAME, "ballast-test")
        .unwrap();
    name.append_entry_by_nid(Nid::COMMONNAME, cn).unwrap();
    name.build()
}

/// A certificate for `cn`, signed by `issuer` (self-signed CA if none).
fn certificate(cn: &str, key: &PKey<Private>, issuer: Option<&Issuer>, kind: Kind) -> X509 {
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    let mut serial = BigNum::new().unwrap();
    serial.rand(120, MsbOption::MAYBE_ZERO, false).unwrap();
    b.set_serial_number(&serial.to_asn1_integer().unwrap())
        .unwrap();
    let subject = name(cn);
    b.set_subject_name(&subject).unwrap();
    b.set_issuer_name(issuer.map_or(&subject, |i| i.cert.subject_name()))
        .unwrap();
    b.set_pubkey(key).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::days_from_now(2).unwrap())
        .unwrap();
    match kind {
        Kind::Ca => {
            b.append_extension(BasicConstraints::new().critical().ca().build().unwrap())
                .unwrap();
            b.append_extension(
                KeyUsage::new()
                    .critical()
                    .key_cert_sign()
                    .crl_sign()
                    .build()
                    .unwrap(),
            )
            .unwrap();
        }
        Kind::Server | Kind::Client => {
            b.append_extension(BasicConstraints::new().critical().build().unwrap())
                .unwrap();
            b.append_extension(
                KeyUsage::new()
                    .critical()
                    .digital_signature()
                    .key_encipherment()
                    .build()
                    .unwrap(),
            )
            .unwrap();
            let usage = if kind == Kind::Server {
                ExtendedKeyUsage::new().server_auth().build().unwrap()
            } else {
                ExtendedKeyUsage::new().client_auth().build().unwrap()
            };
            b.append_extension(usage).unwrap();
        }
    }
    if kind == Kind::Server {
        let ctx = b.x509v3_context(issuer.map(|i| i.cert.as_ref()), None);
        let san = SubjectAlternativeName::new()
            .dns("localhost")
            .ip("127.0.0.1")
            .build(&ctx)
            .unwrap();
        b.append_extension(san).unwrap();
    }
    b.sign(issuer.map_or(key, |i| &i.key), MessageDigest::sha256())
        .unwrap();
    b.build()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ca,
    Server,
    Client,
}

fn new_ca(cn: &str) -> Issuer {
    let key = key();
    let cert = certificate(cn, &key, None, Kind::Ca);
    Issuer { cert, key }
}

fn write_private(path: &Path, data: &[u8]) {
    fs::write(path, data).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
}

fn client_dir(dir: &Path, name: &str, trusted: &Issuer, signer: Option<&Issuer>) -> PathBuf {
    let out = dir.join(name);
    fs::create_dir_all(&out).unwrap();
    fs::write(out.join("ca-cert.pem"), trusted.cert.to_pem().unwrap()).unwrap();
    if let Some(signer) = signer {
        let key = key();
        let cert = certificate(name, &key, Some(signer), Kind::Client);
        fs::write(out.join("client-cert.pem"), cert.to_pem().unwrap()).unwrap();
        write_private(
            &out.join("client-key.pem"),
            &key.private_key_to_pem_pkcs8().unwrap(),
        );
    }
    out
}

impl Pki {
    pub fn create(dir: &Path) -> Pki {
        fs::create_dir_all(dir).unwrap();
        let ca = new_ca("ballast-test CA");
        let ca_path = dir.join("ca-cert.pem");
        fs::write(&ca_path, ca.cert.to_pem().unwrap()).unwrap();

        let server_key = key();
        let server = certificate("localhost", &server_key, Some(&ca), Kind::Server);
        let server_cert = dir.join("server-cert.pem");
        let server_key_path = dir.join("server-key.pem");
        fs::write(&server_cert, server.to_pem().unwrap()).unwrap();
        write_private(
            &server_key_path,
            &server_key.private_key_to_pem_pkcs8().unwrap(),
        );

        let other = new_ca("untrusted CA");
        Pki {
            alice_dir: client_dir(dir, "alice", &ca, Some(&ca)),
            bob_dir: client_dir(dir, "bob", &ca, Some(&ca)),
            stranger_dir: client_dir(dir, "stranger", &ca, Some(&other)),
            anonymous_dir: client_dir(dir, "anonymous", &ca, None),
            dir: dir.to_path_buf(),
            ca: ca_path,
            server_cert,
            server_key: server_key_path,
        }
    }
}

/// A PSK file (mode 0600) with a random 32-byte key for each user; also
/// written as `DIR/keys.psk` beside it for qemu's tls-creds-psk, in a
/// directory of its own. Returns (file, qemu directory).
pub fn psk_file(dir: &Path, name: &str, users: &[&str]) -> (PathBuf, PathBuf) {
    use rand::RngCore;
    let mut text = String::new();
    for user in users {
        let mut key = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut key);
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        text.push_str(&format!("{user}:{hex}\n"));
    }
    let qemu_dir = dir.join(format!("{name}.qemu"));
    fs::create_dir_all(&qemu_dir).unwrap();
    let file = dir.join(name);
    write_private(&file, text.as_bytes());
    write_private(&qemu_dir.join("keys.psk"), text.as_bytes());
    (file, qemu_dir)
}
