//! Downloading a source file over http(s), streamed to disk with a size bound, retried as the
//! network layer's [`RetryPolicy`] says (connection errors, 408, 429 and 5xx, a server's
//! `Retry-After`); what arrives is reported to a [`Progress`], whose deadlines the caller
//! enforces. URLs are shown as `net::RedactedUrl`s: without user info or query strings, which
//! often carry tokens (pre-signed URLs).

use std::io::Write;
use std::path::{Path, PathBuf};

use futures_util::StreamExt;

use super::deadline::{Progress, CONNECT_TIMEOUT};
use crate::error::{Error, IoContext, Result};
use crate::net::{retry, RetryPolicy, Transience};

/// Downloads `url` (`shown` as its redacted form) into `dir`, named after the last path
/// segment, and returns the file's path. How long a response may take to start or to go on is
/// for the caller's deadlines.
pub async fn download(
    url: &str,
    shown: &str,
    dir: &Path,
    max_bytes: u64,
    progress: Progress,
) -> Result<PathBuf> {
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
    RetryPolicy::SOURCE
        .run(
            || try_download(&client, url, shown, &path, max_bytes, &progress),
            Failure::transience,
            |failure, attempt, wait| {
                if let Failure::Download { message, .. } = failure {
                    tracing::warn!(url = %shown, attempt, "{message}; retrying in {wait:?}");
                }
            },
        )
        .await
        .map_err(|failure| match failure {
            Failure::Download { message, .. } => Error::Source(message),
            Failure::Io(e) => e,
        })?;
    Ok(path)
}

/// Why an attempt failed.
enum Failure {
    /// The download failed, worth another attempt or not.
    Download {
        message: String,
        transience: Transience,
    },
    /// Writing the file failed.
    Io(Error),
}

impl Failure {
    fn transience(&self) -> Transience {
        match self {
            Failure::Download { transience, .. } => *transience,
            Failure::Io(_) => Transience::Permanent,
        }
    }

    fn permanent(message: String) -> Failure {
        Failure::Download {
            message,
            transience: Transience::Permanent,
        }
    }
}

async fn try_download(
    client: &reqwest::Client,
    url: &str,
    shown: &str,
    path: &Path,
    max_bytes: u64,
    progress: &Progress,
) -> Result<(), Failure> {
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|e| Failure::Download {
            message: format!("cannot download {shown}: {}", chain(&e)),
            transience: retry::reqwest_error(&e),
        })?;
    progress.advance(0);
    let status = response.status();
    if !status.is_success() {
        return Err(Failure::Download {
            message: format!("cannot download {shown}: the server answered HTTP {status}"),
            transience: retry::http_status(status, response.headers()),
        });
    }
    if response.content_length().is_some_and(|n| n > max_bytes) {
        return Err(Failure::permanent(format!(
            "{shown} is larger than the limit of {max_bytes} bytes (raise it with --max-source-size)"
        )));
    }
    let mut file = std::fs::File::create(path)
        .io_context("create", path)
        .map_err(Failure::Io)?;
    let mut written = 0u64;
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| Failure::Download {
            message: format!("download of {shown} broke off: {}", chain(&e)),
            transience: Transience::TRANSIENT,
        })?;
        progress.advance(chunk.len() as u64);
        written += chunk.len() as u64;
        if written > max_bytes {
            return Err(Failure::permanent(format!(
                "{shown} is larger than the limit of {max_bytes} bytes (raise it with --max-source-size)"
            )));
        }
        file.write_all(&chunk)
            .io_context("write", path)
            .map_err(Failure::Io)?;
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
