//! Serves every volume and snapshot of a ballast pool over a unix socket
//! (and optionally TCP) until interrupted; used by benches/nbd-fio.sh.
//!
//! ```text
//! serve_pool --pool DIR --socket PATH [--listen ADDR:PORT] [--io auto|uring|sync]
//!            [--volume NAME:SIZE]...
//! ```
//! Volumes named with `--volume` are created if missing (SIZE like `1G`).

use std::path::PathBuf;
use std::sync::Arc;

use ballast_engine::{parse_size, IoMode, Pool, PoolConfig};
use ballast_nbd::{
    serve_tcp, serve_unix, tcp_uri, unix_uri, CancellationToken, EngineExports, Server,
};

struct Args {
    pool: PathBuf,
    socket: PathBuf,
    listen: Option<String>,
    io: IoMode,
    volumes: Vec<(String, u64)>,
}

fn parse_args() -> Result<Args, String> {
    let mut pool = None;
    let mut socket = None;
    let mut listen = None;
    let mut io = IoMode::Auto;
    let mut volumes = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--pool" => pool = Some(PathBuf::from(value()?)),
            "--socket" => socket = Some(PathBuf::from(value()?)),
            "--listen" => listen = Some(value()?),
            "--io" => io = value()?.parse().map_err(|e| format!("--io: {e}"))?,
            "--volume" => {
                let v = value()?;
                let (name, size) = v.split_once(':').ok_or("--volume takes NAME:SIZE")?;
                let size = parse_size(size).map_err(|e| format!("--volume {v}: {e}"))?;
                volumes.push((name.to_string(), size));
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(Args {
        pool: pool.ok_or("--pool DIR is required")?,
        socket: socket.ok_or("--socket PATH is required")?,
        listen,
        io,
        volumes,
    })
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .init();
    if let Err(err) = run().await {
        eprintln!("serve_pool: {err}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), String> {
    let args = parse_args()?;
    let mut config = PoolConfig::new(&args.pool);
    config.io = args.io;
    let pool =
        Pool::open(config).map_err(|e| format!("opening pool {}: {e}", args.pool.display()))?;
    for (name, size) in &args.volumes {
        if pool.volume(name).is_err() {
            pool.create_volume(name, *size)
                .await
                .map_err(|e| format!("creating {name}: {e}"))?;
        }
    }
    let server = Server::new(Arc::new(EngineExports::new(pool.clone())));
    let shutdown = CancellationToken::new();
    let _ = std::fs::remove_file(&args.socket);
    let unix = tokio::net::UnixListener::bind(&args.socket)
        .map_err(|e| format!("binding {}: {e}", args.socket.display()))?;
    let mut tasks = vec![tokio::spawn(serve_unix(
        unix,
        server.clone(),
        shutdown.clone(),
    ))];
    for volume in pool.volumes() {
        println!("{}", unix_uri(&args.socket, &volume.name));
    }
    if let Some(listen) = &args.listen {
        let tcp = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| format!("binding {listen}: {e}"))?;
        let addr = tcp.local_addr().map_err(|e| e.to_string())?;
        println!("{}", tcp_uri(&addr.ip().to_string(), addr.port(), "VOLUME"));
        tasks.push(tokio::spawn(serve_tcp(tcp, server, shutdown.clone())));
    }
    println!("ready (io: {})", pool.stats().io);

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| e.to_string())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    shutdown.cancel();
    for task in tasks {
        let _ = task.await;
    }
    pool.close()
        .await
        .map_err(|e| format!("closing pool: {e}"))?;
    let _ = std::fs::remove_file(&args.socket);
    Ok(())
}
