//! Fetching a function's source from S3 or an S3-compatible store (MinIO, ...):
//! `s3://BUCKET/KEY` for one object (a file or an archive), `s3://BUCKET/PREFIX/` for every
//! object under a prefix, laid out as a directory. Credentials come from key files given on
//! the command line, else the AWS chain a build pod has: environment, shared config and
//! credentials files, web identity (IRSA, MinIO STS). The instance metadata service is not asked, so a
//! build never waits on an address that does not answer. What arrives is reported to a
//! [`Progress`], whose deadlines the caller enforces over the whole fetch.

use std::path::{Component, Path, PathBuf};

use aws_config::meta::credentials::CredentialsProviderChain;
use aws_runtime::env_config::file::{EnvConfigFileKind, EnvConfigFiles};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use tokio::io::AsyncWriteExt;

use super::archive::Limits;
use super::deadline::{Progress, CONNECT_TIMEOUT};
use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};

/// The S3-specific endpoint variable of the AWS SDKs.
const S3_ENDPOINT_ENV: &str = "AWS_ENDPOINT_URL_S3";

/// An `s3://` location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Source {
    pub bucket: String,
    /// The object's key, or a prefix ending in `/` (empty for the whole bucket).
    pub key: String,
}

impl S3Source {
    /// Recognises `s3://BUCKET/KEY` and `s3://BUCKET/PREFIX/`.
    pub fn parse(spec: &str) -> Option<Result<S3Source>> {
        let rest = spec.strip_prefix("s3://")?;
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Some(Err(Error::Usage(format!(
                "--source '{spec}': expected s3://BUCKET/KEY or s3://BUCKET/PREFIX/"
            ))));
        }
        Some(Ok(S3Source {
            bucket: bucket.to_string(),
            key: key.to_string(),
        }))
    }

    pub fn is_prefix(&self) -> bool {
        self.key.is_empty() || self.key.ends_with('/')
    }
}

impl std::fmt::Display for S3Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

/// How to reach the store.
#[derive(Debug, Clone, Default)]
pub struct S3Options {
    /// The endpoint of an S3-compatible store (MinIO); path-style addressing is used with it.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// A directory with AWS-style `credentials` and `config` files (a mounted secret), used
    /// instead of `~/.aws`.
    pub credentials_dir: Option<PathBuf>,
    /// Files holding the access key ID and the secret key (a mounted Kubernetes secret).
    pub access_key_file: Option<PathBuf>,
    pub secret_key_file: Option<PathBuf>,
}

/// What was fetched: the object's file, or the prefix's directory, and its version.
pub struct Fetched {
    pub path: PathBuf,
    pub revision: String,
}

/// Downloads the object, or every object under the prefix, into `dest_dir`.
pub async fn fetch(
    source: &S3Source,
    options: &S3Options,
    dest_dir: &Path,
    limits: Limits,
    progress: Progress,
) -> Result<Fetched> {
    let endpoint = endpoint(options);
    let client = client(options, endpoint.as_deref()).await?;
    let errors = ErrorContext {
        source,
        endpoint: endpoint.as_deref(),
    };
    if source.is_prefix() {
        fetch_prefix(&client, source, dest_dir, limits, &errors, &progress).await
    } else {
        let name = source
            .key
            .rsplit('/')
            .next()
            .filter(|n| !n.is_empty())
            .unwrap_or("function");
        // Apart from the directory the workspace is unpacked into.
        let path = dest_dir.join("download").join(name);
        let revision = download(
            &client,
            &source.bucket,
            &source.key,
            &path,
            limits.max_bytes,
            &errors,
            &progress,
        )
        .await?;
        Ok(Fetched { path, revision })
    }
}

/// The endpoint override: `--s3-endpoint` (or `AWS_ENDPOINT_URL`), else the S3-specific
/// variable the AWS SDKs also honour.
fn endpoint(options: &S3Options) -> Option<String> {
    options.endpoint.clone().or_else(|| {
        std::env::var(S3_ENDPOINT_ENV)
            .ok()
            .filter(|e| !e.is_empty())
    })
}

async fn client(options: &S3Options, endpoint: Option<&str>) -> Result<aws_sdk_s3::Client> {
    let region = options
        .region
        .clone()
        .or_else(|| std::env::var("AWS_REGION").ok())
        .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
        .unwrap_or_else(|| "us-east-1".to_string());
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(region.clone()));
    loader = match (&options.access_key_file, &options.secret_key_file) {
        (Some(access), Some(secret)) => {
            let read = |path: &PathBuf| {
                std::fs::read_to_string(path)
                    .map(|s| s.trim().to_string())
                    .map_err(|e| Error::Usage(format!("cannot read {}: {e}", path.display())))
            };
            loader.credentials_provider(aws_sdk_s3::config::Credentials::new(
                read(access)?,
                read(secret)?,
                None,
                None,
                "fnbuild key files",
            ))
        }
        (None, None) => loader.credentials_provider(
            CredentialsProviderChain::first_try(
                "environment",
                aws_config::environment::EnvironmentVariableCredentialsProvider::new(),
            )
            .or_else(
                "shared files",
                aws_config::profile::ProfileFileCredentialsProvider::builder()
                    .profile_files(profile_files(options))
                    .build(),
            )
            .or_else("web identity", WebIdentity::new(&region, endpoint)),
        ),
        _ => {
            return Err(Error::Usage(
                "--s3-access-key-file and --s3-secret-key-file go together".into(),
            ))
        }
    };
    if let Some(endpoint) = endpoint {
        loader = loader.endpoint_url(endpoint);
    }
    loader = loader
        .profile_files(profile_files(options))
        .timeout_config(timeouts())
        // The SDK's own guard against a stalled body (20 s under 1 B/s) would fail before, and
        // regardless of, --fetch-idle-timeout, with a message naming no flag.
        .stalled_stream_protection(
            aws_config::stalled_stream_protection::StalledStreamProtectionConfig::disabled(),
        );
    let shared = loader.load().await;
    let config = aws_sdk_s3::config::Builder::from(&shared)
        .force_path_style(endpoint.is_some())
        .build();
    Ok(aws_sdk_s3::Client::from_conf(config))
}

/// The SDK's timeouts: connecting only. How long a request, or an object's body, may take
/// is for the fetch's deadlines.
fn timeouts() -> aws_config::timeout::TimeoutConfig {
    aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .build()
}

/// Credentials for a web identity (IRSA on EKS; MinIO's STS): the token in
/// `AWS_WEB_IDENTITY_TOKEN_FILE` exchanged for the role `AWS_ROLE_ARN` with
/// AssumeRoleWithWebIdentity, at the S3 endpoint when one is given (MinIO serves STS there),
/// else at AWS's STS for the region.
#[derive(Debug)]
struct WebIdentity {
    sts: aws_sdk_sts::Client,
}

impl WebIdentity {
    fn new(region: &str, endpoint: Option<&str>) -> Self {
        let mut config = aws_sdk_sts::Config::builder()
            .behavior_version(aws_sdk_sts::config::BehaviorVersion::latest())
            .region(aws_sdk_sts::config::Region::new(region.to_string()))
            .timeout_config(timeouts());
        if let Some(endpoint) = endpoint {
            config = config.endpoint_url(endpoint);
        }
        Self {
            sts: aws_sdk_sts::Client::from_conf(config.build()),
        }
    }

    async fn load(&self) -> aws_credential_types::provider::Result {
        use aws_credential_types::provider::error::CredentialsError;
        let (Ok(token_file), Ok(role_arn)) = (
            std::env::var("AWS_WEB_IDENTITY_TOKEN_FILE"),
            std::env::var("AWS_ROLE_ARN"),
        ) else {
            return Err(CredentialsError::not_loaded(
                "AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN are not set",
            ));
        };
        let token = tokio::fs::read_to_string(&token_file).await.map_err(|e| {
            CredentialsError::invalid_configuration(format!(
                "cannot read the web identity token {token_file}: {e}"
            ))
        })?;
        let session =
            std::env::var("AWS_ROLE_SESSION_NAME").unwrap_or_else(|_| "fnbuild".to_string());
        let answer = self
            .sts
            .assume_role_with_web_identity()
            .role_arn(&role_arn)
            .role_session_name(session)
            .web_identity_token(token.trim())
            .send()
            .await
            .map_err(|e| {
                CredentialsError::provider_error(format!(
                    "AssumeRoleWithWebIdentity for {role_arn} failed: {}",
                    chain(&e)
                ))
            })?;
        let credentials = answer
            .credentials()
            .ok_or_else(|| CredentialsError::unhandled("the STS answer holds no credentials"))?;
        Ok(aws_credential_types::Credentials::new(
            credentials.access_key_id(),
            credentials.secret_access_key(),
            Some(credentials.session_token().to_string()),
            std::time::SystemTime::try_from(*credentials.expiration()).ok(),
            "web identity",
        ))
    }
}

impl aws_credential_types::provider::ProvideCredentials for WebIdentity {
    fn provide_credentials<'a>(
        &'a self,
    ) -> aws_credential_types::provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        aws_credential_types::provider::future::ProvideCredentials::new(self.load())
    }
}

/// The shared credentials and config files: those in `--s3-credentials-dir` that exist, else
/// the AWS defaults (`AWS_SHARED_CREDENTIALS_FILE`, `AWS_CONFIG_FILE`, `~/.aws`).
fn profile_files(options: &S3Options) -> EnvConfigFiles {
    let Some(dir) = &options.credentials_dir else {
        return EnvConfigFiles::default();
    };
    let mut files = EnvConfigFiles::builder()
        .include_default_credentials_file(false)
        .include_default_config_file(false);
    for (kind, name) in [
        (EnvConfigFileKind::Credentials, "credentials"),
        (EnvConfigFileKind::Config, "config"),
    ] {
        if dir.join(name).is_file() {
            files = files.with_file(kind, dir.join(name));
        }
    }
    files.build()
}

/// Turns SDK errors into messages that say what is wrong, without credentials.
struct ErrorContext<'a> {
    source: &'a S3Source,
    endpoint: Option<&'a str>,
}

impl ErrorContext<'_> {
    fn describe<E: ProvideErrorMetadata + std::error::Error + 'static, R: std::fmt::Debug>(
        &self,
        key: &str,
        err: SdkError<E, R>,
    ) -> Error {
        let bucket = &self.source.bucket;
        let at = self
            .endpoint
            .map(|e| format!(" at {e}"))
            .unwrap_or_default();
        let code = err.code().unwrap_or_default().to_string();
        let message = err.message().unwrap_or_default().to_string();
        let detail = match code.as_str() {
            "NoSuchBucket" => format!("bucket '{bucket}' not found{at}"),
            "NoSuchKey" | "NotFound" => format!("key '{key}' not found in bucket '{bucket}'{at}"),
            "AccessDenied" | "AllAccessDisabled" => format!(
                "access denied to s3://{bucket}/{key}{at}: the credentials lack read permission"
            ),
            "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "InvalidToken" | "ExpiredToken" => {
                format!("authentication failed{at} ({code}): check the access key and secret (from --s3-access-key-file, AWS_ACCESS_KEY_ID, the shared credentials file or web identity)")
            }
            "" => match &err {
                SdkError::DispatchFailure(_) if chain(&err).contains("credentials") => format!(
                    "no S3 credentials found: give --s3-access-key-file and --s3-secret-key-file, \
                     AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a shared credentials file \
                     (AWS_PROFILE), or web identity ({})",
                    chain(&err)
                ),
                SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => format!(
                    "cannot reach the S3 endpoint{}: {}",
                    if at.is_empty() {
                        String::new()
                    } else {
                        at.clone()
                    },
                    chain(&err)
                ),
                SdkError::ConstructionFailure(_) => {
                    format!("cannot make the S3 request: {}", chain(&err))
                }
                _ => format!("S3 request failed{at}: {}", chain(&err)),
            },
            other => format!("S3 answered {other}{at}: {message}"),
        };
        Error::Source(detail)
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    crate::error::messages(e).join(": ")
}

/// Streams one object to `path`; returns its version ID, else its ETag.
async fn download(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    path: &Path,
    max_bytes: u64,
    errors: &ErrorContext<'_>,
    progress: &Progress,
) -> Result<String> {
    let object = client
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| errors.describe(key, e))?;
    progress.advance(0);
    if object
        .content_length()
        .is_some_and(|n| n as u64 > max_bytes)
    {
        return Err(Error::Source(format!("s3://{bucket}/{key} is larger than the limit of {max_bytes} bytes (raise it with --max-source-size)")));
    }
    let revision = object
        .version_id()
        .filter(|v| !v.is_empty() && *v != "null")
        .map(|v| format!("version:{v}"))
        .or_else(|| {
            object
                .e_tag()
                .map(|e| format!("etag:{}", e.trim_matches('"')))
        })
        .unwrap_or_default();
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .io_context("create", parent)?;
    }
    let mut file = tokio::fs::File::create(path)
        .await
        .io_context("create", path)?;
    let mut body = object.body;
    let mut written = 0u64;
    while let Some(chunk) = body.try_next().await.map_err(|e| {
        Error::Source(format!(
            "download of s3://{bucket}/{key} broke off: {}",
            chain(&e)
        ))
    })? {
        progress.advance(chunk.len() as u64);
        written += chunk.len() as u64;
        if written > max_bytes {
            return Err(Error::Source(format!("s3://{bucket}/{key} is larger than the limit of {max_bytes} bytes (raise it with --max-source-size)")));
        }
        file.write_all(&chunk).await.io_context("write", path)?;
    }
    file.flush().await.io_context("write", path)?;
    Ok(revision)
}

/// Downloads every object under the prefix into `dest_dir/src`, keys relative to the prefix.
async fn fetch_prefix(
    client: &aws_sdk_s3::Client,
    source: &S3Source,
    dest_dir: &Path,
    limits: Limits,
    errors: &ErrorContext<'_>,
    progress: &Progress,
) -> Result<Fetched> {
    let root = dest_dir.join("src");
    tokio::fs::create_dir_all(&root)
        .await
        .io_context("create", &root)?;
    let mut pages = client
        .list_objects_v2()
        .bucket(&source.bucket)
        .prefix(&source.key)
        .into_paginator()
        .send();
    let mut listing = Vec::new();
    let (mut count, mut bytes) = (0u64, 0u64);
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| errors.describe(&source.key, e))?;
        progress.advance(0);
        for object in page.contents() {
            let (Some(key), size) = (object.key(), object.size().unwrap_or(0).max(0) as u64) else {
                continue;
            };
            if key.ends_with('/') {
                continue; // a "directory" marker
            }
            count += 1;
            bytes += size;
            if count > limits.max_entries {
                return Err(Error::Source(format!("{source} holds more than {} objects (the limit; raise it with --max-source-files)", limits.max_entries)));
            }
            if bytes > limits.max_bytes {
                return Err(Error::Source(format!("{source} holds more than {} bytes (the limit; raise it with --max-source-size)", limits.max_bytes)));
            }
            listing.push(key.to_string());
        }
    }
    if listing.is_empty() {
        return Err(Error::Source(format!(
            "no objects under {source}{}",
            errors
                .endpoint
                .map(|e| format!(" at {e}"))
                .unwrap_or_default()
        )));
    }
    listing.sort();
    let mut versions = Vec::with_capacity(listing.len());
    for key in &listing {
        let relative = Path::new(&key[source.key.len()..]);
        if relative
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
        {
            return Err(Error::Source(format!(
                "{source}: object key '{key}' would land outside the function's directory"
            )));
        }
        let revision = download(
            client,
            &source.bucket,
            key,
            &root.join(relative),
            limits.max_bytes,
            errors,
            progress,
        )
        .await?;
        versions.push(format!("{key} {revision}"));
    }
    Ok(Fetched {
        path: root,
        revision: format!(
            "listing:{}",
            Digest::of(versions.join("\n").as_bytes()).hex()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_urls_parse() {
        let s = S3Source::parse("s3://functions/team/hello.zip")
            .unwrap()
            .unwrap();
        assert_eq!(
            (s.bucket.as_str(), s.key.as_str(), s.is_prefix()),
            ("functions", "team/hello.zip", false)
        );
        assert!(S3Source::parse("s3://functions/team/")
            .unwrap()
            .unwrap()
            .is_prefix());
        assert!(S3Source::parse("s3://functions")
            .unwrap()
            .unwrap()
            .is_prefix());
        assert!(S3Source::parse("s3:///x").unwrap().is_err());
        assert!(S3Source::parse("https://x").is_none());
    }
}
