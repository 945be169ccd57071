//! [`BackupStore`]: one backup destination, its configuration and its
//! backups (list, inspect, delete). Backup, restore, verify and gc live in
//! their own modules as further `impl BackupStore` blocks.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use crate::aead::Cipher;
use crate::error::{Error, Result};
use crate::key::BackupKey;
use crate::lock::{self, Lock, LockKind};
use crate::manifest::{
    manifest_key, parse_manifest_key, validate_chunk_size, Manifest, StoreConfig, BACKUPS_PREFIX,
    CONFIG_KEY, DEFAULT_CHUNK_SIZE,
};
use crate::objects::{FileStore, ObjectStore, S3Store};
use crate::sealing::Sealing;
use crate::url::{validate_backup_id, StoreUrl};

/// Tuning of a store handle.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Chunk size for a store initialised by this handle (`None`: 1 MiB).
    /// An existing store keeps its own; asking for a different one is an error.
    pub chunk_size: Option<u64>,
    /// Chunks hashed, compressed, uploaded or downloaded at once; memory use
    /// is bounded by about twice this many chunks. Each chunk waits on I/O
    /// (volume reads, object writes and their fsyncs) more than it computes,
    /// so the default is a few per CPU.
    pub parallel: usize,
    /// zstd level for chunks.
    pub compression_level: i32,
    /// The key of an encrypted store. A store initialised by a handle with
    /// a key is encrypted under it; an encrypted store opens only with its
    /// key, a plain one only without.
    pub key: Option<Arc<BackupKey>>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        StoreOptions {
            chunk_size: None,
            parallel: (cpus * 4).clamp(8, 32),
            compression_level: 3,
            key: None,
        }
    }
}

/// A backup as `create`, `list` and `inspect` report it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupInfo {
    /// The backup URL (destination + `backup=` + `volume=`).
    pub url: String,
    pub id: String,
    pub volume: String,
    pub snapshot: String,
    /// Volume size in bytes.
    pub size: u64,
    pub chunk_size: u32,
    /// Chunks in the volume, and how many of them hold data (the rest are zeros).
    pub chunks: u64,
    pub data_chunks: u64,
    pub new_chunks: u64,
    pub new_bytes: u64,
    pub reused_chunks: u64,
    pub reused_bytes: u64,
    /// Bytes this backup added to the store (compressed).
    pub stored_bytes: u64,
    /// Id of the backup this one is incremental to.
    pub parent: Option<String>,
    /// Seconds since the Unix epoch.
    pub created: u64,
}

impl BackupInfo {
    pub(crate) fn from_manifest(dest: &StoreUrl, m: &Manifest) -> Self {
        BackupInfo {
            url: dest.backup_url(&m.id, &m.volume),
            id: m.id.clone(),
            volume: m.volume.clone(),
            snapshot: m.snapshot.clone(),
            size: m.size,
            chunk_size: m.chunk_size,
            chunks: m.chunks.len() as u64,
            data_chunks: m.chunks.iter().flatten().count() as u64,
            new_chunks: m.new_chunks,
            new_bytes: m.new_bytes,
            reused_chunks: m.reused_chunks,
            reused_bytes: m.reused_bytes,
            stored_bytes: m.stored_bytes,
            parent: m.parent.clone(),
            created: m.created,
        }
    }
}

/// A backup destination.
#[derive(Debug, Clone)]
pub struct BackupStore {
    pub(crate) objects: Arc<dyn ObjectStore>,
    pub(crate) url: StoreUrl,
    pub(crate) opts: StoreOptions,
    /// Set once the configuration has been read and the key checked
    /// against it.
    sealing: Arc<OnceLock<Sealing>>,
}

impl BackupStore {
    /// Opens a destination. No I/O happens until an operation needs it.
    pub async fn open(url: &StoreUrl, opts: StoreOptions) -> Result<BackupStore> {
        if let Some(cs) = opts.chunk_size {
            validate_chunk_size(cs)?;
        }
        let objects: Arc<dyn ObjectStore> = match url {
            StoreUrl::File { path } => Arc::new(FileStore::new(path.clone(), url.to_string())),
            StoreUrl::S3 { .. } => Arc::new(S3Store::connect(url).await?),
        };
        Ok(BackupStore::with_objects(objects, url.clone(), opts))
    }

    /// A store over any object store (`url` names it in messages and URLs).
    pub fn with_objects(
        objects: Arc<dyn ObjectStore>,
        url: StoreUrl,
        mut opts: StoreOptions,
    ) -> Self {
        opts.parallel = opts.parallel.max(1);
        BackupStore {
            objects,
            url,
            opts,
            sealing: Arc::default(),
        }
    }

    pub fn url(&self) -> &StoreUrl {
        &self.url
    }

    pub fn objects(&self) -> &Arc<dyn ObjectStore> {
        &self.objects
    }

    pub(crate) fn not_ours(&self, key: &str, reason: impl Into<String>) -> Error {
        Error::NotOurs {
            dest: self.url.to_string(),
            key: key.to_string(),
            reason: reason.into(),
        }
    }

    /// The store configuration, if the store has been initialised.
    pub async fn config(&self) -> Result<Option<StoreConfig>> {
        match self.objects.get(CONFIG_KEY).await? {
            None => Ok(None),
            Some(b) => StoreConfig::from_bytes(&b)
                .map(Some)
                .map_err(|r| self.not_ours(CONFIG_KEY, r)),
        }
    }

    /// The configuration, writing it first if the store is new (encrypted
    /// under the handle's key, if it has one).
    pub(crate) async fn init(&self) -> Result<(StoreConfig, Sealing)> {
        let requested = self.opts.chunk_size.map(validate_chunk_size).transpose()?;
        let config = match self.config().await? {
            Some(c) => c,
            None => {
                let c = StoreConfig::new(
                    requested.unwrap_or(DEFAULT_CHUNK_SIZE),
                    crate::clock::now_secs(),
                    self.opts.key.as_deref(),
                );
                self.objects
                    .put(CONFIG_KEY, Bytes::from(c.to_bytes()))
                    .await?;
                tracing::info!(
                    "initialised backup store {} ({} byte chunks, {})",
                    self.url,
                    c.chunk_size,
                    match &c.encryption {
                        Some(e) => format!("encrypted, key {}", e.key_fingerprint),
                        None => "not encrypted".into(),
                    }
                );
                // Two first backups may race; whichever config landed wins.
                self.config().await?.unwrap_or(c)
            }
        };
        let sealing = self.check_key(&config)?;
        match requested {
            Some(r) if r != config.chunk_size => Err(Error::ChunkSizeMismatch {
                dest: self.url.to_string(),
                store: config.chunk_size,
                requested: r,
            }),
            _ => Ok((config, sealing)),
        }
    }

    /// How this store's objects are sealed, once the handle's key is known
    /// to fit its configuration. A store not initialised yet holds nothing
    /// to open: it is taken as it would be initialised.
    pub(crate) async fn sealing(&self) -> Result<Sealing> {
        if let Some(s) = self.sealing.get() {
            return Ok(s.clone());
        }
        match self.config().await? {
            Some(c) => self.check_key(&c),
            None => Ok(match &self.opts.key {
                Some(k) => Sealing::with_key(k, Cipher::FOR_NEW_STORES),
                None => Sealing::Plain,
            }),
        }
    }

    /// Refuses the handle's key (or its absence) unless it is the one the
    /// store was initialised with.
    fn check_key(&self, config: &StoreConfig) -> Result<Sealing> {
        let dest = || self.url.to_string();
        let sealing = match (&config.encryption, &self.opts.key) {
            (None, None) => Sealing::Plain,
            (None, Some(_)) => return Err(Error::NotEncrypted { dest: dest() }),
            (Some(e), None) => {
                return Err(Error::KeyRequired {
                    dest: dest(),
                    fingerprint: e.key_fingerprint.clone(),
                })
            }
            (Some(e), Some(k)) if e.key_fingerprint != k.fingerprint() => {
                return Err(Error::WrongKey {
                    dest: dest(),
                    store: e.key_fingerprint.clone(),
                    key: k.fingerprint(),
                })
            }
            (Some(e), Some(k)) => Sealing::with_key(
                k,
                e.sealed_with()
                    .expect("a parsed configuration names a known cipher"),
            ),
        };
        Ok(self.sealing.get_or_init(|| sealing).clone())
    }

    /// Reads and validates one manifest.
    pub async fn manifest(&self, volume: &str, id: &str) -> Result<Manifest> {
        ballast_engine::validate_name(volume)?;
        validate_backup_id(id)?;
        let sealing = self.sealing().await?;
        let key = manifest_key(volume, id);
        let data = self
            .objects
            .get(&key)
            .await?
            .ok_or_else(|| Error::BackupNotFound {
                dest: self.url.to_string(),
                volume: volume.to_string(),
                id: id.to_string(),
            })?;
        let m = Manifest::decode(&sealing, &key, &data).map_err(|r| self.not_ours(&key, r))?;
        if m.volume != volume || m.id != id {
            return Err(self.not_ours(
                &key,
                format!("it names backup {} of volume {:?}", m.id, m.volume),
            ));
        }
        Ok(m)
    }

    /// `(volume, id)` of every backup (of one volume, if given), unsorted.
    pub(crate) async fn manifest_keys(
        &self,
        volume: Option<&str>,
    ) -> Result<Vec<(String, String)>> {
        // A wrong or missing key fails here, before any manifest is read.
        self.sealing().await?;
        let prefix = match volume {
            Some(v) => {
                ballast_engine::validate_name(v)?;
                format!("{BACKUPS_PREFIX}{v}/")
            }
            None => BACKUPS_PREFIX.to_string(),
        };
        let mut keys = Vec::new();
        for meta in self.objects.list(&prefix).await? {
            match parse_manifest_key(&meta.key) {
                Some((v, id)) => keys.push((v.to_string(), id.to_string())),
                None => tracing::warn!("ignoring unexpected object {} in {}", meta.key, self.url),
            }
        }
        Ok(keys)
    }

    /// Every backup in the store (of one volume, if given), oldest first.
    /// A manifest that cannot be read is skipped with a warning (`verify`
    /// names it).
    pub async fn list(&self, volume: Option<&str>) -> Result<Vec<BackupInfo>> {
        let keys = self.manifest_keys(volume).await?;
        let results: Vec<Result<Manifest>> = futures::stream::iter(keys)
            .map(|(v, id)| async move { self.manifest(&v, &id).await })
            .buffer_unordered(self.opts.parallel)
            .collect()
            .await;
        let mut out = Vec::new();
        for r in results {
            match r {
                Ok(m) => out.push(BackupInfo::from_manifest(&self.url, &m)),
                // Deleted between listing and reading.
                Err(Error::BackupNotFound { .. }) => {}
                Err(e @ Error::NotOurs { .. }) => tracing::warn!("{e}"),
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
        Ok(out)
    }

    /// One backup's details.
    pub async fn inspect(&self, volume: &str, id: &str) -> Result<BackupInfo> {
        Ok(BackupInfo::from_manifest(
            &self.url,
            &self.manifest(volume, id).await?,
        ))
    }

    /// Deletes a backup's manifest. Its chunks stay until `gc` finds no
    /// other manifest referencing them.
    pub async fn delete(&self, volume: &str, id: &str) -> Result<()> {
        ballast_engine::validate_name(volume)?;
        validate_backup_id(id)?;
        let key = manifest_key(volume, id);
        if !self.objects.exists(&key).await? {
            return Err(Error::BackupNotFound {
                dest: self.url.to_string(),
                volume: volume.to_string(),
                id: id.to_string(),
            });
        }
        let lock = Lock::acquire(
            self.objects.clone(),
            LockKind::Delete,
            &format!("{volume}/{id}"),
            lock::DEFAULT_STALE,
        )
        .await?;
        let deleted = self.objects.delete(&key).await;
        if let Err(e) = lock.release().await {
            tracing::warn!("releasing delete lock: {e}");
        }
        deleted?;
        tracing::info!("deleted backup {id} of volume {volume} from {}", self.url);
        Ok(())
    }

    /// Reads many manifests at once; each result keeps its key.
    pub(crate) async fn read_manifests(
        &self,
        keys: Vec<(String, String)>,
    ) -> Vec<((String, String), Result<Manifest>)> {
        futures::stream::iter(keys)
            .map(|k| async move {
                let r = self.manifest(&k.0, &k.1).await;
                (k, r)
            })
            .buffer_unordered(self.opts.parallel)
            .collect()
            .await
    }

    /// Reads every manifest or fails on the first that cannot be read.
    pub(crate) async fn all_manifests_strict(&self) -> Result<Vec<Manifest>> {
        let keys = self.manifest_keys(None).await?;
        futures::stream::iter(keys)
            .map(|(v, id)| async move {
                self.manifest(&v, &id).await.map(Some).or_else(|e| match e {
                    Error::BackupNotFound { .. } => Ok(None),
                    e => Err(e),
                })
            })
            .buffer_unordered(self.opts.parallel)
            .try_filter_map(|m| async move { Ok(m) })
            .try_collect()
            .await
    }
}
