//! The NBD front end: every volume (read-write) and snapshot (read-only)
//! exported on a unix socket and, by default, on loopback TCP.

use std::io::ErrorKind;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use ballast_engine::Pool;
use ballast_nbd::{EngineExports, Server};
use tokio::net::{TcpListener, UnixListener};
use tracing::{info, warn};

use super::services::Services;
use super::socket::{self, SocketFile};
use super::NbdListen;
use crate::api::types::NbdEndpoints;

/// The bound NBD listeners, ready to serve.
pub struct NbdListeners {
    unix: UnixListener,
    unix_file: SocketFile,
    tcp: Option<TcpListener>,
    endpoints: NbdEndpoints,
}

/// Binds the NBD sockets before the pool opens, so a taken address stops
/// start-up early.
pub async fn bind(unix_path: &Path, listen: NbdListen) -> Result<NbdListeners> {
    let (unix, unix_file) = socket::bind(unix_path, "NBD", "--nbd-socket").await?;
    let tcp = match listen {
        NbdListen::Off => None,
        NbdListen::Explicit(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for NBD on {addr}"))?,
        ),
        NbdListen::Default(addr) => match TcpListener::bind(addr).await {
            Ok(l) => Some(l),
            Err(e) if e.kind() == ErrorKind::AddrInUse => {
                warn!("{addr} is in use: NBD is served on {} only (use --nbd-listen to pick a TCP address)", unix_path.display());
                None
            }
            Err(e) => return Err(e).with_context(|| format!("cannot listen for NBD on {addr}")),
        },
    };
    let tcp_addr = tcp.as_ref().map(|l| l.local_addr()).transpose()?;
    Ok(NbdListeners {
        unix,
        unix_file,
        tcp,
        endpoints: NbdEndpoints {
            socket: unix_path.to_path_buf(),
            tcp: tcp_addr,
        },
    })
}

impl NbdListeners {
    /// Where clients reach the exports (for `ballast export`).
    pub fn endpoints(&self) -> NbdEndpoints {
        self.endpoints.clone()
    }

    /// Serves the pool's exports on every bound listener until shutdown.
    pub fn spawn(self, services: &mut Services, pool: Pool) {
        let server = Server::new(Arc::new(EngineExports::new(pool)));
        info!(socket = %self.endpoints.socket.display(), tcp = ?self.endpoints.tcp, "serving NBD");
        let NbdListeners {
            unix,
            unix_file,
            tcp,
            ..
        } = self;
        services.spawn("NBD (unix)", {
            let server = server.clone();
            move |token| async move {
                let _file = unix_file;
                Ok(ballast_nbd::serve_unix(unix, server, token).await?)
            }
        });
        if let Some(tcp) = tcp {
            services.spawn("NBD (tcp)", move |token| async move {
                Ok(ballast_nbd::serve_tcp(tcp, server, token).await?)
            });
        }
    }
}
