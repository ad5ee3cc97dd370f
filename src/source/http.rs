//! Downloading a source file over http(s), streamed to disk with a size bound, with retries on
//! connection errors and 5xx answers; what arrives is reported to a [`Progress`], whose
//! deadlines the caller enforces. URLs are shown without user info or query strings, which
//! often carry tokens (pre-signed URLs).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;

use super::deadline::{Progress, CONNECT_TIMEOUT};
use crate::error::{Error, IoContext, Result};

const ATTEMPTS: u32 = 3;

/// A URL as it may be shown: without `user:password@` and without the query string.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let rest = rest.split(['?', '#']).next().unwrap_or(rest);
    let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if path.is_empty() {
        format!("{scheme}://{host}")
    } else {
        format!("{scheme}://{host}/{path}")
    }
}

/// Downloads `url` into `dir`, named after the last path segment, and returns the file's path.
/// How long a response may take to start or to go on is for the caller's deadlines.
pub async fn download(
    url: &str,
    dir: &Path,
    max_bytes: u64,
    progress: Progress,
) -> Result<PathBuf> {
    let shown = redact(url);
    let client = reqwest::Client::builder()
        .user_agent(concat!("fnbuild/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(CONNECT_TIMEOUT)
        .build()
        .map_err(|e| Error::Source(format!("cannot set up HTTP: {e}")))?;
    let name = shown
        .rsplit('/')
        .next()
        .filter(|n| !n.is_empty() && !n.contains(':'))
        .unwrap_or("function");
    // Apart from the directory the workspace is unpacked into.
    let path = dir.join("download").join(name);
    std::fs::create_dir_all(dir.join("download")).io_context("create", dir.join("download"))?;
    let mut delay = Duration::from_millis(500);
    for attempt in 1..=ATTEMPTS {
        match try_download(&client, url, &shown, &path, max_bytes, &progress).await {
            Ok(()) => return Ok(path),
            Err(Attempt::Retry(msg)) if attempt < ATTEMPTS => {
                tracing::warn!(url = %shown, attempt, "{msg}; retrying in {delay:?}");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(Attempt::Retry(msg) | Attempt::Fail(msg)) => return Err(Error::Source(msg)),
            Err(Attempt::Io(e)) => return Err(e),
        }
    }
    unreachable!("the last attempt always returns")
}

enum Attempt {
    Retry(String),
    Fail(String),
    Io(Error),
}

async fn try_download(
    client: &reqwest::Client,
    url: &str,
    shown: &str,
    path: &Path,
    max_bytes: u64,
    progress: &Progress,
) -> Result<(), Attempt> {
    let response = client.get(url).send().await.map_err(|e| {
        let msg = format!("cannot download {shown}: {}", chain(&e));
        if e.is_connect() || e.is_timeout() {
            Attempt::Retry(msg)
        } else {
            Attempt::Fail(msg)
        }
    })?;
    progress.advance(0);
    let status = response.status();
    if !status.is_success() {
        let msg = format!("cannot download {shown}: the server answered HTTP {status}");
        return Err(if status.is_server_error() {
            Attempt::Retry(msg)
        } else {
            Attempt::Fail(msg)
        });
    }
    if response.content_length().is_some_and(|n| n > max_bytes) {
        return Err(Attempt::Fail(format!(
            "{shown} is larger than the limit of {max_bytes} bytes (raise it with --max-source-size)"
        )));
    }
    let mut file = std::fs::File::create(path)
        .io_context("create", path)
        .map_err(Attempt::Io)?;
    let mut written = 0u64;
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk
            .map_err(|e| Attempt::Retry(format!("download of {shown} broke off: {}", chain(&e))))?;
        progress.advance(chunk.len() as u64);
        written += chunk.len() as u64;
        if written > max_bytes {
            return Err(Attempt::Fail(format!(
                "{shown} is larger than the limit of {max_bytes} bytes (raise it with --max-source-size)"
            )));
        }
        file.write_all(&chunk)
            .io_context("write", path)
            .map_err(Attempt::Io)?;
    }
    Ok(())
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut parts = crate::error::messages(e);
    // reqwest's own message repeats the URL with its query; keep only the causes after it.
    if parts.len() > 1 {
        parts.remove(0);
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn urls_lose_credentials_and_queries() {
        assert_eq!(
            redact("https://user:pw@host/a/f.zip?X-Amz-Signature=abc"),
            "https://host/a/f.zip"
        );
        assert_eq!(redact("http://host:8080"), "http://host:8080");
    }
}
