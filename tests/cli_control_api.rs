//! The control API itself, driven with raw HTTP on the unix socket: bad
//! requests get a JSON error with a fitting status and never hurt the daemon.

mod common;

use common::{http, ok, volume_names, Daemon, TempDir};

fn error_message(body: &str) -> String {
    let value: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
    let message = value["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error field: {body}"));
    assert!(
        !message.is_empty() && !message.contains('\n'),
        "{message:?}"
    );
    message.to_string()
}

#[test]
fn malformed_bodies_get_400() {
    let dir = TempDir::create();
    let daemon = Daemon::start(&dir);
    let s = &daemon.socket;
    let bodies = [
        "",
        "{",
        "not json",
        "[]",
        r#"{"name": 5, "size": 4096}"#,
        r#"{"name": "db", "size": -1}"#,
        r#"{"name": "db", "size": "10G"}"#,
        r#"{"name": "db", "size": 4096, "colour": "blue"}"#,
        r#"{"name": "../x", "size": 4096}"#,
        r#"{"name": "db"}"#,
        r#"{"name": "db", "size": 4096, "from_snapshot": "nope"}"#,
    ];
    for body in bodies {
        let (status, answer) = http(s, "POST", "/v1/volumes", body);
        assert_eq!(status, 400, "{body:?}: {answer}");
        error_message(&answer);
    }
    let huge = format!(
        r#"{{"name": "db", "size": 4096, "pad": "{}"}}"#,
        "x".repeat(1 << 20)
    );
    let (status, answer) = http(s, "POST", "/v1/volumes", &huge);
    assert_eq!(status, 400, "{answer}");
    assert!(volume_names(s).is_empty());

    ok(s, &["create", "db", "--size", "64M"]);
    for body in ["{", r#"{"size": "big"}"#, "{}"] {
        let (status, answer) = http(s, "POST", "/v1/volumes/db/grow", body);
        assert_eq!(status, 400, "{body:?}: {answer}");
    }
    let (status, answer) = http(s, "POST", "/v1/volumes/db/snapshots", r#"{"name": 1}"#);
    assert_eq!(status, 400, "{answer}");
    assert!(ok(s, &["snapshot", "list", "db"]).lines().count() == 1);
}

#[test]
fn routes_answer_with_fitting_statuses() {
    let dir = TempDir::create();
    let daemon = Daemon::start(&dir);
    let s = &daemon.socket;

    let (status, body) = http(
        s,
        "POST",
        "/v1/volumes",
        r#"{"name": "db", "size": 1048576}"#,
    );
    assert_eq!(status, 201, "{body}");
    let created: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (created["name"].as_str(), created["size"].as_u64()),
        (Some("db"), Some(1 << 20))
    );

    let (status, body) = http(
        s,
        "POST",
        "/v1/volumes",
        r#"{"name": "db", "size": 1048576}"#,
    );
    assert_eq!(status, 409, "{body}");
    assert!(error_message(&body).contains("already exists"));

    let (status, body) = http(s, "POST", "/v1/volumes/db/snapshots", "");
    assert_eq!(status, 201, "{body}");
    let snap: serde_json::Value = serde_json::from_str(&body).unwrap();
    let snap_name = snap["name"].as_str().unwrap().to_string();

    let cases = [
        ("GET", "/v1/volumes/nosuch", 404),
        ("GET", "/v1/volumes/nosuch/snapshots", 404),
        ("DELETE", "/v1/volumes/db/snapshots/nosuch", 404),
        ("GET", "/v1/volumes/..", 400),
        ("GET", "/v2/volumes", 404),
        ("GET", "/v1/nothing", 404),
        ("GET", "/", 404),
        ("PUT", "/v1/volumes", 405),
        ("PATCH", "/v1/volumes/db", 405),
        ("GET", "/v1/volumes/db/grow", 405),
        ("POST", "/v1/pool", 405),
    ];
    for (method, path, expected) in cases {
        let (status, body) = http(s, method, path, "");
        assert_eq!(status, expected, "{method} {path}: {body}");
        error_message(&body);
    }

    let (status, body) = http(s, "GET", "/v1/volumes/db", "");
    assert_eq!(status, 200, "{body}");
    let (status, body) = http(
        s,
        "DELETE",
        &format!("/v1/volumes/db/snapshots/{snap_name}"),
        "",
    );
    assert_eq!((status, body.as_str()), (204, ""));
    let (status, body) = http(s, "DELETE", "/v1/volumes/db", "");
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"volume":"db","removed_schedules":[]}"#)
    );
    assert!(volume_names(s).is_empty());
}
