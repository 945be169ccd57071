//! TLS for NBD connections (NBD_OPT_STARTTLS), with OpenSSL.
//!
//! OpenSSL, because the clients this server must serve (libnbd, qemu;
//! both on GnuTLS) authenticate with X.509 certificates or with external
//! pre-shared keys, and of the maintained TLS libraries for Rust only
//! OpenSSL offers TLS 1.3 external PSKs (rustls has none; BoringSSL
//! refuses them by design).
//!
//! Only TLS 1.3 is spoken. Clients authenticate with a PSK from a key file
//! ([`crate::PskKeys`]), or with a certificate signed by the client CA when
//! one is configured. A client's identity (its PSK username or its
//! certificate's subject) selects the exports it may use when an allow
//! list ([`crate::AllowList`]) is configured.
//!
//! OpenSSL's PSK callback gives a TLS 1.3 PSK the SHA-256 hash (as GnuTLS
//! clients assume too), which only SHA-256 cipher suites can use; the
//! server therefore picks by its own preference, AES-128-GCM first.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;

use openssl::error::ErrorStack;
use openssl::ex_data::Index;
use openssl::nid::Nid;
use openssl::ssl::{
    Ssl, SslContext, SslContextBuilder, SslFiletype, SslMethod, SslMode, SslOptions, SslRef,
    SslSessionCacheMode, SslVerifyMode, SslVersion,
};
use openssl::x509::{X509Name, X509NameRef};
use tokio::io::{AsyncRead, AsyncWrite, BufStream};
use tokio_openssl::SslStream;

use crate::allow::{AllowError, AllowList, AllowedExports};
use crate::error::ConnectionError;
use crate::export::ExportProvider;
use crate::psk::{PskError, PskKeys};

/// Ciphertext buffered between OpenSSL and the socket, each way. OpenSSL
/// reads and writes one record (at most 16 KiB of data) at a time; without
/// a buffer every record would be a system call, and a wake-up of the
/// peer, of its own.
const CIPHERTEXT_BUFFER: usize = 256 * 1024;

/// A connection once TLS is running.
pub(crate) type TlsStream<S> = SslStream<BufStream<S>>;

/// Whether a listener serves TLS: `off`, `on` (offered: clients may stay
/// in plain text, so a man in the middle can downgrade them) or `require`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsMode {
    #[default]
    Off,
    On,
    Require,
}

impl FromStr for TlsMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(TlsMode::Off),
            "on" => Ok(TlsMode::On),
            "require" => Ok(TlsMode::Require),
            other => Err(format!("{other:?} is not off, on or require")),
        }
    }
}

impl std::fmt::Display for TlsMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TlsMode::Off => "off",
            TlsMode::On => "on",
            TlsMode::Require => "require",
        })
    }
}

/// What a TLS server is built from. Every path is read once, when
/// [`Tls::new`] runs.
#[derive(Debug, Clone, Default)]
pub struct TlsConfig {
    /// Plain clients are refused (NBD_REP_ERR_TLS_REQD) rather than served.
    pub required: bool,
    /// The server's certificate chain and private key (PEM).
    pub certificate: Option<(PathBuf, PathBuf)>,
    /// Client certificates must be signed by one of these CAs (PEM).
    pub client_ca: Option<PathBuf>,
    /// PSK key file (`USERNAME:HEXKEY` lines).
    pub psk: Option<PathBuf>,
    /// Which exports each client identity may use.
    pub allow: Option<PathBuf>,
}

/// Why a TLS configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS needs credentials: a certificate and its key, or a PSK file")]
    NoCredentials,
    #[error(
        "a client CA verifies client certificates, which needs a server certificate and key too"
    )]
    ClientCaWithoutCertificate,
    #[error("an allow list needs client identities: a client CA or a PSK file")]
    AllowWithoutIdentities,
    #[error("an allow list needs TLS required: clients that stay in plain text have no identity")]
    AllowWithoutRequired,
    #[error("cannot use TLS certificate {path}: {reason}")]
    Certificate { path: PathBuf, reason: String },
    #[error("cannot use TLS key {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("cannot use client CA {path}: {reason}")]
    ClientCa { path: PathBuf, reason: String },
    #[error(transparent)]
    Psk(#[from] PskError),
    #[error(transparent)]
    Allow(#[from] AllowError),
    #[error("cannot set up TLS: {0}")]
    OpenSsl(String),
}

impl From<ErrorStack> for TlsError {
    fn from(err: ErrorStack) -> Self {
        TlsError::OpenSsl(reasons(&err))
    }
}

/// OpenSSL's error reasons, without its codes and source locations.
pub(crate) fn reasons(err: &ErrorStack) -> String {
    let mut out = String::new();
    for e in err.errors() {
        if !out.is_empty() {
            out.push_str("; ");
        }
        out.push_str(e.reason().unwrap_or("unknown error"));
        if let Some(data) = e.data() {
            let _ = write!(out, " ({data})");
        }
    }
    if out.is_empty() {
        out.push_str("unknown error");
    }
    out
}

/// A server's TLS: credentials, whether TLS is required, and who may use
/// which export.
pub struct Tls {
    context: SslContext,
    required: bool,
    allow: Option<Arc<AllowList>>,
    /// Where the PSK callback leaves the username it accepted.
    psk_user: Index<Ssl, String>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("required", &self.required)
            .field("allow", &self.allow.is_some())
            .finish_non_exhaustive()
    }
}

impl Tls {
    pub fn new(config: &TlsConfig) -> Result<Tls, TlsError> {
        if config.certificate.is_none() && config.psk.is_none() {
            return Err(TlsError::NoCredentials);
        }
        if config.client_ca.is_some() && config.certificate.is_none() {
            return Err(TlsError::ClientCaWithoutCertificate);
        }
        if config.allow.is_some() {
            if config.client_ca.is_none() && config.psk.is_none() {
                return Err(TlsError::AllowWithoutIdentities);
            }
            if !config.required {
                return Err(TlsError::AllowWithoutRequired);
            }
        }
        let psk_user = Ssl::new_ex_index()?;

        let mut builder = SslContextBuilder::new(SslMethod::tls_server())?;
        // TLS 1.3 only, AES-128-GCM (SHA-256) preferred: see the module
        // documentation.
        builder.set_min_proto_version(Some(SslVersion::TLS1_3))?;
        builder.set_ciphersuites(
            "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256",
        )?;
        builder.set_options(SslOptions::CIPHER_SERVER_PREFERENCE | SslOptions::NO_COMPRESSION);
        // Writes may be partial and retried from another buffer position
        // (the async stream retries once the socket is writable). Record
        // buffers stay allocated for the connection's life
        // (no SSL_MODE_RELEASE_BUFFERS), and reads take whatever has
        // arrived rather than one record at a time.
        builder.set_mode(
            SslMode::AUTO_RETRY
                | SslMode::ACCEPT_MOVING_WRITE_BUFFER
                | SslMode::ENABLE_PARTIAL_WRITE,
        );
        builder.set_read_ahead(true);
        // No resumption: every connection authenticates afresh, and no
        // tickets go out after the handshake.
        builder.set_session_cache_mode(SslSessionCacheMode::OFF);
        builder.set_num_tickets(0)?;
        // OpenSSL insists on a session id context wherever it verifies
        // peers, external-PSK handshakes included.
        builder.set_session_id_context(b"ballast-nbd")?;

        if let Some((chain, key)) = &config.certificate {
            builder
                .set_certificate_chain_file(chain)
                .map_err(|e| TlsError::Certificate {
                    path: chain.clone(),
                    reason: reasons(&e),
                })?;
            builder
                .set_private_key_file(key, SslFiletype::PEM)
                .map_err(|e| TlsError::Key {
                    path: key.clone(),
                    reason: reasons(&e),
                })?;
            builder.check_private_key().map_err(|e| TlsError::Key {
                path: key.clone(),
                reason: format!("does not match the certificate ({})", reasons(&e)),
            })?;
        }
        if let Some(ca) = &config.client_ca {
            let bad_ca = |e: ErrorStack| TlsError::ClientCa {
                path: ca.clone(),
                reason: reasons(&e),
            };
            builder.set_ca_file(ca).map_err(bad_ca)?;
            builder.set_client_ca_list(X509Name::load_client_ca_file(ca).map_err(bad_ca)?);
            builder.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
        }
        if let Some(path) = &config.psk {
            let keys = PskKeys::load(path)?;
            builder.set_psk_server_callback(move |ssl, identity, out| {
                Ok(psk_for(&keys, psk_user, ssl, identity, out))
            });
        }
        let allow = config
            .allow
            .as_deref()
            .map(AllowList::load)
            .transpose()?
            .map(Arc::new);
        Ok(Tls {
            context: builder.build(),
            required: config.required,
            allow,
            psk_user,
        })
    }

    pub fn required(&self) -> bool {
        self.required
    }

    /// Runs the server side of a TLS handshake on `stream`.
    pub(crate) async fn accept<S>(&self, stream: S) -> Result<TlsStream<S>, ConnectionError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let setup = |e: ErrorStack| ConnectionError::TlsSetup(reasons(&e));
        let ssl = Ssl::new(&self.context).map_err(setup)?;
        let buffered = BufStream::with_capacity(CIPHERTEXT_BUFFER, CIPHERTEXT_BUFFER, stream);
        let mut stream = SslStream::new(ssl, buffered).map_err(setup)?;
        Pin::new(&mut stream)
            .accept()
            .await
            .map_err(|e| ConnectionError::TlsHandshake(handshake_failure(&e)))?;
        Ok(stream)
    }

    /// The client's identity once the handshake is done: the PSK username
    /// it authenticated with, or its verified certificate's subject.
    pub(crate) fn identity(&self, ssl: &SslRef) -> Option<String> {
        if let Some(user) = ssl.ex_data(self.psk_user) {
            return Some(user.clone());
        }
        ssl.peer_certificate()
            .map(|cert| subject(cert.subject_name()))
    }

    /// The exports a client with `identity` may use.
    pub(crate) fn exports(
        &self,
        provider: &Arc<dyn ExportProvider>,
        identity: Option<&str>,
    ) -> Arc<dyn ExportProvider> {
        match &self.allow {
            None => provider.clone(),
            Some(allow) => Arc::new(AllowedExports::new(
                provider.clone(),
                allow.clone(),
                identity.map(str::to_string),
            )),
        }
    }
}

/// The PSK callback: copies `identity`'s key into `out` and records the
/// username; 0 (no such key) makes the handshake fail.
fn psk_for(
    keys: &PskKeys,
    psk_user: Index<Ssl, String>,
    ssl: &mut SslRef,
    identity: Option<&[u8]>,
    out: &mut [u8],
) -> usize {
    let Some(user) = identity.and_then(|id| std::str::from_utf8(id).ok()) else {
        return 0;
    };
    match keys.get(user) {
        Some(key) if key.len() <= out.len() => {
            out[..key.len()].copy_from_slice(key);
            ssl.set_ex_data(psk_user, user.to_string());
            key.len()
        }
        _ => {
            tracing::debug!(user, "TLS client offered an unknown PSK username");
            0
        }
    }
}

/// A certificate subject in RFC 4514 form, most specific part first
/// (`CN=alice,O=Example`), as GnuTLS and qemu's authz print it.
pub fn subject(name: &X509NameRef) -> String {
    let entries: Vec<String> = name
        .entries()
        .map(|entry| {
            let nid = entry.object().nid();
            let key = match nid {
                Nid::UNDEF => entry.object().to_string(),
                nid => nid.short_name().unwrap_or("UNKNOWN").to_string(),
            };
            let value = entry.data().to_string().unwrap_or_default();
            format!("{key}={}", escape_dn_value(&value))
        })
        .collect();
    entries.into_iter().rev().collect::<Vec<_>>().join(",")
}

/// RFC 4514 section 2.4 escaping of an attribute value.
fn escape_dn_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        if c == '\0' {
            out.push_str("\\00");
            continue;
        }
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// One line on why a handshake failed.
fn handshake_failure(err: &openssl::ssl::Error) -> String {
    if let Some(stack) = err.ssl_error() {
        return reasons(stack);
    }
    if let Some(io) = err.io_error() {
        return io.to_string();
    }
    err.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_print() {
        for mode in [TlsMode::Off, TlsMode::On, TlsMode::Require] {
            assert_eq!(mode.to_string().parse::<TlsMode>(), Ok(mode));
        }
        assert_eq!(
            "yes".parse::<TlsMode>(),
            Err(r#""yes" is not off, on or require"#.to_string())
        );
    }

    #[test]
    fn subjects_print_most_specific_first_and_escaped() {
        let mut name = X509Name::builder().unwrap();
        name.append_entry_by_nid(Nid::COUNTRYNAME, "GB").unwrap();
        name.append_entry_by_nid(Nid::ORGANIZATIONNAME, "Example, Ltd")
            .unwrap();
        name.append_entry_by_nid(Nid::COMMONNAME, " alice").unwrap();
        let name = name.build();
        assert_eq!(subject(&name), r"CN=\ alice,O=Example\, Ltd,C=GB");
    }

    #[test]
    fn configurations_without_what_they_need_are_refused() {
        let psk = Some(PathBuf::from("/nonexistent/keys.psk"));
        let cert = Some((PathBuf::from("/c.pem"), PathBuf::from("/k.pem")));
        let refused = |config: TlsConfig| Tls::new(&config).unwrap_err().to_string();
        assert!(refused(TlsConfig::default()).starts_with("TLS needs credentials"));
        let config = TlsConfig {
            client_ca: Some("/ca.pem".into()),
            psk: psk.clone(),
            ..Default::default()
        };
        assert!(refused(config).starts_with("a client CA verifies"));
        let config = TlsConfig {
            certificate: cert,
            allow: Some("/allow".into()),
            required: true,
            ..Default::default()
        };
        assert!(refused(config).starts_with("an allow list needs client identities"));
        let config = TlsConfig {
            psk: psk.clone(),
            allow: Some("/allow".into()),
            ..Default::default()
        };
        assert!(refused(config).starts_with("an allow list needs TLS required"));
        let config = TlsConfig {
            psk,
            ..Default::default()
        };
        assert!(refused(config).starts_with("cannot read PSK file /nonexistent/keys.psk"));
    }

    #[test]
    fn unusable_certificates_name_their_file() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        let config = TlsConfig {
            certificate: Some((junk.clone(), junk.clone())),
            ..Default::default()
        };
        let err = Tls::new(&config).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("cannot use TLS certificate {}", junk.display())),
            "{err}"
        );
        assert!(!err.contains('\n'), "{err}");
    }
}
