//! Bearer tokens from a registry's token service (the Docker/OCI token auth), cached per
//! scope until shortly before they expire, one fetch at a time. A password is sent as Basic
//! auth on `GET realm?service=...&scope=...`; an identity token (an OAuth2 refresh token) is
//! exchanged with `POST realm` of `grant_type=refresh_token`, as Docker and
//! go-containerregistry do, falling back to the GET only where the POST is refused. Neither
//! secret is ever put into a message.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use reqwest::header::AUTHORIZATION;
use reqwest::{Response, StatusCode};
use serde::Deserialize;

use super::auth::Credential;
use super::send::Sender;
use super::RegistryError;
use crate::net::RetryPolicy;

/// The `client_id` fnbuild names itself by to OAuth2 token services.
const CLIENT_ID: &str = "fnbuild";

/// Tokens by scope, with when to stop using them.
#[derive(Default)]
pub(super) struct TokenCache {
    tokens: Mutex<HashMap<String, (String, Instant)>>,
    fetching: tokio::sync::Mutex<()>,
}

impl TokenCache {
    /// The `Authorization` value for `scope`: the cached token, else one `fetch` gets. One
    /// fetch at a time: requests running in parallel for the same scope wait for the first
    /// one's token instead of each fetching their own.
    pub async fn authorization<F>(&self, scope: &str, fetch: F) -> Result<String, RegistryError>
    where
        F: std::future::Future<Output = Result<Token, RegistryError>>,
    {
        if let Some(token) = self.cached(scope) {
            return Ok(token);
        }
        let _fetching = self.fetching.lock().await;
        if let Some(token) = self.cached(scope) {
            return Ok(token);
        }
        let token = fetch.await?;
        // Renewed ten seconds early so a token never expires in flight.
        let expires = Instant::now() + token.lifetime.saturating_sub(Duration::from_secs(10));
        let header = format!("Bearer {}", token.value);
        self.tokens
            .lock()
            .expect("token cache poisoned")
            .insert(scope.to_string(), (token.value, expires));
        Ok(header)
    }

    /// Drops the token for `scope` (the registry turned it away).
    pub fn forget(&self, scope: &str) {
        self.tokens
            .lock()
            .expect("token cache poisoned")
            .remove(scope);
    }

    fn cached(&self, scope: &str) -> Option<String> {
        let tokens = self.tokens.lock().expect("token cache poisoned");
        let (token, expires) = tokens.get(scope)?;
        (*expires > Instant::now()).then(|| format!("Bearer {token}"))
    }
}

/// A token and how long it may be used.
pub(super) struct Token {
    value: String,
    lifetime: Duration,
}

/// The token service of a registry, as its challenge names it.
pub(super) struct TokenService<'a> {
    pub sender: &'a Sender,
    pub realm: &'a str,
    pub service: Option<&'a str>,
    pub credential: Option<&'a Credential>,
}

/// Why no token was had.
pub(super) enum TokenError {
    /// The token service answered with an error status.
    Refused {
        method: &'static str,
        status: StatusCode,
        detail: String,
    },
    /// The token service could not be reached, or answered with something else than a token.
    Failed(RegistryError),
}

impl From<RegistryError> for TokenError {
    fn from(e: RegistryError) -> Self {
        TokenError::Failed(e)
    }
}

impl TokenService<'_> {
    /// A token for `scopes` (`repository:NAME:ACTIONS` each).
    pub async fn fetch(&self, scopes: &[String]) -> Result<Token, TokenError> {
        if let Some(refresh_token) = self.credential.and_then(Credential::refresh_token) {
            let response = self.exchange(refresh_token, scopes).await?;
            // Not every token service speaks OAuth2: those that refuse the POST get the GET.
            if !matches!(
                response.status(),
                StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED | StatusCode::UNAUTHORIZED
            ) {
                return self.token_from("POST", response).await;
            }
            tracing::debug!(registry = %self.sender.registry, status = %response.status(), "the token service refused the identity token exchange; asking with Basic auth");
        }
        let response = self.get_with_basic(scopes).await?;
        self.token_from("GET", response).await
    }

    /// `POST realm` of the refresh-token grant (form-encoded).
    async fn exchange(
        &self,
        refresh_token: &str,
        scopes: &[String],
    ) -> Result<Response, RegistryError> {
        let mut form = vec![
            ("grant_type", "refresh_token".to_string()),
            ("refresh_token", refresh_token.to_string()),
            ("client_id", CLIENT_ID.to_string()),
            ("scope", scopes.join(" ")),
        ];
        form.extend(self.service.map(|s| ("service", s.to_string())));
        self.sender
            .send(RetryPolicy::DEFAULT, || {
                self.sender.http.post(self.realm).form(&form)
            })
            .await
    }

    /// `GET realm?service=...&scope=...`, with Basic auth when there is a credential.
    async fn get_with_basic(&self, scopes: &[String]) -> Result<Response, RegistryError> {
        let mut query: Vec<(&str, &str)> =
            self.service.map(|s| ("service", s)).into_iter().collect();
        query.extend(scopes.iter().map(|s| ("scope", s.as_str())));
        self.sender
            .send(RetryPolicy::DEFAULT, || {
                let request = self.sender.http.get(self.realm).query(&query);
                match self.credential {
                    Some(c) => request.header(AUTHORIZATION, c.basic_header()),
                    None => request,
                }
            })
            .await
    }

    /// The token in a successful answer (`token` or `access_token`, and `expires_in`).
    async fn token_from(
        &self,
        method: &'static str,
        response: Response,
    ) -> Result<Token, TokenError> {
        let status = response.status();
        if !status.is_success() {
            return Err(TokenError::Refused {
                method,
                status,
                detail: super::send::error_detail(response).await,
            });
        }
        #[derive(Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let protocol = |detail: String| RegistryError::Protocol {
            registry: self.sender.registry.clone(),
            detail,
        };
        let bytes = response
            .bytes()
            .await
            .map_err(|e| self.sender.unreachable(&e))?;
        let body: TokenResponse = serde_json::from_slice(&bytes).map_err(|e| {
            protocol(format!(
                "the token endpoint answered with something other than a token: {e}"
            ))
        })?;
        let value = body
            .token
            .or(body.access_token)
            .ok_or_else(|| protocol("the token endpoint's answer has no token".into()))?;
        Ok(Token {
            value,
            lifetime: Duration::from_secs(body.expires_in.unwrap_or(60).max(60)),
        })
    }
}
