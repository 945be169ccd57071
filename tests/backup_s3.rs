//! `ballast backup` to an s3:// destination served by a real S3 server
//! (moto_server): the daemon takes its credentials from the standard AWS
//! environment variables; backup, list and restore round-trip through NBD.

mod backup_common;
mod common;
mod moto;

use backup_common::{assert_same, image, read_export, start_with_env, unix_uri, write_image};
use common::{fails, json, ok, TempDir};
use moto::{moto_binary, Moto};

const BUCKET: &str = "ballast-e2e";

#[test]
fn backup_and_restore_through_s3() {
    let Some(bin) = moto_binary() else { return };
    let moto = Moto::start(&bin);
    moto.create_bucket(BUCKET);
    let dir = TempDir::create();
    let daemon = start_with_env(
        &dir,
        &[
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ],
    );
    let sock = &daemon.socket;
    let dest = format!(
        "s3://{BUCKET}/team/a?endpoint=http://127.0.0.1:{}",
        moto.port
    );

    ok(sock, &["create", "vol", "--size", "8M"]);
    let data = image(3, 5, 11);
    std::fs::write(dir.join("data.img"), &data).unwrap();
    write_image(&unix_uri(&daemon, "vol"), &dir.join("data.img"));

    let url = ok(sock, &["backup", "create", "vol", "--dest", &dest]);
    assert_eq!(url.lines().count(), 1, "{url:?}");
    let url = url.trim_end();
    assert!(url.starts_with(&format!("s3://{BUCKET}/team/a?")), "{url}");
    assert!(
        url.contains("backup=") && url.contains("volume=vol"),
        "{url}"
    );

    let list = json(sock, &["backup", "list", "--dest", &dest, "--json"]);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["url"], url);
    let info = json(sock, &["backup", "inspect", url, "--json"]);
    assert_eq!(info["data_chunks"], 3);

    assert_eq!(ok(sock, &["create", "back", "--backup", url]), "back\n");
    let restored = read_export(&unix_uri(&daemon, "back"), &dir, "back.img");
    assert_same(&restored, &data, "restored from S3");
    ok(sock, &["backup", "verify", url]);

    // A bucket that does not exist is one clear line.
    let missing = format!(
        "s3://no-such-bucket/x?endpoint=http://127.0.0.1:{}",
        moto.port
    );
    let err = fails(sock, &["backup", "create", "vol", "--dest", &missing]);
    assert!(err.contains("no-such-bucket"), "{err}");
}

/// What `ballast backup create` prints when the S3 server refuses the
/// daemon's credentials, when they lack permission, and when there are
/// none: one line naming the cause and the fix, none of the SDK's
/// rendering, no secret.
#[test]
fn s3_credential_failures_read_as_one_line_with_the_fix() {
    let Some(bin) = moto_binary() else { return };
    let moto = Moto::start(&bin);
    moto.create_bucket(BUCKET);
    let (key_id, secret) = moto.create_user("nobody");
    moto.require_auth();
    let dest = format!("s3://{BUCKET}/a?endpoint=http://127.0.0.1:{}", moto.port);
    let wrong_secret = "0".repeat(secret.len());
    let cases: [(&[(&str, &str)], &str); 3] = [
        (
            &[
                ("AWS_ACCESS_KEY_ID", &key_id),
                ("AWS_SECRET_ACCESS_KEY", &wrong_secret),
            ],
            "the credentials were refused (SignatureDoesNotMatch): check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
        ),
        (
            &[
                ("AWS_ACCESS_KEY_ID", &key_id),
                ("AWS_SECRET_ACCESS_KEY", &secret),
            ],
            "access denied: the daemon's credentials lack permission on bucket",
        ),
        (
            &[
                ("AWS_ACCESS_KEY_ID", ""),
                ("AWS_SECRET_ACCESS_KEY", ""),
                ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent"),
                ("AWS_CONFIG_FILE", "/nonexistent"),
            ],
            "no AWS credentials found: set AWS_ACCESS_KEY_ID",
        ),
    ];
    for (credentials, expected) in cases {
        let dir = TempDir::create();
        let mut env = vec![
            ("AWS_REGION", "us-east-1"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ];
        env.extend_from_slice(credentials);
        let daemon = start_with_env(&dir, &env);
        ok(&daemon.socket, &["create", "vol", "--size", "4M"]);
        let err = fails(
            &daemon.socket,
            &["backup", "create", "vol", "--dest", &dest],
        );
        assert!(err.contains(expected), "{err}");
        for noise in ["ServiceError", "Error {", "Unhandled", "unhandled error"] {
            assert!(!err.contains(noise), "{err}");
        }
        assert!(
            !err.contains(&secret) && !err.contains(&wrong_secret),
            "{err}"
        );
        // Nothing was left behind: no snapshot taken for the failed backup.
        let volume = json(&daemon.socket, &["inspect", "vol", "--json"]);
        assert_eq!(volume["snapshots"].as_array().unwrap().len(), 0, "{volume}");
    }
}
