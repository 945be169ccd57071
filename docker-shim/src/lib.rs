//! The Docker volume driver: Docker's legacy volume plugin protocol on a
//! unix socket in `/run/docker/plugins/`, backed by ballast volumes.
//!
//! The shim knows nothing of the engine's internals. The daemon hands it a
//! [`VolumeProvider`] (create, clone, delete, list volumes; where a volume is
//! exported over NBD) and the shim does the rest on the host: attach the
//! volume as a block device (the daemon's own FUSE file plus a loop device,
//! or kernel NBD over netlink), format it on first use, mount it, and count
//! the mounts Docker asks for so the filesystem goes away only when the
//! last container is done with it. FUSE attachments survive a daemon
//! restart: the next daemon takes them over.

mod driver;
mod error;
pub mod host;
mod options;
mod protocol;
mod provider;
mod server;
mod state;

pub use driver::{Driver, Layout};
pub use error::DriverError;
pub use host::{AttachPath, Attachment, FsType, Host, HostError, LinuxHost, MountRequest};
pub use options::{CreateOptions, Source, KNOWN_OPTIONS};
pub use protocol::{handle, PluginReply};
pub use provider::{ProviderError, VolumeProvider, VolumeSummary};
pub use server::{bind, serve, PLUGIN_DIR};
