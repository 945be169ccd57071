//! ballast-nbd: the NBD front end of ballast.
//!
//! A modern NBD server on tokio: fixed-newstyle handshake with
//! NBD_OPT_GO/INFO/LIST/EXPORT_NAME/ABORT, structured replies, extended
//! headers,
//! `base:allocation` block status, FLUSH, FUA, TRIM, WRITE_ZEROES (with
//! FAST_ZERO), CACHE, multi-connection, pipelined requests answered out of
//! order, over unix sockets and TCP.
//!
//! Extended headers (NBD_OPT_EXTENDED_HEADERS: 64-bit lengths, 32-byte
//! request and reply headers) are supported.
//!
//! TLS 1.3 through NBD_OPT_STARTTLS ([`Tls`], with OpenSSL), offered or
//! required, on any listener: X.509 certificates (client certificates
//! verified against a CA if asked) or pre-shared keys from a `psktool`
//! key file ([`PskKeys`]); an [`AllowList`] limits the exports each
//! client identity may use. Without TLS, STARTTLS is refused by policy.
//!
//! Bad input never panics and never changes data: malformed options are
//! answered with the spec's error replies; a malformed request, bad magic
//! or an oversize write payload closes that one connection. [`Limits`]
//! caps connections and the handshake time; each connection bounds the
//! request bytes it holds in flight.
//!
//! Exports come from an [`ExportProvider`]; [`EngineExports`] serves a
//! ballast pool: export `VOL` is the volume read-write, `VOL@SNAP` that
//! snapshot read-only.
//!
//! ```no_run
//! # async fn run(pool: ballast_engine::Pool) -> std::io::Result<()> {
//! use std::sync::Arc;
//! use ballast_nbd::{serve_unix, EngineExports, Server};
//! let server = Server::new(Arc::new(EngineExports::new(pool)));
//! let listener = tokio::net::UnixListener::bind("/run/ballast/nbd.sock")?;
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! serve_unix(listener, server, shutdown).await
//! # }
//! ```

mod allow;
mod engine;
mod error;
mod export;
mod handshake;
mod incoming;
pub mod proto;
mod psk;
mod reply;
mod server;
mod tls;
mod transmission;
mod transport;
mod uri;
pub mod wire;

pub use allow::{AllowError, AllowList};
pub use engine::EngineExports;
pub use error::ConnectionError;
pub use export::{BlockDevice, Export, ExportProvider, IoFuture, Payload, ReadBuf};
pub use psk::{PskError, PskKeys};
pub use server::{serve_tcp, serve_unix, Limits, Server};
pub use tls::{subject, Tls, TlsConfig, TlsError, TlsMode};
pub use tokio_util::sync::CancellationToken;
pub use uri::{tcp_uri, unix_uri};
