//! A thin client for the OCI distribution API: ping and auth challenge, bearer tokens per
//! scope, blob HEAD, cross-repository mount, streamed uploads from disk, streamed downloads to
//! the blob store with digest verification, and manifest GET/PUT. Retries with back-off on
//! connection errors, 408, 429 and 5xx; never on a client error.
//!
//! Everything fnbuild pushes goes through `upload_blob` and `put_manifest`; nothing here
//! decides what to push (that is `output`'s job).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use reqwest::header::{
    HeaderMap, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, LOCATION, WWW_AUTHENTICATE,
};
use reqwest::{RequestBuilder, Response, StatusCode};
use serde::Deserialize;

use super::auth::{Credential, DockerConfig};
use super::reference::api_host;
use super::RegistryError;
use crate::cache::BlobStore;
use crate::digest::Digest;
use crate::error::{Error, Result};
use std::io::Write as _;

/// Attempts for one request: the first and three retries (0.5 s, 1 s, 2 s apart).
const ATTEMPTS: u32 = 4;
/// Error bodies are read up to this size.
const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// How to reach registries: which may use plain HTTP or unverified TLS, which extra CA
/// certificates to trust, where the Docker config is.
#[derive(Debug, Clone, Default)]
pub struct TransportOptions {
    /// `HOST:PORT` of registries reached over plain HTTP or TLS without verification.
    pub insecure_registries: Vec<String>,
    /// PEM files of CA certificates to trust in addition to the system's.
    pub ca_certs: Vec<PathBuf>,
    /// `--docker-config`: a directory or file with the Docker config.
    pub docker_config: Option<PathBuf>,
}

/// One client per registry host, sharing connections and the Docker config.
pub struct Registries {
    http: reqwest::Client,
    http_unverified: reqwest::Client,
    insecure: Vec<String>,
    docker: DockerConfig,
    clients: Mutex<HashMap<String, Arc<RegistryClient>>>,
}

impl Registries {
    pub fn new(options: &TransportOptions) -> Result<Self> {
        let mut builder = base_http_builder();
        for path in &options.ca_certs {
            let pem = std::fs::read(path).map_err(|e| {
                Error::Usage(format!(
                    "--registry-ca {}: cannot read it: {e}",
                    path.display()
                ))
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                Error::Usage(format!(
                    "--registry-ca {}: not a PEM certificate bundle: {e}",
                    path.display()
                ))
            })?;
            if certs.is_empty() {
                return Err(Error::Usage(format!(
                    "--registry-ca {}: no PEM certificate in it",
                    path.display()
                )));
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder
            .build()
            .map_err(|e| Error::Usage(format!("cannot set up HTTPS: {e}")))?;
        let http_unverified = base_http_builder()
            .danger_accept_invalid_certs(true)
            .build()
            .map_err(|e| Error::Usage(format!("cannot set up HTTPS: {e}")))?;
        Ok(Self {
            http,
            http_unverified,
            insecure: options.insecure_registries.clone(),
            docker: DockerConfig::load(options.docker_config.as_deref())?,
            clients: Mutex::new(HashMap::new()),
        })
    }

    /// The client for a registry (`HOST[:PORT]` as written in image references).
    pub fn client(&self, registry: &str) -> Result<Arc<RegistryClient>> {
        let mut clients = self.clients.lock().expect("registry client map poisoned");
        if let Some(client) = clients.get(registry) {
            return Ok(client.clone());
        }
        let host = api_host(registry).to_string();
        let insecure = self.is_insecure(registry);
        let client = Arc::new(RegistryClient {
            registry: registry.to_string(),
            http: if insecure {
                self.http_unverified.clone()
            } else {
                self.http.clone()
            },
            https_url: format!("https://{host}"),
            http_fallback: (insecure || is_loopback(registry)).then(|| format!("http://{host}")),
            base_url: tokio::sync::OnceCell::new(),
            credential: self.docker.credential_for(registry)?,
            config_path: self.docker.path().map(Path::to_path_buf),
            tokens: Mutex::new(HashMap::new()),
            token_fetch: tokio::sync::Mutex::new(()),
        });
        clients.insert(registry.to_string(), client.clone());
        Ok(client)
    }

    /// `--insecure-registry` hosts: plain HTTP, or TLS without verification.
    fn is_insecure(&self, registry: &str) -> bool {
        let host = registry.rsplit_once(':').map_or(registry, |(h, _)| h);
        self.insecure.iter().any(|r| r == registry || r == host)
    }
}

/// Loopback registries may fall back to plain HTTP (TLS is still verified when they speak
/// it), as Docker and crane allow.
fn is_loopback(registry: &str) -> bool {
    let host = registry.rsplit_once(':').map_or(registry, |(h, _)| h);
    matches!(host, "localhost" | "127.0.0.1" | "[::1]")
}

fn base_http_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .user_agent(concat!("fnbuild/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(15))
        .read_timeout(Duration::from_secs(120))
        .pool_max_idle_per_host(8)
}

/// How a registry wants to be authenticated, learnt from its `/v2/` answer.
#[derive(Debug, Clone)]
enum Challenge {
    Anonymous,
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

struct Endpoint {
    url: String,
    challenge: Challenge,
}

/// A client for one registry host.
pub struct RegistryClient {
    registry: String,
    http: reqwest::Client,
    https_url: String,
    http_fallback: Option<String>,
    base_url: tokio::sync::OnceCell<Endpoint>,
    credential: Option<Credential>,
    config_path: Option<PathBuf>,
    tokens: Mutex<HashMap<String, (String, Instant)>>,
    token_fetch: tokio::sync::Mutex<()>,
}

/// A manifest as fetched: its bytes, media type and digest.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    pub bytes: Vec<u8>,
    pub media_type: String,
    pub digest: Digest,
}

/// The repositories and actions a request needs (`repository:NAME:pull,push`).
type Scope<'a> = &'a [(&'a str, &'a str)];

impl RegistryClient {
    pub fn registry(&self) -> &str {
        &self.registry
    }

    // === connection and auth ===

    async fn endpoint(&self) -> Result<&Endpoint, RegistryError> {
        self.base_url.get_or_try_init(|| self.ping()).await
    }

    /// `GET /v2/`: finds the scheme that works and how the registry authenticates.
    async fn ping(&self) -> Result<Endpoint, RegistryError> {
        // With a plain-HTTP fallback, HTTPS gets one try: a registry without TLS fails it at once.
        let https_attempts = if self.http_fallback.is_some() {
            1
        } else {
            ATTEMPTS
        };
        let mut urls = vec![(self.https_url.clone(), https_attempts)];
        urls.extend(self.http_fallback.clone().map(|url| (url, ATTEMPTS)));
        let mut last_error = None;
        for (url, attempts) in urls {
            match self
                .send_attempts(attempts, || self.http.get(format!("{url}/v2/")))
                .await
            {
                Ok(response) => {
                    let challenge = match response.status() {
                        StatusCode::UNAUTHORIZED => parse_challenge(response.headers()),
                        status if status.is_success() => Challenge::Anonymous,
                        status => {
                            // A TLS registry answers plain HTTP with an error: the HTTPS
                            // failure is the one that explains what is wrong.
                            if let Some(https_error) = last_error {
                                return Err(https_error);
                            }
                            return Err(RegistryError::Refused {
                                registry: self.registry.clone(),
                                method: "GET",
                                path: "/v2/".into(),
                                status: status.as_u16(),
                                detail: "this is not an OCI distribution registry API endpoint"
                                    .into(),
                            });
                        }
                    };
                    tracing::debug!(registry = %self.registry, %url, ?challenge, "registry reached");
                    return Ok(Endpoint { url, challenge });
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.expect("at least one URL was tried"))
    }

    /// The Authorization header for a scope, fetching a bearer token when needed.
    async fn authorization(&self, scope: Scope<'_>) -> Result<Option<String>, RegistryError> {
        let endpoint = self.endpoint().await?;
        match &endpoint.challenge {
            Challenge::Anonymous => Ok(None),
            Challenge::Basic => match &self.credential {
                Some(credential) => Ok(Some(credential.basic_header())),
                None => Err(self.unauthorized(scope, "it requires credentials")),
            },
            Challenge::Bearer { realm, service } => {
                let key = scope_strings(scope).join(" ");
                if let Some(token) = self.cached_token(&key) {
                    return Ok(Some(token));
                }
                // One fetch at a time: requests running in parallel for the same scope wait
                // for the first one's token instead of each fetching their own.
                let _fetching = self.token_fetch.lock().await;
                if let Some(token) = self.cached_token(&key) {
                    return Ok(Some(token));
                }
                let (token, lifetime) = self.fetch_token(realm, service.as_deref(), scope).await?;
                // Renew ten seconds early so a token never expires in flight.
                let expires = Instant::now() + lifetime.saturating_sub(Duration::from_secs(10));
                self.tokens
                    .lock()
                    .unwrap()
                    .insert(key, (token.clone(), expires));
                Ok(Some(format!("Bearer {token}")))
            }
        }
    }

    fn cached_token(&self, key: &str) -> Option<String> {
        let tokens = self.tokens.lock().unwrap();
        let (token, expires) = tokens.get(key)?;
        (*expires > Instant::now()).then(|| format!("Bearer {token}"))
    }

    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: Scope<'_>,
    ) -> Result<(String, Duration), RegistryError> {
        let mut query: Vec<(&str, String)> = Vec::new();
        if let Some(service) = service {
            query.push(("service", service.to_string()));
        }
        for s in scope_strings(scope) {
            query.push(("scope", s));
        }
        let response = self
            .with_retries(|| {
                let request = self.http.get(realm).query(&query);
                match &self.credential {
                    Some(c) => request.header(AUTHORIZATION, c.basic_header()),
                    None => request,
                }
            })
            .await?;
        if !response.status().is_success() {
            let status = response.status();
            let detail = error_detail(response).await;
            return Err(match status {
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                    self.unauthorized(scope, &detail)
                }
                _ => RegistryError::Refused {
                    registry: self.registry.clone(),
                    method: "GET",
                    path: "(token endpoint)".into(),
                    status: status.as_u16(),
                    detail,
                },
            });
        }
        #[derive(Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let bytes = response.bytes().await.map_err(|e| self.unreachable(&e))?;
        let body: TokenResponse =
            serde_json::from_slice(&bytes).map_err(|e| RegistryError::Protocol {
                registry: self.registry.clone(),
                detail: format!(
                    "the token endpoint answered with something other than a token: {e}"
                ),
            })?;
        let token = body
            .token
            .or(body.access_token)
            .ok_or_else(|| RegistryError::Protocol {
                registry: self.registry.clone(),
                detail: "the token endpoint's answer has no token".into(),
            })?;
        Ok((
            token,
            Duration::from_secs(body.expires_in.unwrap_or(60).max(60)),
        ))
    }

    fn unauthorized(&self, scope: Scope<'_>, detail: &str) -> RegistryError {
        let repository = scope.first().map_or("", |s| s.0).to_string();
        let Some(credential) = &self.credential else {
            return RegistryError::CredentialsRequired {
                registry: self.registry.clone(),
                repository,
                detail: detail.to_string(),
            };
        };
        let source = self.config_path.as_ref().map_or_else(
            || "the Docker config".to_string(),
            |p| p.display().to_string(),
        );
        let hint = format!(
            "the credentials for user '{}' come from {source}; check them, or log in again",
            credential.username
        );
        RegistryError::Unauthorized {
            registry: self.registry.clone(),
            repository,
            detail: detail.to_string(),
            hint,
        }
    }

    /// Sends a request built by `make` (again for each attempt), retrying connection errors
    /// and retryable statuses with back-off.
    async fn with_retries(
        &self,
        make: impl Fn() -> RequestBuilder,
    ) -> Result<Response, RegistryError> {
        self.send_attempts(ATTEMPTS, make).await
    }

    async fn send_attempts(
        &self,
        attempts: u32,
        make: impl Fn() -> RequestBuilder,
    ) -> Result<Response, RegistryError> {
        let mut delay = Duration::from_millis(500);
        for attempt in 1..=attempts {
            let last = attempt == attempts;
            match make().send().await {
                Ok(response) if is_retryable(response.status()) && !last => {
                    tracing::warn!(registry = %self.registry, status = %response.status(), attempt, "registry busy or failing; retrying in {delay:?}");
                }
                Ok(response) => return Ok(response),
                Err(e) if last || is_permanent(&e) => return Err(self.unreachable(&e)),
                Err(e) => {
                    tracing::warn!(registry = %self.registry, attempt, "{}; retrying in {delay:?}", describe_reqwest(&e));
                }
            }
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
        unreachable!("the last attempt always returns")
    }

    fn unreachable(&self, e: &reqwest::Error) -> RegistryError {
        let detail = describe_reqwest(e);
        let hint =
            if detail.contains("certificate") || detail.contains("tls") || detail.contains("TLS") {
                "\nhint: pass --registry-ca FILE with the registry's CA certificate, or \
             --insecure-registry HOST:PORT for a registry without valid TLS"
            } else {
                ""
            };
        RegistryError::Unreachable {
            registry: self.registry.clone(),
            detail,
            hint,
        }
    }

    /// Sends an authorised request; a 401 on a cached bearer token fetches a new one once.
    async fn send(
        &self,
        scope: Scope<'_>,
        make: impl Fn(&str) -> RequestBuilder,
    ) -> Result<Response, RegistryError> {
        let base = &self.endpoint().await?.url;
        let auth = self.authorization(scope).await?;
        let response = self
            .with_retries(|| with_auth(make(base), auth.as_deref()))
            .await?;
        // A token that expired early is renewed once; a token that lacks a permission is not
        // (asking again gives the same answer).
        if response.status() == StatusCode::UNAUTHORIZED
            && auth.as_deref().is_some_and(|a| a.starts_with("Bearer"))
            && !insufficient_scope(response.headers())
        {
            self.tokens
                .lock()
                .unwrap()
                .remove(&scope_strings(scope).join(" "));
            let auth = self.authorization(scope).await?;
            return self
                .with_retries(|| with_auth(make(base), auth.as_deref()))
                .await;
        }
        Ok(response)
    }

    /// Turns an unsuccessful response into an error naming what was asked for.
    async fn fail(
        &self,
        response: Response,
        method: &'static str,
        scope: Scope<'_>,
        what: &str,
    ) -> RegistryError {
        let status = response.status();
        let path = response.url().path().to_string();
        let detail = error_detail(response).await;
        match status {
            StatusCode::UNAUTHORIZED => self.unauthorized(scope, &detail),
            StatusCode::FORBIDDEN => RegistryError::Denied {
                registry: self.registry.clone(),
                repository: scope.first().map_or("", |s| s.0).to_string(),
                detail,
            },
            StatusCode::NOT_FOUND => RegistryError::NotFound {
                registry: self.registry.clone(),
                what: what.to_string(),
                detail,
            },
            _ => RegistryError::Refused {
                registry: self.registry.clone(),
                method,
                path,
                status: status.as_u16(),
                detail,
            },
        }
    }

    /// Checks that the registry can be reached with the credentials for pushing to `repo`.
    pub async fn check_push_access(&self, repo: &str) -> Result<(), RegistryError> {
        self.authorization(&[(repo, "pull,push")]).await.map(|_| ())
    }

    // === blobs ===

    /// Whether the repository has the blob (`HEAD /v2/NAME/blobs/DIGEST`).
    pub async fn blob_exists(&self, repo: &str, digest: &Digest) -> Result<bool, RegistryError> {
        let scope = [(repo, "pull")];
        let response = self
            .send(&scope, |base| {
                self.http.head(format!("{base}/v2/{repo}/blobs/{digest}"))
            })
            .await?;
        match response.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(self
                .fail(response, "HEAD", &scope, &format!("blob {digest}"))
                .await),
        }
    }

    /// Asks the registry to link a blob from another repository of the same registry. Returns
    /// false when the registry declined (the caller uploads instead).
    pub async fn mount_blob(
        &self,
        repo: &str,
        digest: &Digest,
        from: &str,
    ) -> Result<bool, RegistryError> {
        let scope = [(repo, "pull,push"), (from, "pull")];
        let response = self
            .send(&scope, |base| {
                self.http
                    .post(format!("{base}/v2/{repo}/blobs/uploads/"))
                    .query(&[("mount", digest.to_string()), ("from", from.to_string())])
                    .header(CONTENT_LENGTH, 0)
            })
            .await?;
        match response.status() {
            StatusCode::CREATED => Ok(true),
            // The registry opened an upload session instead: the caller uploads in a new one
            // (cancelling this one would need the delete permission; registries purge it).
            StatusCode::ACCEPTED => Ok(false),
            _ => Err(self
                .fail(response, "POST", &scope, &format!("blob {digest}"))
                .await),
        }
    }

    /// Uploads a blob from a file: `POST` an upload session, then one streamed `PUT`. The
    /// whole exchange is retried if the session fails midway. `on_sent` hears how many bytes
    /// of the attempt under way have been handed to the connection (from 0 again on a retry);
    /// pass `Arc::new(|_| {})` when nobody listens.
    pub async fn upload_blob(
        &self,
        repo: &str,
        digest: &Digest,
        size: u64,
        path: &Path,
        on_sent: Arc<dyn Fn(u64) + Send + Sync>,
    ) -> Result<(), RegistryError> {
        let scope = [(repo, "pull,push")];
        let mut delay = Duration::from_millis(500);
        for attempt in 1..=ATTEMPTS {
            let started = self
                .send(&scope, |base| {
                    self.http
                        .post(format!("{base}/v2/{repo}/blobs/uploads/"))
                        .header(CONTENT_LENGTH, 0)
                })
                .await?;
            if started.status() != StatusCode::ACCEPTED {
                return Err(self
                    .fail(started, "POST", &scope, &format!("upload of {digest}"))
                    .await);
            }
            let location = self
                .location(&started)
                .ok_or_else(|| RegistryError::Protocol {
                    registry: self.registry.clone(),
                    detail: "an upload session was opened without a Location header".into(),
                })?;
            let file = std::fs::File::open(path).map_err(|e| RegistryError::Protocol {
                registry: self.registry.clone(),
                detail: format!("cannot read {}: {e}", path.display()),
            })?;
            let mut sent = 0;
            let on_sent = on_sent.clone();
            on_sent(sent);
            let body = reqwest::Body::wrap_stream(
                tokio_util::io::ReaderStream::with_capacity(
                    tokio::fs::File::from_std(file),
                    256 * 1024,
                )
                .inspect(move |chunk| {
                    if let Ok(chunk) = chunk {
                        sent += chunk.len() as u64;
                        on_sent(sent);
                    }
                }),
            );
            let auth = self.authorization(&scope).await?;
            let put = with_auth(
                self.http
                    .put(&location)
                    .query(&[("digest", digest.to_string())])
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .header(CONTENT_LENGTH, size)
                    .body(body),
                auth.as_deref(),
            )
            .send()
            .await;
            match put {
                Ok(response) if response.status() == StatusCode::CREATED => return Ok(()),
                Ok(response) if !is_retryable(response.status()) || attempt == ATTEMPTS => {
                    return Err(self
                        .fail(response, "PUT", &scope, &format!("upload of {digest}"))
                        .await)
                }
                Ok(response) => {
                    tracing::warn!(registry = %self.registry, status = %response.status(), attempt, "blob upload failed; retrying in {delay:?}");
                }
                Err(e) if attempt == ATTEMPTS => return Err(self.unreachable(&e)),
                Err(e) => {
                    tracing::warn!(registry = %self.registry, attempt, "blob upload failed: {}; retrying in {delay:?}", describe_reqwest(&e));
                }
            }
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
        unreachable!("the last attempt always returns")
    }

    /// Downloads a blob into the blob store, verifying its digest while it streams.
    pub async fn download_blob(
        &self,
        repo: &str,
        digest: &Digest,
        store: &BlobStore,
    ) -> Result<()> {
        let scope = [(repo, "pull")];
        let response = self
            .send(&scope, |base| {
                self.http.get(format!("{base}/v2/{repo}/blobs/{digest}"))
            })
            .await?;
        if !response.status().is_success() {
            return Err(self
                .fail(response, "GET", &scope, &format!("blob {digest} of {repo}"))
                .await
                .into());
        }
        let mut writer = store.writer()?;
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.unreachable(&e))?;
            writer.write_all(&chunk).map_err(|e| {
                Error::Image(format!("cannot write blob {digest} to the cache: {e}"))
            })?;
        }
        let (actual, _) = writer.commit()?;
        if &actual != digest {
            let _ = std::fs::remove_file(store.path(&actual));
            return Err(RegistryError::DigestMismatch {
                registry: self.registry.clone(),
                what: format!("blob of {repo}"),
                expected: digest.to_string(),
                actual: actual.to_string(),
            }
            .into());
        }
        Ok(())
    }

    // === manifests ===

    /// Fetches a manifest or index by tag or digest.
    pub async fn get_manifest(
        &self,
        repo: &str,
        reference: &str,
    ) -> Result<FetchedManifest, RegistryError> {
        let scope = [(repo, "pull")];
        let response = self
            .send(&scope, |base| {
                self.http
                    .get(format!("{base}/v2/{repo}/manifests/{reference}"))
                    .header(reqwest::header::ACCEPT, crate::image::MANIFEST_ACCEPT)
            })
            .await?;
        if !response.status().is_success() {
            return Err(self
                .fail(
                    response,
                    "GET",
                    &scope,
                    &format!("image {}/{repo}:{reference}", self.registry),
                )
                .await);
        }
        let header_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or(v).trim().to_string());
        let bytes = response
            .bytes()
            .await
            .map_err(|e| self.unreachable(&e))?
            .to_vec();
        let digest = Digest::of(&bytes);
        if let Ok(expected) = reference.parse::<Digest>() {
            if expected != digest {
                return Err(RegistryError::DigestMismatch {
                    registry: self.registry.clone(),
                    what: format!("manifest of {repo}"),
                    expected: expected.to_string(),
                    actual: digest.to_string(),
                });
            }
        }
        let media_type = match header_type {
            Some(t) if t != "application/json" && !t.is_empty() => t,
            _ => crate::image::sniff_media_type(&bytes).unwrap_or_default(),
        };
        Ok(FetchedManifest {
            bytes,
            media_type,
            digest,
        })
    }

    /// Stores a manifest under a tag or its digest. The registry keeps these exact bytes.
    /// Returns whether the registry indexed the manifest's `subject` itself (it answered with
    /// `OCI-Subject`: it has the OCI 1.1 referrers API).
    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        bytes: &[u8],
        media_type: &str,
    ) -> Result<bool, RegistryError> {
        let scope = [(repo, "pull,push")];
        let response = self
            .send(&scope, |base| {
                self.http
                    .put(format!("{base}/v2/{repo}/manifests/{reference}"))
                    .header(CONTENT_TYPE, media_type)
                    .body(bytes.to_vec())
            })
            .await?;
        if response.status().is_success() {
            Ok(response.headers().contains_key("oci-subject"))
        } else {
            Err(self
                .fail(response, "PUT", &scope, &format!("manifest {reference}"))
                .await)
        }
    }

    /// Deletes a manifest by digest (and with it every tag pointing at it). Registries
    /// refuse this unless deleting is enabled in their configuration.
    pub async fn delete_manifest(&self, repo: &str, digest: &Digest) -> Result<(), RegistryError> {
        let scope = [(repo, "pull,push,delete")];
        let response = self
            .send(&scope, |base| {
                self.http
                    .delete(format!("{base}/v2/{repo}/manifests/{digest}"))
            })
            .await?;
        match response.status() {
            s if s.is_success() => Ok(()),
            StatusCode::METHOD_NOT_ALLOWED => Err(RegistryError::Refused {
                registry: self.registry.clone(),
                method: "DELETE",
                path: format!("/v2/{repo}/manifests/{digest}"),
                status: 405,
                detail: "the registry does not allow deleting manifests; enable it in the \
                         registry's configuration (for the CNCF distribution registry: \
                         storage.delete.enabled: true, or REGISTRY_STORAGE_DELETE_ENABLED=true)"
                    .into(),
            }),
            _ => Err(self
                .fail(response, "DELETE", &scope, &format!("manifest {digest}"))
                .await),
        }
    }

    // === tags ===

    /// Every tag of a repository (`GET /v2/NAME/tags/list`, following `Link` pages).
    pub async fn list_tags(&self, repo: &str) -> Result<Vec<String>, RegistryError> {
        #[derive(Deserialize)]
        struct TagList {
            tags: Option<Vec<String>>,
        }
        let scope = [(repo, "pull")];
        let mut tags = Vec::new();
        let mut next = Some(format!("/v2/{repo}/tags/list?n=1000"));
        // Pages already fetched: a registry whose `Link` points back to one of them would
        // otherwise be followed forever.
        let mut seen = HashSet::new();
        while let Some(path) = next.take() {
            if !seen.insert(path.clone()) {
                break;
            }
            let response = self
                .send(&scope, |base| self.http.get(format!("{base}{path}")))
                .await?;
            if response.status() == StatusCode::NOT_FOUND {
                // A repository nothing was pushed to yet has no tags.
                return Ok(tags);
            }
            if !response.status().is_success() {
                return Err(self
                    .fail(response, "GET", &scope, &format!("tags of {repo}"))
                    .await);
            }
            next = next_page(response.headers());
            let bytes = response.bytes().await.map_err(|e| self.unreachable(&e))?;
            let page: TagList =
                serde_json::from_slice(&bytes).map_err(|e| RegistryError::Protocol {
                    registry: self.registry.clone(),
                    detail: format!("the tag list of {repo} is not valid: {e}"),
                })?;
            tags.extend(page.tags.unwrap_or_default());
        }
        Ok(tags)
    }

    /// Resolves the Location of an upload session against the registry's URL.
    fn location(&self, response: &Response) -> Option<String> {
        let location = response.headers().get(LOCATION)?.to_str().ok()?;
        response.url().join(location).ok().map(String::from)
    }
}

/// The path of the next page from the `Link` headers (RFC 8288), e.g.
/// `Link: </v2/app/tags/list?n=1000&last=v9>; rel="next"`.
///
/// Every `Link` header is read, and each header value may hold several comma-separated
/// links; the first whose `rel` (quoted or not, possibly a space-separated list) names
/// `next` wins. An absolute target keeps only its path and query, on the endpoint already
/// in use.
fn next_page(headers: &HeaderMap) -> Option<String> {
    let target = headers
        .get_all(reqwest::header::LINK)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(split_outside_quotes::<','>)
        .find_map(|link| {
            let (target, params) = parse_link(link)?;
            let is_next = split_outside_quotes::<';'>(params).any(|param| {
                let (name, value) = param.split_once('=').unwrap_or((param, ""));
                name.trim().eq_ignore_ascii_case("rel")
                    && value
                        .trim()
                        .trim_matches('"')
                        .split_ascii_whitespace()
                        .any(|rel| rel.eq_ignore_ascii_case("next"))
            });
            is_next.then_some(target)
        })?;
    match reqwest::Url::parse(target) {
        Ok(url) => Some(match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_string(),
        }),
        Err(_) if target.is_empty() => None,
        Err(_) => Some(target.to_string()),
    }
}

/// One link `<target>; params` split into the target and the parameters after it.
fn parse_link(link: &str) -> Option<(&str, &str)> {
    let rest = link.trim().strip_prefix('<')?;
    let (target, params) = rest.split_once('>')?;
    Some((target.trim(), params))
}

/// Splits on `SEP` outside double quotes and outside `<...>`, so a comma in a quoted
/// parameter or in a link target does not split a link.
fn split_outside_quotes<const SEP: char>(value: &str) -> impl Iterator<Item = &str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut bracketed, mut escaped) = (0, false, false, false);
    for (i, c) in value.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' if !bracketed => quoted = !quoted,
            '<' if !quoted => bracketed = true,
            '>' if !quoted => bracketed = false,
            c if c == SEP && !quoted && !bracketed => {
                parts.push(&value[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&value[start..]);
    parts.into_iter().filter(|part| !part.trim().is_empty())
}

/// Whether a 401 says the token lacks a permission (`error="insufficient_scope"`).
fn insufficient_scope(headers: &HeaderMap) -> bool {
    headers
        .get(WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("insufficient_scope"))
}

fn with_auth(request: RequestBuilder, auth: Option<&str>) -> RequestBuilder {
    match auth {
        Some(value) => request.header(AUTHORIZATION, value),
        None => request,
    }
}

/// Connection errors worth no retry: TLS failures (an untrusted certificate, a server that
/// does not speak TLS) and errors that are not about the network at all.
fn is_permanent(e: &reqwest::Error) -> bool {
    let detail = describe_reqwest(e).to_ascii_lowercase();
    !(e.is_connect() || e.is_timeout() || e.is_request())
        || detail.contains("certificate")
        || detail.contains("invalidcontenttype")
        || detail.contains("tls")
}

fn is_retryable(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
}

fn scope_strings(scope: Scope<'_>) -> Vec<String> {
    scope
        .iter()
        .map(|(repo, actions)| format!("repository:{repo}:{actions}"))
        .collect()
}

/// Parses `WWW-Authenticate: Bearer realm="...",service="..."` or `Basic realm="..."`.
fn parse_challenge(headers: &HeaderMap) -> Challenge {
    let Some(value) = headers.get(WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()) else {
        return Challenge::Basic;
    };
    let (scheme, params) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Challenge::Basic;
    }
    let mut realm = None;
    let mut service = None;
    for (key, value) in parse_auth_params(params) {
        match key.to_ascii_lowercase().as_str() {
            "realm" => realm = Some(value),
            "service" => service = Some(value),
            _ => {}
        }
    }
    match realm {
        Some(realm) => Challenge::Bearer { realm, service },
        None => Challenge::Basic,
    }
}

/// Splits `a="x,y",b=z` into pairs, honouring quotes.
fn parse_auth_params(params: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    let mut rest = params.trim();
    while let Some((key, after)) = rest.split_once('=') {
        let key = key.trim().trim_start_matches(',').trim().to_string();
        let (value, remaining) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"').unwrap_or(quoted.len());
            (
                quoted[..end].to_string(),
                quoted.get(end + 1..).unwrap_or(""),
            )
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        pairs.push((key, value));
        rest = remaining.trim_start_matches([',', ' ']);
    }
    pairs
}

/// Reads the registry's error body (`{"errors":[{"code","message"}]}`) up to a limit.
async fn error_detail(response: Response) -> String {
    let status = response.status();
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(Ok(chunk)) = stream.next().await {
        body.extend_from_slice(&chunk);
        if body.len() >= ERROR_BODY_LIMIT {
            body.truncate(ERROR_BODY_LIMIT);
            break;
        }
    }
    #[derive(Deserialize)]
    struct Errors {
        errors: Vec<ErrorEntry>,
    }
    #[derive(Deserialize)]
    struct ErrorEntry {
        code: Option<String>,
        message: Option<String>,
    }
    if let Ok(parsed) = serde_json::from_slice::<Errors>(&body) {
        let parts: Vec<String> = parsed
            .errors
            .iter()
            .map(|e| match (&e.code, &e.message) {
                (Some(c), Some(m)) => format!("{c}: {m}"),
                (Some(c), None) => c.clone(),
                (None, Some(m)) => m.clone(),
                (None, None) => String::new(),
            })
            .filter(|s| !s.is_empty())
            .collect();
        if !parts.is_empty() {
            return parts.join("; ");
        }
    }
    let text = String::from_utf8_lossy(&body);
    let text = text.trim();
    if text.is_empty() {
        format!("HTTP {status}")
    } else {
        format!(
            "HTTP {status}: {}",
            text.chars().take(300).collect::<String>()
        )
    }
}

/// A reqwest error with its causes, without the request URL (which may hold upload state).
fn describe_reqwest(e: &reqwest::Error) -> String {
    // The first message is reqwest's own, which names the URL: only the causes are shown.
    let causes = crate::error::messages(e).split_off(1);
    let kind = if e.is_connect() {
        "connection failed"
    } else if e.is_timeout() {
        "timed out"
    } else {
        "request failed"
    };
    if causes.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}: {}", causes.join(": "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenge_is_parsed_with_quoted_commas() {
        let mut headers = HeaderMap::new();
        headers.insert(
            WWW_AUTHENTICATE,
            r#"Bearer realm="https://auth.local/token",service="registry.local",scope="repository:a:pull,push""#
                .parse()
                .unwrap(),
        );
        match parse_challenge(&headers) {
            Challenge::Bearer { realm, service } => {
                assert_eq!(realm, "https://auth.local/token");
                assert_eq!(service.as_deref(), Some("registry.local"));
            }
            other => panic!("expected bearer, got {other:?}"),
        }
        headers.insert(
            WWW_AUTHENTICATE,
            r#"Basic realm="Registry""#.parse().unwrap(),
        );
        assert!(matches!(parse_challenge(&headers), Challenge::Basic));
    }

    fn link_headers(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(reqwest::header::LINK, value.parse().unwrap());
        }
        headers
    }

    #[test]
    fn next_page_reads_quoted_and_unquoted_rel() {
        let quoted = link_headers(&[r#"</v2/app/tags/list?n=2&last=b>; rel="next""#]);
        assert_eq!(
            next_page(&quoted).as_deref(),
            Some("/v2/app/tags/list?n=2&last=b")
        );
        let unquoted = link_headers(&["</v2/app/tags/list?last=b>;rel=next"]);
        assert_eq!(
            next_page(&unquoted).as_deref(),
            Some("/v2/app/tags/list?last=b")
        );
        let upper = link_headers(&[r#"</v2/app/tags/list?last=c> ; REL = "Next""#]);
        assert_eq!(
            next_page(&upper).as_deref(),
            Some("/v2/app/tags/list?last=c")
        );
        let list = link_headers(&[r#"</v2/app/tags/list?last=d>; rel="prefetch next""#]);
        assert_eq!(
            next_page(&list).as_deref(),
            Some("/v2/app/tags/list?last=d")
        );
    }

    #[test]
    fn next_page_splits_links_on_commas_across_headers() {
        let one_header = link_headers(&[
            r#"</v2/app/tags/list?last=a>; rel="prev"; title="a, b", </v2/app/tags/list?last=z>; rel="next""#,
        ]);
        assert_eq!(
            next_page(&one_header).as_deref(),
            Some("/v2/app/tags/list?last=z")
        );
        let two_headers = link_headers(&[
            r#"</v2/app/tags/list?last=a>; rel="prev""#,
            r#"<https://registry.local:5000/v2/app/tags/list?n=10&last=y>; rel="next""#,
        ]);
        assert_eq!(
            next_page(&two_headers).as_deref(),
            Some("/v2/app/tags/list?n=10&last=y")
        );
        let comma_in_target = link_headers(&[r#"</v2/app/tags/list?last=a,b>; rel=next"#]);
        assert_eq!(
            next_page(&comma_in_target).as_deref(),
            Some("/v2/app/tags/list?last=a,b")
        );
    }

    #[test]
    fn next_page_ignores_other_relations() {
        assert_eq!(next_page(&HeaderMap::new()), None);
        let prev = link_headers(&[r#"</v2/app/tags/list?last=a>; rel="prev""#]);
        assert_eq!(next_page(&prev), None);
        let not_rel = link_headers(&[r#"</v2/app/tags/list?last=a>; title="rel=next""#]);
        assert_eq!(next_page(&not_rel), None);
        let nextish = link_headers(&[r#"</v2/app/tags/list?last=a>; rel="next-archive""#]);
        assert_eq!(next_page(&nextish), None);
        let malformed = link_headers(&[r#"/v2/app/tags/list?last=a; rel="next""#]);
        assert_eq!(next_page(&malformed), None);
    }

    /// A plain-HTTP registry on 127.0.0.1 whose tag list has two pages, the second linking
    /// back to the first; answers every request with `Connection: close`.
    fn serve_looping_tag_list() -> (String, Arc<Mutex<Vec<String>>>) {
        use std::io::{BufRead, BufReader, Read};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let requested = Arc::new(Mutex::new(Vec::new()));
        let log = requested.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let mut reader = BufReader::new(stream);
                // A TLS client hello (the HTTPS try) is refused by closing.
                if reader.fill_buf().map_or(true, |b| b.first() != Some(&b'G')) {
                    continue;
                }
                let mut line = String::new();
                let _ = reader.read_line(&mut line);
                let path = line.split(' ').nth(1).unwrap_or_default().to_string();
                loop {
                    let mut header = String::new();
                    if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
                        break;
                    }
                }
                log.lock().unwrap().push(path.clone());
                let first = "/v2/app/tags/list?n=1000";
                let (link, body) = match path.as_str() {
                    "/v2/" => (String::new(), "{}"),
                    p if p == first => (
                        "Link: </v2/app/tags/list?n=1000&last=a>; rel=\"next\"\r\n".to_string(),
                        r#"{"tags":["a"]}"#,
                    ),
                    _ => (
                        format!("Link: <{first}>; rel=next\r\n"),
                        r#"{"tags":["b"]}"#,
                    ),
                };
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{link}\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let mut stream = reader.into_inner();
                let _ = std::io::Write::write_all(&mut stream, response.as_bytes());
                let _ = stream.read(&mut [0; 1]);
            }
        });
        (host, requested)
    }

    #[tokio::test]
    async fn list_tags_stops_when_a_page_repeats() {
        let (host, requested) = serve_looping_tag_list();
        let registries = Registries::new(&TransportOptions {
            insecure_registries: vec![host.clone()],
            ..Default::default()
        })
        .unwrap();
        let client = registries.client(&host).unwrap();
        let tags = tokio::time::timeout(Duration::from_secs(30), client.list_tags("app"))
            .await
            .expect("the tag list ends")
            .unwrap();
        assert_eq!(tags, ["a", "b"]);
        let requested = requested.lock().unwrap().clone();
        assert_eq!(
            requested
                .iter()
                .filter(|p| p.contains("tags/list"))
                .collect::<Vec<_>>(),
            [
                "/v2/app/tags/list?n=1000",
                "/v2/app/tags/list?n=1000&last=a"
            ]
        );
    }

    #[test]
    fn retryable_statuses() {
        assert!(is_retryable(StatusCode::BAD_GATEWAY));
        assert!(is_retryable(StatusCode::TOO_MANY_REQUESTS));
        assert!(!is_retryable(StatusCode::NOT_FOUND));
        assert!(!is_retryable(StatusCode::UNAUTHORIZED));
    }
}
