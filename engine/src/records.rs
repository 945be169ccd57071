//! Records the layers above the engine keep in the pool's metadata (the
//! daemon's backup schedules and its backup snapshots): small values under
//! string keys, durable when a write returns, in the same metadata store
//! as the volumes, so they live and die with the pool. The engine never
//! reads them itself.

use crate::error::{Error, Result};
use crate::meta::Batch;
use crate::Pool;

/// Largest record key and value accepted.
const MAX_KEY: usize = 512;
const MAX_VALUE: usize = 64 << 10;

impl Pool {
    /// Writes record `key` (replacing any value it had); durable when this
    /// returns.
    pub async fn put_record(&self, key: &str, value: &[u8]) -> Result<()> {
        check(key, value.len())?;
        let inner = &self.inner;
        let _c = inner.control().await?;
        inner.check_writable()?;
        let mut batch = Batch::new();
        batch.record(key, value.to_vec());
        inner.write_meta(batch)
    }

    /// Removes record `key` (nothing if there is none); durable when this
    /// returns.
    pub async fn delete_record(&self, key: &str) -> Result<()> {
        check(key, 0)?;
        let inner = &self.inner;
        let _c = inner.control().await?;
        inner.check_writable()?;
        let mut batch = Batch::new();
        batch.remove_record(key);
        inner.write_meta(batch)
    }

    /// The value of record `key`.
    pub fn record(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.inner.check_open()?;
        self.inner.meta.record(key)
    }

    /// Every record whose key starts with `prefix`, in key order.
    pub fn records(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        self.inner.check_open()?;
        self.inner.meta.records(prefix)
    }
}

fn check(key: &str, value_len: usize) -> Result<()> {
    if key.is_empty() || key.len() > MAX_KEY {
        return Err(Error::InvalidArgument(format!(
            "record keys are 1-{MAX_KEY} bytes"
        )));
    }
    if value_len > MAX_VALUE {
        return Err(Error::InvalidArgument(format!(
            "a record holds at most {MAX_VALUE} bytes"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::{Pool, PoolConfig};

    #[tokio::test]
    async fn records_survive_reopening_and_list_by_prefix() {
        let dir = tempfile::tempdir().unwrap();
        {
            let pool = Pool::open(PoolConfig::new(dir.path())).unwrap();
            pool.put_record("sched/a", b"1").await.unwrap();
            pool.put_record("sched/b", b"2").await.unwrap();
            pool.put_record("other", b"3").await.unwrap();
            pool.put_record("sched/a", b"4").await.unwrap();
            pool.delete_record("other").await.unwrap();
            assert!(pool.put_record("", b"x").await.is_err());
            // No close: the records were durable when written.
        }
        let pool = Pool::open(PoolConfig::new(dir.path())).unwrap();
        assert_eq!(pool.record("sched/a").unwrap(), Some(b"4".to_vec()));
        assert_eq!(pool.record("other").unwrap(), None);
        let listed = pool.records("sched/").unwrap();
        assert_eq!(
            listed,
            vec![
                ("sched/a".to_string(), b"4".to_vec()),
                ("sched/b".to_string(), b"2".to_vec())
            ]
        );
        pool.close().await.unwrap();
    }
}
