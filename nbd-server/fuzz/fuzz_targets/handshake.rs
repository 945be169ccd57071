//! Fuzzes a whole connection: arbitrary client bytes against a server whose
//! one export is a small zero-filled device.
#![no_main]

use std::sync::Arc;

use ballast_engine::{BlockState, Extent, Result};
use ballast_nbd::{BlockDevice, CancellationToken, Export, ExportProvider, IoFuture, Server};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SIZE: u64 = 1 << 20;

/// Reads zeros, accepts and drops writes.
struct Zero;

impl BlockDevice for Zero {
    fn size(&self) -> Result<u64> {
        Ok(SIZE)
    }
    fn read<'a>(&'a self, _: u64, buf: &'a mut [u8]) -> IoFuture<'a, ()> {
        buf.fill(0);
        Box::pin(async { Ok(()) })
    }
    fn write<'a>(&'a self, _: u64, _: &'a [u8]) -> IoFuture<'a, ()> {
        Box::pin(async { Ok(()) })
    }
    fn flush(&self) -> IoFuture<'_, ()> {
        Box::pin(async { Ok(()) })
    }
    fn trim(&self, _: u64, _: u64) -> IoFuture<'_, ()> {
        Box::pin(async { Ok(()) })
    }
    fn write_zeroes(&self, _: u64, _: u64) -> IoFuture<'_, ()> {
        Box::pin(async { Ok(()) })
    }
    fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        Ok(vec![Extent { offset, len, state: BlockState::Hole }])
    }
}

struct One;

impl ExportProvider for One {
    fn resolve(&self, name: &str) -> Option<Export> {
        (name == "vol").then(|| Export {
            name: name.into(),
            description: "fuzz".into(),
            read_only: false,
            device: Arc::new(Zero),
        })
    }
    fn list(&self) -> Vec<String> {
        vec!["vol".into()]
    }
}

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let server = Server::new(Arc::new(One));
        let (client, conn) = tokio::io::duplex(1 << 16);
        let shutdown = CancellationToken::new();
        let serving = tokio::spawn(async move { server.serve_connection(conn, &shutdown).await });
        let (mut rd, mut wr) = tokio::io::split(client);
        let drain = tokio::spawn(async move {
            let mut sink = Vec::new();
            let _ = rd.read_to_end(&mut sink).await;
        });
        let _ = wr.write_all(data).await;
        let _ = wr.shutdown().await;
        serving.await.unwrap().ok();
        drop(wr);
        drain.await.unwrap();
    });
});
