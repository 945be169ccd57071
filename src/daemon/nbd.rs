//! The NBD front end: every volume (read-write) and snapshot (read-only)
//! exported on a unix socket (private to the daemon's user, or shared
//! with one group) and, if asked, on TCP; with TLS off, offered or
//! required on both.
//!
//! Nothing is reachable from the network by default: TCP is opt-in, and
//! a TCP address off loopback is refused unless TLS is required.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use ballast_engine::Pool;
use ballast_nbd::{EngineExports, ExportProvider, Limits, Server, Tls, TlsConfig, TlsMode};
use tokio::net::{TcpListener, UnixListener};
use tracing::{info, warn};

use super::services::Services;
use super::socket::{self, Access, SocketFile};
use crate::api::types::{NbdEndpoints, NbdTls};

/// File name of the plain socket the Docker driver attaches through when
/// the NBD sockets require TLS (the kernel's NBD client cannot speak it).
const DRIVER_SOCKET: &str = "nbd-driver.sock";

/// Where and how the daemon serves NBD.
#[derive(Debug, Clone)]
pub struct NbdConfig {
    pub socket: PathBuf,
    /// Members of this group may use the unix socket too (mode 0660).
    pub group: Option<libc::gid_t>,
    pub listen: Option<SocketAddr>,
    pub tls: TlsMode,
    pub tls_files: TlsFiles,
}

/// The TLS files given on the command line.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub client_ca: Option<PathBuf>,
    pub psk: Option<PathBuf>,
    pub allow: Option<PathBuf>,
}

impl NbdConfig {
    /// Checks that the flags fit together, before anything is read or
    /// bound; returns the TLS configuration to build, if TLS is on.
    pub fn check(&self) -> Result<Option<TlsConfig>> {
        let files = &self.tls_files;
        if let Some(addr) = self.listen {
            if !addr.ip().is_loopback() && self.tls != TlsMode::Require {
                bail!(
                    "--nbd-listen {addr} is not a loopback address: NBD off loopback needs --tls require (with --tls-cert/--tls-key or --tls-psk)"
                );
            }
        }
        let given = [
            ("--tls-cert", files.cert.is_some()),
            ("--tls-key", files.key.is_some()),
            ("--tls-client-ca", files.client_ca.is_some()),
            ("--tls-psk", files.psk.is_some()),
            ("--tls-allow", files.allow.is_some()),
        ];
        if self.tls == TlsMode::Off {
            if let Some((flag, _)) = given.iter().find(|(_, set)| *set) {
                bail!("{flag} needs --tls require (or --tls on)");
            }
            return Ok(None);
        }
        let certificate = match (&files.cert, &files.key) {
            (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
            (Some(_), None) => bail!("--tls-cert needs --tls-key"),
            (None, Some(_)) => bail!("--tls-key needs --tls-cert"),
            (None, None) => None,
        };
        if certificate.is_none() && files.psk.is_none() {
            bail!(
                "--tls {} needs credentials: --tls-cert and --tls-key, or --tls-psk",
                self.tls
            );
        }
        if files.client_ca.is_some() && certificate.is_none() {
            bail!("--tls-client-ca needs --tls-cert and --tls-key");
        }
        if files.allow.is_some() {
            if self.tls != TlsMode::Require {
                bail!("--tls-allow needs --tls require: clients that stay in plain text have no identity");
            }
            if files.client_ca.is_none() && files.psk.is_none() {
                bail!("--tls-allow needs client identities: --tls-client-ca or --tls-psk");
            }
        }
        Ok(Some(TlsConfig {
            required: self.tls == TlsMode::Require,
            certificate,
            client_ca: files.client_ca.clone(),
            psk: files.psk.clone(),
            allow: files.allow.clone(),
        }))
    }
}

/// The bound NBD listeners, ready to serve.
pub struct NbdListeners {
    unix: UnixListener,
    unix_file: SocketFile,
    tcp: Option<TcpListener>,
    /// The Docker driver's own plain socket, when the others require TLS.
    driver: Option<(UnixListener, SocketFile, PathBuf)>,
    tls: Option<Arc<Tls>>,
    endpoints: NbdEndpoints,
}

/// Reads the TLS credentials, if TLS is on: done first, so a bad key file
/// stops start-up before anything is created or bound.
pub fn load_tls(config: &NbdConfig) -> Result<Option<Arc<Tls>>> {
    let Some(tls_config) = config.check()? else {
        return Ok(None);
    };
    let tls = Tls::new(&tls_config).context("NBD TLS")?;
    for key in [&config.tls_files.key, &config.tls_files.psk]
        .into_iter()
        .flatten()
    {
        if socket::readable_by_others(key) {
            warn!(
                "{} can be read by other users: a key file should be mode 0600",
                key.display()
            );
        }
    }
    Ok(Some(Arc::new(tls)))
}

/// Binds the NBD sockets before the pool opens, so a taken address stops
/// start-up early. `root` holds the Docker driver's socket if `docker`
/// needs one.
pub async fn bind(
    config: &NbdConfig,
    tls: Option<Arc<Tls>>,
    root: &Path,
    docker: bool,
) -> Result<NbdListeners> {
    let access = match config.group {
        None => Access::Owner,
        Some(gid) => Access::Group(gid),
    };
    let (unix, unix_file) = socket::bind(&config.socket, "NBD", "--nbd-socket", access).await?;
    let tcp = match config.listen {
        None => None,
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for NBD on {addr}"))?,
        ),
    };
    let driver = if docker && config.tls == TlsMode::Require {
        let path = root.join(DRIVER_SOCKET);
        let (listener, file) =
            socket::bind(&path, "Docker driver NBD", "--root", Access::Owner).await?;
        Some((listener, file, path))
    } else {
        None
    };
    let tcp_addr = tcp.as_ref().map(|l| l.local_addr()).transpose()?;
    Ok(NbdListeners {
        unix,
        unix_file,
        tcp,
        driver,
        tls,
        endpoints: NbdEndpoints {
            socket: config.socket.clone(),
            tcp: tcp_addr,
            tls: match config.tls {
                TlsMode::Off => NbdTls::Off,
                TlsMode::On => NbdTls::On,
                TlsMode::Require => NbdTls::Require,
            },
        },
    })
}

impl NbdListeners {
    /// Where clients reach the exports (for `ballast export`).
    pub fn endpoints(&self) -> NbdEndpoints {
        self.endpoints.clone()
    }

    /// The socket the Docker driver attaches through: the NBD socket, or
    /// a private plain one of its own when that one requires TLS.
    pub fn driver_socket(&self) -> PathBuf {
        match &self.driver {
            Some((_, _, path)) => path.clone(),
            None => self.endpoints.socket.clone(),
        }
    }

    /// Serves the pool's exports on every bound listener until shutdown.
    pub fn spawn(self, services: &mut Services, pool: Pool) {
        let provider: Arc<dyn ExportProvider> = Arc::new(EngineExports::new(pool));
        let server = match &self.tls {
            Some(tls) => Server::with_tls(provider.clone(), Limits::default(), tls.clone()),
            None => Server::new(provider.clone()),
        };
        info!(socket = %self.endpoints.socket.display(), tcp = ?self.endpoints.tcp, tls = ?self.endpoints.tls, "serving NBD");
        let NbdListeners {
            unix,
            unix_file,
            tcp,
            driver,
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
        if let Some((listener, file, _)) = driver {
            let plain = Server::new(provider);
            services.spawn("NBD (Docker driver)", move |token| async move {
                let _file = file;
                Ok(ballast_nbd::serve_unix(listener, plain, token).await?)
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(listen: Option<&str>, tls: TlsMode, files: TlsFiles) -> NbdConfig {
        NbdConfig {
            socket: "/r/nbd.sock".into(),
            group: None,
            listen: listen.map(|a| a.parse().unwrap()),
            tls,
            tls_files: files,
        }
    }

    fn refused(listen: Option<&str>, tls: TlsMode, files: TlsFiles) -> String {
        config(listen, tls, files).check().unwrap_err().to_string()
    }

    fn psk() -> TlsFiles {
        TlsFiles {
            psk: Some("/k.psk".into()),
            ..Default::default()
        }
    }

    #[test]
    fn loopback_needs_nothing_and_off_loopback_needs_tls_required() {
        assert!(config(None, TlsMode::Off, TlsFiles::default())
            .check()
            .unwrap()
            .is_none());
        assert!(
            config(Some("127.0.0.1:10809"), TlsMode::Off, TlsFiles::default())
                .check()
                .unwrap()
                .is_none()
        );
        assert!(
            config(Some("[::1]:10809"), TlsMode::Off, TlsFiles::default())
                .check()
                .is_ok()
        );
        for mode in [TlsMode::Off, TlsMode::On] {
            let err = refused(Some("0.0.0.0:10809"), mode, psk());
            assert_eq!(err, "--nbd-listen 0.0.0.0:10809 is not a loopback address: NBD off loopback needs --tls require (with --tls-cert/--tls-key or --tls-psk)");
        }
        let tls = config(Some("192.0.2.1:10809"), TlsMode::Require, psk())
            .check()
            .unwrap()
            .unwrap();
        assert!(tls.required);
        assert_eq!(tls.psk, Some(PathBuf::from("/k.psk")));
    }

    #[test]
    fn tls_flags_must_fit_together() {
        assert_eq!(
            refused(None, TlsMode::Off, psk()),
            "--tls-psk needs --tls require (or --tls on)"
        );
        assert_eq!(
            refused(None, TlsMode::Require, TlsFiles::default()),
            "--tls require needs credentials: --tls-cert and --tls-key, or --tls-psk"
        );
        let cert_only = TlsFiles {
            cert: Some("/c.pem".into()),
            ..Default::default()
        };
        assert_eq!(
            refused(None, TlsMode::On, cert_only),
            "--tls-cert needs --tls-key"
        );
        let ca_with_psk = TlsFiles {
            client_ca: Some("/ca.pem".into()),
            ..psk()
        };
        assert_eq!(
            refused(None, TlsMode::Require, ca_with_psk),
            "--tls-client-ca needs --tls-cert and --tls-key"
        );
        let allow = TlsFiles {
            allow: Some("/allow".into()),
            ..psk()
        };
        assert!(refused(None, TlsMode::On, allow.clone())
            .starts_with("--tls-allow needs --tls require"));
        assert!(config(None, TlsMode::Require, allow).check().is_ok());
        let allow_without_identities = TlsFiles {
            cert: Some("/c.pem".into()),
            key: Some("/k.pem".into()),
            allow: Some("/allow".into()),
            ..Default::default()
        };
        assert_eq!(
            refused(None, TlsMode::Require, allow_without_identities),
            "--tls-allow needs client identities: --tls-client-ca or --tls-psk"
        );
    }
}
