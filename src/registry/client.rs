//! A thin client for the OCI distribution API, its HTTP verbs: ping, blob HEAD,
//! cross-repository mount, streamed uploads from disk, streamed downloads to the blob store
//! with digest verification, manifest GET/PUT/DELETE and tag lists. How to authenticate is
//! [`super::challenge`]'s and [`super::token`]'s to say; sending with retries, and reading
//! the registry's answers, is [`super::send`]'s.
//!
//! Everything fnbuild pushes goes through `upload_blob` and `put_manifest`; nothing here
//! decides what to push (that is `output`'s job).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use reqwest::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use reqwest::{RequestBuilder, Response, StatusCode};
use serde::Deserialize;

use super::auth::{Credential, DockerConfig};
use super::challenge::{insufficient_scope, parse_challenge, Challenge};
use super::link::next_page;
use super::reference::api_host;
use super::send::{answer, error_detail, Failure, Sender};
use super::token::{TokenCache, TokenError, TokenService};
use super::RegistryError;
use crate::cache::BlobStore;
use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::image::Stored;
use crate::net::{retry, RetryPolicy, Transience};
use std::io::Write as _;

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
            sender: Sender {
                registry: registry.to_string(),
                http: if insecure {
                    self.http_unverified.clone()
                } else {
                    self.http.clone()
                },
            },
            https_url: format!("https://{host}"),
            http_fallback: (insecure || is_loopback(registry)).then(|| format!("http://{host}")),
            base_url: tokio::sync::OnceCell::new(),
            credential: self.docker.credential_for(registry)?,
            config_path: self.docker.path().map(Path::to_path_buf),
            tokens: TokenCache::default(),
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

struct Endpoint {
    url: String,
    challenge: Challenge,
}

/// A client for one registry host.
pub struct RegistryClient {
    sender: Sender,
    https_url: String,
    http_fallback: Option<String>,
    base_url: tokio::sync::OnceCell<Endpoint>,
    credential: Option<Credential>,
    config_path: Option<PathBuf>,
    tokens: TokenCache,
}

/// Why an upload attempt failed: its `PUT`, worth another attempt when the registry was busy
/// or did not answer; or anything else, which is not.
enum UploadFailure {
    Put(Failure),
    Fatal(Error),
}

impl UploadFailure {
    fn transience(&self) -> Transience {
        match self {
            UploadFailure::Put(failure) => failure.transience(),
            UploadFailure::Fatal(_) => Transience::Permanent,
        }
    }
}

/// The repositories and actions a request needs (`repository:NAME:pull,push`).
type Scope<'a> = &'a [(&'a str, &'a str)];

impl RegistryClient {
    pub fn registry(&self) -> &str {
        &self.sender.registry
    }

    // === connection and auth ===

    async fn endpoint(&self) -> Result<&Endpoint, RegistryError> {
        self.base_url.get_or_try_init(|| self.ping()).await
    }

    /// `GET /v2/`: finds the scheme that works and how the registry authenticates.
    async fn ping(&self) -> Result<Endpoint, RegistryError> {
        // With a plain-HTTP fallback, HTTPS gets one try: a registry without TLS fails it at once.
        let https_policy = match self.http_fallback {
            Some(_) => RetryPolicy::DEFAULT.with_attempts(1),
            None => RetryPolicy::DEFAULT,
        };
        let mut urls = vec![(self.https_url.clone(), https_policy)];
        urls.extend(
            self.http_fallback
                .clone()
                .map(|url| (url, RetryPolicy::DEFAULT)),
        );
        // Why HTTPS failed, when the server does speak TLS (its certificate is not trusted,
        // say): then its answer to plain HTTP (an error) is not the one that explains.
        let mut tls_refusal = None;
        let mut last_error = None;
        for (url, policy) in urls {
            let response = match self
                .sender
                .attempt(policy, || self.sender.http.get(format!("{url}/v2/")))
                .await
            {
                Ok(response) => response,
                Err(e) => {
                    let spoke_tls =
                        retry::tls_failure(&e).is_some_and(|tls| !retry::is_not_tls(tls));
                    let error = Some(self.sender.unreachable(&e));
                    if spoke_tls {
                        tls_refusal = error;
                    } else {
                        last_error = error;
                    }
                    continue;
                }
            };
            let challenge = match response.status() {
                StatusCode::UNAUTHORIZED => parse_challenge(response.headers()),
                status if status.is_success() => Challenge::Anonymous,
                status => {
                    if let Some(https_error) = tls_refusal {
                        return Err(https_error);
                    }
                    let detail = if status.is_server_error() {
                        error_detail(response).await
                    } else {
                        "this is not an OCI distribution registry API endpoint".into()
                    };
                    return Err(RegistryError::Refused {
                        registry: self.sender.registry.clone(),
                        method: "GET",
                        path: "/v2/".into(),
                        status: status.as_u16(),
                        detail,
                    });
                }
            };
            tracing::debug!(registry = %self.sender.registry, %url, ?challenge, "registry reached");
            return Ok(Endpoint { url, challenge });
        }
        Err(last_error
            .or(tls_refusal)
            .expect("at least one URL was tried"))
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
                let scopes = scope_strings(scope);
                let service = TokenService {
                    sender: &self.sender,
                    realm,
                    service: service.as_deref(),
                    credential: self.credential.as_ref(),
                };
                let fetch = async {
                    service.fetch(&scopes).await.map_err(|e| match e {
                        TokenError::Failed(e) => e,
                        TokenError::Refused {
                            status: StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN,
                            detail,
                            ..
                        } => self.unauthorized(scope, &detail),
                        TokenError::Refused {
                            method,
                            status,
                            detail,
                        } => RegistryError::Refused {
                            registry: self.sender.registry.clone(),
                            method,
                            path: "(token endpoint)".into(),
                            status: status.as_u16(),
                            detail,
                        },
                    })
                };
                self.tokens
                    .authorization(&scopes.join(" "), fetch)
                    .await
                    .map(Some)
            }
        }
    }

    fn unauthorized(&self, scope: Scope<'_>, detail: &str) -> RegistryError {
        let repository = scope.first().map_or("", |s| s.0).to_string();
        let Some(credential) = &self.credential else {
            return RegistryError::CredentialsRequired {
                registry: self.sender.registry.clone(),
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
            registry: self.sender.registry.clone(),
            repository,
            detail: detail.to_string(),
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
            .sender
            .send(RetryPolicy::DEFAULT, || {
                with_auth(make(base), auth.as_deref())
            })
            .await?;
        // A token that expired early is renewed once; a token that lacks a permission is not
        // (asking again gives the same answer).
        if response.status() == StatusCode::UNAUTHORIZED
            && auth.as_deref().is_some_and(|a| a.starts_with("Bearer"))
            && !insufficient_scope(response.headers())
        {
            self.tokens.forget(&scope_strings(scope).join(" "));
            let auth = self.authorization(scope).await?;
            return self
                .sender
                .send(RetryPolicy::DEFAULT, || {
                    with_auth(make(base), auth.as_deref())
                })
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
                registry: self.sender.registry.clone(),
                repository: scope.first().map_or("", |s| s.0).to_string(),
                detail,
            },
            StatusCode::NOT_FOUND => RegistryError::NotFound {
                registry: self.sender.registry.clone(),
                what: what.to_string(),
                detail,
            },
            _ => RegistryError::Refused {
                registry: self.sender.registry.clone(),
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
                self.sender
                    .http
                    .head(format!("{base}/v2/{repo}/blobs/{digest}"))
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
                self.sender
                    .http
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
    ) -> Result<()> {
        let scope = [(repo, "pull,push")];
        let outcome = RetryPolicy::DEFAULT
            .run(
                || self.upload_once(&scope, digest, size, path, on_sent.clone()),
                UploadFailure::transience,
                |failure, attempt, wait| {
                    if let UploadFailure::Put(failure) = failure {
                        self.sender
                            .log_retry("blob upload failed", failure, attempt, wait);
                    }
                },
            )
            .await;
        Err(match outcome {
            Ok(()) => return Ok(()),
            Err(UploadFailure::Put(Failure::Unanswered(e))) => self.sender.unreachable(&e).into(),
            Err(UploadFailure::Put(Failure::Busy(response, _))) => self
                .fail(response, "PUT", &scope, &format!("upload of {digest}"))
                .await
                .into(),
            Err(UploadFailure::Fatal(e)) => e,
        })
    }

    /// One attempt of [`RegistryClient::upload_blob`].
    async fn upload_once(
        &self,
        scope: Scope<'_>,
        digest: &Digest,
        size: u64,
        path: &Path,
        on_sent: Arc<dyn Fn(u64) + Send + Sync>,
    ) -> Result<(), UploadFailure> {
        let fatal = |e: RegistryError| UploadFailure::Fatal(e.into());
        let repo = scope[0].0;
        let started = self
            .send(scope, |base| {
                self.sender
                    .http
                    .post(format!("{base}/v2/{repo}/blobs/uploads/"))
                    .header(CONTENT_LENGTH, 0)
            })
            .await
            .map_err(fatal)?;
        if started.status() != StatusCode::ACCEPTED {
            return Err(fatal(
                self.fail(started, "POST", scope, &format!("upload of {digest}"))
                    .await,
            ));
        }
        let location = self.location(&started).ok_or_else(|| {
            fatal(RegistryError::Protocol {
                registry: self.sender.registry.clone(),
                detail: "an upload session was opened without a Location header".into(),
            })
        })?;
        let file = std::fs::File::open(path)
            .io_context("open blob", path)
            .map_err(UploadFailure::Fatal)?;
        let mut sent = 0;
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
        let auth = self.authorization(scope).await.map_err(fatal)?;
        let response = with_auth(
            self.sender
                .http
                .put(&location)
                .query(&[("digest", digest.to_string())])
                .header(CONTENT_TYPE, "application/octet-stream")
                .header(CONTENT_LENGTH, size)
                .body(body),
            auth.as_deref(),
        )
        .send()
        .await
        .map_err(|e| UploadFailure::Put(Failure::Unanswered(e)))?;
        if response.status() == StatusCode::CREATED {
            return Ok(());
        }
        match answer(response).await {
            Ok(refused) => Err(fatal(
                self.fail(refused, "PUT", scope, &format!("upload of {digest}"))
                    .await,
            )),
            Err(busy) => Err(UploadFailure::Put(busy)),
        }
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
                self.sender
                    .http
                    .get(format!("{base}/v2/{repo}/blobs/{digest}"))
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
            let chunk = chunk.map_err(|e| self.sender.unreachable(&e))?;
            writer
                .write_all(&chunk)
                .io_context("write blob to", store.path(digest))?;
        }
        let (actual, _) = writer.commit()?;
        if &actual != digest {
            let _ = std::fs::remove_file(store.path(&actual));
            return Err(RegistryError::DigestMismatch {
                registry: self.sender.registry.clone(),
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
    pub async fn get_manifest(&self, repo: &str, reference: &str) -> Result<Stored, RegistryError> {
        let scope = [(repo, "pull")];
        let response = self
            .send(&scope, |base| {
                self.sender
                    .http
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
                    &format!("image {}/{repo}:{reference}", self.sender.registry),
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
            .map_err(|e| self.sender.unreachable(&e))?
            .to_vec();
        let digest = Digest::of(&bytes);
        if let Ok(expected) = reference.parse::<Digest>() {
            if expected != digest {
                return Err(RegistryError::DigestMismatch {
                    registry: self.sender.registry.clone(),
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
        Ok(Stored {
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
                self.sender
                    .http
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
                self.sender
                    .http
                    .delete(format!("{base}/v2/{repo}/manifests/{digest}"))
            })
            .await?;
        match response.status() {
            s if s.is_success() => Ok(()),
            StatusCode::METHOD_NOT_ALLOWED => Err(RegistryError::Refused {
                registry: self.sender.registry.clone(),
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
                .send(&scope, |base| self.sender.http.get(format!("{base}{path}")))
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
            let bytes = response
                .bytes()
                .await
                .map_err(|e| self.sender.unreachable(&e))?;
            let page: TagList =
                serde_json::from_slice(&bytes).map_err(|e| RegistryError::Protocol {
                    registry: self.sender.registry.clone(),
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

fn with_auth(request: RequestBuilder, auth: Option<&str>) -> RequestBuilder {
    match auth {
        Some(value) => request.header(AUTHORIZATION, value),
        None => request,
    }
}

fn scope_strings(scope: Scope<'_>) -> Vec<String> {
    scope
        .iter()
        .map(|(repo, actions)| format!("repository:{repo}:{actions}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
