//! Encoding of everything the server sends: option replies during the
//! handshake, simple replies and structured reply chunks during
//! transmission, and the writer that serializes replies of concurrent
//! requests onto one connection.

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Mutex;

use crate::proto::*;

pub const SIMPLE_REPLY_LEN: usize = 16;
pub const CHUNK_HEADER_LEN: usize = 20;
pub const EXTENDED_CHUNK_HEADER_LEN: usize = 32;

/// An option reply: magic, option, reply type, length, data.
pub fn option_reply(option: u32, reply_type: u32, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(20 + data.len());
    out.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply_type.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    out
}

pub fn simple_reply(handle: u64, error: u32) -> [u8; SIMPLE_REPLY_LEN] {
    let mut out = [0u8; SIMPLE_REPLY_LEN];
    out[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out[4..8].copy_from_slice(&error.to_be_bytes());
    out[8..].copy_from_slice(&handle.to_be_bytes());
    out
}

/// A reply chunk header in the negotiated form: structured (20 bytes, 32-bit
/// length) or extended (32 bytes, echoing the request offset, 64-bit
/// length). Structured chunk payloads we send are far below 4 GiB.
pub struct ChunkHeader {
    bytes: [u8; EXTENDED_CHUNK_HEADER_LEN],
    len: usize,
}

impl ChunkHeader {
    pub fn new(
        extended: bool,
        flags: u16,
        chunk_type: u16,
        handle: u64,
        offset: u64,
        length: u64,
    ) -> Self {
        let mut bytes = [0u8; EXTENDED_CHUNK_HEADER_LEN];
        bytes[4..6].copy_from_slice(&flags.to_be_bytes());
        bytes[6..8].copy_from_slice(&chunk_type.to_be_bytes());
        bytes[8..16].copy_from_slice(&handle.to_be_bytes());
        let len = if extended {
            bytes[..4].copy_from_slice(&EXTENDED_REPLY_MAGIC.to_be_bytes());
            bytes[16..24].copy_from_slice(&offset.to_be_bytes());
            bytes[24..32].copy_from_slice(&length.to_be_bytes());
            EXTENDED_CHUNK_HEADER_LEN
        } else {
            bytes[..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
            bytes[16..20].copy_from_slice(&(length as u32).to_be_bytes());
            CHUNK_HEADER_LEN
        };
        ChunkHeader { bytes, len }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// A final NBD_REPLY_TYPE_ERROR chunk carrying a message for humans.
pub fn error_chunk(
    extended: bool,
    handle: u64,
    offset: u64,
    error: NbdErrno,
    message: &str,
) -> Vec<u8> {
    let mut end = message.len().min(MAX_STRING_LEN);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let message = &message.as_bytes()[..end];
    let length = 6 + message.len();
    let header = ChunkHeader::new(
        extended,
        REPLY_FLAG_DONE,
        REPLY_TYPE_ERROR,
        handle,
        offset,
        length as u64,
    );
    let mut out = Vec::with_capacity(EXTENDED_CHUNK_HEADER_LEN + length);
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&(error as u32).to_be_bytes());
    out.extend_from_slice(&(message.len() as u16).to_be_bytes());
    out.extend_from_slice(message);
    out
}

/// Serializes whole replies from concurrently running requests; a reply is
/// always written in one piece under the lock, so replies never interleave.
pub struct ReplyWriter<W> {
    inner: Mutex<W>,
}

impl<W: AsyncWrite + Unpin + Send> ReplyWriter<W> {
    pub fn new(writer: W) -> Self {
        ReplyWriter {
            inner: Mutex::new(writer),
        }
    }

    pub async fn send(&self, parts: &[&[u8]]) -> std::io::Result<()> {
        let mut w = self.inner.lock().await;
        for part in parts {
            w.write_all(part).await?;
        }
        w.flush().await
    }

    pub async fn shutdown(&self) -> std::io::Result<()> {
        self.inner.lock().await.shutdown().await
    }
}
