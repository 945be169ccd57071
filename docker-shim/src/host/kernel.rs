//! Attaching through the kernel's NBD driver: handshake in userspace, then
//! `NBD_CMD_CONNECT` over netlink with the negotiated socket.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::nbd_handshake::negotiate;
use super::netlink::{
    connect_request, connected_index, disconnect_request, ConnectParams, Socket, NBD_FAMILY_NAME,
};
use super::HostError;
use ballast_engine::BLOCK_SIZE;

/// Seconds before the kernel fails a request the server does not answer.
const REQUEST_TIMEOUT: u64 = 120;

/// Whether the kernel NBD driver is loaded (it creates `/dev/nbd0`...).
pub fn available() -> bool {
    Path::new("/dev/nbd0").exists()
}

/// Connects export `export` on `socket` to a free `/dev/nbdN`; returns N.
/// Blocking: run it off the async executor.
pub fn attach(socket: &Path, export: &str) -> Result<u32, HostError> {
    let mut stream = UnixStream::connect(socket).map_err(|e| {
        HostError(format!(
            "cannot connect to the NBD socket {}: {e}",
            socket.display()
        ))
    })?;
    let info = negotiate(&mut stream, export)
        .map_err(|e| HostError(format!("NBD handshake for {export} failed: {e}")))?;
    let mut netlink = Socket::open().map_err(netlink_error)?;
    let family = netlink.family(NBD_FAMILY_NAME).map_err(netlink_error)?;
    let params = ConnectParams {
        socket_fd: stream.as_raw_fd(),
        size: info.size,
        block_size: BLOCK_SIZE,
        server_flags: u64::from(info.flags),
        timeout: REQUEST_TIMEOUT,
    };
    let replies = netlink
        .request(|seq| connect_request(family, seq, &params))
        .map_err(|e| HostError(format!("kernel NBD connect failed: {e}")))?;
    // The kernel holds its own reference to the socket now; ours can go.
    drop(stream);
    let index = replies
        .iter()
        .find_map(|attrs| connected_index(attrs))
        .ok_or_else(|| HostError("kernel NBD connect returned no device".into()))?;
    wait_for_size(index)?;
    Ok(index)
}

/// Disconnects `/dev/nbd{index}`.
pub fn detach(index: u32) -> Result<(), HostError> {
    let mut netlink = Socket::open().map_err(netlink_error)?;
    let family = netlink.family(NBD_FAMILY_NAME).map_err(netlink_error)?;
    netlink
        .request(|seq| disconnect_request(family, seq, index))
        .map_err(|e| HostError(format!("kernel NBD disconnect of nbd{index} failed: {e}")))?;
    Ok(())
}

pub fn device(index: u32) -> PathBuf {
    PathBuf::from(format!("/dev/nbd{index}"))
}

/// The device exists once the kernel reports its size.
fn wait_for_size(index: u32) -> Result<(), HostError> {
    let path = format!("/sys/block/nbd{index}/size");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let sectors: u64 = std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        if sectors > 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(HostError(format!("/dev/nbd{index} did not come up")));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn netlink_error(e: std::io::Error) -> HostError {
    HostError(format!("kernel NBD netlink interface unavailable: {e}"))
}
