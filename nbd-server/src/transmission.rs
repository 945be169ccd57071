//! The transmission phase: requests are read in order, each runs in its own
//! task, and replies go out as they complete (out of order) through a
//! [`ReplyWriter`]. In-flight memory per connection is bounded by a
//! semaphore over request buffer bytes; a request's share is released once
//! its reply is written.

use std::pin::Pin;
use std::sync::Arc;

use ballast_engine::{BlockState, Extent};
use tokio::io::{AsyncBufRead, AsyncRead, AsyncReadExt, AsyncWrite, BufReader};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::error::ConnectionError;
use crate::export::{Payload, ReadBuf};
use crate::handshake::Session;
use crate::incoming::{Incoming, PAYLOAD_POLL};
use crate::proto::*;
use crate::reply::{error_chunk, simple_reply, ChunkHeader, Outgoing, ReplyWriter};
use crate::wire::{
    decode_extended_request_header, decode_request_header, RequestHeader,
    EXTENDED_REQUEST_HEADER_LEN, REQUEST_HEADER_LEN,
};

/// Buffer bytes all in-flight requests of one connection may hold. At
/// least one maximum-size request always fits.
const MAX_INFLIGHT_BYTES: u32 = 2 * MAX_BLOCK_SIZE + 64 * REQUEST_OVERHEAD;
/// Accounted per request on top of its buffer, which bounds the number of
/// in-flight requests too.
const REQUEST_OVERHEAD: u32 = 4096;
/// How long a shutting-down server waits for a connection's requests.
const SHUTDOWN_DRAIN: std::time::Duration = std::time::Duration::from_secs(30);
/// Most descriptors in one block-status reply; clients ask again for the rest.
const MAX_STATUS_DESCRIPTORS: usize = 64 * 1024;
/// Largest range one block-status request looks at; the reply may cover
/// less than asked, and clients ask again for the rest.
const MAX_STATUS_QUERY: u64 = u32::MAX as u64;

/// A request refused or failed, with a message for the client's user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    pub errno: NbdErrno,
    pub message: String,
}

impl Failure {
    fn new(errno: NbdErrno, message: impl Into<String>) -> Self {
        Failure {
            errno,
            message: message.into(),
        }
    }
}

impl From<ballast_engine::Error> for Failure {
    fn from(err: ballast_engine::Error) -> Self {
        Failure::new(NbdErrno::from_engine(&err), err.to_string())
    }
}

/// What a handled NBD request answers with.
enum NbdReply {
    Ack,
    /// Read data.
    Data(ReadBuf),
    /// A block-status chunk payload.
    Status(Vec<u8>),
}

struct Connection {
    writer: ReplyWriter,
    session: Session,
    /// Cancelled when a reply cannot be written: the connection is dead.
    dead: CancellationToken,
}

pub(crate) async fn serve<R, W>(
    reader: &mut BufReader<R>,
    writer: W,
    session: Session,
    shutdown: &CancellationToken,
) -> Result<(), ConnectionError>
where
    R: Incoming,
    W: AsyncWrite + Unpin + Send + 'static,
{
    tracing::info!(export = %session.export.name, size = session.size, structured = session.structured, "client attached");
    let dead = CancellationToken::new();
    let (writer, writing) = ReplyWriter::spawn(writer, dead.clone());
    let conn = Arc::new(Connection {
        writer,
        session,
        dead,
    });
    let budget = Arc::new(Semaphore::new(MAX_INFLIGHT_BYTES as usize));
    let mut tasks = JoinSet::new();

    let result = loop {
        while let Some(joined) = tasks.try_join_next() {
            if let Err(err) = joined {
                tracing::error!(error = %err, "request task failed");
            }
        }
        let extended = conn.session.extended;
        let got = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break Ok(()),
            _ = conn.dead.cancelled() => break Ok(()),
            got = read_request(reader, extended) => got,
        };
        let req = match got {
            Ok(Some(req)) => req,
            Ok(None) => break Ok(()),
            Err(err) => break Err(err),
        };
        tracing::trace!(?req, "request");
        if req.command == CMD_DISC {
            break Ok(());
        }
        // A payload follows writes and, with extended headers, any request
        // flagged PAYLOAD_LEN (which we never advertise: check() refuses it
        // once the payload is consumed).
        let has_payload =
            req.command == CMD_WRITE || (extended && req.flags & CMD_FLAG_PAYLOAD_LEN != 0);
        if has_payload && req.length > u64::from(MAX_BLOCK_SIZE) {
            // The payload cannot be skipped cheaply: hard disconnect, as the
            // spec allows for payloads deemed a denial of service.
            break Err(ConnectionError::RequestTooLarge(req.length));
        }
        let buffer = if has_payload || req.command == CMD_READ {
            req.length.min(u64::from(MAX_BLOCK_SIZE)) as u32
        } else {
            0
        };
        let Ok(permit) = budget
            .clone()
            .acquire_many_owned(buffer + REQUEST_OVERHEAD)
            .await
        else {
            break Ok(());
        };
        let payload = if has_payload {
            let mut data = conn
                .session
                .export
                .device
                .payload_buffer(req.length as usize);
            let read = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break Ok(()),
                read = read_payload(reader, data.as_mut()) => read,
            };
            if let Err(err) = read {
                break Err(err.into());
            }
            Some(data)
        } else {
            None
        };
        let conn = conn.clone();
        let shutting_down = shutdown.is_cancelled();
        tasks.spawn(async move {
            let result = if shutting_down {
                Err(Failure::new(NbdErrno::Shutdown, "server is shutting down"))
            } else {
                execute(&conn.session, &req, payload).await
            };
            send_reply(&conn, &req, result, permit);
        });
    };

    // Every request read so far is answered before the connection closes
    // (NBD_CMD_DISC, EOF, error, or server shutdown alike): the requests
    // finish, then the writer writes what they queued and shuts down.
    let writer_abort = writing.abort_handle();
    let finish = async {
        while let Some(joined) = tasks.join_next().await {
            if let Err(err) = joined {
                tracing::error!(error = %err, "request task failed");
            }
        }
        drop(conn);
        let _ = writing.await;
    };
    if shutdown.is_cancelled() {
        // A client that stopped reading replies must not hold up shutdown.
        if tokio::time::timeout(SHUTDOWN_DRAIN, finish).await.is_err() {
            tracing::warn!("requests still in flight at shutdown abandoned");
            writer_abort.abort();
        }
    } else {
        finish.await;
    }
    tracing::info!("client detached");
    result
}

/// Fills `payload`: first from what `reader` has buffered, then straight
/// from the connection, polling for each piece before waiting for it (see
/// [`crate::incoming`]). Going through the buffer would copy the payload's
/// tail twice and pull the next request's payload into the buffer too.
async fn read_payload<R: Incoming>(
    reader: &mut BufReader<R>,
    payload: &mut [u8],
) -> std::io::Result<()> {
    let buffered = reader.buffer();
    let mut filled = buffered.len().min(payload.len());
    payload[..filled].copy_from_slice(&buffered[..filled]);
    Pin::new(&mut *reader).consume(filled);
    let conn = reader.get_mut();
    let mut polling = true;
    while filled < payload.len() {
        let rest = &mut payload[filled..];
        let polled = if polling {
            conn.recv_polling(rest, PAYLOAD_POLL)
        } else {
            None
        };
        let n = match polled {
            Some(Err(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                // The client is slower than a poll: wait for the rest.
                polling = false;
                conn.read(rest).await?
            }
            Some(received) => received?,
            None => conn.read(rest).await?,
        };
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        filled += n;
    }
    Ok(())
}

/// Reads and decodes one request header; `None` on a clean EOF between
/// requests.
async fn read_request<R: AsyncRead + Unpin>(
    r: &mut R,
    extended: bool,
) -> Result<Option<RequestHeader>, ConnectionError> {
    if extended {
        let mut buf = [0u8; EXTENDED_REQUEST_HEADER_LEN];
        if !read_header(r, &mut buf).await? {
            return Ok(None);
        }
        Ok(Some(decode_extended_request_header(&buf)?))
    } else {
        let mut buf = [0u8; REQUEST_HEADER_LEN];
        if !read_header(r, &mut buf).await? {
            return Ok(None);
        }
        Ok(Some(decode_request_header(&buf)?))
    }
}

/// Fills `buf`; `false` on a clean EOF before its first byte.
async fn read_header<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> std::io::Result<bool> {
    let first = r.read(buf).await?;
    if first == 0 {
        return Ok(false);
    }
    r.read_exact(&mut buf[first..]).await?;
    Ok(true)
}

/// Refuses requests the spec says to refuse, before touching the device.
pub(crate) fn check(req: &RequestHeader, session: &Session) -> Result<(), Failure> {
    let allowed = match req.command {
        CMD_READ if session.structured => CMD_FLAG_FUA | CMD_FLAG_DF,
        // With extended headers a write's length is its payload length
        // anyway, so PAYLOAD_LEN is harmless there.
        CMD_WRITE if session.extended => CMD_FLAG_FUA | CMD_FLAG_PAYLOAD_LEN,
        CMD_READ | CMD_WRITE | CMD_FLUSH | CMD_TRIM | CMD_CACHE => CMD_FLAG_FUA,
        CMD_WRITE_ZEROES => CMD_FLAG_FUA | CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO,
        CMD_BLOCK_STATUS => CMD_FLAG_FUA | CMD_FLAG_REQ_ONE,
        other => {
            return Err(Failure::new(
                NbdErrno::Inval,
                format!("unknown command {other}"),
            ))
        }
    };
    if req.flags & !allowed != 0 {
        let msg = format!(
            "command flags {:#x} not valid for command {}",
            req.flags & !allowed,
            req.command
        );
        return Err(Failure::new(NbdErrno::Inval, msg));
    }
    let writes = matches!(req.command, CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES);
    if writes && session.export.read_only {
        return Err(Failure::new(
            NbdErrno::Perm,
            format!("export {} is read-only", session.export.name),
        ));
    }
    if matches!(req.command, CMD_READ | CMD_CACHE) && req.length > u64::from(MAX_BLOCK_SIZE) {
        return Err(Failure::new(
            NbdErrno::Inval,
            format!("length {} exceeds the maximum block size", req.length),
        ));
    }
    if req.command != CMD_FLUSH {
        let end = req.offset.checked_add(req.length);
        if end.is_none_or(|end| end > session.size) {
            let errno = if matches!(req.command, CMD_WRITE | CMD_WRITE_ZEROES) {
                NbdErrno::NoSpc
            } else {
                NbdErrno::Inval
            };
            let msg = format!(
                "range {}+{} is beyond the end of the export ({} bytes)",
                req.offset, req.length, session.size
            );
            return Err(Failure::new(errno, msg));
        }
    }
    if req.command == CMD_BLOCK_STATUS {
        if !session.block_status {
            return Err(Failure::new(
                NbdErrno::Inval,
                "no metadata context was negotiated",
            ));
        }
        if req.length == 0 {
            return Err(Failure::new(NbdErrno::Inval, "block status of zero bytes"));
        }
    }
    Ok(())
}

async fn execute(
    session: &Session,
    req: &RequestHeader,
    payload: Option<Payload>,
) -> Result<NbdReply, Failure> {
    check(req, session)?;
    let device = &session.export.device;
    let (offset, len) = (req.offset, req.length);
    let fua = req.flags & CMD_FLAG_FUA != 0;
    match req.command {
        CMD_READ => {
            // Read everything before any header goes out: a failed read is
            // then a clean error reply, never a half-sent data reply.
            let data = device.read_owned(offset, len as usize).await?;
            return Ok(NbdReply::Data(data));
        }
        CMD_WRITE => {
            if let Some(data) = payload.filter(|data| !data.as_ref().is_empty()) {
                device.write_payload(offset, data).await?;
            }
        }
        CMD_TRIM if len > 0 => device.trim(offset, len).await?,
        // Zeroing drops mappings in the engine, so it is always fast
        // (FAST_ZERO never fails). NO_HOLE cannot be honoured literally by a
        // redirect-on-write engine, where every later write allocates anyway.
        CMD_WRITE_ZEROES if len > 0 => device.write_zeroes(offset, len).await?,
        CMD_FLUSH => device.flush().await?,
        CMD_BLOCK_STATUS => {
            let len = len.min(MAX_STATUS_QUERY);
            let extents = device.block_status(offset, len)?;
            let req_one = req.flags & CMD_FLAG_REQ_ONE != 0;
            let payload = encode_block_status(&extents, len, req_one, session.extended);
            return Ok(NbdReply::Status(payload));
        }
        // CACHE is a hint we have no use for; zero-length trims and zeroing
        // are no-ops.
        _ => {}
    }
    if fua && matches!(req.command, CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES) {
        device.flush().await?;
    }
    Ok(NbdReply::Ack)
}

/// One `base:allocation` descriptor: `len` bytes in state `flags`.
struct StatusDescriptor {
    len: u64,
    flags: u32,
}

/// The `base:allocation` chunk payload, descriptors with equal neighbours
/// merged: context id then 32-bit (length, flags) pairs, or with extended
/// headers context id, descriptor count, then 64-bit pairs.
pub(crate) fn encode_block_status(
    extents: &[Extent],
    len: u64,
    req_one: bool,
    extended: bool,
) -> Vec<u8> {
    let mut descriptors: Vec<StatusDescriptor> = Vec::new();
    for extent in extents.iter().filter(|e| e.len > 0) {
        let flags = match extent.state {
            BlockState::Data => 0,
            BlockState::Hole => STATE_HOLE | STATE_ZERO,
        };
        if let Some(last) = descriptors.last_mut() {
            if last.flags == flags {
                last.len += extent.len;
                continue;
            }
        }
        if descriptors.len() == MAX_STATUS_DESCRIPTORS {
            break;
        }
        descriptors.push(StatusDescriptor {
            len: extent.len,
            flags,
        });
    }
    if descriptors.is_empty() {
        // Status 0 ("allocated, contents unknown") is always truthful.
        descriptors.push(StatusDescriptor { len, flags: 0 });
    }
    if req_one {
        descriptors.truncate(1);
        descriptors[0].len = descriptors[0].len.min(len);
    }
    let mut out = Vec::with_capacity(8 + 16 * descriptors.len());
    out.extend_from_slice(&BASE_ALLOCATION_ID.to_be_bytes());
    if extended {
        out.extend_from_slice(&(descriptors.len() as u32).to_be_bytes());
        for d in descriptors {
            out.extend_from_slice(&d.len.to_be_bytes());
            out.extend_from_slice(&u64::from(d.flags).to_be_bytes());
        }
    } else {
        for d in descriptors {
            // Runs never exceed the query length, which fits in a u32.
            out.extend_from_slice(&(d.len.min(u64::from(u32::MAX)) as u32).to_be_bytes());
            out.extend_from_slice(&d.flags.to_be_bytes());
        }
    }
    out
}

/// Queues the reply to `req`; it holds `permit` until written.
fn send_reply(
    conn: &Connection,
    req: &RequestHeader,
    result: Result<NbdReply, Failure>,
    permit: OwnedSemaphorePermit,
) {
    let (handle, offset) = (req.handle, req.offset);
    let session = &conn.session;
    let extended = session.extended;
    let chunk = |flags, chunk_type, length| {
        ChunkHeader::new(extended, flags, chunk_type, handle, offset, length)
    };
    let mut reply = match result {
        // Simple replies are allowed for payload-less success unless
        // extended headers are in use.
        Ok(NbdReply::Ack) if !extended => Outgoing::new(simple_reply(handle, 0).to_vec()),
        Ok(NbdReply::Ack) => Outgoing::new(
            chunk(REPLY_FLAG_DONE, REPLY_TYPE_NONE, 0)
                .as_bytes()
                .to_vec(),
        ),
        Ok(NbdReply::Data(data)) => {
            let data_len = (*data).as_ref().len();
            let header = if !session.structured {
                simple_reply(handle, 0).to_vec()
            } else if data_len == 0 {
                chunk(REPLY_FLAG_DONE, REPLY_TYPE_NONE, 0)
                    .as_bytes()
                    .to_vec()
            } else {
                // One OFFSET_DATA chunk (so DF always holds): header, offset,
                // then the data.
                let header = chunk(REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA, data_len as u64 + 8);
                [header.as_bytes(), &offset.to_be_bytes()].concat()
            };
            Outgoing {
                header,
                data: Some(data),
                hold: None,
            }
        }
        Ok(NbdReply::Status(payload)) => {
            let chunk_type = if extended {
                REPLY_TYPE_BLOCK_STATUS_EXT
            } else {
                REPLY_TYPE_BLOCK_STATUS
            };
            let header = chunk(REPLY_FLAG_DONE, chunk_type, payload.len() as u64);
            Outgoing::new([header.as_bytes(), &payload].concat())
        }
        Err(failure) => {
            if failure.errno == NbdErrno::Io {
                tracing::warn!(command = req.command, offset, length = req.length, message = %failure.message, "I/O error");
            } else {
                tracing::debug!(command = req.command, offset, length = req.length, errno = ?failure.errno, message = %failure.message, "request refused");
            }
            if session.structured {
                Outgoing::new(error_chunk(
                    extended,
                    handle,
                    offset,
                    failure.errno,
                    &failure.message,
                ))
            } else {
                Outgoing::new(simple_reply(handle, failure.errno as u32).to_vec())
            }
        }
    };
    reply.hold = Some(permit);
    if !conn.writer.send(reply) {
        conn.dead.cancel();
    }
}
