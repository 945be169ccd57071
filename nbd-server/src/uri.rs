//! NBD URIs (the NBD URI specification's `nbd://` and `nbd+unix://` forms)
//! for telling clients where an export is.

use std::fmt::Write;
use std::path::Path;

/// `nbd://HOST:PORT/EXPORT`; IPv6 literals are bracketed.
pub fn tcp_uri(host: &str, port: u16, export: &str) -> String {
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    format!("nbd://{host}:{port}/{}", encode(export, b"@"))
}

/// `nbd+unix:///EXPORT?socket=PATH`.
pub fn unix_uri(socket: &Path, export: &str) -> String {
    let socket = socket.to_string_lossy();
    format!(
        "nbd+unix:///{}?socket={}",
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
            tcp_uri("127.0.0.1", 10809, "db@snap-1"),
            "nbd://127.0.0.1:10809/db@snap-1"
        );
        assert_eq!(tcp_uri("::1", 10809, "v"), "nbd://[::1]:10809/v");
        assert_eq!(
            unix_uri(Path::new("/run/ballast/nbd sock"), "vol"),
            "nbd+unix:///vol?socket=/run/ballast/nbd%20sock"
        );
        assert_eq!(
            unix_uri(Path::new("/s&x=1"), "a b"),
            "nbd+unix:///a%20b?socket=/s%26x%3D1"
        );
    }
}
