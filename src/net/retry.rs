//! The one retry policy of fnbuild's network clients (the registry client, the HTTP and Git
//! sources): exponential back-off with jitter between attempts, a server's `Retry-After`
//! honoured, and a cap on the total time spent waiting. What is worth another attempt is the
//! caller's to say, as a [`Transience`]; [`http_status`] and [`reqwest_error`] say it for
//! plain HTTP.

use std::future::Future;
use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::StatusCode;

/// Whether a failed attempt is worth another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transience {
    /// The failure would repeat: give up at once.
    Permanent,
    /// Worth another attempt, no sooner than `retry_after` when the server asked for a pause.
    Transient { retry_after: Option<Duration> },
}

impl Transience {
    /// A transient failure the server gave no `Retry-After` for.
    pub const TRANSIENT: Transience = Transience::Transient { retry_after: None };
}

/// How often and how patiently to try: at most `attempts` attempts, the waits between them
/// doubling from half a second up to 2 s (each shortened by up to half at random, so that
/// clients failing together do not retry together), or what `Retry-After` asks for; and no
/// more than a minute of waiting in all, so that a server asking for long pauses fails the
/// build instead of holding it. The attempts themselves are bounded by the clients' timeouts
/// and the fetch deadlines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    attempts: u32,
    first_wait: Duration,
    max_backoff: Duration,
    total_wait: Duration,
}

impl RetryPolicy {
    /// The first attempt and three retries.
    pub const DEFAULT: RetryPolicy = RetryPolicy {
        attempts: 4,
        first_wait: Duration::from_millis(500),
        max_backoff: Duration::from_secs(2),
        total_wait: Duration::from_secs(60),
    };

    /// The first attempt and two retries: for sources, whose fetch runs under deadlines of
    /// its own.
    pub const SOURCE: RetryPolicy = RetryPolicy::DEFAULT.with_attempts(3);

    /// The same policy with at most `attempts` attempts (1: no retry).
    pub const fn with_attempts(self, attempts: u32) -> RetryPolicy {
        RetryPolicy { attempts, ..self }
    }

    /// Runs `attempt` until it succeeds, `classify` calls its failure permanent, or the
    /// policy gives up; `on_retry` hears of each failure retried (its 1-based attempt number
    /// and the wait before the next). Returns the last attempt's result.
    pub async fn run<T, E, F>(
        self,
        mut attempt: impl FnMut() -> F,
        classify: impl Fn(&E) -> Transience,
        mut on_retry: impl FnMut(&E, u32, Duration),
    ) -> Result<T, E>
    where
        F: Future<Output = Result<T, E>>,
    {
        let mut backoff = Backoff::new(self);
        loop {
            let error = match attempt().await {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            let Some(wait) = backoff.next_wait(classify(&error)) else {
                return Err(error);
            };
            on_retry(&error, backoff.attempts_made, wait);
            tokio::time::sleep(wait).await;
        }
    }

    /// [`RetryPolicy::run`] for blocking work (libgit2), waiting on the calling thread.
    pub fn run_blocking<T, E>(
        self,
        mut attempt: impl FnMut() -> Result<T, E>,
        classify: impl Fn(&E) -> Transience,
        mut on_retry: impl FnMut(&E, u32, Duration),
    ) -> Result<T, E> {
        let mut backoff = Backoff::new(self);
        loop {
            let error = match attempt() {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            let Some(wait) = backoff.next_wait(classify(&error)) else {
                return Err(error);
            };
            on_retry(&error, backoff.attempts_made, wait);
            std::thread::sleep(wait);
        }
    }
}

/// Where a run of attempts stands.
struct Backoff {
    policy: RetryPolicy,
    attempts_made: u32,
    waited: Duration,
}

impl Backoff {
    fn new(policy: RetryPolicy) -> Backoff {
        Backoff {
            policy,
            attempts_made: 0,
            waited: Duration::ZERO,
        }
    }

    /// The wait before the next attempt after one that failed so, or `None` to give up.
    fn next_wait(&mut self, transience: Transience) -> Option<Duration> {
        self.attempts_made += 1;
        let Transience::Transient { retry_after } = transience else {
            return None;
        };
        let left = self.policy.total_wait.saturating_sub(self.waited);
        if self.attempts_made >= self.policy.attempts || left.is_zero() {
            return None;
        }
        let doubling = 2u32.saturating_pow(self.attempts_made - 1);
        let backoff = self
            .policy
            .first_wait
            .saturating_mul(doubling)
            .min(self.policy.max_backoff);
        let jittered = backoff.mul_f64(1.0 - fastrand::f64() / 2.0);
        let wait = retry_after
            .map_or(jittered, |asked| asked.max(jittered))
            .min(left);
        self.waited += wait;
        Some(wait)
    }
}

/// Whether an HTTP answer is worth another attempt: 408, 429 and 5xx are, with the pause the
/// server asked for; everything else (a client error above all) is not.
pub fn http_status(status: StatusCode, headers: &HeaderMap) -> Transience {
    if status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
    {
        Transience::Transient {
            retry_after: retry_after(headers),
        }
    } else {
        Transience::Permanent
    }
}

/// The pause a `Retry-After` header asks for: delay-seconds, or an HTTP date (a date in the
/// past asks for none).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(
        date.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// Whether a request that got no answer is worth another attempt: a failed connection, a
/// timeout or a request cut off are; a TLS failure (an untrusted certificate, a server that
/// does not speak TLS) is not, nor is anything else (a redirect loop, a body that cannot be
/// decoded).
pub fn reqwest_error(e: &reqwest::Error) -> Transience {
    if (e.is_connect() || e.is_timeout() || e.is_request()) && tls_failure(e).is_none() {
        Transience::TRANSIENT
    } else {
        Transience::Permanent
    }
}

/// The TLS error behind a reqwest error, if a TLS handshake or record is what failed. rustls
/// errors reach reqwest's chain as the payload of an `io::Error` (itself perhaps the payload
/// of another), which `source()` skips: an `io::Error` is followed into its payload.
pub fn tls_failure(e: &reqwest::Error) -> Option<&rustls::Error> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(error) = cause {
        if let Some(tls) = error.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        cause = match error.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|payload| payload as &(dyn std::error::Error + 'static)),
            None => error.source(),
        };
    }
    None
}

/// Whether a TLS failure says the server does not speak TLS at all (it answered the
/// handshake with something else, as a plain-HTTP server does).
pub fn is_not_tls(error: &rustls::Error) -> bool {
    matches!(error, rustls::Error::InvalidMessage(_))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waits(policy: RetryPolicy, transience: Transience) -> Vec<Duration> {
        let mut backoff = Backoff::new(policy);
        std::iter::from_fn(|| backoff.next_wait(transience)).collect()
    }

    #[test]
    fn waits_double_with_jitter_up_to_the_attempts() {
        let waits = waits(RetryPolicy::DEFAULT, Transience::TRANSIENT);
        assert_eq!(waits.len(), 3, "{waits:?}");
        for (wait, full) in waits.iter().zip([500, 1000, 2000]) {
            let full = Duration::from_millis(full);
            assert!(*wait <= full && *wait >= full / 2, "{waits:?}");
        }
    }

    #[test]
    fn permanent_failures_and_single_attempts_are_not_retried() {
        assert!(waits(RetryPolicy::DEFAULT, Transience::Permanent).is_empty());
        assert!(waits(RetryPolicy::DEFAULT.with_attempts(1), Transience::TRANSIENT).is_empty());
    }

    #[test]
    fn retry_after_is_honoured_within_the_total_wait() {
        let asked = Transience::Transient {
            retry_after: Some(Duration::from_secs(2)),
        };
        assert_eq!(
            waits(RetryPolicy::DEFAULT, asked),
            [Duration::from_secs(2); 3]
        );
        let too_long = Transience::Transient {
            retry_after: Some(Duration::from_secs(3600)),
        };
        assert_eq!(
            waits(RetryPolicy::DEFAULT, too_long),
            [Duration::from_secs(60)]
        );
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, "2".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(2)));
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(30));
        headers.insert(RETRY_AFTER, later.parse().unwrap());
        let wait = retry_after(&headers).unwrap();
        assert!(wait > Duration::from_secs(25) && wait <= Duration::from_secs(30));
        headers.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&headers), Some(Duration::ZERO));
        headers.insert(RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn statuses_worth_another_attempt() {
        let none = HeaderMap::new();
        for status in [408, 429, 500, 502, 503] {
            let status = StatusCode::from_u16(status).unwrap();
            assert_eq!(
                http_status(status, &none),
                Transience::TRANSIENT,
                "{status}"
            );
        }
        for status in [400, 401, 403, 404, 405] {
            let status = StatusCode::from_u16(status).unwrap();
            assert_eq!(
                http_status(status, &none),
                Transience::Permanent,
                "{status}"
            );
        }
    }

    /// A plain-HTTP server answering an HTTPS request: a TLS failure, found by its type in
    /// the error's chain, and not worth another attempt.
    #[tokio::test]
    async fn a_server_without_tls_is_a_permanent_tls_failure() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            if let Ok((mut stream, _)) = listener.accept() {
                let _ = std::io::Write::write_all(
                    &mut stream,
                    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n",
                );
            }
        });
        let error = reqwest::Client::new()
            .get(format!("https://{addr}/"))
            .send()
            .await
            .unwrap_err();
        let tls = tls_failure(&error).unwrap_or_else(|| panic!("no TLS failure in {error:?}"));
        assert!(is_not_tls(tls), "{tls:?}");
        assert_eq!(reqwest_error(&error), Transience::Permanent);
    }
}
