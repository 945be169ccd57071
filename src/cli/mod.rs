//! The client commands: check the input, call the control API, print.
//!
//! Names and sizes are validated here, before anything is sent, so a typo
//! gets a one-line error and the daemon never sees it.

pub mod args;
mod backup;
mod key;
pub mod output;
mod schedule;
mod standby;

use anyhow::Result;
use ballast_engine::{format_size, parse_size, parse_snapshot_ref, validate_name};

use std::io::IsTerminal;

use crate::api::types::{
    CreateVolume, ExportUris, NbdTls, SnapshotInfo, VolumeDetails, VolumeInfo,
};
use crate::client::Client;
use args::{ClientCommand, CreateArgs, KeyArg, SnapshotCommand};
use backup::OnInterrupt;
use output::{emit, format_time, json, Table};

pub async fn run(client: &Client, command: ClientCommand) -> Result<()> {
    let text = match command {
        ClientCommand::Create(args) => create(client, args).await?,
        ClientCommand::Delete { volume } => {
            validate_name(&volume)?;
            let deleted = client.delete_volume(&volume).await?;
            let mut text = format!("{volume}\n");
            for s in &deleted.removed_schedules {
                text.push_str(&format!(
                    "{volume} to {}: backup schedule removed with the volume\n",
                    s.dest
                ));
            }
            text
        }
        ClientCommand::Grow { volume, size } => {
            validate_name(&volume)?;
            let info = client.grow_volume(&volume, parse_size(&size)?).await?;
            format!("{}: {}\n", info.name, format_size(info.size))
        }
        ClientCommand::List(output) => {
            let volumes = client.volumes().await?;
            if output.json {
                json(&volumes)
            } else {
                volume_table(&volumes)
            }
        }
        ClientCommand::Inspect { volume, output } => {
            validate_name(&volume)?;
            let info = client.volume(&volume).await?;
            if output.json {
                json(&info)
            } else {
                volume_details(&info)
            }
        }
        ClientCommand::Wait { volume, output } => wait(client, &volume, output.json).await?,
        ClientCommand::Snapshot(command) => snapshot(client, command).await?,
        ClientCommand::Backup(command) => backup::run(client, command).await?,
        ClientCommand::Standby(command) => standby::run(client, command).await?,
        ClientCommand::Attach { volume, output } => {
            validate_name(&volume)?;
            let attached = client.attach(&volume).await?;
            if output.json {
                json(&attached)
            } else {
                format!("{}\n", attached.device.display())
            }
        }
        ClientCommand::Detach { volume } => {
            validate_name(&volume)?;
            client.detach(&volume).await?;
            format!("{volume}\n")
        }
        ClientCommand::Export { export, output } => {
            export_uris(client, &export, output.json).await?
        }
        ClientCommand::Pool(output) => {
            let stats = client.pool().await?;
            if output.json {
                json(&stats)
            } else {
                let max = stats
                    .max_size
                    .map_or_else(|| "unlimited".to_string(), format_size);
                let cache = &stats.meta_cache;
                let mut text = format!(
                    "used:       {}\nfile size:  {}\nmax size:   {max}\nio:         {}\nread-ahead: {} read, {} used\nmetadata:   {} on disk; cache {} of {}, {} pending checkpoint, {} hits, {} misses\n",
                    format_size(stats.used),
                    format_size(stats.file_size),
                    stats.io,
                    format_size(stats.read_ahead),
                    format_size(stats.read_ahead_used),
                    format_size(stats.metadata_size),
                    format_size(cache.nodes),
                    format_size(cache.budget),
                    format_size(cache.overlays),
                    cache.hits,
                    cache.misses,
                );
                if let Some(reason) = &stats.failed {
                    text.push_str(&format!(
                        "FAILED:     {reason}\n            writes are refused; restart the daemon to recover from the last commit\n"
                    ));
                }
                text
            }
        }
    };
    Ok(emit(&text)?)
}

async fn create(client: &Client, args: CreateArgs) -> Result<String> {
    validate_name(&args.volume)?;
    if let Some(url) = &args.backup {
        if args.wait {
            return backup::restore(client, url, &args.volume, args.key).await;
        }
        let request = CreateVolume {
            name: args.volume,
            size: None,
            from_snapshot: None,
            backup: Some(url.clone()),
            key: KeyArg { key: args.key }.checked_name()?,
        };
        let created = client.create_volume(&request).await?;
        if let Some(h) = created
            .hydration
            .filter(|_| std::io::stderr().is_terminal())
        {
            let name = &created.info.name;
            eprintln!(
                "{name} is served now and hydrates in the background (job {}); `ballast wait {name}` follows it",
                h.job
            );
        }
        return Ok(format!("{}\n", created.info.name));
    }
    let size = args.size.as_deref().map(parse_size).transpose()?;
    if let Some(origin) = &args.from_snapshot {
        parse_snapshot_ref(origin)?;
    } else if size.is_none() {
        anyhow::bail!("--size is required to create a volume (e.g. --size 10G)");
    }
    let request = CreateVolume {
        name: args.volume,
        size,
        from_snapshot: args.from_snapshot,
        backup: None,
        key: None,
    };
    let created = client.create_volume(&request).await?;
    Ok(format!("{}\n", created.info.name))
}

/// `ballast wait VOL`: follows the volume's hydration, if it has one, to
/// its end. The JSON form is `{"volume", "job"}`, `job` being the hydrate
/// job's final status (`null` when nothing was left to fetch).
async fn wait(client: &Client, volume: &str, json_out: bool) -> Result<String> {
    validate_name(volume)?;
    let job = match client.volume(volume).await?.hydration {
        Some(h) => Some(backup::follow_job(client, h.job, !json_out, OnInterrupt::Detach).await?),
        None => None,
    };
    Ok(if json_out {
        json(&serde_json::json!({ "volume": volume, "job": job }))
    } else {
        match job {
            Some(j) => format!(
                "{volume}: all data local; hydrated in {:.1} s\n",
                j.elapsed_ms as f64 / 1000.0
            ),
            None => format!("{volume}: all data local\n"),
        }
    })
}

/// `ballast export VOL[@SNAP]`: checks the export exists, then prints its
/// URIs in the NBD URI spec's forms.
async fn export_uris(client: &Client, export: &str, as_json: bool) -> Result<String> {
    let read_only = match export.split_once('@') {
        Some(_) => {
            let (volume, snapshot) = parse_snapshot_ref(export)?;
            let snapshots = client.snapshots(volume).await?;
            if !snapshots.iter().any(|s| s.name == snapshot) {
                anyhow::bail!("snapshot {export} not found");
            }
            true
        }
        None => {
            validate_name(export)?;
            client.volume(export).await?;
            false
        }
    };
    let endpoints = client.nbd().await?;
    let tls = endpoints.tls != NbdTls::Off;
    let uris = ExportUris {
        export: export.to_string(),
        read_only,
        tls: endpoints.tls,
        unix: ballast_nbd::unix_uri(&endpoints.socket, export, tls),
        tcp: endpoints
            .tcp
            .map(|a| ballast_nbd::tcp_uri(&a.ip().to_string(), a.port(), export, tls)),
    };
    Ok(if as_json {
        json(&uris)
    } else {
        let mut text = String::new();
        if let Some(tcp) = &uris.tcp {
            text.push_str(tcp);
            text.push('\n');
        }
        text.push_str(&uris.unix);
        text.push('\n');
        text
    })
}

async fn snapshot(client: &Client, command: SnapshotCommand) -> Result<String> {
    Ok(match command {
        SnapshotCommand::Create { volume, name } => {
            validate_name(&volume)?;
            if let Some(name) = &name {
                validate_name(name)?;
            }
            let snapshot = client.create_snapshot(&volume, name.as_deref()).await?;
            format!("{}@{}\n", snapshot.volume, snapshot.name)
        }
        SnapshotCommand::List { volume, output } => {
            validate_name(&volume)?;
            let snapshots = client.snapshots(&volume).await?;
            if output.json {
                json(&snapshots)
            } else {
                snapshot_table(&snapshots)
            }
        }
        SnapshotCommand::Delete { snapshot } => {
            let (volume, name) = parse_snapshot_ref(&snapshot)?;
            client.delete_snapshot(volume, name).await?;
            format!("{snapshot}\n")
        }
    })
}

fn volume_table(volumes: &[VolumeInfo]) -> String {
    let mut table = Table::new(&[
        "NAME",
        "SIZE",
        "ALLOCATED",
        "SNAPSHOTS",
        "ORIGIN",
        "CREATED",
    ]);
    for v in volumes {
        table.row(vec![
            v.name.clone(),
            format_size(v.size),
            format_size(v.allocated),
            v.snapshots.len().to_string(),
            v.origin.clone().unwrap_or_else(|| "-".into()),
            format_time(v.created),
        ]);
    }
    table.render()
}

fn snapshot_table(snapshots: &[SnapshotInfo]) -> String {
    let mut table = Table::new(&["SNAPSHOT", "SIZE", "ALLOCATED", "CLONES", "CREATED"]);
    for s in snapshots {
        table.row(vec![
            format!("{}@{}", s.volume, s.name),
            format_size(s.size),
            format_size(s.allocated),
            s.clones.to_string(),
            format_time(s.created),
        ]);
    }
    table.render()
}

fn volume_details(details: &VolumeDetails) -> String {
    let v = &details.info;
    let mut text = format!(
        "name:       {}\nsize:       {}\nallocated:  {}\ncreated:    {}\norigin:     {}\nsnapshots:  {}\n",
        v.name,
        format_size(v.size),
        format_size(v.allocated),
        format_time(v.created),
        v.origin.as_deref().unwrap_or("-"),
        v.snapshots.len(),
    );
    if let Some(h) = &details.hydration {
        let percent = (h.bytes_local * 100).checked_div(h.bytes).unwrap_or(100);
        text.push_str(&format!(
            "hydration:  {percent}%, {} of {} chunks local ({} of {}), from {} (job {})\n",
            h.chunks_local,
            h.chunks,
            format_size(h.bytes_local),
            format_size(h.bytes),
            h.backup,
            h.job,
        ));
        if let Some(e) = &h.error {
            text.push_str(&format!("            last fetch failed: {e}\n"));
        }
    }
    if let Some(s) = &details.standby {
        text.push_str(&format!(
            "standby:    of {} in {}, {}, {} applied\n",
            s.standby.source,
            s.standby.dest,
            s.state,
            s.applied_backup.as_deref().unwrap_or("nothing"),
        ));
    }
    if !v.snapshots.is_empty() {
        text.push('\n');
        text.push_str(&snapshot_table(&v.snapshots));
    }
    text
}
