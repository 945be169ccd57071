//! A connection's byte stream before TLS: split into a read half (for the
//! reader loop) and a write half (for the reply writer), and put back
//! together when the client upgrades to TLS with NBD_OPT_STARTTLS.

use std::io;

use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};
use tokio::net::{TcpStream, UnixStream};

use crate::incoming::Incoming;

pub(crate) trait Transport: AsyncRead + AsyncWrite + Unpin + Send + Sized + 'static {
    type Read: Incoming + Send + 'static;
    type Write: AsyncWrite + Unpin + Send + 'static;

    fn into_halves(self) -> (Self::Read, Self::Write);

    /// The stream the two halves of [`Transport::into_halves`] came from.
    fn reunite(read: Self::Read, write: Self::Write) -> io::Result<Self>;
}

impl Transport for UnixStream {
    type Read = tokio::net::unix::OwnedReadHalf;
    type Write = tokio::net::unix::OwnedWriteHalf;

    fn into_halves(self) -> (Self::Read, Self::Write) {
        self.into_split()
    }

    fn reunite(read: Self::Read, write: Self::Write) -> io::Result<Self> {
        read.reunite(write).map_err(io::Error::other)
    }
}

impl Transport for TcpStream {
    type Read = tokio::net::tcp::OwnedReadHalf;
    type Write = tokio::net::tcp::OwnedWriteHalf;

    fn into_halves(self) -> (Self::Read, Self::Write) {
        self.into_split()
    }

    fn reunite(read: Self::Read, write: Self::Write) -> io::Result<Self> {
        read.reunite(write).map_err(io::Error::other)
    }
}

/// Any other stream (an in-memory pipe in tests), split with
/// [`tokio::io::split`].
pub(crate) struct AnyStream<S>(pub S);

impl<S: AsyncRead + Unpin> AsyncRead for AnyStream<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AnyStream<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S> Transport for AnyStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Read = ReadHalf<S>;
    type Write = WriteHalf<S>;

    fn into_halves(self) -> (Self::Read, Self::Write) {
        tokio::io::split(self.0)
    }

    fn reunite(read: Self::Read, write: Self::Write) -> io::Result<Self> {
        if !read.is_pair_of(&write) {
            return Err(io::Error::other("halves of different streams"));
        }
        Ok(AnyStream(read.unsplit(write)))
    }
}
