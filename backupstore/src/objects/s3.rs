//! An S3 bucket (AWS or any S3-compatible server) as an object store.
//!
//! Credentials come from the standard AWS chain (environment, profile, ...)
//! only. A custom endpoint switches to path-style addressing, which
//! S3-compatible servers expect.
//!
//! Every failure becomes an [`ObjectError`] of a stable kind (see
//! [`S3Store::classify`]); the SDK's error is kept as its source, never
//! rendered into a message.

use std::time::SystemTime;

use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::{Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, DateTime};
use aws_sdk_s3::Client;
use bytes::Bytes;

use super::{ObjectError, ObjectMeta, ObjectStore};
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
    /// Where requests go, for error messages.
    endpoint: String,
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
        let config = config.build();
        let endpoint = match endpoint {
            Some(ep) => ep.clone(),
            None => format!(
                "s3.{}.amazonaws.com",
                config.region().map_or(FALLBACK_REGION, |r| r.as_ref())
            ),
        };
        Ok(S3Store {
            client: Client::from_conf(config),
            bucket: bucket.clone(),
            prefix,
            name: url.to_string(),
            endpoint,
        })
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn err<E>(&self, op: &'static str, key: &str, e: SdkError<E, HttpResponse>) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let source = self.classify(e);
        tracing::debug!(dest = %self.name, op, key, "S3 request failed: {source}");
        Error::Store {
            dest: self.name.clone(),
            op,
            key: key.to_string(),
            source: Box::new(source),
        }
    }

    /// The kind of an S3 failure, from the error code the server sent (or
    /// its HTTP status when a HEAD answer has no body), else from how the
    /// request failed to get an answer at all.
    fn classify<E>(&self, e: SdkError<E, HttpResponse>) -> ObjectError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let status = e.raw_response().map(|r| r.status().as_u16());
        let code = e.code().map(str::to_owned);
        let message = e.message().unwrap_or_default().replace('\n', " ");
        let bucket = self.bucket.clone();
        if !matches!(e, SdkError::ServiceError(_) | SdkError::ResponseError(_)) {
            let chain = chain_text(&e);
            if chain.contains("credential") {
                return ObjectError::NoCredentials { source: e.into() };
            }
            if matches!(e, SdkError::ConstructionFailure(_)) {
                return ObjectError::Refused {
                    code: "RequestNotBuilt".into(),
                    status: 0,
                    message: chain,
                    source: e.into(),
                };
            }
            return ObjectError::Unreachable {
                endpoint: self.endpoint.clone(),
                reason: transport_reason(&e),
                source: e.into(),
            };
        }
        let source = e.into();
        match (code.as_deref(), status) {
            (
                Some(
                    c @ ("InvalidAccessKeyId"
                    | "SignatureDoesNotMatch"
                    | "ExpiredToken"
                    | "InvalidToken"
                    | "TokenRefreshRequired"
                    | "InvalidClientTokenId"),
                ),
                _,
            ) => ObjectError::CredentialsRefused {
                code: c.to_string(),
                source,
            },
            (Some("MissingUploadObjectWithObjectLockHeaders" | "ObjectLocked"), _) => {
                ObjectError::ObjectLocked { bucket, source }
            }
            (Some("InvalidRequest"), _) if message.to_lowercase().contains("object lock") => {
                ObjectError::ObjectLocked { bucket, source }
            }
            (Some("AccessDenied" | "AllAccessDisabled"), _) => {
                ObjectError::AccessDenied { bucket, source }
            }
            (Some("NoSuchBucket"), _) => ObjectError::NoSuchBucket { bucket, source },
            (
                Some(
                    c @ ("AuthorizationHeaderMalformed"
                    | "PermanentRedirect"
                    | "IllegalLocationConstraintException"),
                ),
                _,
            ) => ObjectError::WrongRegion {
                bucket,
                code: c.to_string(),
                source,
            },
            (
                Some(
                    c @ ("SlowDown"
                    | "Throttling"
                    | "ThrottlingException"
                    | "RequestLimitExceeded"
                    | "TooManyRequests"
                    | "RequestThrottled"),
                ),
                _,
            ) => ObjectError::Throttled {
                code: c.to_string(),
                source,
            },
            (None, Some(s @ (429 | 503))) => ObjectError::Throttled {
                code: format!("HTTP {s}"),
                source,
            },
            (None, Some(403)) => ObjectError::CredentialsRefused {
                code: "HTTP 403".into(),
                source,
            },
            (None, Some(301)) => ObjectError::WrongRegion {
                bucket,
                code: "HTTP 301".into(),
                source,
            },
            (code, status) => ObjectError::Refused {
                code: code.unwrap_or("no error code").to_string(),
                status: status.unwrap_or(0),
                message: if message.is_empty() {
                    "no message".into()
                } else {
                    message
                },
                source,
            },
        }
    }
}

/// Every message in an error's source chain, for recognising causes the
/// SDK reports only in words.
fn chain_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        next = cause.source();
    }
    text.to_lowercase()
}

/// Why no answer came, in a few words: the socket error if there is one.
fn transport_reason<E, R>(e: &SdkError<E, R>) -> String
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug + 'static,
{
    if let SdkError::TimeoutError(_) = e {
        return "timed out".into();
    }
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(cause) = next {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
                std::io::ErrorKind::ConnectionReset => "connection reset".into(),
                std::io::ErrorKind::TimedOut => "timed out".into(),
                _ => io.to_string().replace('\n', " "),
            };
        }
        next = cause.source();
    }
    match e {
        SdkError::DispatchFailure(d) if d.is_timeout() => "timed out".into(),
        _ => "the connection failed".into(),
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
                let body = out.body.collect().await.map_err(|e| Error::Store {
                    dest: self.name.clone(),
                    op: "get",
                    key: key.to_string(),
                    source: Box::new(ObjectError::Unreachable {
                        endpoint: self.endpoint.clone(),
                        reason: "the download broke off".into(),
                        source: e.into(),
                    }),
                })?;
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
