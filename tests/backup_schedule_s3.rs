//! Scheduled backups to moto S3, the store reached through a proxy that
//! can throttle it or take it down: a run slower than the interval is not
//! doubled up or queued (the slots it overlaps are skipped and counted);
//! a schedule survives a `kill -9` of the daemon mid-run (its record, one
//! catch-up run, every listed backup restorable byte for byte); and a
//! store that goes down mid-run is retried with a growing delay and
//! reported in `schedule list` and `/metrics` while another volume's
//! schedule goes on, and succeeds again once the store is back. Several
//! volumes' schedules run together, at most `--backup-concurrency`
//! uploading at once. A volume deleted mid-run leaves only restorable
//! backups.

mod backup_common;
mod common;
mod moto;

use std::time::{Duration, Instant};

use backup_common::schedule::{
    backups, metric, metrics_page, promtool, promtool_check, sample, schedule_labels, schedule_of,
    set_schedule, snapshot_names, wait_for,
};
use backup_common::{
    assert_same, image, qemu_io, read_export, start_with_args, start_with_env, unix_uri,
    write_volume,
};
use common::{fails, json, ok, Daemon, TempDir};
use moto::{moto_binary, Moto, Proxy, DAEMON_ENV};

const BUCKET: &str = "ballast-sched";

/// moto with the test bucket, a proxy to it passing 2 MiB/s of uploads,
/// and a daemon with moto's credentials and the flags `args`; all of them
/// stop when this is dropped.
struct Setup {
    moto: Moto,
    proxy: Proxy,
    dir: TempDir,
    daemon: Daemon,
}

fn setup(args: &[&str]) -> Option<Setup> {
    let bin = moto_binary()?;
    let moto = Moto::start(&bin);
    moto.create_bucket(BUCKET);
    let proxy = Proxy::start(moto.port, Some(2 << 20));
    let dir = TempDir::create();
    let daemon = start_with_args(&dir, &DAEMON_ENV, args);
    Some(Setup {
        moto,
        proxy,
        dir,
        daemon,
    })
}

/// The destination `PREFIX` in the test bucket, reached on loopback `port`.
fn s3_dest(prefix: &str, port: u16) -> String {
    format!("s3://{BUCKET}/{prefix}?endpoint=http://127.0.0.1:{port}")
}

/// Restores backup `url` as volume `name` and reads it back through NBD.
fn restored(daemon: &Daemon, dir: &TempDir, url: &str, name: &str) -> Vec<u8> {
    ok(&daemon.socket, &["create", name, "--backup", url]);
    read_export(&unix_uri(daemon, name), dir, &format!("{name}.img"))
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn a_slow_run_is_neither_doubled_nor_queued() {
    let Some(t) = setup(&[]) else {
        return;
    };
    let (proxy, dir, daemon) = (&t.proxy, &t.dir, &t.daemon);
    // 8 MiB of random data at 2 MiB/s: the first (full) run takes ~4 s.
    let socket = &daemon.socket;
    ok(socket, &["create", "db", "--size", "8M"]);
    write_volume(daemon, dir, "db", &image(8, 0, 3));
    let dest = s3_dest("slow", proxy.port);
    set_schedule(socket, "db", &dest, "1s");

    let status = || schedule_of(socket, "db");
    let deadline = Instant::now() + Duration::from_secs(60);
    while status()["successes"].as_u64().unwrap() < 2 {
        let s = status();
        // Never more than one run going: every run started has ended but
        // the one in flight.
        let going = u64::from(!s["running_since"].is_null());
        assert_eq!(
            s["runs"].as_u64().unwrap(),
            s["successes"].as_u64().unwrap() + s["failures"].as_u64().unwrap() + going,
            "{s}"
        );
        assert!(Instant::now() < deadline, "two runs within a minute: {s}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let s = status();
    assert_eq!(s["failures"], 0, "{s}");
    let skipped = s["skipped"].as_u64().unwrap();
    assert!(
        skipped >= 2,
        "the slow first run overlapped slots, skipped: {s}"
    );
    // Every run made its backup; the skipped slots made none.
    assert_eq!(
        backups(socket, &dest).len() as u64,
        s["successes"].as_u64().unwrap()
    );
}

#[test]
fn a_schedule_to_s3_survives_kill_9_mid_run_and_every_listed_backup_restores() {
    let Some(mut t) = setup(&[]) else {
        return;
    };
    let (proxy, dir, daemon) = (&t.proxy, &t.dir, &mut t.daemon);
    // 2 MiB/s: a run that uploads 4 MiB takes ~2 s, long enough to kill.
    let dest = s3_dest("kill", proxy.port);
    ok(&daemon.socket, &["create", "db", "--size", "8M"]);
    // The volume's contents at each run: A, then B (1 MiB rewritten), then
    // C (4 MiB of new random data).
    let a = image(4, 4, 21);
    let mut b = a.clone();
    b[1 << 20..2 << 20].fill(0x5b);
    let mut c = b.clone();
    c[4 << 20..].copy_from_slice(&image(4, 0, 22));
    write_volume(daemon, dir, "db", &a);
    set_schedule(&daemon.socket, "db", &dest, "6s");
    let successes = |socket: &std::path::Path| schedule_of(socket, "db")["successes"].clone();
    wait_for("the first run", Duration::from_secs(60), || {
        successes(&daemon.socket) == 1
    });
    qemu_io(&unix_uri(daemon, "db"), &["write -P 0x5b 1M 1M"]);
    wait_for("the second run", Duration::from_secs(60), || {
        successes(&daemon.socket) == 2
    });
    write_volume(daemon, dir, "db", &c);
    wait_for("the third run to start", Duration::from_secs(20), || {
        let s = schedule_of(&daemon.socket, "db");
        s["runs"] == 3 && !s["running_since"].is_null()
    });
    std::thread::sleep(Duration::from_millis(500));
    let before = schedule_of(&daemon.socket, "db");
    daemon.kill9();
    assert!(
        !before["running_since"].is_null(),
        "killed mid-run: {before}"
    );
    // Two slots pass while no daemon runs.
    std::thread::sleep(Duration::from_secs(13));

    let daemon = start_with_env(dir, &DAEMON_ENV);
    let socket = &daemon.socket;
    let after = schedule_of(socket, "db");
    // (The catch-up run may have started already.)
    for field in ["every", "created", "last_success", "successes", "dest"] {
        assert_eq!(
            after[field], before[field],
            "{field} survived kill -9: {after}"
        );
    }
    wait_for("the catch-up run", Duration::from_secs(60), || {
        successes(socket) == 3
    });
    assert!(
        daemon.log().contains("did not finish; running it again"),
        "{}",
        daemon.log()
    );
    // Once, not once per missed slot; the next comes a whole interval
    // after it.
    let s = schedule_of(socket, "db");
    assert_eq!(
        s["runs"].as_u64(),
        before["runs"].as_u64().map(|n| n + 1),
        "one catch-up run: {s}"
    );
    assert_eq!(s["failures"], 0, "{s}");
    // The next a whole interval after it (a whole slot was missed), not
    // at once for the other missed slot.
    std::thread::sleep(Duration::from_secs(2));
    let s2 = schedule_of(socket, "db");
    assert_eq!(s2["runs"], s["runs"], "{s2}");
    let started = s["last_success"]["at"].as_u64().unwrap()
        - s["last_success"]["duration_ms"].as_u64().unwrap() / 1000;
    assert!(s["next_run"].as_u64().unwrap() + 1 >= started + 6, "{s}");
    ok(
        socket,
        &["backup", "schedule", "remove", "db", "--dest", &dest],
    );

    // Every listed backup restores to a state the volume was in when a
    // run started, in order, and the newest is the last state.
    let verify = ok(socket, &["backup", "verify", "--dest", &dest]);
    let list = backups(socket, &dest);
    assert!(
        verify.contains(&format!("verified {} backups", list.len())),
        "{verify}"
    );
    let states = [&a, &b, &c];
    let mut seen = Vec::new();
    for (i, backup) in list.iter().enumerate() {
        let data = restored(
            &daemon,
            dir,
            backup["url"].as_str().unwrap(),
            &format!("r{i}"),
        );
        let state = states
            .iter()
            .position(|s| s.as_slice() == data.as_slice())
            .unwrap_or_else(|| panic!("backup {i} restores to none of the volume's states"));
        seen.push(state);
    }
    assert_eq!(seen.first(), Some(&0), "{seen:?}");
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
    assert!(seen.contains(&1), "{seen:?}");
    assert_eq!(seen.last(), Some(&2), "{seen:?}");
    let newest = list.last().unwrap()["url"].as_str().unwrap().to_string();
    assert_same(
        &restored(&daemon, dir, &newest, "newest"),
        &c,
        "the newest backup",
    );
}

#[test]
fn an_s3_store_that_goes_down_mid_run_is_retried_with_backoff_and_reported_while_another_schedule_goes_on(
) {
    let Some(t) = setup(&[]) else {
        return;
    };
    let (moto, proxy, dir, daemon) = (&t.moto, &t.proxy, &t.dir, &t.daemon);
    // 8 MiB at 2 MiB/s: a's first run takes ~4 s, and the store goes down
    // during it. b goes to the same moto directly.
    let socket = &daemon.socket;
    let flaky = s3_dest("a", proxy.port);
    let steady = s3_dest("b", moto.port);
    ok(socket, &["create", "a", "--size", "8M"]);
    ok(socket, &["create", "b", "--size", "4M"]);
    let contents = image(8, 0, 31);
    write_volume(daemon, dir, "a", &contents);
    qemu_io(&unix_uri(daemon, "b"), &["write -P 0x62 0 1M"]);
    // a every 30 s: its retries after 3 s, 6 s, 12 s stay before the next
    // slot, so the doubling shows.
    set_schedule(socket, "a", &flaky, "30s");
    set_schedule(socket, "b", &steady, "1s");
    wait_for("a's first run to start", Duration::from_secs(20), || {
        !schedule_of(socket, "a")["running_since"].is_null()
    });
    std::thread::sleep(Duration::from_secs(1));
    proxy.down();
    let b_before = schedule_of(socket, "b")["successes"].as_u64().unwrap();

    // Each failure in a row doubles the delay to the retry (3 s first),
    // never past the next regular slot.
    let mut delays = Vec::new();
    wait_for("three failures of a", Duration::from_secs(120), || {
        let s = schedule_of(socket, "a");
        let n = s["consecutive_failures"].as_u64().unwrap();
        if n > 0 && s["running_since"].is_null() && delays.len() < n as usize {
            let at = s["last_failure"]["at"].as_u64().unwrap();
            let next = s["next_run"].as_u64().unwrap();
            assert_eq!(
                next,
                (at + (3 << (n - 1))).min(s["slot"].as_u64().unwrap()),
                "the retry after failure {n}: {s}"
            );
            delays.push(next - at);
        }
        n >= 3
    });
    assert_eq!(delays[..2], [3, 6], "{delays:?}");
    let a = schedule_of(socket, "a");
    assert!(a["last_success"].is_null(), "{a}");
    assert_eq!(
        a["failures"].as_u64(),
        a["consecutive_failures"].as_u64(),
        "{a}"
    );
    let error = a["last_failure"]["error"].as_str().unwrap();
    assert!(
        error.contains(&format!("127.0.0.1:{}", proxy.port)) && !error.contains('\n'),
        "one line naming the endpoint: {error}"
    );
    let text = ok(socket, &["backup", "schedule", "list"]);
    assert!(
        text.contains("last failure:") && text.contains(error),
        "{text}"
    );
    // b went on meanwhile.
    let b = schedule_of(socket, "b");
    assert!(
        b["successes"].as_u64().unwrap() >= b_before + 3,
        "b goes on: {b}"
    );
    assert_eq!(b["failures"], 0, "{b}");
    let page = metrics_page(socket);
    if let Some(promtool) = promtool() {
        promtool_check(&promtool, &page);
    }
    let (la, lb) = (schedule_labels(&a), schedule_labels(&b));
    assert!(
        sample(
            &page,
            &format!("ballast_backup_schedule_failures_total{la}")
        ) >= 3.0,
        "{page}"
    );
    assert_eq!(
        metric(
            &page,
            &format!("ballast_backup_schedule_last_success_timestamp_seconds{la}")
        ),
        None,
        "a has not succeeded: {page}"
    );
    assert!(
        sample(
            &page,
            &format!("ballast_backup_schedule_last_failure_timestamp_seconds{la}")
        ) >= a["last_failure"]["at"].as_f64().unwrap()
    );
    assert_eq!(
        sample(
            &page,
            &format!("ballast_backup_schedule_consecutive_failures{la}")
        ),
        a["consecutive_failures"].as_f64().unwrap()
    );
    assert_eq!(
        sample(
            &page,
            &format!("ballast_backup_schedule_failures_total{lb}")
        ),
        0.0
    );
    let b_last = sample(
        &page,
        &format!("ballast_backup_schedule_last_success_timestamp_seconds{lb}"),
    );
    assert!(
        now() as f64 - b_last < 10.0,
        "b's last success is recent: {b_last}"
    );

    // The store comes back: the next retry succeeds, and what it backed
    // up restores byte for byte.
    proxy.up();
    wait_for("a's recovery", Duration::from_secs(60), || {
        !schedule_of(socket, "a")["last_success"].is_null()
    });
    let a = schedule_of(socket, "a");
    assert_eq!(a["consecutive_failures"], 0, "{a}");
    let page = metrics_page(socket);
    assert_eq!(
        sample(
            &page,
            &format!("ballast_backup_schedule_consecutive_failures{la}")
        ),
        0.0
    );
    assert!(metric(
        &page,
        &format!("ballast_backup_schedule_last_success_timestamp_seconds{la}")
    )
    .is_some());
    let list = backups(socket, &flaky);
    assert_eq!(list.len(), 1, "{list:?}");
    let url = list[0]["url"].as_str().unwrap();
    assert_same(&restored(daemon, dir, url, "back"), &contents, "a's backup");
    assert_eq!(schedule_of(socket, "b")["failures"], 0);
}

#[test]
fn schedules_of_several_volumes_run_together_with_a_bounded_number_of_uploads() {
    let Some(t) = setup(&["--backup-concurrency", "2"]) else {
        return;
    };
    let (proxy, dir, daemon) = (&t.proxy, &t.dir, &t.daemon);
    let socket = &daemon.socket;
    let dest = s3_dest("many", proxy.port);
    let volumes = ["v1", "v2", "v3"];
    for (i, v) in volumes.iter().enumerate() {
        ok(socket, &["create", v, "--size", "4M"]);
        write_volume(daemon, dir, v, &image(4, 0, 40 + i as u64));
    }
    // 12 MiB through a 2 MiB/s link: ~6 s of uploads, in which the daemon
    // runs two at once and the third waits for a free slot.
    for v in volumes {
        set_schedule(socket, v, &dest, "1h");
    }
    let (mut most_uploading, mut most_due) = (0.0f64, 0usize);
    // A run failed by the loaded machine is retried with backoff (3 s,
    // 6 s, 12 s...), which the limit leaves room for.
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    loop {
        let page = metrics_page(socket);
        most_uploading =
            most_uploading.max(metric(&page, "ballast_jobs{state=\"running\"}").unwrap_or(0.0));
        let statuses: Vec<_> = volumes.iter().map(|v| schedule_of(socket, v)).collect();
        most_due = most_due.max(
            statuses
                .iter()
                .filter(|s| !s["running_since"].is_null())
                .count(),
        );
        if statuses.iter().all(|s| s["successes"] == 1) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for every volume's run: {statuses:?}\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(most_uploading, 2.0, "two backups at once, never more");
    assert_eq!(most_due, 3, "all three runs were going, one waiting");
    assert_eq!(backups(socket, &dest).len(), 3);
}

/// A [`setup`] whose volume `db` of 8 MiB of random data (seeded `seed`)
/// is on an hourly schedule to `s3_dest(prefix)` through the proxy, its
/// first (full) run half a second under way; with the destination and
/// the contents.
fn db_mid_run(prefix: &str, seed: u64) -> Option<(Setup, String, Vec<u8>)> {
    let t = setup(&[])?;
    let socket = &t.daemon.socket;
    let dest = s3_dest(prefix, t.proxy.port);
    ok(socket, &["create", "db", "--size", "8M"]);
    let contents = image(8, 0, seed);
    write_volume(&t.daemon, &t.dir, "db", &contents);
    set_schedule(socket, "db", &dest, "1h");
    wait_for("the run to start", Duration::from_secs(20), || {
        !schedule_of(socket, "db")["running_since"].is_null()
    });
    std::thread::sleep(Duration::from_millis(500));
    Some((t, dest, contents))
}

/// Every backup listed in `dest` restores to `contents`.
fn all_restore_to(t: &Setup, dest: &str, contents: &[u8], what: &str) {
    for (i, backup) in backups(&t.daemon.socket, dest).iter().enumerate() {
        let url = backup["url"].as_str().unwrap();
        assert_same(
            &restored(&t.daemon, &t.dir, url, &format!("r{i}")),
            contents,
            what,
        );
    }
}

#[test]
fn a_volume_deleted_while_its_scheduled_run_uploads_leaves_only_restorable_backups() {
    let Some((t, dest, contents)) = db_mid_run("deleted", 51) else {
        return;
    };
    let socket = &t.daemon.socket;
    let out = ok(socket, &["delete", "db"]);
    assert!(
        out.contains("backup schedule removed with the volume"),
        "{out}"
    );
    // The run ends, one way or the other, unrecorded.
    wait_for("the backup job to end", Duration::from_secs(60), || {
        metric(&metrics_page(socket), "ballast_jobs{state=\"running\"}") == Some(0.0)
    });
    assert!(json(socket, &["backup", "schedule", "list", "--json"])
        .as_array()
        .unwrap()
        .is_empty());
    // The backup may complete (it usually does: reading 8 MiB locally
    // takes far less than uploading it) or fail; what is listed restores.
    all_restore_to(
        &t,
        &dest,
        &contents,
        "a backup that completed after its volume was deleted",
    );
}

#[test]
fn a_backup_by_hand_while_a_scheduled_run_of_the_volume_to_that_destination_goes_is_refused() {
    let Some((t, dest, contents)) = db_mid_run("both", 61) else {
        return;
    };
    let socket = &t.daemon.socket;
    // Two backups of one volume to one destination would each replace the
    // other's snapshot as the base: the second is refused, in one line.
    let err = fails(socket, &["backup", "create", "db", "--dest", &dest]);
    assert!(
        err.contains("a backup of db to") && err.contains("is already running"),
        "{err}"
    );
    wait_for("the scheduled run", Duration::from_secs(60), || {
        schedule_of(socket, "db")["successes"] == 1
    });
    // By hand now: it runs, and replaces the scheduled run's snapshot.
    let info = json(
        socket,
        &["backup", "create", "db", "--dest", &dest, "--json"],
    );
    assert!(!info["parent"].is_null(), "incremental: {info}");
    assert_eq!(snapshot_names(socket, "db").len(), 1);
    all_restore_to(&t, &dest, &contents, "each backup");
}
