//! The kernel NBD driver's generic-netlink interface (linux/nbd-netlink.h):
//! message encoding and decoding, and a small blocking netlink socket.
//!
//! `NBD_CMD_CONNECT` hands the kernel an already-negotiated socket plus the
//! export's size, block size and transmission flags; the reply names the
//! `/dev/nbdN` it allocated. `NBD_CMD_DISCONNECT` tears it down.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

// Netlink and generic netlink (linux/netlink.h, linux/genetlink.h).
const NETLINK_GENERIC: libc::c_int = 16;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLA_F_NESTED: u16 = 1 << 15;
const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const NLMSG_HDRLEN: usize = 16;
const GENL_HDRLEN: usize = 4;

// linux/nbd-netlink.h
pub const NBD_FAMILY_NAME: &str = "nbd";
const NBD_VERSION: u8 = 1;
const NBD_CMD_CONNECT: u8 = 1;
const NBD_CMD_DISCONNECT: u8 = 2;
const NBD_ATTR_INDEX: u16 = 1;
const NBD_ATTR_SIZE_BYTES: u16 = 2;
const NBD_ATTR_BLOCK_SIZE_BYTES: u16 = 3;
const NBD_ATTR_TIMEOUT: u16 = 4;
const NBD_ATTR_SERVER_FLAGS: u16 = 5;
const NBD_ATTR_SOCKETS: u16 = 7;
const NBD_SOCK_ITEM: u16 = 1;
const NBD_SOCK_FD: u16 = 1;

/// What `NBD_CMD_CONNECT` needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectParams {
    pub socket_fd: RawFd,
    pub size: u64,
    pub block_size: u64,
    /// The server's transmission flags (NBD_FLAG_*).
    pub server_flags: u64,
    /// Seconds before a stuck request fails.
    pub timeout: u64,
}

/// A netlink message under construction.
struct Message {
    bytes: Vec<u8>,
}

impl Message {
    fn new(family: u16, flags: u16, seq: u32, cmd: u8, version: u8) -> Message {
        let mut bytes = Vec::with_capacity(64);
        bytes.extend_from_slice(&0u32.to_ne_bytes()); // length, patched in finish()
        bytes.extend_from_slice(&family.to_ne_bytes());
        bytes.extend_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        bytes.extend_from_slice(&seq.to_ne_bytes());
        bytes.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it
        bytes.extend_from_slice(&[cmd, version, 0, 0]);
        Message { bytes }
    }

    fn attr(&mut self, kind: u16, payload: &[u8]) {
        self.bytes
            .extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
        self.bytes.extend_from_slice(&kind.to_ne_bytes());
        self.bytes.extend_from_slice(payload);
        self.pad();
    }

    /// Starts a nested attribute; returns where its length goes.
    fn begin_nested(&mut self, kind: u16) -> usize {
        let at = self.bytes.len();
        self.bytes.extend_from_slice(&0u16.to_ne_bytes());
        self.bytes
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        at
    }

    fn end_nested(&mut self, at: usize) {
        let len = (self.bytes.len() - at) as u16;
        self.bytes[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn pad(&mut self) {
        while self.bytes.len() & 3 != 0 {
            self.bytes.push(0);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        let len = self.bytes.len() as u32;
        self.bytes[0..4].copy_from_slice(&len.to_ne_bytes());
        self.bytes
    }
}

/// `CTRL_CMD_GETFAMILY` for `name`.
pub fn get_family_request(seq: u32, name: &str) -> Vec<u8> {
    let mut m = Message::new(GENL_ID_CTRL, NLM_F_ACK, seq, CTRL_CMD_GETFAMILY, 1);
    let mut z = name.as_bytes().to_vec();
    z.push(0);
    m.attr(CTRL_ATTR_FAMILY_NAME, &z);
    m.finish()
}

/// `NBD_CMD_CONNECT`, letting the kernel pick the device.
pub fn connect_request(family: u16, seq: u32, p: &ConnectParams) -> Vec<u8> {
    let mut m = Message::new(family, NLM_F_ACK, seq, NBD_CMD_CONNECT, NBD_VERSION);
    m.attr(NBD_ATTR_SIZE_BYTES, &p.size.to_ne_bytes());
    m.attr(NBD_ATTR_BLOCK_SIZE_BYTES, &p.block_size.to_ne_bytes());
    m.attr(NBD_ATTR_SERVER_FLAGS, &p.server_flags.to_ne_bytes());
    m.attr(NBD_ATTR_TIMEOUT, &p.timeout.to_ne_bytes());
    let sockets = m.begin_nested(NBD_ATTR_SOCKETS);
    let item = m.begin_nested(NBD_SOCK_ITEM);
    m.attr(NBD_SOCK_FD, &(p.socket_fd as u32).to_ne_bytes());
    m.end_nested(item);
    m.end_nested(sockets);
    m.finish()
}

/// `NBD_CMD_DISCONNECT` of `/dev/nbd{index}`.
pub fn disconnect_request(family: u16, seq: u32, index: u32) -> Vec<u8> {
    let mut m = Message::new(family, NLM_F_ACK, seq, NBD_CMD_DISCONNECT, NBD_VERSION);
    m.attr(NBD_ATTR_INDEX, &index.to_ne_bytes());
    m.finish()
}

/// One message of a netlink reply.
#[derive(Debug, PartialEq, Eq)]
pub enum NetlinkMessage<'a> {
    /// NLMSG_ERROR: 0 is an acknowledgement, otherwise a negative errno.
    Ack(i32),
    /// A generic netlink message: its attributes.
    Data(&'a [u8]),
}

/// Splits a datagram into messages.
pub fn parse_replies(mut buf: &[u8]) -> io::Result<Vec<NetlinkMessage<'_>>> {
    let mut out = Vec::new();
    while buf.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes(buf[0..4].try_into().unwrap()) as usize;
        let kind = u16::from_ne_bytes(buf[4..6].try_into().unwrap());
        if len < NLMSG_HDRLEN || len > buf.len() {
            return Err(bad("truncated netlink message"));
        }
        let body = &buf[NLMSG_HDRLEN..len];
        if kind == NLMSG_ERROR {
            let code = body.get(0..4).ok_or_else(|| bad("short netlink error"))?;
            out.push(NetlinkMessage::Ack(i32::from_ne_bytes(
                code.try_into().unwrap(),
            )));
        } else {
            let attrs = body
                .get(GENL_HDRLEN..)
                .ok_or_else(|| bad("short generic netlink message"))?;
            out.push(NetlinkMessage::Data(attrs));
        }
        let next = ((len + 3) & !3).min(buf.len());
        buf = &buf[next..];
    }
    Ok(out)
}

/// The payload of attribute `kind` in `attrs`.
pub fn find_attr(mut attrs: &[u8], kind: u16) -> Option<&[u8]> {
    while attrs.len() >= 4 {
        let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let k = u16::from_ne_bytes([attrs[2], attrs[3]]) & !NLA_F_NESTED;
        if len < 4 || len > attrs.len() {
            return None;
        }
        if k == kind {
            return Some(&attrs[4..len]);
        }
        attrs = &attrs[((len + 3) & !3).min(attrs.len())..];
    }
    None
}

/// The generic netlink family id in a GETFAMILY reply.
pub fn family_id(attrs: &[u8]) -> Option<u16> {
    let v = find_attr(attrs, CTRL_ATTR_FAMILY_ID)?;
    Some(u16::from_ne_bytes(v.get(0..2)?.try_into().ok()?))
}

/// The device index in an NBD_CMD_CONNECT reply.
pub fn connected_index(attrs: &[u8]) -> Option<u32> {
    let v = find_attr(attrs, NBD_ATTR_INDEX)?;
    Some(u32::from_ne_bytes(v.get(0..4)?.try_into().ok()?))
}

fn bad(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.to_string())
}

/// A blocking generic netlink socket.
pub struct Socket {
    fd: OwnedFd,
    seq: u32,
}

impl Socket {
    pub fn open() -> io::Result<Socket> {
        // SAFETY: plain socket(2); the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_GENERIC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Socket { fd, seq: 0 })
    }

    /// Sends a request built by `build(seq)` and collects the reply's data
    /// messages until the kernel acknowledges it.
    pub fn request(&mut self, build: impl FnOnce(u32) -> Vec<u8>) -> io::Result<Vec<Vec<u8>>> {
        self.seq += 1;
        let message = build(self.seq);
        // SAFETY: message is a valid buffer of message.len() bytes.
        let sent = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                message.as_ptr().cast(),
                message.len(),
                0,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut data = Vec::new();
        let mut buf = vec![0u8; 16 << 10];
        loop {
            // SAFETY: buf is a valid writable buffer of buf.len() bytes.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            for reply in parse_replies(&buf[..n as usize])? {
                match reply {
                    NetlinkMessage::Ack(0) => return Ok(data),
                    NetlinkMessage::Ack(errno) => return Err(io::Error::from_raw_os_error(-errno)),
                    NetlinkMessage::Data(attrs) => data.push(attrs.to_vec()),
                }
            }
        }
    }

    /// The id of generic netlink family `name` (e.g. "nbd").
    pub fn family(&mut self, name: &str) -> io::Result<u16> {
        let replies = self.request(|seq| get_family_request(seq, name))?;
        replies
            .iter()
            .find_map(|attrs| family_id(attrs))
            .ok_or_else(|| bad("no family id in the netlink reply"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u16s(v: u16) -> [u8; 2] {
        v.to_ne_bytes()
    }

    #[test]
    fn encodes_getfamily() {
        let m = get_family_request(7, "nbd");
        let mut expected = Vec::new();
        expected.extend_from_slice(&28u32.to_ne_bytes());
        expected.extend_from_slice(&u16s(GENL_ID_CTRL));
        expected.extend_from_slice(&u16s(NLM_F_REQUEST | NLM_F_ACK));
        expected.extend_from_slice(&7u32.to_ne_bytes());
        expected.extend_from_slice(&0u32.to_ne_bytes());
        expected.extend_from_slice(&[CTRL_CMD_GETFAMILY, 1, 0, 0]);
        expected.extend_from_slice(&u16s(8));
        expected.extend_from_slice(&u16s(CTRL_ATTR_FAMILY_NAME));
        expected.extend_from_slice(b"nbd\0");
        assert_eq!(m, expected);
    }

    #[test]
    fn encodes_connect_with_nested_socket() {
        let params = ConnectParams {
            socket_fd: 9,
            size: 1 << 30,
            block_size: 4096,
            server_flags: 0b10_1101,
            timeout: 30,
        };
        let m = connect_request(0x21, 3, &params);
        assert_eq!(
            m.len() as u32,
            u32::from_ne_bytes(m[0..4].try_into().unwrap())
        );
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), 0x21);
        assert_eq!(&m[16..18], &[NBD_CMD_CONNECT, NBD_VERSION]);
        let attrs = &m[20..];
        let u64_attr = |k| u64::from_ne_bytes(find_attr(attrs, k).unwrap().try_into().unwrap());
        assert_eq!(u64_attr(NBD_ATTR_SIZE_BYTES), 1 << 30);
        assert_eq!(u64_attr(NBD_ATTR_BLOCK_SIZE_BYTES), 4096);
        assert_eq!(u64_attr(NBD_ATTR_SERVER_FLAGS), 0b10_1101);
        assert_eq!(u64_attr(NBD_ATTR_TIMEOUT), 30);
        // SOCKETS { ITEM { FD = 9 } }, both marked nested: 4 + 4 + 8 bytes.
        let sockets_at = attrs.len() - 16;
        assert_eq!(&attrs[sockets_at..sockets_at + 2], &u16s(16));
        assert_eq!(
            &attrs[sockets_at + 2..sockets_at + 4],
            &u16s(NBD_ATTR_SOCKETS | NLA_F_NESTED)
        );
        assert_eq!(&attrs[sockets_at + 4..sockets_at + 6], &u16s(12));
        assert_eq!(
            &attrs[sockets_at + 6..sockets_at + 8],
            &u16s(NBD_SOCK_ITEM | NLA_F_NESTED)
        );
        let sockets = find_attr(attrs, NBD_ATTR_SOCKETS).unwrap();
        let item = find_attr(sockets, NBD_SOCK_ITEM).unwrap();
        assert_eq!(find_attr(item, NBD_SOCK_FD).unwrap(), &9u32.to_ne_bytes());
    }

    #[test]
    fn encodes_disconnect() {
        let m = disconnect_request(0x21, 4, 3);
        assert_eq!(m.len(), 28);
        assert_eq!(&m[16..18], &[NBD_CMD_DISCONNECT, NBD_VERSION]);
        assert_eq!(connected_index(&m[20..]), Some(3));
    }

    #[test]
    fn parses_replies_acks_and_errors() {
        // A data message carrying CTRL_ATTR_FAMILY_ID = 0x25, then an ack.
        let mut data = Message::new(GENL_ID_CTRL, 0, 1, 1, 1);
        data.attr(CTRL_ATTR_FAMILY_ID, &0x25u16.to_ne_bytes());
        let data = data.finish();
        let mut ack = Vec::new();
        ack.extend_from_slice(&36u32.to_ne_bytes());
        ack.extend_from_slice(&u16s(NLMSG_ERROR));
        ack.extend_from_slice(&[0; 10]);
        ack.extend_from_slice(&0i32.to_ne_bytes());
        ack.extend_from_slice(&[0; 16]);
        let mut error = ack.clone();
        error[16..20].copy_from_slice(&(-libc::ENOENT).to_ne_bytes());

        let datagram = [data.clone(), ack].concat();
        let replies = parse_replies(&datagram).unwrap();
        assert_eq!(replies.len(), 2);
        let NetlinkMessage::Data(attrs) = replies[0] else {
            panic!("expected data")
        };
        assert_eq!(family_id(attrs), Some(0x25));
        assert_eq!(replies[1], NetlinkMessage::Ack(0));
        assert_eq!(
            parse_replies(&error).unwrap(),
            vec![NetlinkMessage::Ack(-libc::ENOENT)]
        );
        assert!(parse_replies(&data[..data.len() - 1]).is_err());
    }

    #[test]
    fn asks_the_kernel_for_a_family() {
        // The controller family always exists; "nbd" only with the module.
        let mut socket = Socket::open().unwrap();
        assert_eq!(socket.family("nlctrl").unwrap(), GENL_ID_CTRL);
        assert!(socket.family("no-such-family-x").is_err());
    }
}
