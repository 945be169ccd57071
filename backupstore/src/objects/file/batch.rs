//! A file store's batch of puts: one flush for all their data and one
//! for all their names, where single puts take two fsyncs each.
//!
//! Crash cases, in the order of a batch's steps:
//! 1. `put` writes a temporary file and does not fsync it: all but its
//!    last partial 4 KiB goes to the disk with `O_DIRECT` (`direct`), and
//!    `sync_file_range` starts the writeback of the rest, so the disk works
//!    while the writer reads and hashes. Neither makes the file durable (its
//!    size and extents are not committed, the device may cache). A crash leaves
//!    `.tmp.*` files (listings skip them, `remove_leftovers` removes them)
//!    and no new name.
//! 2. `commit` calls `syncfs`: every temporary file's data is on disk before
//!    any of them takes its name. So a name that survives a power loss
//!    always holds complete data. That matters because a later backup
//!    reuses a chunk by its name alone.
//! 3. It renames each file to its key. A crash leaves some of the names,
//!    each with complete data.
//! 4. It calls `syncfs` again: the names are on disk before the writer
//!    writes what refers to them (a backup's manifest, which is fsynced on
//!    its own). This step runs even when nothing was put, for the names the
//!    writer found in the store and reused: another writer may have renamed
//!    them and not reached its own step 4 yet.
//!
//! A failed sync fails the commit and is never retried: the kernel may have
//! dropped the pages it could not write, and a second `syncfs` would then
//! succeed without them. When the first sync fails nothing is renamed, the
//! temporary files are removed, and a writer that tries again writes the
//! data again from its own copy. When the second sync fails the names stay
//! (their data was synced in step 2) and the error stops the writer before
//! it writes anything that refers to them; the next commit's step 4 covers
//! them for whoever reuses them.
//!
//! `syncfs` reports the writeback errors of the filesystem since the file
//! descriptor it is given was opened (Linux 5.8 and later), so the batch
//! opens the store's root before it writes its first temporary file and
//! keeps that descriptor for its lifetime.
//!
//! At most [`MAX_PENDING`] puts wait for a commit: the put that reaches it
//! commits them, so what a batch holds does not grow with the data written.

use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

/// Names of temporary files start so; they are never keys.
pub(super) const TMP_PREFIX: &str = ".tmp.";

/// The directory `path` goes in (created if missing) and a fresh temporary
/// name next to it.
pub(super) fn tmp_for(path: &Path) -> io::Result<(&Path, PathBuf)> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("object path has no parent"))?;
    fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("object");
    let tmp = dir.join(format!("{TMP_PREFIX}{name}.{:016x}", rand::random::<u64>()));
    Ok((dir, tmp))
}

/// Puts that wait for a commit at most; 256 chunks of 1 MiB cost two
/// `syncfs` calls per 256 MiB written.
pub(super) const MAX_PENDING: usize = 256;

#[derive(Default)]
pub(super) struct State {
    /// The store's root, opened before the batch's first write (see the
    /// module comment on `syncfs` errors).
    root: Option<File>,
    /// Temporary files written and not yet renamed, with their names.
    pending: Vec<(PathBuf, PathBuf)>,
    /// The writer gave up (the batch was dropped uncommitted): a put still
    /// in flight removes its own temporary file.
    discarded: bool,
}

impl State {
    fn root(&mut self, path: &Path) -> io::Result<&File> {
        if self.root.is_none() {
            self.root = Some(File::open(path)?);
        }
        Ok(self.root.as_ref().expect("opened above"))
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic while holding the lock leaves a consistent state: each
    // critical section only pushes, takes or opens.
    state.lock().unwrap_or_else(|e| e.into_inner())
}

pub(super) fn syncfs(root: &File) -> io::Result<()> {
    // SAFETY: `root` is an open file descriptor for the duration of the call.
    if unsafe { libc::syncfs(root.as_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Starts writing `f`'s dirty pages out without waiting for them or
/// flushing the device, so that the disk writes a batch's data while its
/// writer still reads and hashes (the commit's first `syncfs` then waits for
/// what is left). Filesystems without the call (EINVAL, ENOSYS,
/// EOPNOTSUPP) leave it all to `syncfs`; any other error fails the put.
fn start_writeback(f: &File) -> io::Result<()> {
    // SAFETY: `f` is an open file descriptor for the duration of the call.
    let rc = unsafe { libc::sync_file_range(f.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP) => Ok(()),
        _ => Err(e),
    }
}

/// Steps 2 to 4 of the module comment for `pending`, with `sync` as the
/// flush (`syncfs` on `root`, or an injected one in tests).
fn publish(
    root: &File,
    pending: Vec<(PathBuf, PathBuf)>,
    sync: &dyn Fn(&File) -> io::Result<()>,
) -> io::Result<()> {
    if !pending.is_empty() {
        if let Err(e) = sync(root) {
            remove_all(&pending);
            return Err(e);
        }
        for (i, (tmp, path)) in pending.iter().enumerate() {
            if let Err(e) = fs::rename(tmp, path) {
                remove_all(&pending[i..]);
                return Err(e);
            }
        }
    }
    sync(root)
}

fn remove_all(pending: &[(PathBuf, PathBuf)]) {
    for (tmp, _) in pending {
        let _ = fs::remove_file(tmp);
    }
}

/// Removes the temporary files of the puts not committed.
pub(super) fn discard(state: &Mutex<State>) {
    let mut s = lock(state);
    s.discarded = true;
    remove_all(&std::mem::take(&mut s.pending));
}

/// Writes `data` to a temporary file for `path` (around the page cache:
/// see `direct`) and records it in `state`; publishes the pending puts if
/// there are [`MAX_PENDING`] of them now.
pub(super) fn stage(
    state: &Mutex<State>,
    root: &Path,
    path: PathBuf,
    data: &[u8],
    sync: &dyn Fn(&File) -> io::Result<()>,
) -> io::Result<()> {
    let (_, tmp) = tmp_for(&path)?;
    lock(state).root(root)?;
    let written = File::create(&tmp).and_then(|f| {
        super::direct::write_new(&f, data)?;
        start_writeback(&f)
    });
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    let mut s = lock(state);
    if s.discarded {
        let _ = fs::remove_file(&tmp);
        return Ok(());
    }
    s.pending.push((tmp, path));
    if s.pending.len() < MAX_PENDING {
        return Ok(());
    }
    let pending = std::mem::take(&mut s.pending);
    let root = s
        .root
        .as_ref()
        .expect("opened before the write")
        .try_clone()?;
    drop(s);
    publish(&root, pending, sync)
}

/// Publishes every pending put (steps 2 to 4).
pub(super) fn commit(
    state: &Mutex<State>,
    root: &Path,
    sync: &dyn Fn(&File) -> io::Result<()>,
) -> io::Result<()> {
    let mut s = lock(state);
    let pending = std::mem::take(&mut s.pending);
    let root = s.root(root)?.try_clone()?;
    drop(s);
    publish(&root, pending, sync)
}

#[cfg(test)]
pub(super) mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Every file under `dir`, relative to it, sorted.
    pub(crate) fn names(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.push(p.strip_prefix(dir).unwrap().to_string_lossy().into_owned());
                }
            }
        }
        out.sort();
        out
    }

    /// Stages `n` objects named `k0..` holding their own names.
    fn stage_n(
        state: &Mutex<State>,
        root: &Path,
        n: usize,
        sync: &dyn Fn(&File) -> io::Result<()>,
    ) {
        for i in 0..n {
            let path = root.join(format!("d{}/k{i}", i % 3));
            stage(state, root, path, format!("k{i}").as_bytes(), sync).unwrap();
        }
    }

    #[test]
    fn data_is_synced_before_any_name_and_names_before_commit_returns() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let state = Mutex::new(State::default());
        let calls = AtomicUsize::new(0);
        // The flush checks what a power loss at that moment could leave.
        let sync = |_: &File| -> io::Result<()> {
            let all = names(root);
            match calls.fetch_add(1, Ordering::SeqCst) {
                0 => {
                    assert_eq!(all.len(), 5, "five temporary files: {all:?}");
                    assert!(
                        all.iter().all(|n| n.contains("/.tmp.k")),
                        "no name yet: {all:?}"
                    );
                }
                _ => {
                    assert_eq!(all.len(), 5, "{all:?}");
                    for n in &all {
                        assert!(!n.contains(".tmp."), "every name in place: {all:?}");
                        let data = fs::read_to_string(root.join(n)).unwrap();
                        assert!(n.ends_with(&format!("/{data}")), "{n} holds its own data");
                    }
                }
            }
            Ok(())
        };
        stage_n(&state, root, 5, &sync);
        assert_eq!(calls.load(Ordering::SeqCst), 0, "puts do not flush");
        commit(&state, root, &sync).unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // An empty commit still flushes the names the writer reused.
        commit(&state, root, &sync).unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn a_failed_data_sync_renames_nothing_and_is_not_retried() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let state = Mutex::new(State::default());
        let calls = AtomicUsize::new(0);
        let failing = |_: &File| -> io::Result<()> {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(io::Error::from_raw_os_error(libc::EIO))
        };
        stage_n(&state, root, 4, &failing);
        let e = commit(&state, root, &failing).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO));
        assert_eq!(calls.load(Ordering::SeqCst), 1, "one sync, not retried");
        assert!(
            names(root).is_empty(),
            "no name, no leftover: {:?}",
            names(root)
        );
        assert!(lock(&state).pending.is_empty(), "nothing left to publish");
    }

    #[test]
    fn a_put_that_lands_after_the_writer_gave_up_removes_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let state = Mutex::new(State::default());
        let sync = |_: &File| -> io::Result<()> { Ok(()) };
        stage_n(&state, root, 2, &sync);
        discard(&state);
        stage(&state, root, root.join("d0/late"), b"late", &sync).unwrap();
        let left: Vec<String> = names(root);
        assert!(left.is_empty(), "{left:?}");
        assert!(lock(&state).pending.is_empty());
    }

    #[test]
    fn the_put_that_fills_the_batch_publishes_it() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let state = Mutex::new(State::default());
        let calls = AtomicUsize::new(0);
        let sync = |_: &File| -> io::Result<()> {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok(())
        };
        stage_n(&state, root, MAX_PENDING + 1, &sync);
        assert_eq!(calls.load(Ordering::SeqCst), 2, "one publication");
        assert_eq!(lock(&state).pending.len(), 1);
        let all = names(root);
        assert_eq!(
            all.iter().filter(|n| !n.contains(".tmp.")).count(),
            MAX_PENDING
        );
    }
}
