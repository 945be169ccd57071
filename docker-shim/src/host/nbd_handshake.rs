//! The client side of the NBD fixed-newstyle handshake (`NBD_OPT_GO`), done
//! in userspace before a socket is handed to the kernel's NBD driver, which
//! only speaks the transmission phase. See the NBD protocol, doc/proto.md.

use std::io::{self, Read, Write};

use ballast_nbd::proto::{
    FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES, IHAVEOPT, INFO_EXPORT, NBD_MAGIC, OPTION_REPLY_MAGIC,
    OPT_GO, REP_ACK, REP_ERR_UNKNOWN, REP_FLAG_ERROR, REP_INFO,
};

/// Largest option reply we accept; anything bigger is a broken server.
const MAX_REPLY: u32 = 64 << 10;

/// What the server said about the export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportInfo {
    pub size: u64,
    /// Transmission flags, for the kernel's NBD_ATTR_SERVER_FLAGS.
    pub flags: u16,
}

/// Negotiates `export` on `stream`, leaving it in the transmission phase.
pub fn negotiate<S: Read + Write>(stream: &mut S, export: &str) -> io::Result<ExportInfo> {
    if read_u64(stream)? != NBD_MAGIC || read_u64(stream)? != IHAVEOPT {
        return Err(protocol("the peer is not a newstyle NBD server"));
    }
    let server_flags = read_u16(stream)?;
    if server_flags & FLAG_FIXED_NEWSTYLE == 0 {
        return Err(protocol("the NBD server does not speak fixed newstyle"));
    }
    let client_flags = u32::from(server_flags & (FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES));
    let name = export.as_bytes();
    let mut request = Vec::with_capacity(26 + name.len());
    request.extend_from_slice(&client_flags.to_be_bytes());
    request.extend_from_slice(&IHAVEOPT.to_be_bytes());
    request.extend_from_slice(&OPT_GO.to_be_bytes());
    request.extend_from_slice(&(4 + name.len() as u32 + 2).to_be_bytes());
    request.extend_from_slice(&(name.len() as u32).to_be_bytes());
    request.extend_from_slice(name);
    request.extend_from_slice(&0u16.to_be_bytes()); // no extra info requests
    stream.write_all(&request)?;
    stream.flush()?;

    let mut info = None;
    loop {
        if read_u64(stream)? != OPTION_REPLY_MAGIC {
            return Err(protocol("bad option reply magic from the NBD server"));
        }
        let option = read_u32(stream)?;
        let kind = read_u32(stream)?;
        let len = read_u32(stream)?;
        if option != OPT_GO {
            return Err(protocol("the NBD server answered a different option"));
        }
        if len > MAX_REPLY {
            return Err(protocol("oversized option reply from the NBD server"));
        }
        let mut data = vec![0; len as usize];
        stream.read_exact(&mut data)?;
        match kind {
            REP_ACK => {
                return info.ok_or_else(|| protocol("the NBD server sent no export size"));
            }
            REP_INFO
                if data.len() >= 12 && u16::from_be_bytes([data[0], data[1]]) == INFO_EXPORT =>
            {
                info = Some(ExportInfo {
                    size: u64::from_be_bytes(data[2..10].try_into().unwrap()),
                    flags: u16::from_be_bytes([data[10], data[11]]),
                });
            }
            REP_INFO => {} // informational replies we did not ask about
            REP_ERR_UNKNOWN => {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("the NBD server has no export {export:?}"),
                ))
            }
            kind if kind & REP_FLAG_ERROR != 0 => {
                let message = String::from_utf8_lossy(&data);
                return Err(protocol(&format!(
                    "the NBD server refused export {export:?}: {message} (error {:#x})",
                    kind
                )));
            }
            _ => return Err(protocol("unexpected option reply from the NBD server")),
        }
    }
}

fn protocol(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.to_string())
}

fn read_u64(r: &mut impl Read) -> io::Result<u64> {
    let mut b = [0; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_be_bytes(b))
}

fn read_u32(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

fn read_u16(r: &mut impl Read) -> io::Result<u16> {
    let mut b = [0; 2];
    r.read_exact(&mut b)?;
    Ok(u16::from_be_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ballast_nbd::proto::{FLAG_HAS_FLAGS, FLAG_SEND_FLUSH, FLAG_SEND_FUA, FLAG_SEND_TRIM};
    use std::os::unix::net::UnixStream;
    use std::thread;

    fn reply(kind: u32, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
        out.extend_from_slice(&OPT_GO.to_be_bytes());
        out.extend_from_slice(&kind.to_be_bytes());
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(data);
        out
    }

    /// A scripted server: sends its greeting, reads the client's flags and
    /// GO request (returned for inspection), then sends `replies`.
    fn scripted(replies: Vec<u8>) -> (UnixStream, thread::JoinHandle<Vec<u8>>) {
        let (client, mut server) = UnixStream::pair().unwrap();
        let handle = thread::spawn(move || {
            let mut greeting = Vec::new();
            greeting.extend_from_slice(&NBD_MAGIC.to_be_bytes());
            greeting.extend_from_slice(&IHAVEOPT.to_be_bytes());
            greeting.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
            server.write_all(&greeting).unwrap();
            let mut head = [0u8; 20];
            server.read_exact(&mut head).unwrap();
            let len = u32::from_be_bytes(head[16..20].try_into().unwrap());
            let mut body = vec![0; len as usize];
            server.read_exact(&mut body).unwrap();
            server.write_all(&replies).unwrap();
            [head.to_vec(), body].concat()
        });
        (client, handle)
    }

    #[test]
    fn sends_go_and_reads_export_info() {
        let mut info = vec![0, 0];
        info.extend_from_slice(&(1u64 << 30).to_be_bytes());
        let flags = FLAG_HAS_FLAGS | FLAG_SEND_FLUSH | FLAG_SEND_FUA | FLAG_SEND_TRIM;
        info.extend_from_slice(&flags.to_be_bytes());
        let replies = [
            reply(REP_INFO, &[0, 3, 0, 0, 2, 0]),
            reply(REP_INFO, &info),
            reply(REP_ACK, &[]),
        ]
        .concat();
        let (mut client, server) = scripted(replies);
        let got = negotiate(&mut client, "db").unwrap();
        assert_eq!(
            got,
            ExportInfo {
                size: 1 << 30,
                flags
            }
        );
        let sent = server.join().unwrap();
        let mut expected = Vec::new();
        expected.extend_from_slice(&3u32.to_be_bytes()); // fixed newstyle + no zeroes
        expected.extend_from_slice(&IHAVEOPT.to_be_bytes());
        expected.extend_from_slice(&OPT_GO.to_be_bytes());
        expected.extend_from_slice(&8u32.to_be_bytes());
        expected.extend_from_slice(&2u32.to_be_bytes());
        expected.extend_from_slice(b"db");
        expected.extend_from_slice(&0u16.to_be_bytes());
        assert_eq!(sent, expected);
    }

    #[test]
    fn unknown_export_and_refusals_are_errors() {
        let (mut client, server) = scripted(reply(REP_ERR_UNKNOWN, b""));
        let e = negotiate(&mut client, "nope").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        server.join().unwrap();

        let (mut client, server) = scripted(reply(REP_FLAG_ERROR | 1, b"policy"));
        let e = negotiate(&mut client, "db").unwrap_err();
        assert!(e.to_string().contains("policy"), "{e}");
        server.join().unwrap();

        let (mut client, server) = scripted(reply(REP_ACK, b""));
        assert!(negotiate(&mut client, "db").is_err());
        server.join().unwrap();
    }

    #[test]
    fn rejects_a_peer_that_is_not_nbd() {
        let (mut client, mut server) = UnixStream::pair().unwrap();
        server.write_all(b"HTTP/1.1 400 Bad Request\r\n").unwrap();
        assert_eq!(
            negotiate(&mut client, "db").unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }
}
