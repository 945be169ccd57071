//! `ballast`: the daemon and the command-line client of its control API.

mod api;
mod cli;
mod client;
mod daemon;
mod paths;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, Context, Result};
use ballast_engine::{parse_size, validate_name, IoMode};
use clap::Parser;

use cli::args::{Cli, Command, DaemonArgs};
use client::Client;
use daemon::{DaemonConfig, NbdListen};

/// The NBD port registered with IANA, on loopback only.
const DEFAULT_NBD_LISTEN: &str = "127.0.0.1:10809";
/// The Docker volume plugin name `ballast serve` uses (`docker volume create -d ballast`).
const DEFAULT_DOCKER_PLUGIN: &str = "ballast";

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, whatever the cause chain looks like.
            let message = format!("{e:#}").replace('\n', " ");
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Daemon(args) => {
            let threads = args.threads;
            run_daemon(daemon_config(args, cli.socket)?, threads)
        }
        Command::Serve(args) => {
            let defaults = DaemonArgs {
                root: None,
                control_socket: None,
                pool_size: None,
                io: IoMode::default().to_string(),
                threads: None,
                nbd_socket: None,
                nbd_listen: None,
                // Only root can mount, and bind in /run/docker/plugins.
                // SAFETY: geteuid has no preconditions and cannot fail.
                docker_plugin: (!args.no_docker_plugin && unsafe { libc::geteuid() } == 0)
                    .then(|| DEFAULT_DOCKER_PLUGIN.to_string()),
                docker_attach: None,
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
    let io: IoMode = args.io.parse().map_err(|e: String| anyhow!("--io: {e}"))?;
    let nbd_listen = match args.nbd_listen.as_deref() {
        None => NbdListen::Default(DEFAULT_NBD_LISTEN.parse().expect("valid address")),
        Some("off") => NbdListen::Off,
        Some(addr) => NbdListen::Explicit(addr.parse().map_err(|_| {
            anyhow!("--nbd-listen: {addr:?} is not ADDR:PORT (e.g. 127.0.0.1:10809) or \"off\"")
        })?),
    };
    if let Some(name) = &args.docker_plugin {
        validate_name(name).context("--docker-plugin")?;
    }
    let docker_attach = args
        .docker_attach
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(|e: String| anyhow!("--docker-attach: {e}"))?;
    Ok(DaemonConfig {
        docker_plugin: args.docker_plugin,
        docker_attach,
        nbd_socket: args.nbd_socket.unwrap_or_else(|| root.join("nbd.sock")),
        nbd_listen,
        control_socket: args
            .control_socket
            .or(client_socket)
            .unwrap_or_else(|| paths::control_socket(&root)),
        root,
        pool_size,
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
