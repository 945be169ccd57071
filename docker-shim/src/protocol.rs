//! Docker's legacy volume plugin protocol: one JSON POST per call. dockerd
//! sends no Content-Type we could rely on and may send `"Opts": null`;
//! failures go back as `{"Err": "..."}`, which Docker shows verbatim.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::{json, Value};
use tracing::{debug, warn};

use crate::backend::Backend;
use crate::driver::{Driver, VolumeView};
use crate::error::DriverError;
use crate::host::Host;

/// A response: HTTP status and JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Reply {
    fn ok(body: Value) -> Reply {
        Reply { status: 200, body }
    }

    /// Docker reads `Err` from a 200 reply and shows it to the user.
    fn err(message: String) -> Reply {
        Reply::ok(json!({ "Err": message }))
    }
}

#[derive(Deserialize)]
struct NameRequest {
    #[serde(rename = "Name")]
    name: String,
}

#[derive(Deserialize)]
struct CreateRequest {
    #[serde(rename = "Name")]
    name: String,
    #[serde(rename = "Opts", default)]
    opts: Option<HashMap<String, String>>,
}

#[derive(Deserialize)]
struct MountRequest {
    #[serde(rename = "Name")]
    name: String,
    #[serde(rename = "ID", default)]
    id: String,
}

/// Answers the call to `path` with request body `body`.
pub async fn handle<B: Backend, H: Host>(driver: &Driver<B, H>, path: &str, body: &[u8]) -> Reply {
    let reply = match path {
        "/Plugin.Activate" => Ok(json!({ "Implements": ["VolumeDriver"] })),
        "/VolumeDriver.Capabilities" => Ok(json!({ "Capabilities": { "Scope": "local" } })),
        "/VolumeDriver.Create" => match parse::<CreateRequest>(body) {
            Ok(r) => driver
                .create(&r.name, r.opts.as_ref())
                .await
                .map(|()| json!({ "Err": "" })),
            Err(e) => Err(e),
        },
        "/VolumeDriver.Remove" => match parse::<NameRequest>(body) {
            Ok(r) => driver.remove(&r.name).await.map(|()| json!({ "Err": "" })),
            Err(e) => Err(e),
        },
        "/VolumeDriver.Mount" => match parse::<MountRequest>(body) {
            Ok(r) => driver
                .mount(&r.name, &r.id)
                .await
                .map(|p| json!({ "Mountpoint": p, "Err": "" })),
            Err(e) => Err(e),
        },
        "/VolumeDriver.Unmount" => match parse::<MountRequest>(body) {
            Ok(r) => driver
                .unmount(&r.name, &r.id)
                .await
                .map(|()| json!({ "Err": "" })),
            Err(e) => Err(e),
        },
        "/VolumeDriver.Path" => parse::<NameRequest>(body)
            .and_then(|r| driver.path(&r.name))
            .map(
                |p| json!({ "Mountpoint": p.as_deref().map_or(String::new(), display), "Err": "" }),
            ),
        "/VolumeDriver.Get" => parse::<NameRequest>(body)
            .and_then(|r| driver.get(&r.name))
            .map(|v| json!({ "Volume": volume_json(&v), "Err": "" })),
        "/VolumeDriver.List" => driver.list().map(|volumes| {
            let volumes: Vec<Value> = volumes.iter().map(volume_json).collect();
            json!({ "Volumes": volumes, "Err": "" })
        }),
        _ => {
            return Reply {
                status: 404,
                body: json!({ "Err": format!("unknown plugin call {path}") }),
            }
        }
    };
    match reply {
        Ok(body) => Reply::ok(body),
        Err(e) => {
            match &e {
                DriverError::Host { .. } | DriverError::State { .. } => warn!("{path}: {e}"),
                _ => debug!("{path}: {e}"),
            }
            Reply::err(e.to_string())
        }
    }
}

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, DriverError> {
    serde_json::from_slice(body)
        .map_err(|e| DriverError::InvalidOption(format!("malformed plugin request: {e}")))
}

fn display(path: &Path) -> String {
    path.display().to_string()
}

fn volume_json(v: &VolumeView) -> Value {
    let mut status = json!({
        "size": ballast_engine::format_size(v.summary.size),
        "allocated": ballast_engine::format_size(v.summary.allocated),
    });
    if let Some(origin) = &v.summary.origin {
        status["origin"] = json!(origin);
    }
    json!({
        "Name": v.summary.name,
        "Mountpoint": v.mountpoint.as_deref().map_or(String::new(), display),
        "Status": status,
    })
}
