//! Every way an S3 destination fails becomes one line that names the cause
//! and the fix, of a stable kind, never the SDK's debug rendering: refused
//! credentials and a missing bucket against a real S3 server (moto), a
//! server that is not there, a bucket with Object Lock (moto), and
//! throttling (a stand-in endpoint that answers 503 SlowDown, which moto
//! never does).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use aws_sdk_s3::types::{
    DefaultRetention, ObjectLockConfiguration, ObjectLockEnabled, ObjectLockRetentionMode,
    ObjectLockRule,
};
use ballast_backupstore::objects::ObjectError;
use ballast_backupstore::{Error, NoProgress};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The error of a backup of a small volume to `store`.
async fn backup_error(store: &ballast_backupstore::BackupStore) -> Error {
    let (_dir, pool) = open_pool();
    make_volume(&pool, "vol1", 1 << 20, 7).await;
    store
        .backup(&pool, "vol1", None, &NoProgress)
        .await
        .unwrap_err()
}

/// The object-store failure inside `e`, after checking its message is one
/// line free of the SDK's rendering.
fn object_error(e: &Error) -> &ObjectError {
    let message = e.to_string();
    eprintln!("{message}");
    assert!(!message.contains('\n'), "{message}");
    for sdk_noise in [
        "ServiceError",
        "Error {",
        "Unhandled",
        "DispatchFailure",
        "unhandled error",
    ] {
        assert!(!message.contains(sdk_noise), "{message}");
    }
    assert!(
        !message.contains("testing"),
        "no credentials in messages: {message}"
    );
    match e {
        Error::Store { source, .. } => source.as_ref(),
        other => panic!("not an object-store failure: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials() {
    let Some(bin) = moto_binary() else { return };
    // Every request is authenticated; the test's key is unknown to it.
    let m = Moto::start_with_env(&bin, &[("INITIAL_NO_AUTH_ACTION_COUNT", "0")]);
    let e = backup_error(&s3_store(&m.endpoint(), "ballast-test", "p").await).await;
    match object_error(&e) {
        ObjectError::CredentialsRefused { code, .. } => assert_eq!(code, "InvalidAccessKeyId"),
        other => panic!("{other}"),
    }
    assert!(
        e.to_string()
            .contains("check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_bucket() {
    let Some(bin) = moto_binary() else { return };
    let m = Moto::start(&bin);
    let e = backup_error(&s3_store(&m.endpoint(), "no-such-bucket", "").await).await;
    assert!(
        matches!(object_error(&e), ObjectError::NoSuchBucket { bucket, .. } if bucket == "no-such-bucket"),
        "{e}"
    );
    assert!(e.to_string().contains("does not exist: create it"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_endpoint() {
    // A port nobody listens on: connections are refused.
    let endpoint = format!("http://127.0.0.1:{}", free_port());
    let e = backup_error(&s3_store(&endpoint, "bucket", "").await).await;
    match object_error(&e) {
        ObjectError::Unreachable {
            endpoint: reached,
            reason,
            ..
        } => {
            assert_eq!(reached, &endpoint);
            assert_eq!(reason, "connection refused");
        }
        other => panic!("{other}"),
    }
    assert!(e.to_string().contains("check the endpoint"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bucket_with_object_lock() {
    let Some(bin) = moto_binary() else { return };
    let m = Moto::start(&bin);
    let client = s3_client(&m.endpoint()).await;
    client
        .create_bucket()
        .bucket("locked")
        .object_lock_enabled_for_bucket(true)
        .send()
        .await
        .unwrap();
    let retention = DefaultRetention::builder()
        .mode(ObjectLockRetentionMode::Governance)
        .days(1)
        .build();
    client
        .put_object_lock_configuration()
        .bucket("locked")
        .object_lock_configuration(
            ObjectLockConfiguration::builder()
                .object_lock_enabled(ObjectLockEnabled::Enabled)
                .rule(
                    ObjectLockRule::builder()
                        .default_retention(retention)
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    let e = backup_error(&s3_store(&m.endpoint(), "locked", "").await).await;
    assert!(
        matches!(object_error(&e), ObjectError::ObjectLocked { bucket, .. } if bucket == "locked"),
        "{e}"
    );
    assert!(
        e.to_string().contains("use a bucket without Object Lock"),
        "{e}"
    );
}

/// An endpoint that answers every request as a throttling S3 does.
async fn slow_down_endpoint() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(AtomicUsize::new(0));
    let counted = requests.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
                let mut buf = vec![0u8; 64 << 10];
                // One request per connection: read its head (these are
                // bodiless GETs and HEADs), answer, close.
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                counted.fetch_add(1, Ordering::SeqCst);
                let head = seen.starts_with(b"HEAD");
                let answer = format!(
                    "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                    body.len(),
                    if head { "" } else { body }
                );
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    (endpoint, requests)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled() {
    let (endpoint, requests) = slow_down_endpoint().await;
    let e = backup_error(&s3_store(&endpoint, "bucket", "").await).await;
    match object_error(&e) {
        ObjectError::Throttled { code, .. } => assert_eq!(code, "SlowDown"),
        other => panic!("{other}"),
    }
    assert!(e.to_string().contains("try again later"), "{e}");
    assert!(
        requests.load(Ordering::SeqCst) > 1,
        "the SDK retried before giving up"
    );
}
