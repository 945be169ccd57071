//! HTTP/1 on a unix socket, as ballast's control API and Docker volume
//! plugin both serve it.
//!
//! [`bind`] replaces a stale socket (never a live one, never another kind
//! of file) and creates the socket with its final mode; [`serve`] runs the accept loop
//! (backing off when `accept` fails), reads each body up to a limit (an
//! oversize one is drained so the client reads the 4xx answer), runs each
//! [`Handler`] call in its own task, and on shutdown stops accepting and
//! gives requests in flight a deadline to finish.
//!
//! ```no_run
//! # async fn run(handler: std::sync::Arc<impl ballast_unix_http::Handler>) -> Result<(), ballast_unix_http::BindError> {
//! use std::time::Duration;
//! use ballast_unix_http::{bind, serve, BindOptions, ServeOptions};
//! let options = BindOptions { name: "control", mode: 0o600, dir_mode: None, group: None };
//! let (listener, _file) = bind("/run/ballast/control.sock".as_ref(), &options)?;
//! let serving = ServeOptions { name: "control API", max_body: 64 << 10, drain_timeout: Duration::from_secs(10) };
//! let stop = async { let _ = tokio::signal::ctrl_c().await; };
//! serve(listener, handler, serving, stop).await;
//! # Ok(()) }
//! ```

mod server;
mod socket;

pub use server::{response, serve, Failure, Handler, ServeOptions, DRAIN_LIMIT};
pub use socket::{bind, BindError, BindOptions, SocketFile};
