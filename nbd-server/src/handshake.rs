//! Fixed-newstyle handshake: option haggling up to NBD_OPT_GO or
//! NBD_OPT_EXPORT_NAME, and NBD_OPT_STARTTLS as the NBD spec's "TLS
//! support" section sets out: a server with TLS required answers every
//! option but STARTTLS and ABORT with NBD_REP_ERR_TLS_REQD (FORCEDTLS); a
//! server offering TLS serves plain clients too (SELECTIVETLS with no
//! TLS-only export); a server without TLS refuses STARTTLS by policy
//! (NOTLS). Once STARTTLS is acknowledged the caller runs the TLS
//! handshake and haggling starts over inside TLS, with nothing of the
//! plain-text options kept.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::error::ConnectionError;
use crate::export::{Export, ExportProvider};
use crate::proto::*;
use crate::reply::option_reply;
use crate::tls::Tls;
use crate::wire::{self, InfoRequest, OPTION_HEADER_LEN};

/// Largest option payload we read into memory; the largest legitimate one
/// (a meta-context query list) is far smaller. Unknown options of any size
/// are skipped without buffering.
const MAX_OPTION_LEN: u32 = 64 * 1024;

/// What the client and server agreed on for the transmission phase.
pub(crate) struct Session {
    pub export: Export,
    /// Export size as announced; requests are checked against it.
    pub size: u64,
    /// Structured replies (always true with extended headers).
    pub structured: bool,
    /// 64-bit request and reply headers (NBD_OPT_EXTENDED_HEADERS).
    pub extended: bool,
    /// `base:allocation` was selected for this export.
    pub block_status: bool,
}

pub(crate) enum Negotiated<'t> {
    Transmission(Session),
    /// NBD_OPT_STARTTLS was acknowledged: the TLS handshake comes next.
    StartTls(&'t Tls),
    /// The client aborted, went away, or the server is shutting down.
    Closed,
}

/// Where a connection stands with TLS.
#[derive(Clone, Copy)]
pub(crate) enum TlsStage<'t> {
    /// The server has no TLS: STARTTLS is refused by policy.
    Unavailable,
    /// TLS may be started; plain clients are served too.
    Offered(&'t Tls),
    /// Nothing but STARTTLS and ABORT is served before TLS.
    Required(&'t Tls),
    /// TLS is running.
    Active,
}

/// Transmission flags for an export.
pub(crate) fn transmission_flags(read_only: bool, structured: bool) -> u16 {
    let mut flags =
        FLAG_HAS_FLAGS | FLAG_SEND_FLUSH | FLAG_SEND_FUA | FLAG_CAN_MULTI_CONN | FLAG_SEND_CACHE;
    if read_only {
        flags |= FLAG_READ_ONLY;
    } else {
        flags |= FLAG_SEND_TRIM | FLAG_SEND_WRITE_ZEROES | FLAG_SEND_FAST_ZERO;
    }
    if structured {
        flags |= FLAG_SEND_DF;
    }
    flags
}

struct Handshake<'a, R, W> {
    r: &'a mut R,
    w: &'a mut W,
    provider: &'a dyn ExportProvider,
    structured: bool,
    extended: bool,
    /// Export name `base:allocation` was last selected for.
    meta_export: Option<String>,
}

/// Sends the greeting and reads the client's flags; `None` if the client
/// went away (or the server shut down) first. Returns whether the client
/// asked for NBD_FLAG_C_NO_ZEROES.
pub(crate) async fn greet<R, W>(
    r: &mut R,
    w: &mut W,
    shutdown: &CancellationToken,
) -> Result<Option<bool>, ConnectionError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut greeting = Vec::with_capacity(18);
    greeting.extend_from_slice(&NBD_MAGIC.to_be_bytes());
    greeting.extend_from_slice(&IHAVEOPT.to_be_bytes());
    greeting.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    w.write_all(&greeting).await?;
    w.flush().await?;

    let client_flags = match read_or_eof(r, shutdown, &mut [0u8; 4]).await? {
        Some(bytes) => u32::from_be_bytes(bytes),
        None => return Ok(None),
    };
    if client_flags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
        return Err(ConnectionError::ClientFlags(client_flags));
    }
    Ok(Some(client_flags & FLAG_C_NO_ZEROES != 0))
}

/// Option haggling, from the first option (or the first one inside TLS)
/// to transmission, STARTTLS or the end of the connection.
pub(crate) async fn negotiate<'t, R, W>(
    r: &mut R,
    w: &mut W,
    provider: &dyn ExportProvider,
    tls: TlsStage<'t>,
    no_zeroes: bool,
    shutdown: &CancellationToken,
) -> Result<Negotiated<'t>, ConnectionError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut hs = Handshake {
        r,
        w,
        provider,
        structured: false,
        extended: false,
        meta_export: None,
    };
    loop {
        let Some(header) = read_or_eof(hs.r, shutdown, &mut [0u8; OPTION_HEADER_LEN]).await? else {
            return Ok(Negotiated::Closed);
        };
        let header = wire::decode_option_header(&header)?;
        let (option, length) = (header.option, header.length);
        tracing::trace!(option, length, "option");

        if let TlsStage::Required(_) = tls {
            match option {
                OPT_STARTTLS | OPT_ABORT => {}
                // It cannot be answered with an error: hard disconnect.
                OPT_EXPORT_NAME => return Err(ConnectionError::TlsRequired),
                _ => {
                    discard(hs.r, length).await?;
                    let msg = b"this server requires TLS: send NBD_OPT_STARTTLS first";
                    hs.reply(option, REP_ERR_TLS_REQD, msg).await?;
                    continue;
                }
            }
        }

        if !is_known(option) {
            discard(hs.r, length).await?;
            hs.reply(
                option,
                REP_ERR_UNSUP,
                b"option not supported by this server",
            )
            .await?;
            continue;
        }
        if length > MAX_OPTION_LEN {
            if option == OPT_EXPORT_NAME {
                return Err(ConnectionError::OptionTooLarge { option, length });
            }
            discard(hs.r, length).await?;
            hs.reply(option, REP_ERR_TOO_BIG, b"option payload too large")
                .await?;
            continue;
        }
        let mut payload = vec![0u8; length as usize];
        hs.r.read_exact(&mut payload).await?;

        if shutdown.is_cancelled() && option != OPT_ABORT {
            if option == OPT_EXPORT_NAME {
                return Ok(Negotiated::Closed);
            }
            hs.reply(option, REP_ERR_SHUTDOWN, b"server is shutting down")
                .await?;
            continue;
        }

        match option {
            OPT_EXPORT_NAME => return hs.export_name(&payload, no_zeroes).await,
            OPT_ABORT => {
                // The client may already have closed; a failed ACK is fine.
                let _ = hs.reply(option, REP_ACK, &[]).await;
                return Ok(Negotiated::Closed);
            }
            OPT_STARTTLS => match tls {
                TlsStage::Active => {
                    // The client broke a MUST (never STARTTLS twice): answer
                    // as the spec says, then hard disconnect.
                    let msg = b"TLS is already running";
                    hs.reply(option, REP_ERR_INVALID, msg).await?;
                    return Err(ConnectionError::StartTlsTwice);
                }
                TlsStage::Unavailable => {
                    let msg = b"TLS is not enabled on this server";
                    hs.reply(option, REP_ERR_POLICY, msg).await?;
                }
                _ if !payload.is_empty() => {
                    let msg = b"NBD_OPT_STARTTLS takes no data";
                    hs.reply(option, REP_ERR_INVALID, msg).await?;
                }
                TlsStage::Offered(t) | TlsStage::Required(t) => {
                    hs.reply(option, REP_ACK, &[]).await?;
                    return Ok(Negotiated::StartTls(t));
                }
            },
            OPT_LIST => hs.list(&payload).await?,
            OPT_EXTENDED_HEADERS => {
                if hs.extended {
                    let msg = b"extended headers already negotiated";
                    hs.reply(option, REP_ERR_INVALID, msg).await?;
                } else if payload.is_empty() {
                    // Extended headers imply structured replies.
                    hs.extended = true;
                    hs.structured = true;
                    hs.reply(option, REP_ACK, &[]).await?;
                } else {
                    let msg = b"NBD_OPT_EXTENDED_HEADERS takes no data";
                    hs.reply(option, REP_ERR_INVALID, msg).await?;
                }
            }
            OPT_STRUCTURED_REPLY => {
                if hs.extended {
                    let msg = b"extended headers already negotiated";
                    hs.reply(option, REP_ERR_EXT_HEADER_REQD, msg).await?;
                } else if payload.is_empty() {
                    hs.structured = true;
                    hs.reply(option, REP_ACK, &[]).await?;
                } else {
                    hs.reply(
                        option,
                        REP_ERR_INVALID,
                        b"NBD_OPT_STRUCTURED_REPLY takes no data",
                    )
                    .await?;
                }
            }
            OPT_INFO | OPT_GO => {
                if let Some(session) = hs.info(option, &payload).await? {
                    return Ok(Negotiated::Transmission(session));
                }
            }
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                hs.meta_context(option, &payload).await?
            }
            // Unknown options were skipped above; answer rather than panic
            // should the two lists ever disagree.
            _ => {
                hs.reply(
                    option,
                    REP_ERR_UNSUP,
                    b"option not supported by this server",
                )
                .await?
            }
        }
    }
}

fn is_known(option: u32) -> bool {
    matches!(
        option,
        OPT_EXPORT_NAME
            | OPT_ABORT
            | OPT_LIST
            | OPT_STARTTLS
            | OPT_INFO
            | OPT_GO
            | OPT_STRUCTURED_REPLY
            | OPT_EXTENDED_HEADERS
            | OPT_LIST_META_CONTEXT
            | OPT_SET_META_CONTEXT
    )
}

/// Reads exactly `N` bytes; `None` on a clean EOF before the first byte or
/// when the server shuts down while waiting.
async fn read_or_eof<R: AsyncRead + Unpin, const N: usize>(
    r: &mut R,
    shutdown: &CancellationToken,
    buf: &mut [u8; N],
) -> Result<Option<[u8; N]>, ConnectionError> {
    let read = async {
        let first = r.read(&mut buf[..]).await?;
        if first == 0 {
            return Ok::<_, std::io::Error>(false);
        }
        r.read_exact(&mut buf[first..]).await?;
        Ok(true)
    };
    tokio::select! {
        _ = shutdown.cancelled() => Ok(None),
        got = read => Ok(got?.then_some(*buf)),
    }
}

async fn discard<R: AsyncRead + Unpin>(r: &mut R, length: u32) -> std::io::Result<()> {
    let copied = tokio::io::copy(&mut r.take(u64::from(length)), &mut tokio::io::sink()).await?;
    if copied < u64::from(length) {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Handshake<'_, R, W> {
    async fn reply(&mut self, option: u32, reply_type: u32, data: &[u8]) -> std::io::Result<()> {
        self.w
            .write_all(&option_reply(option, reply_type, data))
            .await?;
        self.w.flush().await
    }

    async fn export_name(
        &mut self,
        payload: &[u8],
        no_zeroes: bool,
    ) -> Result<Negotiated<'static>, ConnectionError> {
        let name = wire::parse_string(payload)?;
        // NBD_OPT_EXPORT_NAME cannot fail politely: the spec mandates a hard
        // disconnect for an unknown export.
        let export = self
            .provider
            .resolve(&name)
            .ok_or_else(|| ConnectionError::UnknownExport(name.clone()))?;
        let size = export
            .device
            .size()
            .map_err(|_| ConnectionError::UnknownExport(name.clone()))?;
        let flags = transmission_flags(export.read_only, self.structured);
        let mut out = Vec::with_capacity(134);
        out.extend_from_slice(&size.to_be_bytes());
        out.extend_from_slice(&flags.to_be_bytes());
        if !no_zeroes {
            out.extend_from_slice(&[0u8; 124]);
        }
        self.w.write_all(&out).await?;
        self.w.flush().await?;
        let block_status = self.meta_export.as_deref() == Some(name.as_str());
        Ok(Negotiated::Transmission(Session {
            export,
            size,
            structured: self.structured,
            extended: self.extended,
            block_status,
        }))
    }

    async fn list(&mut self, payload: &[u8]) -> Result<(), ConnectionError> {
        if !payload.is_empty() {
            self.reply(OPT_LIST, REP_ERR_INVALID, b"NBD_OPT_LIST takes no data")
                .await?;
            return Ok(());
        }
        for name in self.provider.list() {
            let mut data = Vec::with_capacity(4 + name.len());
            data.extend_from_slice(&(name.len() as u32).to_be_bytes());
            data.extend_from_slice(name.as_bytes());
            self.reply(OPT_LIST, REP_SERVER, &data).await?;
        }
        self.reply(OPT_LIST, REP_ACK, &[]).await?;
        Ok(())
    }

    /// NBD_OPT_INFO / NBD_OPT_GO; returns the session when GO succeeds.
    async fn info(
        &mut self,
        option: u32,
        payload: &[u8],
    ) -> Result<Option<Session>, ConnectionError> {
        let InfoRequest { name, requests } = match wire::parse_info_request(payload) {
            Ok(req) => req,
            Err(err) => {
                self.reply(option, REP_ERR_INVALID, err.to_string().as_bytes())
                    .await?;
                return Ok(None);
            }
        };
        let resolved = self
            .provider
            .resolve(&name)
            .and_then(|e| e.device.size().ok().map(|size| (e, size)));
        let Some((export, size)) = resolved else {
            let msg = format!("export {name:?} not found");
            self.reply(option, REP_ERR_UNKNOWN, msg.as_bytes()).await?;
            return Ok(None);
        };
        let flags = transmission_flags(export.read_only, self.structured);

        let mut info = INFO_EXPORT.to_be_bytes().to_vec();
        info.extend_from_slice(&size.to_be_bytes());
        info.extend_from_slice(&flags.to_be_bytes());
        self.reply(option, REP_INFO, &info).await?;
        if requests.contains(&INFO_NAME) {
            let mut info = INFO_NAME.to_be_bytes().to_vec();
            info.extend_from_slice(export.name.as_bytes());
            self.reply(option, REP_INFO, &info).await?;
        }
        if requests.contains(&INFO_DESCRIPTION) {
            let mut info = INFO_DESCRIPTION.to_be_bytes().to_vec();
            info.extend_from_slice(export.description.as_bytes());
            self.reply(option, REP_INFO, &info).await?;
        }
        // Always sent: a client that did not ask may still honour it, and
        // our constraints (minimum 1) never make it mandatory.
        let mut info = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
        for v in [MIN_BLOCK_SIZE, PREFERRED_BLOCK_SIZE, MAX_BLOCK_SIZE] {
            info.extend_from_slice(&v.to_be_bytes());
        }
        self.reply(option, REP_INFO, &info).await?;
        self.reply(option, REP_ACK, &[]).await?;

        if option != OPT_GO {
            return Ok(None);
        }
        let block_status = self.meta_export.as_deref() == Some(name.as_str());
        Ok(Some(Session {
            export,
            size,
            structured: self.structured,
            extended: self.extended,
            block_status,
        }))
    }

    async fn meta_context(&mut self, option: u32, payload: &[u8]) -> Result<(), ConnectionError> {
        let set = option == OPT_SET_META_CONTEXT;
        if set {
            // SET replaces the selection even when it fails.
            self.meta_export = None;
        }
        if !self.structured {
            let msg = b"negotiate NBD_OPT_STRUCTURED_REPLY first";
            self.reply(option, REP_ERR_INVALID, msg).await?;
            return Ok(());
        }
        let req = match wire::parse_meta_context_request(payload) {
            Ok(req) => req,
            Err(err) => {
                self.reply(option, REP_ERR_INVALID, err.to_string().as_bytes())
                    .await?;
                return Ok(());
            }
        };
        if self.provider.resolve(&req.export).is_none() {
            let msg = format!("export {:?} not found", req.export);
            self.reply(option, REP_ERR_UNKNOWN, msg.as_bytes()).await?;
            return Ok(());
        }
        let selected = if set {
            req.queries.iter().any(|q| q == BASE_ALLOCATION)
        } else {
            req.queries.is_empty()
                || req
                    .queries
                    .iter()
                    .any(|q| q == "base:" || q == BASE_ALLOCATION)
        };
        if selected {
            // LIST replies carry the reserved id 0.
            let id = if set { BASE_ALLOCATION_ID } else { 0 };
            let mut data = id.to_be_bytes().to_vec();
            data.extend_from_slice(BASE_ALLOCATION.as_bytes());
            self.reply(option, REP_META_CONTEXT, &data).await?;
            if set {
                self.meta_export = Some(req.export);
            }
        }
        self.reply(option, REP_ACK, &[]).await?;
        Ok(())
    }
}
