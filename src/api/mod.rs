//! The control API: HTTP/JSON on the daemon's unix socket.
//!
//! [`types`] holds the JSON bodies shared by the server and the client
//! ([`crate::client`]). [`server`] serves [`routes`], which dispatches to
//! the handlers: [`volumes`] (pool, volumes, snapshots, NBD endpoints),
//! [`backups`] (list, inspect, delete) and [`jobs`] (long operations, run
//! by [`crate::ops`]). Handlers reach the daemon through [`state`], which
//! also holds the reply type. Every route lives under [`PREFIX`] so the API
//! can change shape in a later version without breaking older clients.

mod attach;
mod backups;
mod error;
mod jobs;
pub mod metrics;
mod query;
mod routes;
mod schedules;
pub mod server;
mod standbys;
pub mod state;
pub mod types;
mod volumes;

/// Version prefix of every route.
pub const PREFIX: &str = "/v1";
