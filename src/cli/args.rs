//! The command line, as clap sees it.
//!
//! Sizes, names and modes are taken as plain strings and checked by the
//! commands themselves, so bad input gets ballast's one-line error rather
//! than a usage screen.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "ballast",
    version,
    about = "Copy-on-write block volumes for containers"
)]
pub struct Cli {
    /// Control socket of the daemon [default: control.sock in the default root]
    #[arg(long, global = true, env = "BALLAST_SOCKET", value_name = "PATH")]
    pub socket: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon
    Daemon(Box<DaemonArgs>),
    /// Run the daemon on the default root with default settings
    Serve(ServeArgs),
    /// Keep the daemon's FUSE connections open across its restarts
    /// (started by the daemon itself)
    #[command(hide = true)]
    FuseHolder {
        /// Socket the daemon reaches the holder on
        #[arg(long, value_name = "PATH")]
        socket: PathBuf,
    },
    #[command(flatten)]
    Client(ClientCommand),
}

/// Commands that talk to a running daemon.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Create a volume, or clone one from a snapshot
    Create(CreateArgs),
    /// Delete a volume and its snapshots
    Delete {
        /// Volume name
        volume: String,
    },
    /// Grow a volume
    Grow {
        /// Volume name
        volume: String,
        /// New size, e.g. 20G
        #[arg(long, value_name = "SIZE", allow_hyphen_values = true)]
        size: String,
    },
    /// List volumes
    List(OutputArgs),
    /// Show one volume and its snapshots
    Inspect {
        /// Volume name
        volume: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Wait until a volume restored from a backup holds all its data locally, with a progress bar on a terminal (Ctrl-C stops waiting, not the hydration)
    Wait {
        /// Volume name
        volume: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Create, list and delete snapshots
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Back up volumes; list, inspect, verify and delete backups
    #[command(subcommand)]
    Backup(BackupCommand),
    /// Show pool space and settings
    Pool(OutputArgs),
    /// Attach a volume as a block device on this host, the way Docker volumes are (prints the device)
    Attach {
        /// Volume name
        volume: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Detach a volume attached with `ballast attach`
    Detach {
        /// Volume name
        volume: String,
    },
    /// Standby volumes: follow another volume's backups, read-only until activated
    #[command(subcommand)]
    Standby(StandbyCommand),
    /// Print the NBD URIs of a volume (read-write) or snapshot (read-only)
    Export {
        /// VOL or VOL@SNAP
        export: String,
        #[command(flatten)]
        output: OutputArgs,
    },
}

#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// Directory holding the pool [default: /var/lib/ballast as root, else $XDG_DATA_HOME/ballast]
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Control API socket [default: --socket or $BALLAST_SOCKET if set, else ROOT/control.sock]
    #[arg(long, value_name = "PATH")]
    pub control_socket: Option<PathBuf>,
    /// Cap on the pool's data file, e.g. 100G [default: no cap]
    #[arg(long, value_name = "SIZE", allow_hyphen_values = true)]
    pub pool_size: Option<String>,
    /// Memory for the pool's metadata: map cache, changes not yet
    /// checkpointed, allocator bitmap, metadata store cache [default: 64M]
    #[arg(long, value_name = "SIZE")]
    pub meta_cache: Option<String>,
    /// I/O backend: auto (io_uring if the kernel allows it), uring or sync
    #[arg(long, value_name = "MODE", default_value = "auto")]
    pub io: String,
    /// Threads serving requests [default: one less than the CPUs, at least 1]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
    /// NBD unix socket [default: ROOT/nbd.sock]
    #[arg(long, value_name = "PATH")]
    pub nbd_socket: Option<PathBuf>,
    /// Let members of GROUP use the NBD unix socket too (mode 0660) [default: the daemon's user only, 0600]
    #[arg(long, value_name = "GROUP")]
    pub nbd_group: Option<String>,
    /// Serve NBD on TCP too, at ADDR:PORT; off loopback it needs --tls require [default: unix socket only]
    #[arg(long, value_name = "ADDR:PORT")]
    pub nbd_listen: Option<String>,
    /// TLS on the NBD sockets: off, on (offered; plain clients are served too) or require
    #[arg(long, value_name = "MODE", default_value = "off")]
    pub tls: String,
    /// NBD TLS: the server's certificate chain (PEM)
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// NBD TLS: the private key of --tls-cert (PEM)
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// NBD TLS: require client certificates signed by this CA (PEM)
    #[arg(long, value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,
    /// NBD TLS: pre-shared keys, one USERNAME:HEXKEY a line (psktool's format)
    #[arg(long, value_name = "FILE")]
    pub tls_psk: Option<PathBuf>,
    /// NBD TLS: which exports each client identity may use, lines "IDENTITY: EXPORT..." (needs --tls require)
    #[arg(long, value_name = "FILE")]
    pub tls_allow: Option<PathBuf>,
    /// Serve the Docker volume plugin as NAME (socket /run/docker/plugins/NAME.sock)
    #[arg(long, value_name = "NAME")]
    pub docker_plugin: Option<String>,
    /// How Docker volumes become block devices: fuse or kernel-nbd [default: fuse where /dev/fuse exists]
    #[arg(long, value_name = "PATH")]
    pub docker_attach: Option<String>,
    /// Serve GET /metrics (Prometheus text format) on TCP at ADDR:PORT too; off loopback it needs --metrics-allow-remote [default: on the control socket only]
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_listen: Option<String>,
    /// Allow --metrics-listen on an address other than loopback (the page names every volume and destination)
    #[arg(long)]
    pub metrics_allow_remote: bool,
    /// Scheduled backups that may run (upload) at once
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..))]
    pub backup_concurrency: u16,
    /// Backup keys (`ballast backup key create`) that requests name with --key / backup_key= [default: none]
    #[arg(long, value_name = "DIR")]
    pub backup_key_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Do not serve the Docker volume plugin (served as "ballast" when run as root)
    #[arg(long)]
    pub no_docker_plugin: bool,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Volume name
    pub volume: String,
    /// Size, e.g. 10G (for a clone: defaults to the snapshot's size)
    #[arg(long, value_name = "SIZE", allow_hyphen_values = true)]
    pub size: Option<String>,
    /// Clone from this snapshot
    #[arg(long, value_name = "VOL@SNAP")]
    pub from_snapshot: Option<String>,
    /// Restore this backup (as `ballast backup create` or `list` prints it):
    /// the volume is served at once and hydrates in the background
    #[arg(long, value_name = "BACKUP_URL", conflicts_with_all = ["from_snapshot", "size"])]
    pub backup: Option<String>,
    /// With --backup: return only once every chunk is local (a full restore)
    #[arg(long, requires = "backup")]
    pub wait: bool,
    /// The backup key of an encrypted destination (a name in the daemon's --backup-key-dir)
    #[arg(long, value_name = "NAME", requires = "backup")]
    pub key: Option<String>,
}

/// `--key NAME` of the backup commands.
#[derive(Debug, Args)]
pub struct KeyArg {
    /// The backup key of an encrypted destination: a name in the daemon's
    /// --backup-key-dir (a new destination backed up with a key is encrypted under it)
    #[arg(long, value_name = "NAME")]
    pub key: Option<String>,
}

impl KeyArg {
    /// The key name, checked before the daemon sees it. A path is refused
    /// with a hint: the daemon reads keys only from its key directory.
    pub fn checked_name(self) -> anyhow::Result<Option<String>> {
        let Some(name) = self.key else {
            return Ok(None);
        };
        if name.contains('/') {
            anyhow::bail!(
                "--key {name:?}: give the name of a key in the daemon's --backup-key-dir, not a path"
            );
        }
        anyhow::Context::with_context(ballast_engine::validate_name(&name), || {
            format!("--key {name:?}")
        })?;
        Ok(Some(name))
    }
}

/// `ballast backup ...`. Destinations are file:///DIR, vfs:///DIR or
/// s3://BUCKET/PREFIX[?region=R&endpoint=URL]; the daemon does the work.
#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Back up a volume (snapshotting it first) or a snapshot; prints the backup URL
    Create {
        /// VOL or VOL@SNAP
        source: String,
        /// Backup destination URL
        #[arg(long, value_name = "URL")]
        dest: String,
        #[command(flatten)]
        key: KeyArg,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// List the backups in a destination
    List {
        /// Backup destination URL
        #[arg(long, value_name = "URL")]
        dest: String,
        /// Only backups of this volume
        #[arg(long, value_name = "VOL")]
        volume: Option<String>,
        #[command(flatten)]
        key: KeyArg,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Show one backup
    Inspect {
        backup: String,
        #[command(flatten)]
        key: KeyArg,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Delete one backup (its chunks go at the next gc)
    Delete { backup: String },
    /// Re-read every chunk of one backup, or of all backups in --dest; fails if any is damaged
    Verify {
        #[arg(required_unless_present = "dest", conflicts_with = "dest")]
        backup: Option<String>,
        /// Verify every backup in this destination
        #[arg(long, value_name = "URL")]
        dest: Option<String>,
        #[command(flatten)]
        key: KeyArg,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Remove chunks no backup references
    Gc {
        /// Backup destination URL
        #[arg(long, value_name = "URL")]
        dest: String,
        /// Keep unreferenced chunks younger than this (e.g. 0s, 30m) [default: 1h]
        #[arg(long, value_name = "DURATION")]
        grace: Option<String>,
        #[command(flatten)]
        key: KeyArg,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Delete the backups the keep options do not keep (Proxmox Backup Server's semantics; the newest backup of a volume always stays)
    Prune {
        /// Backup destination URL
        #[arg(long, value_name = "URL")]
        dest: String,
        /// Only backups of this volume [default: every volume, each on its own]
        #[arg(long, value_name = "VOL")]
        volume: Option<String>,
        #[command(flatten)]
        keep: KeepArgs,
        /// Only show what would be deleted, and why each kept backup is kept
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        key: KeyArg,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Back up volumes on a schedule, kept in the pool (set, list, remove)
    #[command(subcommand)]
    Schedule(ScheduleCommand),
    /// Backup keys for encrypted destinations
    #[command(subcommand)]
    Key(KeyCommand),
}

/// `ballast backup key ...`: runs here, without the daemon.
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Write a new backup key file (mode 0600); prints its fingerprint
    Create {
        /// The new key file (never replaced); put it in the daemon's --backup-key-dir
        #[arg(long, value_name = "PATH")]
        file: PathBuf,
        /// Derive the key from a passphrase (scrypt), read from the terminal,
        /// $BALLAST_BACKUP_PASSPHRASE or --passphrase-file
        #[arg(long)]
        passphrase: bool,
        /// Read the passphrase from this file (its first line)
        #[arg(long, value_name = "PATH", requires = "passphrase")]
        passphrase_file: Option<PathBuf>,
        /// Derive the same key again: the salt a key file or ballast-store.json records
        #[arg(long, value_name = "HEX", requires = "passphrase")]
        salt: Option<String>,
        #[command(flatten)]
        output: OutputArgs,
    },
}

/// `ballast backup schedule ...`.
#[derive(Debug, Subcommand)]
pub enum ScheduleCommand {
    /// Back up VOL to --dest every --every, then prune its backups there with the keep options (first run at once)
    Set {
        /// Volume name
        volume: String,
        /// Backup destination URL
        #[arg(long, value_name = "URL")]
        dest: String,
        /// Interval, e.g. 1h, 30m, 1d
        #[arg(long, value_name = "DURATION")]
        every: String,
        #[command(flatten)]
        keep: KeepArgs,
        #[command(flatten)]
        key: KeyArg,
    },
    /// Show every schedule: next run, last success, last failure and its error
    List(OutputArgs),
    /// Stop backing up VOL to --dest on a schedule (its backups stay)
    Remove {
        /// Volume name
        volume: String,
        /// Backup destination URL
        #[arg(long, value_name = "URL")]
        dest: String,
    },
}

impl KeepArgs {
    pub fn options(self) -> ballast_backupstore::KeepOptions {
        ballast_backupstore::KeepOptions {
            last: self.keep_last,
            hourly: self.keep_hourly,
            daily: self.keep_daily,
            weekly: self.keep_weekly,
            monthly: self.keep_monthly,
            yearly: self.keep_yearly,
        }
    }
}

/// Retention, applied in this order; periods are the daemon's local time.
#[derive(Debug, Clone, Copy, Args)]
pub struct KeepArgs {
    /// Keep the N newest backups
    #[arg(long, value_name = "N")]
    pub keep_last: Option<u32>,
    /// Keep the newest backup of each of the last N hours that have one
    #[arg(long, value_name = "N")]
    pub keep_hourly: Option<u32>,
    /// Keep the newest backup of each of the last N days that have one
    #[arg(long, value_name = "N")]
    pub keep_daily: Option<u32>,
    /// Keep the newest backup of each of the last N ISO weeks that have one
    #[arg(long, value_name = "N")]
    pub keep_weekly: Option<u32>,
    /// Keep the newest backup of each of the last N months that have one
    #[arg(long, value_name = "N")]
    pub keep_monthly: Option<u32>,
    /// Keep the newest backup of each of the last N years that have one
    #[arg(long, value_name = "N")]
    pub keep_yearly: Option<u32>,
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Snapshot a volume; prints VOL@SNAP
    Create {
        /// Volume name
        volume: String,
        /// Snapshot name [default: generated]
        #[arg(long)]
        name: Option<String>,
    },
    /// List a volume's snapshots
    List {
        /// Volume name
        volume: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Delete a snapshot
    Delete {
        /// The snapshot, as VOL@SNAP
        snapshot: String,
    },
}

#[derive(Debug, Args)]
pub struct OutputArgs {
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}

/// `ballast standby ...`.
#[derive(Debug, Subcommand)]
pub enum StandbyCommand {
    /// Create VOL, read-only, following the backups of --volume in --dest (each new one applied incrementally)
    Create {
        /// The standby volume to create
        volume: String,
        /// Backup destination URL
        #[arg(long, value_name = "URL")]
        dest: String,
        /// The volume whose backups it follows
        #[arg(long = "volume", value_name = "SRC")]
        source: String,
        /// How often the destination is polled, e.g. 30s, 1m
        #[arg(long, value_name = "DURATION", default_value = "1m")]
        every: String,
        #[command(flatten)]
        key: KeyArg,
    },
    /// Show every standby: source, newest backup applied, lag, state, last error
    List(OutputArgs),
    /// Make VOL an ordinary writable volume holding the newest backup it applied complete
    Activate {
        /// The standby volume
        volume: String,
        #[command(flatten)]
        output: OutputArgs,
    },
}
