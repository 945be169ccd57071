//! A moto_server (a real S3 server, from the test venv) for the S3
//! end-to-end tests, started on a free loopback port and killed by its PID
//! when dropped.
#![allow(dead_code, unreachable_pub)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The moto_server binary, or `None` (the test skips) — except under
/// CI=true, where a missing server fails the test.
pub fn moto_binary() -> Option<PathBuf> {
    let venv = std::env::var_os("BALLAST_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/ballast-test/venv"));
    let bin = venv.join("bin/moto_server");
    if bin.is_file() {
        return Some(bin);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{} is missing; run scripts/install-test-deps.sh",
        bin.display()
    );
    eprintln!("skipping: {} not found", bin.display());
    None
}

/// A moto_server this test started; killed (by its PID) on drop.
pub struct Moto {
    child: Child,
    pub port: u16,
}

impl Moto {
    pub fn start(bin: &PathBuf) -> Moto {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not listen");
            std::thread::sleep(Duration::from_millis(100));
        }
        Moto { child, port }
    }

    /// Creates a bucket with a plain PUT (moto does not check signatures
    /// until [`Moto::require_auth`]).
    pub fn create_bucket(&self, bucket: &str) {
        let response = self.request(&format!("PUT /{bucket}"), &[], "");
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    }

    /// Creates an IAM user without any policy; returns its access key id
    /// and secret.
    pub fn create_user(&self, name: &str) -> (String, String) {
        // moto routes a request by the service named in its credential
        // scope; the signature is not checked yet.
        let auth = [(
            "Authorization",
            "AWS4-HMAC-SHA256 Credential=setup/20240101/us-east-1/iam/aws4_request, SignedHeaders=host, Signature=0",
        ), ("Content-Type", "application/x-www-form-urlencoded")];
        let query = |action: &str| format!("Action={action}&UserName={name}&Version=2010-05-08");
        let response = self.request("POST /", &auth, &query("CreateUser"));
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        let response = self.request("POST /", &auth, &query("CreateAccessKey"));
        let field = |tag: &str| {
            let start = response.find(&format!("<{tag}>")).expect(tag) + tag.len() + 2;
            let end = response[start..].find('<').unwrap() + start;
            response[start..end].to_string()
        };
        (field("AccessKeyId"), field("SecretAccessKey"))
    }

    /// From now on every request must be signed by a known IAM user and
    /// allowed by its policies.
    pub fn require_auth(&self) {
        let response = self.request(
            "POST /moto-api/reset-auth",
            &[("Content-Type", "application/json")],
            "0",
        );
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    }

    /// One plain HTTP/1.1 request (`line` is `METHOD PATH`); the response.
    pub fn request(&self, line: &str, headers: &[(&str, &str)], body: &str) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        let mut head = format!("{line} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n", self.port);
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        write!(
            stream,
            "{head}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
