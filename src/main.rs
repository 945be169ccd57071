//! `ballast`: the daemon and the command-line client of its control API.

// A binary has no API: `pub` marks what a module offers its siblings.
#![allow(unreachable_pub)]

mod api;
mod cli;
mod client;
mod daemon;
mod driver;
mod ops;
mod paths;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use ballast_engine::{format_size, parse_size, validate_name, IoMode, DEFAULT_META_CACHE};
use clap::Parser;

use cli::args::{Cli, Command, DaemonArgs};
use client::Client;
use daemon::{DaemonConfig, NbdConfig, TlsFiles};

/// Smallest metadata budget accepted: below it the node cache thrashes.
const MIN_META_CACHE: u64 = 8 << 20;
/// The Docker volume plugin name `ballast serve` uses (`docker volume create -d ballast`).
const DEFAULT_DOCKER_PLUGIN: &str = "ballast";

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", cli::output::error_line(&e));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Daemon(args) => {
            let threads = args.threads;
            run_daemon(daemon_config(*args, cli.socket)?, threads)
        }
        Command::Serve(args) => {
            let defaults = DaemonArgs {
                root: None,
                control_socket: None,
                pool_size: None,
                meta_cache: None,
                io: IoMode::default().to_string(),
                threads: None,
                nbd_socket: None,
                nbd_group: None,
                nbd_listen: None,
                tls: "off".into(),
                tls_cert: None,
                tls_key: None,
                tls_client_ca: None,
                tls_psk: None,
                tls_allow: None,
                // Only root can mount, and bind in /run/docker/plugins.
                // SAFETY: geteuid has no preconditions and cannot fail.
                docker_plugin: (!args.no_docker_plugin && unsafe { libc::geteuid() } == 0)
                    .then(|| DEFAULT_DOCKER_PLUGIN.to_string()),
                docker_attach: None,
                backup_concurrency: 2,
                metrics_listen: None,
                metrics_allow_remote: false,
                backup_key_dir: None,
            };
            run_daemon(daemon_config(defaults, cli.socket)?, None)
        }
        Command::FuseHolder { socket } => ballast_fuse::holder::run(&socket)
            .with_context(|| format!("FUSE descriptor holder on {}", socket.display())),
        Command::Client(command) => {
            let socket = match cli.socket {
                Some(socket) => socket,
                None => paths::control_socket(&paths::default_root()?),
            };
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(cli::run(&Client::new(socket), command))
        }
    }
}

/// `client_socket` (`--socket` / `$BALLAST_SOCKET`) is where clients will
/// look, so the daemon listens there unless `--control-socket` says otherwise.
fn daemon_config(args: DaemonArgs, client_socket: Option<PathBuf>) -> Result<DaemonConfig> {
    let root: PathBuf = match args.root {
        Some(root) => root,
        None => paths::default_root()?,
    };
    let pool_size = args
        .pool_size
        .as_deref()
        .map(parse_size)
        .transpose()
        .context("--pool-size")?;
    let meta_cache = match args.meta_cache.as_deref() {
        Some(size) => parse_size(size).context("--meta-cache")?,
        None => DEFAULT_META_CACHE,
    };
    if meta_cache < MIN_META_CACHE {
        bail!(
            "--meta-cache: {} is too small; the pool needs at least {}",
            format_size(meta_cache),
            format_size(MIN_META_CACHE)
        );
    }
    let io: IoMode = args.io.parse().map_err(|e: String| anyhow!("--io: {e}"))?;
    let nbd_listen = match args.nbd_listen.as_deref() {
        None | Some("off") => None,
        Some(addr) => Some(addr.parse().map_err(|_| {
            anyhow!("--nbd-listen: {addr:?} is not ADDR:PORT (e.g. 127.0.0.1:10809) or \"off\"")
        })?),
    };
    let nbd = NbdConfig {
        socket: args.nbd_socket.unwrap_or_else(|| root.join("nbd.sock")),
        group: args
            .nbd_group
            .as_deref()
            .map(daemon::group_id)
            .transpose()
            .context("--nbd-group")?,
        listen: nbd_listen,
        tls: args
            .tls
            .parse()
            .map_err(|e: String| anyhow!("--tls: {e}"))?,
        tls_files: TlsFiles {
            cert: args.tls_cert,
            key: args.tls_key,
            client_ca: args.tls_client_ca,
            psk: args.tls_psk,
            allow: args.tls_allow,
        },
    };
    // Flags that do not fit together stop the daemon before it starts.
    nbd.check()?;
    if let Some(name) = &args.docker_plugin {
        validate_name(name).context("--docker-plugin")?;
    }
    let docker_attach = args
        .docker_attach
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(|e: String| anyhow!("--docker-attach: {e}"))?;
    let metrics_listen = args
        .metrics_listen
        .as_deref()
        .map(|a| {
            a.parse::<std::net::SocketAddr>().map_err(|e| {
                anyhow!("--metrics-listen {a:?}: {e} (expected ADDR:PORT, e.g. 127.0.0.1:9469)")
            })
        })
        .transpose()?;
    if let Some(addr) = metrics_listen {
        if !addr.ip().is_loopback() && !args.metrics_allow_remote {
            bail!("--metrics-listen {addr} is not a loopback address: the metrics name every volume and destination; add --metrics-allow-remote to serve them there");
        }
    }
    if let Some(dir) = &args.backup_key_dir {
        if !dir.is_dir() {
            bail!("--backup-key-dir: {} is not a directory", dir.display());
        }
    }
    Ok(DaemonConfig {
        metrics_listen,
        backup_key_dir: args.backup_key_dir,
        docker_plugin: args.docker_plugin,
        docker_attach,
        backup_concurrency: args.backup_concurrency.into(),
        nbd,
        control_socket: args
            .control_socket
            .or(client_socket)
            .unwrap_or_else(|| paths::control_socket(&root)),
        root,
        pool_size,
        meta_cache,
        io,
    })
}

fn run_daemon(config: DaemonConfig, threads: Option<u16>) -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    // Request threads also submit and reap the pool's io_uring; one CPU is
    // left for the kernel's side of the I/O (interrupts, io_uring workers,
    // the NBD client on the same host). Measured on 2 CPUs with fio's nbd
    // engine, 4 KiB random reads at iodepth 32: one request thread served
    // 40-44k IOPS at 16-17 us of daemon CPU each, two served 34-39k at
    // 18-21 us (threads parking and waking each other).
    let threads = match threads {
        Some(n) => usize::from(n),
        None => std::thread::available_parallelism()
            .map_or(1, |n| n.get().saturating_sub(1))
            .max(1),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?;
    runtime.block_on(daemon::run(config))
}
