//! A moto_server (a real S3 server, from the test venv) for the S3
//! end-to-end tests, started on a free loopback port and killed by its PID
//! when dropped.
#![allow(dead_code, unreachable_pub)]

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod spawn;

pub use spawn::moto_binary;

/// The daemon's environment for moto: its fixed credentials, and no
/// instance metadata lookups.
pub const DAEMON_ENV: [(&str, &str); 4] = [
    ("AWS_ACCESS_KEY_ID", "testing"),
    ("AWS_SECRET_ACCESS_KEY", "testing"),
    ("AWS_REGION", "us-east-1"),
    ("AWS_EC2_METADATA_DISABLED", "true"),
];

/// A moto_server this test started; killed (by its PID) on drop.
pub struct Moto {
    child: Child,
    pub port: u16,
}

impl Moto {
    /// Starts moto on a port it picks itself.
    pub fn start(bin: &Path) -> Moto {
        let (child, port) = spawn::spawn(bin, 0, &[]);
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
    /// Under load moto's server sometimes resets the connection before the
    /// response is read: the request is sent again (every request made
    /// here is idempotent or checked by its caller).
    pub fn request(&self, line: &str, headers: &[(&str, &str)], body: &str) -> String {
        let mut head = format!("{line} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n", self.port);
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        let message = format!(
            "{head}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let mut attempt = 0;
        loop {
            attempt += 1;
            let exchange = || -> std::io::Result<String> {
                let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
                stream.write_all(message.as_bytes())?;
                let mut response = String::new();
                stream.read_to_string(&mut response)?;
                Ok(response)
            };
            match exchange() {
                Ok(response) if !response.is_empty() => return response,
                Ok(_) if attempt < 5 => {}
                Err(e) if attempt < 5 && e.kind() == ErrorKind::ConnectionReset => {}
                other => panic!("{line} to moto: {other:?}"),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP proxy on loopback in front of a server (moto): it can pass what
/// clients send at a limited rate over all connections together (what the
/// server sends back goes at full speed), and it can go down, cutting
/// every connection and refusing new ones, and come back on the same port,
/// the way a store's endpoint fails and recovers while its data stays.
pub struct Proxy {
    pub port: u16,
    state: Arc<ProxyState>,
}

struct ProxyState {
    target: u16,
    bytes_per_sec: Option<usize>,
    /// When the shared (throttled) link is next free.
    link: Mutex<Instant>,
    down: AtomicBool,
    /// Counts the times the proxy went down: a connection of an earlier
    /// lap is cut.
    lap: AtomicU64,
    stop: AtomicBool,
}

/// How often idle relays and the listener look at the switches.
const POLL: Duration = Duration::from_millis(20);

impl Proxy {
    /// A proxy to `target`; `bytes_per_sec` limits what clients send.
    pub fn start(target: u16, bytes_per_sec: Option<usize>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(ProxyState {
            target,
            bytes_per_sec,
            link: Mutex::new(Instant::now()),
            down: AtomicBool::new(false),
            lap: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let s = state.clone();
        std::thread::spawn(move || s.listen(port, listener));
        Proxy { port, state }
    }

    /// Cuts every connection and refuses new ones until [`Proxy::up`].
    pub fn down(&self) {
        self.state.lap.fetch_add(1, Ordering::SeqCst);
        self.state.down.store(true, Ordering::SeqCst);
    }

    pub fn up(&self) {
        self.state.down.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.down();
        self.state.stop.store(true, Ordering::SeqCst);
    }
}

impl ProxyState {
    fn listen(self: Arc<Self>, port: u16, listener: TcpListener) {
        let mut listener = Some(listener);
        while !self.stop.load(Ordering::SeqCst) {
            if self.down.load(Ordering::SeqCst) {
                // Closed: connecting is refused.
                listener = None;
                std::thread::sleep(POLL);
                continue;
            }
            let l = match &listener {
                Some(l) => l,
                None => match TcpListener::bind(("127.0.0.1", port)) {
                    Ok(l) => listener.insert(l),
                    Err(_) => {
                        std::thread::sleep(POLL);
                        continue;
                    }
                },
            };
            l.set_nonblocking(true).unwrap();
            match l.accept() {
                Ok((client, _)) => self.clone().relay(client),
                Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(POLL),
                Err(_) => {}
            }
        }
    }

    fn relay(self: Arc<Self>, client: TcpStream) {
        let Ok(server) = TcpStream::connect(("127.0.0.1", self.target)) else {
            return;
        };
        client.set_nonblocking(false).unwrap();
        let lap = self.lap.load(Ordering::SeqCst);
        for (from, to, throttled) in [
            (
                client.try_clone().unwrap(),
                server.try_clone().unwrap(),
                true,
            ),
            (server, client, false),
        ] {
            let state = self.clone();
            std::thread::spawn(move || state.pump(from, to, throttled, lap));
        }
    }

    /// Copies `from` to `to` until either closes or the proxy goes down.
    fn pump(&self, mut from: TcpStream, mut to: TcpStream, throttled: bool, lap: u64) {
        from.set_read_timeout(Some(POLL)).unwrap();
        let mut buf = [0u8; 16 << 10];
        loop {
            if self.lap.load(Ordering::SeqCst) != lap {
                let _ = from.shutdown(Shutdown::Both);
                let _ = to.shutdown(Shutdown::Both);
                return;
            }
            let n = match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    continue
                }
                Err(_) => break,
            };
            if let (true, Some(rate)) = (throttled, self.bytes_per_sec) {
                let done = {
                    let mut free = self.link.lock().unwrap();
                    let start = (*free).max(Instant::now());
                    *free = start + Duration::from_secs_f64(n as f64 / rate as f64);
                    *free
                };
                std::thread::sleep(done.saturating_duration_since(Instant::now()));
            }
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    }
}
