//! `ballast backup schedule` with intervals of seconds, against file
//! targets: runs happen and prune, leave one backup snapshot on the volume
//! whose last incremental uploads only what changed, survive a `kill -9`
//! (the missed run runs once), and a failing destination is retried and
//! reported while another schedule goes on.

mod backup_common;
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use backup_common::{image, qemu_io, read_export, start_with_env, unix_uri, write_image, MIB};
use common::{fails, json, ok, TempDir};
use serde_json::Value;

fn schedules(socket: &Path) -> Vec<Value> {
    json(socket, &["backup", "schedule", "list", "--json"])
        .as_array()
        .unwrap()
        .clone()
}

fn schedule_of(socket: &Path, volume: &str) -> Value {
    schedules(socket)
        .into_iter()
        .find(|s| s["volume"] == volume)
        .unwrap_or_else(|| panic!("no schedule for {volume}"))
}

/// Polls `check` until it holds or `limit` passes.
fn wait_for(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn backups(socket: &Path, dest: &str) -> Vec<Value> {
    json(socket, &["backup", "list", "--dest", dest, "--json"])
        .as_array()
        .unwrap()
        .clone()
}

fn snapshot_names(socket: &Path, volume: &str) -> Vec<String> {
    json(socket, &["snapshot", "list", volume, "--json"])
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn thirty_runs_leave_one_backup_snapshot_and_the_last_incremental_uploads_only_what_changed() {
    let dir = TempDir::create();
    let daemon = start_with_env(&dir, &[]);
    let socket = &daemon.socket;
    let dest = format!("file://{}", dir.join("store").display());
    ok(socket, &["create", "db", "--size", "16M"]);
    let uri = unix_uri(&daemon, "db");
    let data = dir.join("data.img");
    std::fs::write(&data, image(12, 4, 7)).unwrap();
    write_image(&uri, &data);
    ok(socket, &["snapshot", "create", "db", "--name", "mine"]);

    let err = fails(
        socket,
        &[
            "backup", "schedule", "set", "nope", "--dest", &dest, "--every", "1s",
        ],
    );
    assert!(err.contains("not found"), "{err}");
    let set = ok(
        socket,
        &[
            "backup",
            "schedule",
            "set",
            "db",
            "--dest",
            &dest,
            "--every",
            "1s",
            "--keep-last",
            "3",
        ],
    );
    assert!(set.contains("every 1s"), "{set}");

    // Writes go on while the runs do: one 4 KiB block somewhere every
    // ~150 ms, until 30 runs have succeeded.
    let mut writes = 0u64;
    let deadline = Instant::now() + Duration::from_secs(120);
    while schedule_of(socket, "db")["successes"].as_u64().unwrap() < 30 {
        assert!(Instant::now() < deadline, "30 runs within 2 minutes");
        let offset = (writes * 7919 % 4096) * 4096;
        qemu_io(
            &uri,
            &[&format!("write -P 0x{:02x} {offset} 4k", writes % 200 + 1)],
        );
        writes += 1;
        std::thread::sleep(Duration::from_millis(150));
    }
    let status = schedule_of(socket, "db");
    assert_eq!(status["failures"], 0, "{status}");
    assert!(status["last_failure"].is_null(), "{status}");
    ok(
        socket,
        &["backup", "schedule", "remove", "db", "--dest", &dest],
    );
    // A run in flight finishes on its own.
    std::thread::sleep(Duration::from_secs(3));
    assert!(schedules(socket).is_empty());
    let err = fails(
        socket,
        &["backup", "schedule", "remove", "db", "--dest", &dest],
    );
    assert!(err.contains("no backup schedule"), "{err}");

    // One backup snapshot (the base of the next incremental), and the
    // user's own untouched.
    let snaps = snapshot_names(socket, "db");
    assert_eq!(snaps.len(), 2, "{snaps:?}");
    assert_eq!(snaps[0], "mine");
    assert!(snaps[1].starts_with("backup-"), "{snaps:?}");

    // keep-last 3 pruned after every run; the newest is incremental to the
    // one before and uploaded exactly the chunks whose bytes differ.
    let list = backups(socket, &dest);
    assert_eq!(list.len(), 3, "{list:#?}");
    let (prev, last) = (&list[1], &list[2]);
    assert_eq!(last["parent"], prev["id"], "incremental");
    assert_eq!(
        last["snapshot"].as_str(),
        Some(snaps[1].as_str()),
        "its snapshot is the base"
    );
    for (name, b) in [("prev", prev), ("last", last)] {
        let url = b["url"].as_str().unwrap();
        ok(socket, &["create", name, "--backup", url]);
    }
    let a = read_export(&unix_uri(&daemon, "prev"), &dir, "prev.img");
    let b = read_export(&unix_uri(&daemon, "last"), &dir, "last.img");
    let changed = a
        .chunks(MIB)
        .zip(b.chunks(MIB))
        .filter(|(x, y)| x != y)
        .count() as u64;
    assert!(changed < 16, "an incremental, not a full backup");
    assert_eq!(
        last["new_bytes"].as_u64().unwrap(),
        changed * MIB as u64,
        "uploads only the {changed} changed chunks: {last}"
    );
}

#[test]
fn schedules_survive_kill_9_and_a_missed_run_runs_once() {
    let dir = TempDir::create();
    let mut daemon = start_with_env(&dir, &[]);
    let dest = format!("file://{}", dir.join("store").display());
    ok(&daemon.socket, &["create", "db", "--size", "4M"]);
    qemu_io(&unix_uri(&daemon, "db"), &["write -P 0x5a 0 1M"]);
    ok(
        &daemon.socket,
        &[
            "backup", "schedule", "set", "db", "--dest", &dest, "--every", "4s",
        ],
    );
    wait_for("the first run", Duration::from_secs(20), || {
        schedule_of(&daemon.socket, "db")["successes"] == 1
    });
    let before = schedule_of(&daemon.socket, "db");
    daemon.kill9();
    // Three slots pass while no daemon runs.
    std::thread::sleep(Duration::from_secs(13));
    let socket = daemon.socket.clone();
    let count_before = {
        let restarted = start_with_env(&dir, &[]);
        let started = Instant::now();
        let after = schedule_of(&restarted.socket, "db");
        assert_eq!(after["every"], 4, "the schedule survived kill -9: {after}");
        assert_eq!(after["created"], before["created"], "{after}");
        assert_eq!(after["last_success"], before["last_success"], "{after}");
        // The missed run, once.
        wait_for("the catch-up run", Duration::from_secs(3), || {
            schedule_of(&socket, "db")["successes"] == 2
        });
        let n = backups(&socket, &dest).len();
        assert_eq!(n, 2);
        std::thread::sleep(Duration::from_secs(3).saturating_sub(started.elapsed()));
        assert_eq!(
            backups(&socket, &dest).len(),
            2,
            "one catch-up run, not one per missed slot"
        );
        // The next a whole interval after it.
        wait_for("the next regular run", Duration::from_secs(6), || {
            schedule_of(&socket, "db")["successes"] == 3
        });
        let status = schedule_of(&socket, "db");
        assert_eq!(status["skipped"], 0, "{status}");
        assert_eq!(status["failures"], 0, "{status}");
        drop(restarted);
        n
    };
    assert_eq!(count_before, 2);
}

#[test]
fn a_failing_destination_is_retried_and_reported_while_other_schedules_go_on() {
    let dir = TempDir::create();
    let daemon = start_with_env(&dir, &[]);
    let socket = &daemon.socket;
    // A destination below a plain file cannot be created.
    let blocker = dir.join("blocker");
    std::fs::write(&blocker, b"not a directory").unwrap();
    let bad = format!("file://{}/store", blocker.display());
    let good = format!("file://{}", dir.join("good").display());
    for v in ["a", "b"] {
        ok(socket, &["create", v, "--size", "4M"]);
        qemu_io(&unix_uri(&daemon, v), &["write -P 0x33 0 1M"]);
    }
    ok(
        socket,
        &[
            "backup", "schedule", "set", "a", "--dest", &bad, "--every", "4s",
        ],
    );
    ok(
        socket,
        &[
            "backup", "schedule", "set", "b", "--dest", &good, "--every", "1s",
        ],
    );
    wait_for("three failures of a", Duration::from_secs(20), || {
        schedule_of(socket, "a")["failures"].as_u64().unwrap() >= 3
    });
    let a = schedule_of(socket, "a");
    assert!(a["last_success"].is_null(), "{a}");
    let error = a["last_failure"]["error"].as_str().unwrap();
    assert!(
        error.contains("blocker"),
        "the error names the place: {error}"
    );
    // Retried sooner than every 4 s: within one interval after a failure.
    assert!(a["next_run"].as_u64().unwrap() <= a["last_failure"]["at"].as_u64().unwrap() + 4);
    let b = schedule_of(socket, "b");
    assert!(b["successes"].as_u64().unwrap() >= 3, "b goes on: {b}");
    assert_eq!(b["failures"], 0, "{b}");
    let text = ok(socket, &["backup", "schedule", "list"]);
    assert!(
        text.contains("last failure:") && text.contains("blocker"),
        "{text}"
    );

    // Once the destination works, the next retry succeeds.
    std::fs::remove_file(&blocker).unwrap();
    wait_for("a's recovery", Duration::from_secs(20), || {
        !schedule_of(socket, "a")["last_success"].is_null()
    });
    let a = schedule_of(socket, "a");
    assert_eq!(a["consecutive_failures"], 0, "{a}");
    assert_eq!(backups(socket, &bad).len(), 1);
}

#[test]
fn a_run_cut_short_by_kill_9_leaves_only_restorable_backups_and_runs_again() {
    let dir = TempDir::create();
    let mut daemon = start_with_env(&dir, &[]);
    let dest = format!("file://{}", dir.join("store").display());
    ok(&daemon.socket, &["create", "db", "--size", "128M"]);
    let data = dir.join("data.img");
    let contents = image(128, 0, 11);
    std::fs::write(&data, &contents).unwrap();
    write_image(&unix_uri(&daemon, "db"), &data);
    ok(
        &daemon.socket,
        &[
            "backup", "schedule", "set", "db", "--dest", &dest, "--every", "1h",
        ],
    );
    // Kill the daemon while the first (full) run uploads.
    wait_for("the run to start", Duration::from_secs(10), || {
        !schedule_of(&daemon.socket, "db")["running_since"].is_null()
    });
    std::thread::sleep(Duration::from_millis(300));
    daemon.kill9();
    let restarted = start_with_env(&dir, &[]);
    let socket = restarted.socket.clone();
    // Whatever the crash left listed restores; the interrupted run runs
    // again at once (its record still said running).
    wait_for("the run again", Duration::from_secs(60), || {
        schedule_of(&socket, "db")["successes"] == 1
    });
    assert!(
        restarted.log().contains("did not finish; running it again"),
        "the kill came mid-run: {}",
        restarted.log()
    );
    let list = backups(&socket, &dest);
    assert!(!list.is_empty());
    let verify = ok(&socket, &["backup", "verify", "--dest", &dest]);
    assert!(
        verify.contains(&format!("verified {} backups", list.len())),
        "{verify}"
    );
    let newest = list.last().unwrap()["url"].as_str().unwrap().to_string();
    ok(&socket, &["create", "back", "--backup", &newest]);
    let restored = read_export(&unix_uri(&restarted, "back"), &dir, "back.img");
    backup_common::assert_same(&restored, &contents, "the backup after the crash");
    // The interrupted run's snapshot went with the next success.
    let snaps = snapshot_names(&socket, "db");
    assert_eq!(snaps.len(), 1, "one backup snapshot: {snaps:?}");
}
