//! An S3 bucket (AWS or any S3-compatible server) as an object store.
//!
//! Credentials come from the standard AWS chain (environment, profile, ...)
//! only. A custom endpoint switches to path-style addressing, which
//! S3-compatible servers expect.

use std::time::SystemTime;

use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_sdk_s3::config::{Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::{ByteStream, DateTime};
use aws_sdk_s3::Client;
use bytes::Bytes;

use super::{ObjectMeta, ObjectStore};
use crate::error::{Error, Result};
use crate::url::StoreUrl;

/// Region used when neither the URL nor the AWS chain names one.
const FALLBACK_REGION: &str = "us-east-1";

#[derive(Debug, Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    /// Key prefix inside the bucket, empty or ending with `/`.
    prefix: String,
    /// The destination URL, for error messages.
    name: String,
}

impl S3Store {
    /// Builds a client for an `s3://` destination. Does no network I/O.
    pub async fn connect(url: &StoreUrl) -> Result<S3Store> {
        let StoreUrl::S3 {
            bucket,
            prefix,
            region,
            endpoint,
        } = url
        else {
            return Err(Error::InvalidUrl {
                url: url.to_string(),
                reason: "not an s3:// URL".into(),
            });
        };
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(r) = region {
            loader = loader.region(Region::new(r.clone()));
        }
        let sdk = loader.load().await;
        let mut config = aws_sdk_s3::config::Builder::from(&sdk)
            // Every object carries its own crc32 and digest; the SDK's extra
            // checksums are not understood by every S3-compatible server.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if sdk.region().is_none() {
            config = config.region(Region::new(FALLBACK_REGION));
        }
        if let Some(ep) = endpoint {
            config = config.endpoint_url(ep.clone()).force_path_style(true);
        }
        let prefix = if prefix.is_empty() {
            String::new()
        } else {
            format!("{prefix}/")
        };
        Ok(S3Store {
            client: Client::from_conf(config.build()),
            bucket: bucket.clone(),
            prefix,
            name: url.to_string(),
        })
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn err<E: std::error::Error>(&self, op: &'static str, key: &str, e: E) -> Error {
        Error::Store {
            dest: self.name.clone(),
            op,
            key: key.to_string(),
            message: DisplayErrorContext(e).to_string().replace('\n', " "),
        }
    }
}

fn system_time(t: Option<&DateTime>) -> SystemTime {
    t.and_then(|t| SystemTime::try_from(*t).ok())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

#[async_trait]
impl ObjectStore for S3Store {
    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        let resp = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .send()
            .await;
        match resp {
            Ok(out) => {
                let body = out
                    .body
                    .collect()
                    .await
                    .map_err(|e| self.err("get", key, e))?;
                Ok(Some(body.into_bytes()))
            }
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(None),
            Err(e) => Err(self.err("get", key, e)),
        }
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .body(ByteStream::from(data))
            .send()
            .await
            .map_err(|e| self.err("put", key, e))?;
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(self.full_key(prefix))
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.err("list", prefix, e))?;
            for obj in page.contents() {
                let Some(full) = obj.key() else { continue };
                let Some(key) = full.strip_prefix(&self.prefix) else {
                    continue;
                };
                out.push(ObjectMeta {
                    key: key.to_string(),
                    size: obj.size().unwrap_or(0).max(0) as u64,
                    modified: system_time(obj.last_modified()),
                });
            }
        }
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .send()
            .await
            .map_err(|e| self.err("delete", key, e))?;
        Ok(())
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        let resp = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .send()
            .await;
        match resp {
            Ok(out) => Ok(Some(ObjectMeta {
                key: key.to_string(),
                size: out.content_length().unwrap_or(0).max(0) as u64,
                modified: system_time(out.last_modified()),
            })),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(None),
            Err(e) => Err(self.err("head", key, e)),
        }
    }
}
