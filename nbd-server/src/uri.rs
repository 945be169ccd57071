//! NBD URIs (the NBD URI specification's `nbd://` and `nbd+unix://` forms,
//! `nbds://` and `nbds+unix://` with TLS) for telling clients where an
//! export is.

use std::fmt::Write;
use std::path::Path;

/// `nbd://HOST:PORT/EXPORT` (`nbds://` with TLS); IPv6 literals are
/// bracketed.
pub fn tcp_uri(host: &str, port: u16, export: &str, tls: bool) -> String {
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    let scheme = if tls { "nbds" } else { "nbd" };
    format!("{scheme}://{host}:{port}/{}", encode(export, b"@"))
}

/// `nbd+unix:///EXPORT?socket=PATH` (`nbds+unix://` with TLS).
pub fn unix_uri(socket: &Path, export: &str, tls: bool) -> String {
    let socket = socket.to_string_lossy();
    let scheme = if tls { "nbds+unix" } else { "nbd+unix" };
    format!(
        "{scheme}:///{}?socket={}",
        encode(export, b"@"),
        encode(&socket, b"/")
    )
}

/// Percent-encodes everything except RFC 3986 unreserved characters and
/// `keep`.
fn encode(s: &str, keep: &[u8]) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || keep.contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_tcp_and_unix_uris() {
        assert_eq!(
            tcp_uri("127.0.0.1", 10809, "db@snap-1", false),
            "nbd://127.0.0.1:10809/db@snap-1"
        );
        assert_eq!(tcp_uri("::1", 10809, "v", false), "nbd://[::1]:10809/v");
        assert_eq!(tcp_uri("::1", 10809, "v", true), "nbds://[::1]:10809/v");
        assert_eq!(
            unix_uri(Path::new("/run/ballast/nbd sock"), "vol", false),
            "nbd+unix:///vol?socket=/run/ballast/nbd%20sock"
        );
        assert_eq!(
            unix_uri(Path::new("/s&x=1"), "a b", false),
            "nbd+unix:///a%20b?socket=/s%26x%3D1"
        );
        assert_eq!(
            unix_uri(Path::new("/s"), "v", true),
            "nbds+unix:///v?socket=/s"
        );
    }
}
