//! Sending requests to one registry under the network layer's retry policy, and reading its
//! answers: which are worth another attempt (connection failures; 408, 429 and 5xx; the
//! distribution spec's `TOOMANYREQUESTS` and `UNAVAILABLE` error codes whatever the status;
//! each after the `Retry-After` the registry asked for), and what an error answer says.

use futures_util::StreamExt;
use reqwest::{RequestBuilder, Response, ResponseBuilderExt as _};
use serde::Deserialize;

use super::RegistryError;
use crate::net::{retry, RetryPolicy, Transience};

/// Error bodies are read up to this size.
const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// The error codes of the distribution spec that say "try again later", whatever the status.
const TRANSIENT_CODES: [&str; 2] = ["TOOMANYREQUESTS", "UNAVAILABLE"];

/// Sends requests to one registry, naming it in errors.
pub(super) struct Sender {
    pub http: reqwest::Client,
    pub registry: String,
}

/// Why an attempt got no answer to keep.
pub(super) enum Failure {
    /// The request got no answer.
    Unanswered(reqwest::Error),
    /// The registry answered that it is busy or failing (the answer's body is buffered).
    Busy(Response, Transience),
}

impl Failure {
    pub fn transience(&self) -> Transience {
        match self {
            Failure::Unanswered(e) => retry::reqwest_error(e),
            Failure::Busy(_, transience) => *transience,
        }
    }
}

impl Sender {
    /// Sends the request `make` builds (again for each attempt) under `policy`. An answer is
    /// returned whatever its status once the registry is no longer busy or the policy gives
    /// up; error answers come with their body read into memory.
    pub async fn send(
        &self,
        policy: RetryPolicy,
        make: impl Fn() -> RequestBuilder,
    ) -> Result<Response, RegistryError> {
        self.attempt(policy, make)
            .await
            .map_err(|e| self.unreachable(&e))
    }

    /// [`Sender::send`], with the error of a request that got no answer as reqwest gave it.
    pub async fn attempt(
        &self,
        policy: RetryPolicy,
        make: impl Fn() -> RequestBuilder,
    ) -> Result<Response, reqwest::Error> {
        let result = policy
            .run(
                || async { answer(make().send().await.map_err(Failure::Unanswered)?).await },
                Failure::transience,
                |failure, attempt, wait| {
                    self.log_retry("registry busy or failing", failure, attempt, wait)
                },
            )
            .await;
        match result {
            Ok(response) | Err(Failure::Busy(response, _)) => Ok(response),
            Err(Failure::Unanswered(e)) => Err(e),
        }
    }

    /// Warns of a failure about to be retried; `what` names a busy answer.
    pub fn log_retry(
        &self,
        what: &str,
        failure: &Failure,
        attempt: u32,
        wait: std::time::Duration,
    ) {
        match failure {
            Failure::Busy(response, _) => {
                tracing::warn!(registry = %self.registry, status = %response.status(), attempt, "{what}; retrying in {wait:?}");
            }
            Failure::Unanswered(e) => {
                tracing::warn!(registry = %self.registry, attempt, "{}; retrying in {wait:?}", describe_reqwest(e));
            }
        }
    }

    /// The error for a request that got no answer, with a hint when TLS is what failed.
    pub fn unreachable(&self, e: &reqwest::Error) -> RegistryError {
        let hint = if retry::tls_failure(e).is_some() {
            "\nhint: pass --registry-ca FILE with the registry's CA certificate, or \
             --insecure-registry HOST:PORT for a registry without valid TLS"
        } else {
            ""
        };
        RegistryError::Unreachable {
            registry: self.registry.clone(),
            detail: describe_reqwest(e),
            hint,
        }
    }
}

/// A success as it is; an error answer with its body read into memory, and judged busy
/// ([`Failure::Busy`]) when it is worth another attempt.
pub(super) async fn answer(response: Response) -> Result<Response, Failure> {
    let status = response.status();
    if !status.is_client_error() && !status.is_server_error() {
        return Ok(response);
    }
    let (url, version, headers) = (
        response.url().clone(),
        response.version(),
        response.headers().clone(),
    );
    let body = read_limited(response).await;
    let transience = match retry::http_status(status, &headers) {
        Transience::Permanent if has_transient_code(&body) => Transience::Transient {
            retry_after: retry::retry_after(&headers),
        },
        judged => judged,
    };
    let mut buffered = http::Response::builder()
        .status(status)
        .version(version)
        .url(url);
    if let Some(target) = buffered.headers_mut() {
        *target = headers;
    }
    let buffered = Response::from(buffered.body(body).expect("the parts of a valid response"));
    match transience {
        Transience::Permanent => Ok(buffered),
        transient => Err(Failure::Busy(buffered, transient)),
    }
}

async fn read_limited(response: Response) -> Vec<u8> {
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(Ok(chunk)) = stream.next().await {
        body.extend_from_slice(&chunk);
        if body.len() >= ERROR_BODY_LIMIT {
            body.truncate(ERROR_BODY_LIMIT);
            break;
        }
    }
    body
}

/// `{"errors":[{"code","message"}]}`, the distribution spec's error body.
#[derive(Deserialize)]
struct ErrorBody {
    errors: Vec<ErrorEntry>,
}

#[derive(Deserialize)]
struct ErrorEntry {
    code: Option<String>,
    message: Option<String>,
}

fn has_transient_code(body: &[u8]) -> bool {
    serde_json::from_slice::<ErrorBody>(body).is_ok_and(|parsed| {
        parsed.errors.iter().any(|e| {
            e.code
                .as_deref()
                .is_some_and(|c| TRANSIENT_CODES.contains(&c))
        })
    })
}

/// What the registry's error answer says: its error codes and messages, else its text.
pub(super) async fn error_detail(response: Response) -> String {
    let status = response.status();
    let body = read_limited(response).await;
    if let Ok(parsed) = serde_json::from_slice::<ErrorBody>(&body) {
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
pub(super) fn describe_reqwest(e: &reqwest::Error) -> String {
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

    fn answered(status: u16, body: &str) -> Response {
        Response::from(
            http::Response::builder()
                .status(status)
                .body(body.to_string())
                .unwrap(),
        )
    }

    #[tokio::test]
    async fn the_spec_codes_for_later_are_retried_whatever_the_status() {
        let busy = r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}"#;
        assert!(matches!(
            answer(answered(400, busy)).await,
            Err(Failure::Busy(_, Transience::Transient { .. }))
        ));
        let unavailable = r#"{"errors":[{"code":"UNAVAILABLE"}]}"#;
        assert!(answer(answered(403, unavailable)).await.is_err());
        let denied = r#"{"errors":[{"code":"DENIED","message":"no"}]}"#;
        let kept = answer(answered(403, denied)).await.ok().unwrap();
        assert_eq!(error_detail(kept).await, "DENIED: no");
        assert!(answer(answered(503, "")).await.is_err());
        assert!(answer(answered(202, "")).await.is_ok());
    }
}
