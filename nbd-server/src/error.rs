//! Why a connection ended abnormally.

use crate::wire::WireError;

/// A connection-fatal condition. Each ends only its own connection; the
/// server and every other connection carry on.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("connection I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed message from client: {0}")]
    Wire(#[from] WireError),
    #[error("client sent unknown client flags {0:#x}")]
    ClientFlags(u32),
    #[error("client asked for unknown export {0:?} with NBD_OPT_EXPORT_NAME")]
    UnknownExport(String),
    #[error("option {option} carries {length} bytes, more than the server accepts")]
    OptionTooLarge { option: u32, length: u32 },
    #[error("handshake not completed within {0:?}")]
    HandshakeTimeout(std::time::Duration),
    #[error("request payload of {0} bytes exceeds the 32 MiB maximum")]
    RequestTooLarge(u64),
    #[error(
        "client sent NBD_OPT_EXPORT_NAME before NBD_OPT_STARTTLS, and this server requires TLS"
    )]
    TlsRequired,
    #[error("client sent data after NBD_OPT_STARTTLS before the server acknowledged it")]
    DataBeforeTls,
    #[error("client sent NBD_OPT_STARTTLS inside TLS")]
    StartTlsTwice,
    #[error("TLS handshake failed: {0}")]
    TlsHandshake(String),
    #[error("cannot start TLS: {0}")]
    TlsSetup(String),
}
