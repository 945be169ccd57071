//! Restoring a backup into a new thin volume.
//!
//! Chunks are fetched in parallel; each is checked (frame crc, length,
//! authentication tag in an encrypted store, and its id) before a byte of
//! it is written. Zero chunks are not written,
//! so they stay holes. A chunk that is missing or damaged fails the restore
//! and the partial volume is deleted: a restore never leaves a silently wrong
//! volume behind.

use std::collections::HashMap;

use ballast_engine::{Pool, VolumeInfo};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use crate::backup::blocking;
use crate::error::{Error, Result};
use crate::frame::Kind;
use crate::manifest::{chunk_key, digest_hex, Digest, Manifest, MAX_CHUNK_SIZE};
use crate::progress::Progress;
use crate::sealing::Sealing;
use crate::store::BackupStore;

/// Decodes a stored chunk and checks it is the chunk `digest` names.
pub(crate) fn decode_chunk(
    sealing: &Sealing,
    digest: &Digest,
    data: &[u8],
    expected_len: Option<usize>,
) -> Result<Vec<u8>> {
    let damaged = |reason: String| Error::DamagedChunk {
        digest: digest_hex(digest),
        reason,
    };
    let raw = sealing
        .decode(Kind::Chunk, &chunk_key(digest), data, MAX_CHUNK_SIZE)
        .map_err(|e| damaged(e.to_string()))?;
    if let Some(len) = expected_len.filter(|&l| l != raw.len()) {
        return Err(damaged(format!("{} bytes, expected {len}", raw.len())));
    }
    if &sealing.chunk_id(&raw) != digest {
        return Err(damaged("content does not match its digest".into()));
    }
    Ok(raw)
}

impl BackupStore {
    /// Fetches and checks one chunk.
    pub(crate) async fn fetch_chunk(
        &self,
        digest: Digest,
        expected_len: Option<usize>,
    ) -> Result<Vec<u8>> {
        let sealing = self.sealing().await?;
        let data: Bytes = self
            .objects
            .get(&chunk_key(&digest))
            .await?
            .ok_or_else(|| Error::MissingChunk {
                dest: self.url.to_string(),
                digest: digest_hex(&digest),
            })?;
        blocking(move || decode_chunk(&sealing, &digest, &data, expected_len)).await?
    }

    /// Restores backup `id` of `volume` into a new volume `new_volume`.
    pub async fn restore(
        &self,
        pool: &Pool,
        volume: &str,
        id: &str,
        new_volume: &str,
        progress: &dyn Progress,
    ) -> Result<VolumeInfo> {
        ballast_engine::validate_name(new_volume)?;
        let m = self.manifest(volume, id).await?;
        // Fails (and we touch nothing) if the name is taken.
        pool.create_volume(new_volume, m.size).await?;
        match self.fill(pool, &m, new_volume, progress).await {
            Ok(()) => Ok(pool.volume(new_volume)?),
            Err(e) => {
                tracing::warn!("restore of backup {id} into {new_volume} failed: {e}; deleting the partial volume");
                if let Err(d) = pool.delete_volume(new_volume).await {
                    tracing::error!("deleting partial volume {new_volume}: {d}");
                }
                Err(e)
            }
        }
    }

    async fn fill(
        &self,
        pool: &Pool,
        m: &Manifest,
        new_volume: &str,
        progress: &dyn Progress,
    ) -> Result<()> {
        let vol = pool.open_volume(new_volume)?;
        // Each distinct chunk is downloaded once and written wherever it occurs.
        let mut places: HashMap<Digest, Vec<usize>> = HashMap::new();
        for (i, d) in m.digests() {
            places.entry(d).or_default().push(i);
        }
        let total: u64 = m.digests().map(|(i, _)| m.chunk_len(i) as u64).sum();
        progress.start("restore", total);
        let cs = u64::from(m.chunk_size);
        futures::stream::iter(places)
            .map(|(digest, indices)| {
                let vol = vol.clone();
                async move {
                    let raw = self.fetch_chunk(digest, None).await?;
                    for &i in &indices {
                        let len = m.chunk_len(i);
                        if raw.len() != len {
                            return Err(Error::DamagedChunk {
                                digest: digest_hex(&digest),
                                reason: format!("{} bytes, expected {len}", raw.len()),
                            });
                        }
                        vol.write(i as u64 * cs, &raw).await?;
                        progress.advance(len as u64);
                    }
                    Ok::<(), Error>(())
                }
            })
            .buffer_unordered(self.opts.parallel)
            .try_collect::<()>()
            .await?;
        vol.flush().await?;
        progress.finish();
        Ok(())
    }
}
