//! Client of the control API over the daemon's unix socket.

use std::io::ErrorKind;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::UnixStream;

use crate::api::types::{
    Attached, CreateSnapshot, CreateStandby, CreateVolume, DeletedVolume, ErrorBody, GrowVolume,
    JobRequest, JobStarted, JobStatus, NbdEndpoints, PoolStats, ScheduleStatus, SetSchedule,
    SnapshotInfo, StandbyStatus, VolumeDetails, VolumeInfo,
};
use crate::api::PREFIX;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no ballast daemon is listening on {}: start one with `ballast serve` or `ballast daemon --root DIR`", .0.display())]
    NotRunning(PathBuf),
    #[error("permission denied on {}: the control socket belongs to the daemon's user", .0.display())]
    PermissionDenied(PathBuf),
    #[error("cannot connect to {}: {source}", path.display())]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("talking to the daemon: {0}")]
    Http(#[from] hyper::Error),
    #[error("{message}")]
    Api { status: StatusCode, message: String },
    #[error("unexpected answer from the daemon ({status}): {detail}")]
    Protocol { status: StatusCode, detail: String },
}

pub type Result<T> = std::result::Result<T, ClientError>;

/// A control API client; each call opens one connection.
pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Client {
            socket: socket.into(),
        }
    }

    pub async fn pool(&self) -> Result<PoolStats> {
        self.call(Method::GET, "/pool", None::<&()>).await
    }

    pub async fn nbd(&self) -> Result<NbdEndpoints> {
        self.call(Method::GET, "/nbd", None::<&()>).await
    }

    pub async fn volumes(&self) -> Result<Vec<VolumeInfo>> {
        self.call(Method::GET, "/volumes", None::<&()>).await
    }

    pub async fn volume(&self, name: &str) -> Result<VolumeDetails> {
        self.call(Method::GET, &format!("/volumes/{name}"), None::<&()>)
            .await
    }

    pub async fn create_volume(&self, req: &CreateVolume) -> Result<VolumeDetails> {
        self.call(Method::POST, "/volumes", Some(req)).await
    }

    pub async fn delete_volume(&self, name: &str) -> Result<DeletedVolume> {
        self.call(Method::DELETE, &format!("/volumes/{name}"), None::<&()>)
            .await
    }

    pub async fn grow_volume(&self, name: &str, size: u64) -> Result<VolumeInfo> {
        let path = format!("/volumes/{name}/grow");
        self.call(Method::POST, &path, Some(&GrowVolume { size }))
            .await
    }

    pub async fn attach(&self, name: &str) -> Result<Attached> {
        self.call(
            Method::POST,
            &format!("/volumes/{name}/attach"),
            None::<&()>,
        )
        .await
    }

    pub async fn detach(&self, name: &str) -> Result<()> {
        self.call_empty(Method::POST, &format!("/volumes/{name}/detach"))
            .await
    }

    pub async fn snapshots(&self, volume: &str) -> Result<Vec<SnapshotInfo>> {
        self.call(
            Method::GET,
            &format!("/volumes/{volume}/snapshots"),
            None::<&()>,
        )
        .await
    }

    pub async fn create_snapshot(&self, volume: &str, name: Option<&str>) -> Result<SnapshotInfo> {
        let body = CreateSnapshot {
            name: name.map(str::to_string),
        };
        self.call(
            Method::POST,
            &format!("/volumes/{volume}/snapshots"),
            Some(&body),
        )
        .await
    }

    pub async fn delete_snapshot(&self, volume: &str, snapshot: &str) -> Result<()> {
        self.call_empty(
            Method::DELETE,
            &format!("/volumes/{volume}/snapshots/{snapshot}"),
        )
        .await
    }

    pub async fn start_job(&self, req: &JobRequest) -> Result<JobStarted> {
        self.call(Method::POST, "/jobs", Some(req)).await
    }

    /// The job's status once it has finished or `wait` has passed.
    pub async fn job(&self, id: u64, wait: Duration) -> Result<JobStatus> {
        let path = format!("/jobs/{id}?wait_ms={}", wait.as_millis());
        self.call(Method::GET, &path, None::<&()>).await
    }

    /// Cancels a job; answers once it has unwound.
    pub async fn cancel_job(&self, id: u64) -> Result<JobStatus> {
        self.call(Method::DELETE, &format!("/jobs/{id}"), None::<&()>)
            .await
    }

    /// The backups in `dest` (of `volume` only, if given), as the backup
    /// store reports them; `key` names the backup key of an encrypted store.
    pub async fn backups(
        &self,
        dest: &str,
        volume: Option<&str>,
        key: Option<&str>,
    ) -> Result<serde_json::Value> {
        let mut query = vec![("dest", dest)];
        query.extend(volume.map(|v| ("volume", v)));
        query.extend(key.map(|k| ("key", k)));
        self.call(Method::GET, &with_query("/backups", &query), None::<&()>)
            .await
    }

    pub async fn inspect_backup(
        &self,
        backup: &str,
        key: Option<&str>,
    ) -> Result<serde_json::Value> {
        let mut query = vec![("backup", backup)];
        query.extend(key.map(|k| ("key", k)));
        let path = with_query("/backups/inspect", &query);
        self.call(Method::GET, &path, None::<&()>).await
    }

    pub async fn delete_backup(&self, backup: &str) -> Result<()> {
        let path = with_query("/backups", &[("backup", backup)]);
        self.call_empty(Method::DELETE, &path).await
    }

    pub async fn schedules(&self) -> Result<Vec<ScheduleStatus>> {
        self.call(Method::GET, "/schedules", None::<&()>).await
    }

    pub async fn set_schedule(&self, req: &SetSchedule) -> Result<ScheduleStatus> {
        self.call(Method::PUT, "/schedules", Some(req)).await
    }

    pub async fn remove_schedule(&self, volume: &str, dest: &str) -> Result<()> {
        let path = with_query("/schedules", &[("volume", volume), ("dest", dest)]);
        self.call_empty(Method::DELETE, &path).await
    }

    pub async fn standbys(&self) -> Result<Vec<StandbyStatus>> {
        self.call(Method::GET, "/standbys", None::<&()>).await
    }

    pub async fn create_standby(&self, req: &CreateStandby) -> Result<StandbyStatus> {
        self.call(Method::POST, "/standbys", Some(req)).await
    }

    pub async fn activate_standby(&self, volume: &str) -> Result<StandbyStatus> {
        let path = format!("/standbys/{volume}/activate");
        self.call(Method::POST, &path, None::<&()>).await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T> {
        let body = body.map(|b| serde_json::to_vec(b).expect("request types always serialise"));
        let (status, bytes) = self.send(method, path, body).await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol {
            status,
            detail: e.to_string(),
        })
    }

    async fn call_empty(&self, method: Method, path: &str) -> Result<()> {
        self.send(method, path, None).await.map(drop)
    }

    /// Sends one request; a non-2xx answer becomes [`ClientError::Api`].
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes)> {
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|e| match e.kind() {
                ErrorKind::NotFound | ErrorKind::ConnectionRefused => {
                    ClientError::NotRunning(self.socket.clone())
                }
                ErrorKind::PermissionDenied => ClientError::PermissionDenied(self.socket.clone()),
                _ => ClientError::Connect {
                    path: self.socket.clone(),
                    source: e,
                },
            })?;
        let (mut sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);

        let mut request = Request::builder()
            .method(method)
            .uri(format!("{PREFIX}{path}"))
            .header(HOST, "ballast");
        if body.is_some() {
            request = request.header(CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::Protocol {
                status: StatusCode::BAD_REQUEST,
                detail: e.to_string(),
            })?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        if status.is_success() {
            return Ok((status, bytes));
        }
        match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) => Err(ClientError::Api {
                status,
                message: body.error,
            }),
            Err(_) => Err(ClientError::Protocol {
                status,
                detail: String::from_utf8_lossy(&bytes).trim().to_string(),
            }),
        }
    }
}

/// `path?k=v&...` with every value percent-encoded (backup URLs carry `?`
/// and `&` of their own).
fn with_query(path: &str, params: &[(&str, &str)]) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        query.append_pair(k, v);
    }
    format!("{path}?{}", query.finish())
}
