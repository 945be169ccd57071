//! Long operations (backup, restore, verify, gc) run as daemon jobs: a
//! tokio task per job, whose status clients poll (`GET /v1/jobs/{id}`).
//!
//! A job is told to stop through its [`CancellationToken`]; the operation
//! itself decides how to unwind (see `operation.rs`), and the job counts as
//! finished only once it has. Finished jobs are kept for [`KEEP_FOR`], at
//! most [`KEEP_FINISHED`] of them, so a client can still read the outcome.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ballast_backupstore::{ProgressCounter, ProgressSnapshot};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How long a finished job's outcome stays readable.
const KEEP_FOR: Duration = Duration::from_secs(3600);
/// How many finished jobs are kept at most.
const KEEP_FINISHED: usize = 100;
/// How long a cancelled job gets to unwind before the caller stops waiting.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a status request may wait for its job to finish.
const MAX_STATUS_WAIT: Duration = Duration::from_secs(10);

/// What a job's operation ends with: its report, or why it failed.
pub enum Outcome {
    Done(Value),
    Failed(Box<dyn std::error::Error + Send + Sync>),
    Cancelled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

/// A job as clients see it (`GET /v1/jobs/{id}`). `result` is the
/// operation's report (a backup, a volume, a verify or gc report) once it
/// succeeded; `error` says in one line why it failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobStatus {
    pub id: u64,
    pub op: String,
    pub state: JobState,
    pub progress: ProgressSnapshot,
    pub result: Option<Value>,
    pub error: Option<String>,
    /// When the job started and, once it has, ended (Unix time, ms).
    pub started_ms: u64,
    pub finished_ms: Option<u64>,
    /// How long it has run, or ran (a monotonic clock, ms).
    pub elapsed_ms: u64,
}

struct Job {
    op: &'static str,
    progress: Arc<ProgressCounter>,
    state: JobState,
    result: Option<Value>,
    error: Option<String>,
    started: Instant,
    started_ms: u64,
    finished: Option<(Instant, u64)>,
    cancel: CancellationToken,
    done: watch::Receiver<bool>,
}

#[derive(Default)]
struct Registry {
    next_id: u64,
    jobs: BTreeMap<u64, Job>,
}

/// The daemon's jobs; cheap to clone.
#[derive(Clone, Default)]
pub struct Jobs {
    registry: Arc<Mutex<Registry>>,
}

impl Jobs {
    /// Starts `operation` as a new job; returns its id.
    pub fn spawn<F, Fut>(&self, op: &'static str, operation: F) -> u64
    where
        F: FnOnce(Arc<ProgressCounter>, CancellationToken) -> Fut,
        Fut: Future<Output = Outcome> + Send + 'static,
    {
        let progress = Arc::new(ProgressCounter::default());
        let cancel = CancellationToken::new();
        let (done_tx, done) = watch::channel(false);
        let running = operation(progress.clone(), cancel.clone());
        let id = {
            let mut registry = self.lock();
            registry.prune();
            registry.next_id += 1;
            let id = registry.next_id;
            registry.jobs.insert(
                id,
                Job {
                    op,
                    progress,
                    state: JobState::Running,
                    result: None,
                    error: None,
                    started: Instant::now(),
                    started_ms: unix_ms(),
                    finished: None,
                    cancel,
                    done,
                },
            );
            id
        };
        info!(job = id, op, "job started");
        let jobs = self.clone();
        tokio::spawn(async move {
            let outcome = running.await;
            jobs.finish(id, outcome);
            let _ = done_tx.send(true);
        });
        id
    }

    /// The status of job `id` once it has finished or `wait` has passed,
    /// whichever comes first (at most [`MAX_STATUS_WAIT`]): a client polling
    /// for progress learns of the end at once instead of a poll period late.
    pub async fn status_after(&self, id: u64, wait: Duration) -> Option<JobStatus> {
        let mut done = self.lock().jobs.get(&id)?.done.clone();
        let _ = tokio::time::timeout(wait.min(MAX_STATUS_WAIT), done.wait_for(|d| *d)).await;
        self.status(id)
    }

    pub fn status(&self, id: u64) -> Option<JobStatus> {
        let registry = self.lock();
        let job = registry.jobs.get(&id)?;
        let ended = job.finished.map_or_else(Instant::now, |(at, _)| at);
        Some(JobStatus {
            id,
            op: job.op.to_string(),
            state: job.state,
            progress: job.progress.snapshot(),
            result: job.result.clone(),
            error: job.error.clone(),
            started_ms: job.started_ms,
            finished_ms: job.finished.map(|(_, ms)| ms),
            elapsed_ms: (ended - job.started).as_millis() as u64,
        })
    }

    /// Cancels job `id` and waits until it has unwound; `false` if there is
    /// no such job. Cancelling a finished job changes nothing.
    pub async fn cancel(&self, id: u64) -> bool {
        let waiting = {
            let registry = self.lock();
            let Some(job) = registry.jobs.get(&id) else {
                return false;
            };
            job.cancel.cancel();
            job.done.clone()
        };
        wait_done(id, waiting).await;
        true
    }

    /// Cancels every running job and waits for them (daemon shutdown).
    pub async fn cancel_all(&self) {
        let running: Vec<(u64, watch::Receiver<bool>)> = {
            let registry = self.lock();
            registry
                .jobs
                .iter()
                .filter(|(_, job)| job.state == JobState::Running)
                .map(|(id, job)| {
                    job.cancel.cancel();
                    (*id, job.done.clone())
                })
                .collect()
        };
        for (id, done) in running {
            wait_done(id, done).await;
        }
    }

    /// How many jobs are kept in each state (finished ones for
    /// [`KEEP_FOR`]), every state named.
    pub fn count_by_state(&self) -> [(&'static str, u64); 4] {
        let registry = self.lock();
        let count = |s: JobState| registry.jobs.values().filter(|j| j.state == s).count() as u64;
        [
            ("running", count(JobState::Running)),
            ("succeeded", count(JobState::Succeeded)),
            ("failed", count(JobState::Failed)),
            ("cancelled", count(JobState::Cancelled)),
        ]
    }

    fn finish(&self, id: u64, outcome: Outcome) {
        let mut registry = self.lock();
        let Some(job) = registry.jobs.get_mut(&id) else {
            return;
        };
        job.finished = Some((Instant::now(), unix_ms()));
        match outcome {
            Outcome::Done(value) => {
                info!(job = id, op = job.op, "job succeeded");
                job.state = JobState::Succeeded;
                job.result = Some(value);
            }
            Outcome::Failed(error) => {
                let error = error.to_string().replace('\n', " ");
                warn!(job = id, op = job.op, "job failed: {error}");
                job.state = JobState::Failed;
                job.error = Some(error);
            }
            Outcome::Cancelled => {
                info!(job = id, op = job.op, "job cancelled");
                job.state = JobState::Cancelled;
                job.error = Some(format!("the {} was cancelled", job.op));
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().expect("job registry")
    }
}

impl Registry {
    /// Forgets finished jobs past [`KEEP_FOR`] and all but the newest
    /// [`KEEP_FINISHED`] finished ones. Running jobs are always kept.
    fn prune(&mut self) {
        let now = Instant::now();
        self.jobs
            .retain(|_, job| job.finished.is_none_or(|(at, _)| now - at < KEEP_FOR));
        let finished: Vec<u64> = self
            .jobs
            .iter()
            .filter(|(_, job)| job.finished.is_some())
            .map(|(id, _)| *id)
            .collect();
        let excess = finished.len().saturating_sub(KEEP_FINISHED);
        for id in &finished[..excess] {
            self.jobs.remove(id);
        }
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

async fn wait_done(id: u64, mut done: watch::Receiver<bool>) {
    if tokio::time::timeout(CANCEL_TIMEOUT, done.wait_for(|d| *d))
        .await
        .is_err()
    {
        warn!(job = id, "job still unwinding after {CANCEL_TIMEOUT:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ballast_backupstore::Progress;

    #[tokio::test]
    async fn jobs_report_progress_outcome_and_cancellation() {
        let jobs = Jobs::default();
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        let id = jobs.spawn("backup", |progress, _cancel| async move {
            progress.start("backup", 10);
            progress.advance(4);
            let _ = go_rx.await;
            Outcome::Done(serde_json::json!({"url": "x"}))
        });
        // Wait until the job has reported its progress.
        while jobs.status(id).unwrap().progress.done != 4 {
            tokio::task::yield_now().await;
        }
        let status = jobs.status(id).unwrap();
        assert_eq!(status.state, JobState::Running);
        assert_eq!(status.finished_ms, None);
        assert_eq!(status.op, "backup");
        assert_eq!(status.progress.total, 10);
        go_tx.send(()).unwrap();
        assert!(jobs.cancel(id).await, "waiting for a finished job");
        let status = jobs.status(id).unwrap();
        assert_eq!(status.state, JobState::Succeeded);
        let finished = status.finished_ms.expect("a finished job says when");
        assert!(finished >= status.started_ms && status.started_ms > 0);
        // A finished job's elapsed time no longer grows.
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(jobs.status(id).unwrap().elapsed_ms, status.elapsed_ms);
        assert_eq!(status.result.unwrap()["url"], "x");

        let slow = jobs.spawn("gc", |_progress, cancel| async move {
            cancel.cancelled().await;
            Outcome::Cancelled
        });
        assert_ne!(slow, id);
        assert!(jobs.cancel(slow).await);
        let status = jobs.status(slow).unwrap();
        assert_eq!(status.state, JobState::Cancelled);
        assert_eq!(status.error.as_deref(), Some("the gc was cancelled"));
        assert!(!jobs.cancel(999).await);
        assert!(jobs.status(999).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_status_request_waits_for_the_end_up_to_its_limit() {
        let jobs = Jobs::default();
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        let id = jobs.spawn("restore", |_, _| async move {
            let _ = go_rx.await;
            Outcome::Done(serde_json::json!({}))
        });
        // Nothing ends it: the answer comes after the wait, still running.
        let started = tokio::time::Instant::now();
        let status = jobs.status_after(id, Duration::from_millis(200)).await;
        assert_eq!(status.unwrap().state, JobState::Running);
        assert_eq!(started.elapsed(), Duration::from_millis(200));
        // Waits are capped.
        let started = tokio::time::Instant::now();
        jobs.status_after(id, Duration::from_secs(3600)).await;
        assert_eq!(started.elapsed(), MAX_STATUS_WAIT);
        // The end of the job answers a waiting request at once.
        let waiting = {
            let jobs = jobs.clone();
            tokio::spawn(async move { jobs.status_after(id, Duration::from_secs(5)).await })
        };
        tokio::task::yield_now().await;
        let started = tokio::time::Instant::now();
        go_tx.send(()).unwrap();
        let status = waiting.await.unwrap().unwrap();
        assert_eq!(status.state, JobState::Succeeded);
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(jobs
            .status_after(999, Duration::from_secs(1))
            .await
            .is_none());
    }

    #[tokio::test]
    async fn finished_jobs_are_pruned_beyond_the_limit() {
        let jobs = Jobs::default();
        let mut ids = Vec::new();
        for _ in 0..KEEP_FINISHED + 5 {
            let id = jobs.spawn("verify", |_, _| async { Outcome::Failed("no".into()) });
            jobs.cancel(id).await; // waits until it finished
            ids.push(id);
        }
        let running = jobs.spawn("gc", |_, cancel| async move {
            cancel.cancelled().await;
            Outcome::Cancelled
        });
        // Spawning pruned the oldest finished jobs, keeping the newest ones.
        assert!(jobs.status(ids[0]).is_none());
        assert!(jobs.status(ids[4]).is_none());
        assert_eq!(
            jobs.status(ids[5]).unwrap().error.as_deref(),
            Some("no"),
            "kept"
        );
        assert!(jobs.status(*ids.last().unwrap()).is_some());
        jobs.cancel_all().await;
        assert_eq!(jobs.status(running).unwrap().state, JobState::Cancelled);
    }
}
