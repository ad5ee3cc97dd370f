//! Deadlines for fetching a source over the network (http(s), S3, Git), so that a server that
//! stops answering, or trickles a byte now and then, fails the build instead of holding it
//! for ever: an overall deadline for the whole fetch of a source, retries included
//! (`--fetch-timeout`), and a deadline on progress: no data for that long
//! (`--fetch-idle-timeout`). While a fetch runs, a log line every few seconds says what is
//! awaited and how far it got.
//!
//! Fetchers report what arrives through a [`Progress`] and know nothing of the clock;
//! [`watch`] runs a fetch, logs, and gives up on it when a deadline passes. Blocking fetchers
//! (libgit2) also ask [`Progress::expired`] in their callbacks, to stop early. Whatever is
//! shown here names a source by a redacted URL only: callers pass it so.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::HumanBytes;

use crate::error::{Error, Result};

/// `--fetch-timeout`'s default.
pub const DEFAULT_OVERALL: &str = "10m";
/// `--fetch-idle-timeout`'s default.
pub const DEFAULT_IDLE: &str = "60s";
/// How long connecting to a server may take (a TCP and TLS handshake), per attempt.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How often a running fetch is logged.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// The deadlines of one source's fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// The whole fetch, every attempt included.
    pub overall: Duration,
    /// The longest wait for data.
    pub idle: Duration,
}

impl Deadlines {
    /// The deadlines of `--fetch-timeout` and `--fetch-idle-timeout` values (humantime
    /// syntax: 90s, 10m, 1h).
    pub fn parse(overall: &str, idle: &str) -> Result<Deadlines> {
        let parse = |flag: &str, value: &str| match humantime::parse_duration(value) {
            Ok(duration) if !duration.is_zero() => Ok(duration),
            Ok(_) => Err(Error::Usage(format!("{flag} {value}: must be more than 0"))),
            Err(e) => Err(Error::Usage(format!(
                "{flag} {value}: not a duration ({e}); expected one such as 30s, 10m or 1h"
            ))),
        };
        Ok(Deadlines {
            overall: parse("--fetch-timeout", overall)?,
            idle: parse("--fetch-idle-timeout", idle)?,
        })
    }
}

impl Default for Deadlines {
    fn default() -> Self {
        Self::parse(DEFAULT_OVERALL, DEFAULT_IDLE).expect("the defaults parse")
    }
}

/// What has arrived of one fetch, shared by the fetcher (which may be a thread of its own)
/// and [`watch`].
#[derive(Debug, Clone)]
pub struct Progress(Arc<State>);

#[derive(Debug)]
struct State {
    deadlines: Deadlines,
    started: Instant,
    bytes: AtomicU64,
    /// When the fetch last moved forward, in milliseconds after `started`.
    advanced_at_ms: AtomicU64,
}

impl Progress {
    fn new(deadlines: Deadlines) -> Self {
        Self(Arc::new(State {
            deadlines,
            started: Instant::now(),
            bytes: AtomicU64::new(0),
            advanced_at_ms: AtomicU64::new(0),
        }))
    }

    /// The fetch moved forward: `bytes` more of the source arrived (0 for a step that carries
    /// none: response headers, a listing, a file checked out).
    pub fn advance(&self, bytes: u64) {
        let now = self.0.started.elapsed().as_millis() as u64;
        self.0.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.0.advanced_at_ms.fetch_max(now, Ordering::Relaxed);
    }

    /// The deadlines the fetch runs under.
    pub fn deadlines(&self) -> Deadlines {
        self.0.deadlines
    }

    /// The deadline that has passed, if one has.
    pub fn expired(&self) -> Option<Expired> {
        let elapsed = self.0.started.elapsed();
        let bytes = self.bytes();
        let deadlines = self.0.deadlines;
        if elapsed >= deadlines.overall {
            return Some(Expired::Overall {
                limit: deadlines.overall,
                bytes,
            });
        }
        (elapsed.saturating_sub(self.advanced_at()) >= deadlines.idle).then_some(Expired::Idle {
            limit: deadlines.idle,
            bytes,
        })
    }

    fn bytes(&self) -> u64 {
        self.0.bytes.load(Ordering::Relaxed)
    }

    fn advanced_at(&self) -> Duration {
        Duration::from_millis(self.0.advanced_at_ms.load(Ordering::Relaxed))
    }

    /// When the next deadline passes unless the fetch moves forward before.
    fn next_deadline(&self) -> Instant {
        let deadlines = self.0.deadlines;
        self.0.started + deadlines.overall.min(self.advanced_at() + deadlines.idle)
    }
}

/// A deadline that passed, and how much had arrived by then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// The whole fetch took longer than `--fetch-timeout`.
    Overall { limit: Duration, bytes: u64 },
    /// No data came for `--fetch-idle-timeout`.
    Idle { limit: Duration, bytes: u64 },
}

impl std::fmt::Display for Expired {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Expired::Overall { limit, bytes } => write!(
                f,
                "took longer than {} (--fetch-timeout; {} received)",
                humantime::format_duration(limit),
                HumanBytes(bytes)
            ),
            Expired::Idle { limit, bytes } => write!(
                f,
                "no data for {} ({} received so far; --fetch-idle-timeout)",
                humantime::format_duration(limit),
                HumanBytes(bytes)
            ),
        }
    }
}

impl Expired {
    fn error(self, shown: &str) -> Error {
        Error::Source(format!("cannot fetch {shown}: {self}"))
    }
}

/// Runs the fetch `work` makes of the source `shown` (a redacted URL) under `deadlines`:
/// logs every few seconds while it runs, and fails with an error naming the deadline, and
/// the flag that sets it, when one passes (the fetch is then dropped). A fetch that fails
/// after a deadline passed (a blocking fetcher that noticed it) fails with the deadline too.
pub async fn watch<T, F, Fut>(shown: &str, deadlines: Deadlines, work: F) -> Result<T>
where
    F: FnOnce(Progress) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let progress = Progress::new(deadlines);
    let mut work = std::pin::pin!(work(progress.clone()));
    let mut next_log = progress.0.started + LOG_EVERY;
    loop {
        let wake = progress.next_deadline().min(next_log);
        tokio::select! {
            result = &mut work => {
                return result.map_err(|e| progress.expired().map_or(e, |expired| expired.error(shown)));
            }
            _ = tokio::time::sleep_until(wake.into()) => {
                if let Some(expired) = progress.expired() {
                    return Err(expired.error(shown));
                }
                if Instant::now() >= next_log {
                    let elapsed = progress.0.started.elapsed();
                    tracing::info!(
                        "still fetching {shown}: {} received in {}",
                        HumanBytes(progress.bytes()),
                        humantime::format_duration(Duration::from_secs(elapsed.as_secs()))
                    );
                    next_log += LOG_EVERY;
                }
            }
        }
    }
}

/// Runs blocking `work` (libgit2) on a thread of its own, so that [`watch`] may give up on
/// it. A call blocked inside libgit2 cannot be interrupted: a server that trickles a byte at a
/// time satisfies every socket timeout, and libgit2 calls no callback while it reads the
/// references. Such a thread is abandoned: the build fails with the deadline and the process
/// exits, which ends the thread. Tokio's blocking pool would not do: the runtime waits for
/// its threads when it shuts down, so the process would hang on the abandoned call.
pub async fn on_own_thread<T: Send + 'static>(
    name: &str,
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let (sender, receiver) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            // The receiver is gone when the fetch was given up on: nobody waits for the result.
            let _ = sender.send(work());
        })
        .map_err(|e| Error::Source(format!("cannot start a thread for {name}: {e}")))?;
    receiver
        .await
        .unwrap_or_else(|_| panic!("the {name} thread panicked"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_and_name_themselves_when_wrong() {
        assert_eq!(
            Deadlines::default(),
            Deadlines {
                overall: Duration::from_secs(600),
                idle: Duration::from_secs(60)
            }
        );
        let err = Deadlines::parse("soon", "1s").unwrap_err().to_string();
        assert!(
            err.contains("--fetch-timeout soon") && err.contains("10m"),
            "{err}"
        );
        let err = Deadlines::parse("1m", "0s").unwrap_err().to_string();
        assert!(
            err.contains("--fetch-idle-timeout 0s") && err.contains("more than 0"),
            "{err}"
        );
    }

    #[test]
    fn expiry_says_what_passed_and_which_flag_sets_it() {
        let idle = Expired::Idle {
            limit: Duration::from_secs(3),
            bytes: 12,
        };
        assert_eq!(
            idle.error("https://host/f.tgz").to_string(),
            "source: cannot fetch https://host/f.tgz: no data for 3s (12 B received so far; \
             --fetch-idle-timeout)"
        );
        let overall = Expired::Overall {
            limit: Duration::from_secs(8),
            bytes: 9,
        };
        assert_eq!(
            overall.to_string(),
            "took longer than 8s (--fetch-timeout; 9 B received)"
        );
    }

    #[tokio::test]
    async fn a_stalled_fetch_fails_with_the_idle_deadline_and_a_long_one_with_the_overall_one() {
        let short = |overall: u64, idle: u64| Deadlines {
            overall: Duration::from_millis(overall),
            idle: Duration::from_millis(idle),
        };
        let stalled = watch("x://stalled", short(60_000, 100), |_| {
            std::future::pending::<Result<()>>()
        })
        .await
        .unwrap_err()
        .to_string();
        assert!(
            stalled.contains("x://stalled: no data for 100ms"),
            "{stalled}"
        );

        let long = watch("x://long", short(300, 60_000), |progress| async move {
            progress.advance(9);
            std::future::pending::<Result<()>>().await
        })
        .await
        .unwrap_err()
        .to_string();
        assert!(
            long.contains("x://long: took longer than 300ms (--fetch-timeout; 9 B received)"),
            "{long}"
        );

        let done = watch("x://fast", short(60_000, 60_000), |progress| async move {
            progress.advance(5);
            Ok(7)
        })
        .await
        .unwrap();
        assert_eq!(done, 7);
    }
}
