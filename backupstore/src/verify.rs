//! Verifying backups: every chunk a manifest references is downloaded and
//! checked (frame, length, digest). Each damaged backup is named.

use std::collections::HashMap;

use futures::StreamExt;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::manifest::Digest;
use crate::progress::Progress;
use crate::store::BackupStore;

/// Which backups to verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyScope<'a> {
    /// Every backup in the store.
    All,
    /// One backup.
    Backup { volume: &'a str, id: &'a str },
}

/// A backup that cannot be restored as it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DamagedBackup {
    pub url: String,
    pub volume: String,
    pub id: String,
    /// Chunks of this backup that are missing or damaged.
    pub damaged_chunks: u64,
    /// The first problem found, one line.
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    pub backups: u64,
    /// Distinct chunks read and checked.
    pub chunks: u64,
    /// Their uncompressed bytes.
    pub bytes: u64,
    pub damaged: Vec<DamagedBackup>,
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.damaged.is_empty()
    }
}

impl BackupStore {
    /// Re-reads every chunk of the backups in `scope`.
    pub async fn verify(
        &self,
        scope: VerifyScope<'_>,
        progress: &dyn Progress,
    ) -> Result<VerifyReport> {
        let keys = match scope {
            VerifyScope::All => self.manifest_keys(None).await?,
            VerifyScope::Backup { volume, id } => {
                // Names a missing backup as such rather than as damaged.
                self.manifest(volume, id)
                    .await
                    .map(|_| ())
                    .or_else(|e| match e {
                        Error::NotOurs { .. } => Ok(()),
                        e => Err(e),
                    })?;
                vec![(volume.to_string(), id.to_string())]
            }
        };
        let mut damaged = Vec::new();
        let mut manifests = Vec::new();
        for ((volume, id), r) in self.read_manifests(keys).await {
            match r {
                Ok(m) => manifests.push(m),
                Err(Error::BackupNotFound { .. }) => {}
                Err(e) => damaged.push(DamagedBackup {
                    url: self.url.backup_url(&id, &volume),
                    volume,
                    id,
                    damaged_chunks: 0,
                    reason: e.to_string(),
                }),
            }
        }
        let mut lengths: HashMap<Digest, usize> = HashMap::new();
        for m in &manifests {
            for (i, d) in m.digests() {
                lengths.entry(d).or_insert_with(|| m.chunk_len(i));
            }
        }
        progress.start("verify", lengths.values().map(|&l| l as u64).sum());
        let bytes: u64 = lengths.values().map(|&l| l as u64).sum();
        let chunks = lengths.len() as u64;
        let bad: HashMap<Digest, String> = futures::stream::iter(lengths)
            .map(|(digest, len)| async move {
                let r = self.fetch_chunk(digest, Some(len)).await;
                progress.advance(len as u64);
                (digest, r)
            })
            .buffer_unordered(self.opts.parallel)
            .filter_map(|(digest, r)| async move { r.err().map(|e| (digest, e.to_string())) })
            .collect()
            .await;
        progress.finish();
        for m in &manifests {
            let hits: Vec<&String> = m.digests().filter_map(|(_, d)| bad.get(&d)).collect();
            if let Some(first) = hits.first() {
                damaged.push(DamagedBackup {
                    url: self.url.backup_url(&m.id, &m.volume),
                    volume: m.volume.clone(),
                    id: m.id.clone(),
                    damaged_chunks: hits.len() as u64,
                    reason: (*first).clone(),
                });
            }
        }
        for d in &damaged {
            tracing::error!("backup {} is damaged: {}", d.url, d.reason);
        }
        damaged.sort_by(|a, b| (&a.volume, &a.id).cmp(&(&b.volume, &b.id)));
        let unreadable = damaged.iter().filter(|d| d.damaged_chunks == 0).count();
        Ok(VerifyReport {
            backups: (manifests.len() + unreadable) as u64,
            chunks,
            bytes,
            damaged,
        })
    }
}
