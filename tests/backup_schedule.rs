//! `ballast backup schedule` with intervals of seconds, against file
//! targets: runs happen and prune, leave one backup snapshot on the volume
//! whose last incremental uploads only what changed, survive a `kill -9`
//! (the missed run runs once), and a failing destination is retried and
//! reported while another schedule goes on.

mod backup_common;
mod common;

use std::time::{Duration, Instant};

use backup_common::schedule::{
    backups, metrics_page, promtool, promtool_check, sample, schedule_of, schedules, set_schedule,
    snapshot_names, wait_for,
};
use backup_common::{image, qemu_io, read_export, start_with_env, unix_uri, write_image, MIB};
use common::{fails, json, ok, TempDir};

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
    set_schedule(&daemon.socket, "db", &dest, "4s");
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
        // The catch-up run may already have finished by the first query.
        if after["successes"] == 1 {
            assert_eq!(after["last_success"], before["last_success"], "{after}");
        } else {
            assert_eq!(after["successes"], 2, "{after}");
            assert!(after["last_success"]["at"].as_u64() > before["last_success"]["at"].as_u64());
        }
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
    set_schedule(socket, "a", &bad, "4s");
    set_schedule(socket, "b", &good, "1s");
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
    // 512 MiB of random data: a full backup long enough (about half a
    // second on a fast disk) for the kill below to come mid-run.
    ok(&daemon.socket, &["create", "db", "--size", "512M"]);
    let data = dir.join("data.img");
    let contents = image(512, 0, 11);
    std::fs::write(&data, &contents).unwrap();
    write_image(&unix_uri(&daemon, "db"), &data);
    set_schedule(&daemon.socket, "db", &dest, "1h");
    // Kill the daemon while the first (full) run uploads.
    wait_for("the run to start", Duration::from_secs(10), || {
        !schedule_of(&daemon.socket, "db")["running_since"].is_null()
    });
    std::thread::sleep(Duration::from_millis(100));
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

#[test]
fn a_deleted_volume_takes_its_schedules_along_and_a_new_one_of_its_name_starts_clean() {
    let dir = TempDir::create();
    let mut daemon = start_with_env(&dir, &[]);
    let dest = format!("file://{}", dir.join("store").display());
    let other = format!("file://{}", dir.join("other").display());
    for v in ["db", "keep"] {
        ok(&daemon.socket, &["create", v, "--size", "4M"]);
    }
    qemu_io(&unix_uri(&daemon, "db"), &["write -P 0x41 0 4M"]);
    for (volume, to, every) in [
        ("db", &dest, "1s"),
        ("db", &other, "1h"),
        ("keep", &other, "1h"),
    ] {
        set_schedule(&daemon.socket, volume, to, every);
    }
    wait_for("db's runs", Duration::from_secs(30), || {
        schedules(&daemon.socket)
            .iter()
            .filter(|s| s["volume"] == "db")
            .all(|s| s["successes"].as_u64().unwrap() >= 1)
    });
    let out = ok(&daemon.socket, &["delete", "db"]);
    let mut dests = [dest.clone(), other.clone()];
    dests.sort();
    let expected: String = std::iter::once("db\n".to_string())
        .chain(
            dests
                .iter()
                .map(|d| format!("db to {d}: backup schedule removed with the volume\n")),
        )
        .collect();
    assert_eq!(out, expected);
    let left = schedules(&daemon.socket);
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0]["volume"], "keep");
    // No run of db's schedule comes back (one was due every second).
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(schedules(&daemon.socket).len(), 1);
    let old = backups(&daemon.socket, &dest);
    assert!(!old.is_empty());

    // Removed in the same durable write as the volume: a kill -9 at once
    // brings back neither.
    daemon.kill9();
    let daemon = start_with_env(&dir, &[]);
    let socket = &daemon.socket;
    let left = schedules(socket);
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0]["volume"], "keep");

    // A new volume of the same name: no schedule, and its first backup is
    // a full one of its own bytes, not an incremental on the old base.
    ok(socket, &["create", "db", "--size", "4M"]);
    qemu_io(&unix_uri(&daemon, "db"), &["write -P 0x42 0 4M"]);
    assert_eq!(schedules(socket).len(), 1, "nothing inherited");
    let info = json(
        socket,
        &["backup", "create", "db", "--dest", &dest, "--json"],
    );
    assert!(info["parent"].is_null(), "a full backup: {info}");
    let url = info["url"].as_str().unwrap();
    ok(socket, &["create", "back", "--backup", url]);
    let restored = read_export(&unix_uri(&daemon, "back"), &dir, "back.img");
    backup_common::assert_same(&restored, &[0x42; 4 * MIB], "the new volume's backup");
    let snaps = snapshot_names(socket, "db");
    assert_eq!(snaps.len(), 1, "only its own backup's snapshot: {snaps:?}");
    // The old volume's backups stay in the destination.
    let now = backups(socket, &dest);
    assert_eq!(now.len(), old.len() + 1);
}

/// The `ballast_backup_schedule_*` lines of the daemon's `/metrics`.
fn schedule_series(socket: &std::path::Path) -> Vec<String> {
    metrics_page(socket)
        .lines()
        .filter(|l| l.starts_with("ballast_backup_schedule_"))
        .map(str::to_string)
        .collect()
}

#[test]
fn what_schedules_report_comes_from_the_pool_and_survives_restarts() {
    let dir = TempDir::create();
    let mut daemon = start_with_env(&dir, &[]);
    let store = dir.join("store");
    let dest = format!("file://{}", store.display());
    ok(&daemon.socket, &["create", "db", "--size", "4M"]);
    qemu_io(&unix_uri(&daemon, "db"), &["write -P 0x21 0 2M"]);
    let set = |socket: &std::path::Path, every: &str| set_schedule(socket, "db", &dest, every);
    set(&daemon.socket, "1h");
    wait_for("a success", Duration::from_secs(20), || {
        schedule_of(&daemon.socket, "db")["successes"] == 1
    });
    // The destination breaks (a plain file where its directory was); runs
    // every 2 s fail, then back to hourly: the retry after the next
    // failure is minutes away, so nothing changes while the daemon
    // restarts.
    std::fs::rename(&store, dir.join("store.away")).unwrap();
    std::fs::write(&store, b"not a directory").unwrap();
    set(&daemon.socket, "2s");
    wait_for("a failure", Duration::from_secs(20), || {
        schedule_of(&daemon.socket, "db")["failures"]
            .as_u64()
            .unwrap()
            >= 1
    });
    set(&daemon.socket, "1h");
    wait_for("the retries to space out", Duration::from_secs(20), || {
        let s = schedule_of(&daemon.socket, "db");
        s["running_since"].is_null()
            && s["next_run"].as_u64().unwrap() > s["last_failure"]["at"].as_u64().unwrap() + 60
    });
    let before = schedule_of(&daemon.socket, "db");
    assert!(!before["last_success"].is_null(), "{before}");
    assert!(
        before["last_failure"]["error"]
            .as_str()
            .unwrap()
            .contains("store"),
        "{before}"
    );
    assert!(before["last_duration_ms"].is_u64(), "{before}");
    assert!(
        before["uploaded_bytes"].as_u64().unwrap() >= MIB as u64,
        "{before}"
    );
    if let Some(promtool) = promtool() {
        promtool_check(&promtool, &metrics_page(&daemon.socket));
    }
    let series = schedule_series(&daemon.socket);
    for name in [
        "last_success_timestamp_seconds",
        "last_success_uploaded_bytes",
        "last_failure_timestamp_seconds",
        "last_duration_seconds",
        "uploaded_bytes_total",
        "failures_total",
    ] {
        let prefix = format!("ballast_backup_schedule_{name}{{");
        assert!(
            series.iter().any(|l| l.starts_with(&prefix)),
            "{name} in {series:#?}"
        );
    }
    let labels = backup_common::schedule::schedule_labels(&before);
    assert_eq!(
        sample(
            &series.join("\n"),
            &format!("ballast_backup_schedule_last_success_timestamp_seconds{labels}")
        ),
        before["last_success"]["at"].as_f64().unwrap()
    );

    // kill -9, then a clean stop: each time the daemon reports the same.
    daemon.kill9();
    let mut daemon = start_with_env(&dir, &[]);
    assert_eq!(schedule_of(&daemon.socket, "db"), before, "after kill -9");
    assert_eq!(schedule_series(&daemon.socket), series, "after kill -9");
    assert!(daemon.terminate().success());
    let daemon = start_with_env(&dir, &[]);
    assert_eq!(schedule_of(&daemon.socket, "db"), before, "after a restart");
    assert_eq!(schedule_series(&daemon.socket), series, "after a restart");
}
