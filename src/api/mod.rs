//! The control API: HTTP/JSON on the daemon's unix socket.
//!
//! [`types`] holds the JSON bodies shared by the server ([`server`]) and the
//! client ([`crate::client`]). Every route lives under [`PREFIX`] so the API
//! can change shape in a later version without breaking older clients.

mod attach;
pub mod backups;
mod error;
mod handlers;
pub mod jobs;
pub mod restore;
mod routes;
pub mod server;
pub mod types;

/// Version prefix of every route.
pub const PREFIX: &str = "/v1";

pub use server::ApiState;
