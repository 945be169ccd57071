//! A byte-level NBD client for protocol tests: exact error values,
//! malformed input, pipelining, extended headers.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use ballast_nbd::proto::*;
use openssl::ssl::{Ssl, SslStream};

pub struct Raw {
    pub s: Conn,
    /// Extended headers negotiated: 32-byte requests and replies.
    pub extended: bool,
}

/// The client's end of the connection: plain, or TLS after STARTTLS.
pub enum Conn {
    Plain(UnixStream),
    Tls(Box<SslStream<UnixStream>>),
    /// Only while upgrading.
    Upgrading,
}

impl Conn {
    fn socket(&self) -> &UnixStream {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(s) => s.get_ref(),
            Conn::Upgrading => panic!("connection lost in a failed upgrade"),
        }
    }

    pub fn shutdown(&self, how: Shutdown) -> std::io::Result<()> {
        self.socket().shutdown(how)
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(s) => s.read(buf),
            Conn::Upgrading => Err(std::io::ErrorKind::NotConnected.into()),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Tls(s) => s.write(buf),
            Conn::Upgrading => Err(std::io::ErrorKind::NotConnected.into()),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
            Conn::Upgrading => Ok(()),
        }
    }
}

pub struct Chunk {
    pub flags: u16,
    pub kind: u16,
    pub handle: u64,
    /// Request offset echoed by extended reply headers (0 otherwise).
    pub offset: u64,
    pub payload: Vec<u8>,
}

impl Chunk {
    /// The error value of an error chunk.
    pub fn errno(&self) -> u32 {
        assert!(
            self.kind & 0x8000 != 0,
            "chunk type {} is not an error",
            self.kind
        );
        u32::from_be_bytes(self.payload[..4].try_into().unwrap())
    }
}

impl Raw {
    pub fn connect(path: &Path) -> Raw {
        let s = UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Raw {
            s: Conn::Plain(s),
            extended: false,
        }
    }

    /// Sends NBD_OPT_STARTTLS, expects its ACK, and runs the client side
    /// of the TLS handshake with `ssl`.
    pub fn starttls(&mut self, ssl: Ssl) -> Result<(), openssl::ssl::Error> {
        self.option(OPT_STARTTLS, &[]);
        assert_eq!(self.option_reply(), (OPT_STARTTLS, REP_ACK, vec![]));
        self.upgrade(ssl)
    }

    /// The client side of a TLS handshake on the plain connection.
    pub fn upgrade(&mut self, ssl: Ssl) -> Result<(), openssl::ssl::Error> {
        let Conn::Plain(plain) = std::mem::replace(&mut self.s, Conn::Upgrading) else {
            panic!("TLS is already running");
        };
        let tls = ssl.connect(plain).map_err(|e| match e {
            openssl::ssl::HandshakeError::Failure(mid) => mid.into_error(),
            openssl::ssl::HandshakeError::SetupFailure(stack) => stack.into(),
            openssl::ssl::HandshakeError::WouldBlock(mid) => mid.into_error(),
        })?;
        self.s = Conn::Tls(Box::new(tls));
        Ok(())
    }

    /// Reads the option replies to NBD_OPT_LIST until its ACK: the names.
    pub fn list(&mut self) -> Vec<String> {
        self.option(OPT_LIST, &[]);
        let mut names = Vec::new();
        loop {
            let (opt, kind, data) = self.option_reply();
            assert_eq!(opt, OPT_LIST);
            if kind == REP_ACK {
                return names;
            }
            assert_eq!(kind, REP_SERVER, "{}", String::from_utf8_lossy(&data));
            let len = u32::from_be_bytes(data[..4].try_into().unwrap()) as usize;
            names.push(String::from_utf8(data[4..4 + len].to_vec()).unwrap());
        }
    }

    pub fn read_n(&mut self, n: usize) -> Vec<u8> {
        let mut buf = vec![0u8; n];
        self.s.read_exact(&mut buf).unwrap();
        buf
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes(self.read_n(2).try_into().unwrap())
    }
    fn u32(&mut self) -> u32 {
        u32::from_be_bytes(self.read_n(4).try_into().unwrap())
    }
    fn u64(&mut self) -> u64 {
        u64::from_be_bytes(self.read_n(8).try_into().unwrap())
    }

    /// Reads the server greeting and sends client flags.
    pub fn greet(&mut self, client_flags: u32) -> u16 {
        assert_eq!(self.u64(), NBD_MAGIC);
        assert_eq!(self.u64(), IHAVEOPT);
        let flags = self.u16();
        self.s.write_all(&client_flags.to_be_bytes()).unwrap();
        flags
    }

    pub fn option(&mut self, option: u32, data: &[u8]) {
        let mut msg = IHAVEOPT.to_be_bytes().to_vec();
        msg.extend_from_slice(&option.to_be_bytes());
        msg.extend_from_slice(&(data.len() as u32).to_be_bytes());
        msg.extend_from_slice(data);
        self.s.write_all(&msg).unwrap();
    }

    /// (option, reply type, data)
    pub fn option_reply(&mut self) -> (u32, u32, Vec<u8>) {
        assert_eq!(self.u64(), OPTION_REPLY_MAGIC);
        let option = self.u32();
        let kind = self.u32();
        let len = self.u32() as usize;
        (option, kind, self.read_n(len))
    }

    pub fn name_payload(name: &str) -> Vec<u8> {
        let mut p = (name.len() as u32).to_be_bytes().to_vec();
        p.extend_from_slice(name.as_bytes());
        p
    }

    /// Full fixed-newstyle handshake ending in NBD_OPT_GO; returns (size, transmission flags).
    pub fn go(&mut self, name: &str, structured: bool, meta: bool) -> (u64, u16) {
        self.greet(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES);
        if structured {
            self.option(OPT_STRUCTURED_REPLY, &[]);
            assert_eq!(self.option_reply().1, REP_ACK);
        }
        self.select_and_go(name, meta)
    }

    /// Handshake with extended headers (which imply structured replies).
    pub fn go_extended(&mut self, name: &str, meta: bool) -> (u64, u16) {
        self.greet(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES);
        self.option(OPT_EXTENDED_HEADERS, &[]);
        assert_eq!(self.option_reply().1, REP_ACK);
        self.extended = true;
        self.select_and_go(name, meta)
    }

    pub fn select_and_go(&mut self, name: &str, meta: bool) -> (u64, u16) {
        if meta {
            let mut p = Self::name_payload(name);
            p.extend_from_slice(&1u32.to_be_bytes());
            p.extend_from_slice(&Self::name_payload(BASE_ALLOCATION));
            self.option(OPT_SET_META_CONTEXT, &p);
            let (_, kind, data) = self.option_reply();
            assert_eq!(kind, REP_META_CONTEXT);
            assert_eq!(&data[4..], BASE_ALLOCATION.as_bytes());
            assert_eq!(self.option_reply().1, REP_ACK);
        }
        let mut p = Self::name_payload(name);
        p.extend_from_slice(&0u16.to_be_bytes());
        self.option(OPT_GO, &p);
        let mut export = None;
        loop {
            let (option, kind, data) = self.option_reply();
            assert_eq!(option, OPT_GO);
            match kind {
                REP_INFO if u16::from_be_bytes([data[0], data[1]]) == INFO_EXPORT => {
                    let size = u64::from_be_bytes(data[2..10].try_into().unwrap());
                    let flags = u16::from_be_bytes(data[10..12].try_into().unwrap());
                    export = Some((size, flags));
                }
                REP_INFO => {}
                REP_ACK => return export.expect("NBD_INFO_EXPORT before ACK"),
                other => panic!(
                    "NBD_OPT_GO failed with reply {other:#x}: {}",
                    String::from_utf8_lossy(&data)
                ),
            }
        }
    }

    pub fn request(
        &mut self,
        flags: u16,
        command: u16,
        handle: u64,
        offset: u64,
        len: u32,
        data: &[u8],
    ) {
        self.request64(flags, command, handle, offset, u64::from(len), data)
    }

    /// A request in the negotiated header form (64-bit length only with
    /// extended headers).
    pub fn request64(
        &mut self,
        flags: u16,
        command: u16,
        handle: u64,
        offset: u64,
        len: u64,
        data: &[u8],
    ) {
        let magic = if self.extended {
            EXTENDED_REQUEST_MAGIC
        } else {
            REQUEST_MAGIC
        };
        let mut msg = magic.to_be_bytes().to_vec();
        msg.extend_from_slice(&flags.to_be_bytes());
        msg.extend_from_slice(&command.to_be_bytes());
        msg.extend_from_slice(&handle.to_be_bytes());
        msg.extend_from_slice(&offset.to_be_bytes());
        if self.extended {
            msg.extend_from_slice(&len.to_be_bytes());
        } else {
            msg.extend_from_slice(&(len as u32).to_be_bytes());
        }
        msg.extend_from_slice(data);
        self.s.write_all(&msg).unwrap();
    }

    /// A simple reply: (error, handle).
    pub fn simple_reply(&mut self) -> (u32, u64) {
        assert_eq!(self.u32(), SIMPLE_REPLY_MAGIC);
        (self.u32(), self.u64())
    }

    /// Any reply message when structured replies are on: simple replies are
    /// returned as a chunk of type NONE (error 0) or ERROR.
    pub fn chunk(&mut self) -> Chunk {
        match self.u32() {
            STRUCTURED_REPLY_MAGIC => {
                assert!(!self.extended, "compact chunk after extended headers");
                let flags = self.u16();
                let kind = self.u16();
                let handle = self.u64();
                let len = self.u32() as usize;
                Chunk {
                    flags,
                    kind,
                    handle,
                    offset: 0,
                    payload: self.read_n(len),
                }
            }
            EXTENDED_REPLY_MAGIC => {
                assert!(self.extended, "extended chunk without extended headers");
                let flags = self.u16();
                let kind = self.u16();
                let handle = self.u64();
                let offset = self.u64();
                let len = self.u64() as usize;
                Chunk {
                    flags,
                    kind,
                    handle,
                    offset,
                    payload: self.read_n(len),
                }
            }
            SIMPLE_REPLY_MAGIC => {
                assert!(!self.extended, "simple reply after extended headers");
                let error = self.u32();
                let handle = self.u64();
                let (kind, payload) = if error == 0 {
                    (REPLY_TYPE_NONE, vec![])
                } else {
                    let mut payload = error.to_be_bytes().to_vec();
                    payload.extend_from_slice(&[0, 0]);
                    (REPLY_TYPE_ERROR, payload)
                };
                Chunk {
                    flags: REPLY_FLAG_DONE,
                    kind,
                    handle,
                    offset: 0,
                    payload,
                }
            }
            magic => panic!("bad reply magic {magic:#x}"),
        }
    }

    /// True once the server has closed the connection (EOF or reset),
    /// after whatever it sent last (a TLS alert, say); false if it keeps
    /// the connection open past the read timeout or sends more than a
    /// little.
    pub fn closed(&mut self) -> bool {
        let mut buf = [0u8; 4096];
        for _ in 0..16 {
            match self.s.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) => {
                    return !matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    )
                }
            }
        }
        false
    }
}
