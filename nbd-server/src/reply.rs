//! Encoding of everything the server sends: option replies during the
//! handshake, simple replies and structured reply chunks during
//! transmission, and the writer that serializes replies of concurrent
//! requests onto one connection.

use std::io::IoSlice;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::export::ReadBuf;
use crate::proto::*;

pub(crate) const SIMPLE_REPLY_LEN: usize = 16;
pub(crate) const CHUNK_HEADER_LEN: usize = 20;
pub(crate) const EXTENDED_CHUNK_HEADER_LEN: usize = 32;

/// An option reply: magic, option, reply type, length, data.
pub(crate) fn option_reply(option: u32, reply_type: u32, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(20 + data.len());
    out.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply_type.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    out
}

pub(crate) fn simple_reply(handle: u64, error: u32) -> [u8; SIMPLE_REPLY_LEN] {
    let mut out = [0u8; SIMPLE_REPLY_LEN];
    out[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out[4..8].copy_from_slice(&error.to_be_bytes());
    out[8..].copy_from_slice(&handle.to_be_bytes());
    out
}

/// A reply chunk header in the negotiated form: structured (20 bytes, 32-bit
/// length) or extended (32 bytes, echoing the request offset, 64-bit
/// length). Structured chunk payloads we send are far below 4 GiB.
pub(crate) struct ChunkHeader {
    bytes: [u8; EXTENDED_CHUNK_HEADER_LEN],
    len: usize,
}

impl ChunkHeader {
    pub(crate) fn new(
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

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// A final NBD_REPLY_TYPE_ERROR chunk carrying a message for humans.
pub(crate) fn error_chunk(
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

/// Most replies in one vectored write (two slices each; the kernel takes
/// up to 1024).
const MAX_BATCH: usize = 256;

/// A reply waiting for the socket: `header`, then any read `data`, and
/// what it holds until written (the request's share of the connection's
/// in-flight budget).
pub(crate) struct Outgoing {
    pub header: Vec<u8>,
    pub data: Option<ReadBuf>,
    pub hold: Option<OwnedSemaphorePermit>,
}

impl Outgoing {
    pub(crate) fn new(header: Vec<u8>) -> Self {
        Outgoing {
            header,
            data: None,
            hold: None,
        }
    }
}

/// Writes the replies of concurrently running requests, each whole (never
/// interleaved), in the order they are queued. A task of its own does the
/// writing: every reply queued by the time it runs goes out in one
/// vectored write, so a burst of completions costs one system call rather
/// than one each.
pub(crate) struct ReplyWriter {
    queue: mpsc::UnboundedSender<Outgoing>,
}

impl ReplyWriter {
    /// Starts the writer task on `writer`. When a write fails it cancels
    /// `dead`. Once every `ReplyWriter` is dropped, the task writes what is
    /// left, shuts the writer down and ends.
    pub(crate) fn spawn<W>(writer: W, dead: CancellationToken) -> (ReplyWriter, JoinHandle<()>)
    where
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let (queue, replies) = mpsc::unbounded_channel();
        let task = tokio::spawn(write_replies(writer, replies, dead));
        (ReplyWriter { queue }, task)
    }

    /// Queues a reply; false if the connection can no longer be written.
    pub(crate) fn send(&self, reply: Outgoing) -> bool {
        self.queue.send(reply).is_ok()
    }
}

async fn write_replies<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut replies: mpsc::UnboundedReceiver<Outgoing>,
    dead: CancellationToken,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = replies.recv().await {
        // Requests completing in this same turn of the scheduler queue
        // theirs first, and go out in the same write.
        tokio::task::yield_now().await;
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match replies.try_recv() {
                Ok(reply) => batch.push(reply),
                Err(_) => break,
            }
        }
        if let Err(err) = write_batch(&mut writer, &batch).await {
            tracing::debug!(error = %err, "reply not delivered; closing connection");
            dead.cancel();
            return;
        }
        // Releases the budget the written replies held.
        batch.clear();
    }
    let _ = writer.shutdown().await;
}

async fn write_batch<W: AsyncWrite + Unpin>(
    writer: &mut W,
    batch: &[Outgoing],
) -> std::io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = batch
        .iter()
        .flat_map(|reply| {
            let data = reply.data.as_ref().map(|d| (**d).as_ref());
            std::iter::once(&reply.header[..])
                .chain(data)
                .map(IoSlice::new)
        })
        .collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        let n = writer.write_vectored(rest).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut rest, n);
    }
    writer.flush().await
}
