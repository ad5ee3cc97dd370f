//! How a registry wants to be authenticated, as its `WWW-Authenticate` header says: anonymous,
//! Basic, or Bearer with the token service's realm (the Docker/OCI token auth); and whether a
//! 401 says a token lacks a permission.

use reqwest::header::{HeaderMap, WWW_AUTHENTICATE};

/// How a registry wants to be authenticated, learnt from its `/v2/` answer (a success: anonymous).
#[derive(Debug, Clone)]
pub(super) enum Challenge {
    Anonymous,
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

/// Parses `WWW-Authenticate: Bearer realm="...",service="..."` or `Basic realm="..."`.
pub(super) fn parse_challenge(headers: &HeaderMap) -> Challenge {
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

/// Whether a 401 says the token lacks a permission (`error="insufficient_scope"`).
pub(super) fn insufficient_scope(headers: &HeaderMap) -> bool {
    headers
        .get(WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("insufficient_scope"))
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
}
