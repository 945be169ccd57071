//! Docker's legacy volume plugin protocol: one JSON POST per call. dockerd
//! sends no Content-Type we could rely on and may send `"Opts": null`;
//! failures go back as `{"Err": "..."}`, which Docker shows verbatim.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::{json, Value};
use tracing::{debug, warn};

use crate::driver::{Driver, VolumeView};
use crate::error::DriverError;
use crate::host::Host;
use crate::provider::VolumeProvider;

/// An answer of the plugin protocol: HTTP status and JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginReply {
    pub status: u16,
    pub body: Value,
}

impl PluginReply {
    fn ok(body: Value) -> PluginReply {
        PluginReply { status: 200, body }
    }

    /// Docker reads `Err` from a 200 reply and shows it to the user.
    fn err(message: String) -> PluginReply {
        PluginReply::ok(json!({ "Err": message }))
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
pub async fn handle<P: VolumeProvider, H: Host>(
    driver: &Driver<P, H>,
    path: &str,
    body: &[u8],
) -> PluginReply {
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
            return PluginReply {
                status: 404,
                body: json!({ "Err": format!("unknown plugin call {path}") }),
            }
        }
    };
    match reply {
        Ok(body) => PluginReply::ok(body),
        Err(e) => {
            match &e {
                DriverError::Host { .. }
                | DriverError::State { .. }
                | DriverError::NoSpace { .. } => warn!("{path}: {e}"),
                _ => debug!("{path}: {e}"),
            }
            PluginReply::err(e.to_string())
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
    if let Some(attachment) = &v.attachment {
        status["attached"] = json!(attachment.to_string());
    }
    json!({
        "Name": v.summary.name,
        "Mountpoint": v.mountpoint.as_deref().map_or(String::new(), display),
        "CreatedAt": rfc3339(v.summary.created),
        "Status": status,
    })
}

/// `secs` since the epoch as RFC 3339 UTC, the form Docker shows.
fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::rfc3339;

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(4_102_444_799), "2099-12-31T23:59:59Z");
    }
}
