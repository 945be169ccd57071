//! One hydrating volume: its chunks fetched on demand or in the
//! background, written into the volume, and settled (made durable, then
//! marked local in the journal). It is the volume's engine [`Gate`].
//!
//! Invariants:
//! * A chunk is fetched by one task at a time (`Busy`), and never again
//!   once `Local`.
//! * A chunk's bit is set in the journal only after the pool flush that
//!   makes its data durable, so after a crash a chunk marked local holds
//!   its data, and one not marked local is fetched again (its contents
//!   can only be the backup's: no write reaches a chunk before it is
//!   `Local`, except a write that overwrites it whole, which is settled
//!   before it is acknowledged).
//! * A read of a chunk that cannot be fetched fails; it never reads the
//!   hole the pool holds there as zeros.

use std::ops::Range;
use std::sync::{Mutex, OnceLock};

use ballast_backupstore::{BackupHold, BackupStore, BackupUrl, Manifest};
use ballast_engine::{Error as EngineError, Gate, Volume};
use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};
use tokio::sync::OnceCell;
use tracing::warn;

use super::super::error::OpError;
use super::super::keys::{self, BackupKeys};
use super::chunks::{Chunk, ChunkTable};
use super::demand::Demand;
use super::journal::Journal;

/// The key a hydration opens its store with: read from the key directory
/// each time the store is opened, so a key file put back after a failure
/// is used at the next attempt.
pub struct StoreKey {
    /// The backup key's name, for an encrypted store.
    pub name: Option<String>,
    pub keys: BackupKeys,
}

/// Chunks one read fetches at once.
const READ_PARALLEL: usize = 4;

pub struct Hydration {
    pub volume: String,
    pub backup: BackupUrl,
    pub manifest: Manifest,
    store: OnceCell<BackupStore>,
    key: StoreKey,
    pub chunks: ChunkTable,
    pub journal: Journal,
    /// One settle at a time (a pool flush and a bitmap write).
    settling: tokio::sync::Mutex<()>,
    /// The ungated handle fills go through, set once the volume exists.
    handle: OnceLock<Volume>,
    /// The backup held against deletion, once it could be.
    pub hold: tokio::sync::Mutex<Option<BackupHold>>,
    /// The last failure to fetch, until a pass succeeds.
    pub last_error: Mutex<Option<String>>,
    /// Reads and writes waiting for fetches: the background yields to them.
    pub demand: Demand,
}

/// What a writer found when it went to overwrite a chunk whole.
enum Claim {
    Local,
    Mine,
    Unsettled,
}

impl Hydration {
    pub fn new(
        volume: &str,
        backup: BackupUrl,
        manifest: Manifest,
        local: &[bool],
        journal: Journal,
        store: Option<BackupStore>,
        key: StoreKey,
    ) -> Self {
        Hydration {
            volume: volume.to_string(),
            backup,
            manifest,
            store: store.map_or_else(OnceCell::new, |s| OnceCell::new_with(Some(s))),
            key,
            chunks: ChunkTable::new(local),
            journal,
            settling: tokio::sync::Mutex::new(()),
            handle: OnceLock::new(),
            hold: tokio::sync::Mutex::new(None),
            last_error: Mutex::new(None),
            demand: Demand::default(),
        }
    }

    /// Gives the hydration its (ungated) handle on the volume.
    pub fn attach(&self, volume: Volume) {
        let _ = self.handle.set(volume.ungated());
    }

    fn handle(&self) -> Result<&Volume, EngineError> {
        self.handle.get().ok_or_else(|| {
            EngineError::InvalidArgument(format!("volume {} is not open yet", self.volume))
        })
    }

    pub async fn store(&self) -> Result<&BackupStore, OpError> {
        self.store
            .get_or_try_init(|| async {
                let key = self.key.keys.load(self.key.name.as_deref())?;
                Ok(keys::open(&self.backup.dest, key).await?)
            })
            .await
    }

    fn chunk_size(&self) -> u64 {
        u64::from(self.manifest.chunk_size)
    }

    /// The chunks `[offset, offset + len)` touches that the backup has
    /// (a volume grown past the backup's size has nothing to fetch there).
    fn chunk_range(&self, offset: u64, len: u64) -> Range<usize> {
        let count = self.manifest.chunks.len();
        if len == 0 {
            return 0..0;
        }
        let cs = self.chunk_size();
        let first = (offset / cs) as usize;
        let last = ((offset + len).div_ceil(cs) as usize).min(count);
        first.min(last)..last
    }

    fn record_error(&self, error: &EngineError) {
        *self.last_error.lock().expect("last error") = Some(error.to_string());
    }

    /// Fetches chunk `c` (owned `Busy` by the caller) and writes it.
    async fn fill(&self, c: usize) -> Result<(), EngineError> {
        let cs = self.chunk_size();
        let start = c as u64 * cs;
        let end = start + self.manifest.chunk_len(c) as u64;
        let not_local = |source: Box<dyn std::error::Error + Send + Sync>| {
            EngineError::NotLocal {
            what: format!(
                "chunk {c} (bytes {start}..{end}) of volume {} is not local yet and cannot be fetched from {}",
                self.volume, self.backup
            ),
            source,
        }
        };
        let fetched = async {
            let store = self.store().await?;
            Ok::<_, OpError>(store.fetch_chunk_of(&self.manifest, c).await?)
        }
        .await
        .map_err(|e| not_local(Box::new(e)))?;
        if let Some(raw) = fetched {
            // While a reader waits, or a client uses the volume, fills are
            // written through: the reader waits for its chunk's write, and
            // every read and flush for the disk's queue, which must not
            // hold the write-behind budget's worth of background fills.
            // Otherwise the background streams through write-behind.
            let handle = self.handle()?;
            if self.demand.any() || self.demand.in_use() {
                handle.written_through().write(start, &raw).await?;
            } else {
                handle.write(start, &raw).await?;
            }
        }
        Ok(())
    }

    /// Makes chunk `c` readable: fetched and written (by this task, or
    /// waiting for the one fetching it). A failure leaves it `Pending`.
    pub async fn make_readable(&self, c: usize) -> Result<(), EngineError> {
        let mine = self
            .chunks
            .until(|s| match s[c] {
                Chunk::Local | Chunk::Written => Some(false),
                Chunk::Pending => {
                    s[c] = Chunk::Busy;
                    Some(true)
                }
                Chunk::Busy => None,
            })
            .await;
        if !mine {
            return Ok(());
        }
        match self.fill(c).await {
            Ok(()) => {
                self.chunks.set(&[c], Chunk::Written);
                Ok(())
            }
            Err(e) => {
                self.chunks.set(&[c], Chunk::Pending);
                warn!(volume = %self.volume, chunk = c, "{e}");
                self.record_error(&e);
                Err(e)
            }
        }
    }

    /// Makes chunk `c` local: readable, then settled.
    async fn make_local(&self, c: usize) -> Result<(), EngineError> {
        loop {
            self.make_readable(c).await?;
            if self.chunks.inspect(|s| s[c] == Chunk::Local) {
                return Ok(());
            }
            self.settle(&[]).await?;
        }
    }

    /// Takes chunk `c` for a write that overwrites it whole: `true` if the
    /// caller now owns it (`Busy`), `false` if it is local already.
    async fn claim_whole(&self, c: usize) -> Result<bool, EngineError> {
        loop {
            let claim = self
                .chunks
                .until(|s| match s[c] {
                    Chunk::Local => Some(Claim::Local),
                    Chunk::Pending => {
                        s[c] = Chunk::Busy;
                        Some(Claim::Mine)
                    }
                    Chunk::Written => Some(Claim::Unsettled),
                    Chunk::Busy => None,
                })
                .await;
            match claim {
                Claim::Local => return Ok(false),
                Claim::Mine => return Ok(true),
                Claim::Unsettled => self.settle(&[]).await?,
            }
        }
    }

    /// Makes every `Written` chunk and `claimed` (owned `Busy` by the
    /// caller, its write done) durable, then marks them local in the
    /// journal and in memory.
    pub async fn settle(&self, claimed: &[usize]) -> Result<(), EngineError> {
        let _one = self.settling.lock().await;
        // Taken before the flush: every chunk seen `Written` here was
        // written before it, so the flush covers it.
        let (newly, local) = self.chunks.inspect(|s| {
            let mut newly: Vec<usize> = (0..s.len()).filter(|&c| s[c] == Chunk::Written).collect();
            newly.extend_from_slice(claimed);
            let mut local: Vec<bool> = s.iter().map(|&c| c == Chunk::Local).collect();
            for &c in &newly {
                local[c] = true;
            }
            (newly, local)
        });
        if newly.is_empty() {
            return Ok(());
        }
        self.handle()?.flush().await?;
        // Its fsync waits behind the disk's queue, which the fills keep
        // full: on a thread of its own, never on the runtime's, where it
        // would stall every reader and the control API with it.
        let journal = self.journal.clone();
        tokio::task::spawn_blocking(move || journal.save_local(&local))
            .await
            .map_err(|e| EngineError::from_io(std::io::Error::other(e)))?
            .map_err(EngineError::from_io)?;
        self.chunks.set(&newly, Chunk::Local);
        Ok(())
    }

    /// (local chunks, all chunks, local bytes, bytes to fetch in all).
    pub fn counts(&self) -> (usize, usize, u64, u64) {
        self.chunks.inspect(|s| {
            let mut local = 0;
            let (mut local_bytes, mut total_bytes) = (0, 0);
            for (c, state) in s.iter().enumerate() {
                let stored = self.manifest.chunks[c].is_some();
                let len = if stored {
                    self.manifest.chunk_len(c) as u64
                } else {
                    0
                };
                total_bytes += len;
                if *state == Chunk::Local {
                    local += 1;
                    local_bytes += len;
                }
            }
            (local, s.len(), local_bytes, total_bytes)
        })
    }

    async fn readable(&self, offset: u64, len: u64) -> Result<(), EngineError> {
        self.demand.used();
        let missing = self.chunks.missing(self.chunk_range(offset, len));
        if missing.is_empty() {
            return Ok(());
        }
        let _waiting = self.demand.waiting();
        futures::stream::iter(missing)
            .map(|c| self.make_readable(c))
            .buffer_unordered(READ_PARALLEL)
            .try_collect::<()>()
            .await
    }

    async fn write_through(
        &self,
        offset: u64,
        len: u64,
        write: BoxFuture<'_, Result<(), EngineError>>,
    ) -> Result<(), EngineError> {
        self.demand.used();
        let range = self.chunk_range(offset, len);
        let cs = self.chunk_size();
        let whole = |c: usize| {
            let start = c as u64 * cs;
            offset <= start && offset + len >= start + self.manifest.chunk_len(c) as u64
        };
        // Chunks written in part are made local first; chunks written whole
        // are taken, in ascending order (no two writers wait on each other).
        let mut mine = Vec::new();
        // Only a chunk written in part is fetched for a write.
        let fetches = self
            .chunks
            .missing(range.clone())
            .into_iter()
            .any(|c| !whole(c));
        let _waiting = fetches.then(|| self.demand.waiting());
        let result = async {
            for c in range.clone().filter(|&c| !whole(c)) {
                self.make_local(c).await?;
            }
            for c in range.filter(|&c| whole(c)) {
                if self.claim_whole(c).await? {
                    mine.push(c);
                }
            }
            write.await?;
            if !mine.is_empty() {
                // Settled before the write is acknowledged: a crash either
                // loses the write (never acknowledged) or keeps it local.
                self.settle(&mine).await?;
            }
            Ok(())
        }
        .await;
        if result.is_err() && !mine.is_empty() {
            self.chunks.set(&mine, Chunk::Pending);
        }
        result
    }
}

impl Gate for Hydration {
    fn readable(&self, offset: u64, len: u64) -> BoxFuture<'_, Result<(), EngineError>> {
        Box::pin(Hydration::readable(self, offset, len))
    }

    fn write<'a>(
        &'a self,
        offset: u64,
        len: u64,
        write: BoxFuture<'a, Result<(), EngineError>>,
    ) -> BoxFuture<'a, Result<(), EngineError>> {
        Box::pin(self.write_through(offset, len, write))
    }

    fn missing(&self, offset: u64, len: u64) -> Vec<Range<u64>> {
        let cs = self.chunk_size();
        self.chunks
            .missing(self.chunk_range(offset, len))
            .into_iter()
            .filter(|&c| self.manifest.chunks[c].is_some())
            .map(|c| c as u64 * cs..c as u64 * cs + self.manifest.chunk_len(c) as u64)
            .collect()
    }

    fn busy(&self) -> String {
        let (local, total, _, _) = self.counts();
        format!(
            "it is still hydrating from backup {} ({local} of {total} chunks local); try again once `ballast inspect {}` shows it fully hydrated",
            self.backup, self.volume
        )
    }
}
