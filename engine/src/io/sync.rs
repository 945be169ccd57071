//! The pread/pwrite thread-pool backend.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::thread;

use super::request::{Op, Request};

/// Worker threads; enough to keep a few requests in flight on a 2-core host.
const WORKERS: usize = 4;

pub(super) struct SyncIo {
    tx: crossbeam_channel::Sender<Request>,
}

impl SyncIo {
    pub(super) fn start(file: File) -> io::Result<SyncIo> {
        let file = Arc::new(file);
        let (tx, rx) = crossbeam_channel::unbounded::<Request>();
        for i in 0..WORKERS {
            let rx = rx.clone();
            let file = file.clone();
            thread::Builder::new()
                .name(format!("ballast-io-{i}"))
                .spawn(move || {
                    for mut req in rx.iter() {
                        let result = run(&file, &mut req);
                        req.finish(result);
                    }
                })?;
        }
        Ok(SyncIo { tx })
    }

    pub(super) fn send(&self, req: Request) -> Result<(), Request> {
        self.tx.send(req).map_err(|e| e.into_inner())
    }
}

fn run(file: &File, req: &mut Request) -> io::Result<()> {
    match req.op {
        Op::Read => file.read_exact_at(&mut req.buf, req.offset),
        Op::Write => file.write_all_at(&req.buf, req.offset),
        Op::SyncData => file.sync_data(),
    }
}
