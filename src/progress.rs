//! Progress of publishing, reported through the [`Reporter`] trait: publishing code says what
//! happens (a destination starts, a blob starts uploading, bytes go out, a blob is in place, a
//! destination is done) and knows nothing of terminals.
//!
//! Two reporters: [`LogReporter`] writes plain log lines (the default, and what build systems
//! and CI logs get), [`TerminalReporter`] draws one progress bar per destination on stderr,
//! chosen by the CLI only when stderr is a terminal and logs are text. Log lines written while
//! bars are drawn go through [`TerminalReporter::log_writer`], which lifts the bars out of the
//! way first. Nothing here may print to stdout: that is for results.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use indicatif::{
    HumanBytes, HumanDuration, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle,
};

use crate::digest::Digest;

/// What [`Reporter::on_destination_start`] returns, naming that destination in later calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DestinationId(usize);

/// A blob being published: the image config or one of its layers.
#[derive(Debug, Clone, Copy)]
pub struct Blob<'a> {
    pub digest: &'a Digest,
    pub size: u64,
    pub is_layer: bool,
}

/// How a blob got to a destination.
#[derive(Debug, Clone)]
pub enum BlobOutcome {
    /// The destination had it already.
    Present,
    /// Linked inside the registry from another repository.
    Mounted { from: String },
    /// Sent, taking this long.
    Uploaded { elapsed: Duration },
}

/// Hears the progress of publishing. Calls for different blobs and destinations may come from
/// several tasks at once.
pub trait Reporter: Send + Sync {
    /// Publishing the blobs of an image to `destination` begins: `layers` layers and a config,
    /// `bytes` in all.
    fn on_destination_start(&self, destination: &str, layers: usize, bytes: u64) -> DestinationId;
    /// A blob is about to be uploaded.
    fn on_blob_start(&self, destination: DestinationId, blob: &Blob<'_>);
    /// `sent` bytes of the blob are out so far; an upload that is tried again starts from 0.
    fn on_blob_progress(&self, destination: DestinationId, blob: &Blob<'_>, sent: u64);
    /// The blob is at the destination.
    fn on_blob_done(&self, destination: DestinationId, blob: &Blob<'_>, outcome: BlobOutcome);
    /// Every blob is at the destination (`ok`), or publishing to it failed.
    fn on_destination_done(&self, destination: DestinationId, ok: bool);
}

// === the process-wide reporter ===

static REPORTER: OnceLock<Arc<dyn Reporter>> = OnceLock::new();

/// Sets the reporter [`reporter`] returns, once per process (the CLI does, at start). Later
/// calls are ignored.
pub fn install(reporter: Arc<dyn Reporter>) {
    let _ = REPORTER.set(reporter);
}

/// The installed reporter, else a [`LogReporter`].
pub fn reporter() -> Arc<dyn Reporter> {
    REPORTER
        .get_or_init(|| Arc::new(LogReporter::default()))
        .clone()
}

// === what both reporters count ===

/// The state of one destination.
struct Destination {
    name: String,
    started: Instant,
    layers: usize,
    layers_done: usize,
    /// Bytes of the blobs that have to be uploaded, as far as known: each is added when its
    /// upload starts (the config included).
    to_send: u64,
    /// Bytes sent of the blobs being uploaded, by digest.
    in_flight: HashMap<Digest, u64>,
    /// Bytes of the blobs uploaded (the config included).
    bytes_uploaded: u64,
    uploaded: usize,
    mounted: usize,
    present: usize,
}

impl Destination {
    fn new(name: &str, layers: usize) -> Self {
        Self {
            name: name.to_string(),
            started: Instant::now(),
            layers,
            layers_done: 0,
            to_send: 0,
            in_flight: HashMap::new(),
            bytes_uploaded: 0,
            uploaded: 0,
            mounted: 0,
            present: 0,
        }
    }

    /// Bytes sent: of the blobs uploaded and of those under way.
    fn sent(&self) -> u64 {
        self.bytes_uploaded + self.in_flight.values().sum::<u64>()
    }

    fn start(&mut self, blob: &Blob<'_>) {
        self.to_send += blob.size;
        self.in_flight.insert(blob.digest.clone(), 0);
    }

    fn done(&mut self, blob: &Blob<'_>, outcome: &BlobOutcome) {
        self.in_flight.remove(blob.digest);
        if let BlobOutcome::Uploaded { .. } = outcome {
            self.bytes_uploaded += blob.size;
        }
        if !blob.is_layer {
            return;
        }
        self.layers_done += 1;
        match outcome {
            BlobOutcome::Present => self.present += 1,
            BlobOutcome::Mounted { .. } => self.mounted += 1,
            BlobOutcome::Uploaded { .. } => self.uploaded += 1,
        }
    }

    /// `layers 2/3: 1 uploaded, 1 mounted, 0 already there` (the config is not counted).
    fn counts(&self) -> String {
        format!(
            "layers {}/{}: {} uploaded, {} mounted, {} already there",
            self.layers_done, self.layers, self.uploaded, self.mounted, self.present
        )
    }
}

/// The state of each destination by id (a [`Destination`], or for bars a [`BarDestination`]),
/// under one lock: whatever belongs to a destination is kept together, so an id always names
/// the same one.
struct Destinations<T = Destination>(Mutex<Vec<T>>);

impl<T> Default for Destinations<T> {
    fn default() -> Self {
        Self(Mutex::new(Vec::new()))
    }
}

impl<T> Destinations<T> {
    fn add(&self, destination: T) -> DestinationId {
        let mut all = self.0.lock().expect("progress state poisoned");
        all.push(destination);
        DestinationId(all.len() - 1)
    }

    fn with<R>(&self, id: DestinationId, f: impl FnOnce(&mut T) -> R) -> R {
        f(&mut self.0.lock().expect("progress state poisoned")[id.0])
    }
}

// === plain log lines ===

/// Reports as log lines: one per blob (`uploaded blob`, `mounted blob`; `blob already in` at
/// debug level), one every [`LogReporter::EVERY`] for a long upload, and a summary per
/// destination.
#[derive(Default)]
pub struct LogReporter {
    destinations: Destinations,
    /// When each upload under way last said how far it is.
    last_line: Mutex<HashMap<(DestinationId, Digest), Instant>>,
}

impl LogReporter {
    /// How often a long upload says how far it is.
    pub const EVERY: Duration = Duration::from_secs(10);
}

impl Reporter for LogReporter {
    fn on_destination_start(&self, destination: &str, layers: usize, bytes: u64) -> DestinationId {
        tracing::debug!(to = %destination, layers, bytes, "publishing blobs");
        self.destinations.add(Destination::new(destination, layers))
    }

    fn on_blob_start(&self, destination: DestinationId, blob: &Blob<'_>) {
        self.destinations.with(destination, |d| d.start(blob));
        self.last_line
            .lock()
            .expect("progress state poisoned")
            .insert((destination, blob.digest.clone()), Instant::now());
    }

    fn on_blob_progress(&self, destination: DestinationId, blob: &Blob<'_>, sent: u64) {
        let key = (destination, blob.digest.clone());
        {
            let mut last_line = self.last_line.lock().expect("progress state poisoned");
            match last_line.get_mut(&key) {
                Some(last) if last.elapsed() >= Self::EVERY => *last = Instant::now(),
                _ => return,
            }
        }
        let to = self.destinations.with(destination, |d| d.name.clone());
        let percent = (sent * 100).checked_div(blob.size).unwrap_or(100);
        tracing::info!(digest = %blob.digest, sent, size = blob.size, %to, "uploading blob: {percent}%");
    }

    fn on_blob_done(&self, destination: DestinationId, blob: &Blob<'_>, outcome: BlobOutcome) {
        self.last_line
            .lock()
            .expect("progress state poisoned")
            .remove(&(destination, blob.digest.clone()));
        let to = self.destinations.with(destination, |d| {
            d.done(blob, &outcome);
            d.name.clone()
        });
        let digest = blob.digest;
        match outcome {
            BlobOutcome::Present => tracing::debug!(%digest, "blob already in {to}"),
            BlobOutcome::Mounted { from } => tracing::info!(%digest, %from, %to, "mounted blob"),
            BlobOutcome::Uploaded { elapsed } => {
                tracing::info!(%digest, size = blob.size, ?elapsed, %to, "uploaded blob")
            }
        }
    }

    fn on_destination_done(&self, destination: DestinationId, ok: bool) {
        self.destinations.with(destination, |d| {
            let elapsed = d.started.elapsed();
            if ok {
                tracing::info!(to = %d.name, bytes_uploaded = d.bytes_uploaded, ?elapsed, "blobs in place: {}", d.counts());
            } else {
                tracing::debug!(to = %d.name, ?elapsed, "publishing stopped: {}", d.counts());
            }
        });
    }
}

// === progress bars ===

/// Draws one bar per destination on stderr: its name, layers done, bytes and rate while it
/// runs; a one-line summary when it is done.
pub struct TerminalReporter {
    multi: MultiProgress,
    destinations: Destinations<BarDestination>,
}

/// A destination's state and its bar.
struct BarDestination {
    state: Destination,
    bar: ProgressBar,
}

impl BarDestination {
    /// The bar showing the bytes to send and sent so far, and the counts.
    fn update(&self) {
        self.bar.set_length(self.state.to_send);
        self.bar.set_position(self.state.sent());
        self.bar.set_message(self.state.counts());
    }
}

impl TerminalReporter {
    /// Bars on stderr (drawn at most 10 times a second).
    pub fn new() -> Self {
        Self::with_draw_target(ProgressDrawTarget::stderr_with_hz(10))
    }

    fn with_draw_target(target: ProgressDrawTarget) -> Self {
        Self {
            multi: MultiProgress::with_draw_target(target),
            destinations: Destinations::default(),
        }
    }

    /// A writer for log lines that takes the bars off the screen while each line is written
    /// and draws them again below it (for `tracing_subscriber`'s `with_writer`).
    pub fn log_writer(&self) -> impl Fn() -> SuspendingWriter + Send + Sync + 'static {
        let multi = self.multi.clone();
        move || SuspendingWriter {
            multi: multi.clone(),
            buffer: Vec::new(),
        }
    }
}

impl Default for TerminalReporter {
    fn default() -> Self {
        Self::new()
    }
}

impl Reporter for TerminalReporter {
    fn on_destination_start(&self, destination: &str, layers: usize, _bytes: u64) -> DestinationId {
        let state = Destination::new(destination, layers);
        // A line without a bar until something has to be sent.
        let bar = self.multi.add(
            ProgressBar::new(0)
                .with_style(
                    ProgressStyle::with_template("{prefix} {msg}")
                        .expect("a valid progress template"),
                )
                .with_prefix(destination.to_string())
                .with_message(state.counts()),
        );
        bar.tick();
        self.destinations.add(BarDestination { state, bar })
    }

    fn on_blob_start(&self, destination: DestinationId, blob: &Blob<'_>) {
        self.destinations.with(destination, |d| {
            if d.state.to_send == 0 {
                // The bytes to send, as far as known, below the counts.
                d.bar.set_style(
                    ProgressStyle::with_template(
                        "{prefix} {msg}\n  [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} {elapsed}",
                    )
                    .expect("a valid progress template")
                    .progress_chars("=> "),
                );
            }
            d.state.start(blob);
            d.update();
        });
    }

    fn on_blob_progress(&self, destination: DestinationId, blob: &Blob<'_>, sent: u64) {
        self.destinations.with(destination, |d| {
            d.state.in_flight.insert(blob.digest.clone(), sent);
            d.bar.set_position(d.state.sent());
        });
    }

    fn on_blob_done(&self, destination: DestinationId, blob: &Blob<'_>, outcome: BlobOutcome) {
        self.destinations.with(destination, |d| {
            d.state.done(blob, &outcome);
            d.update();
        });
    }

    fn on_destination_done(&self, destination: DestinationId, ok: bool) {
        self.destinations.with(destination, |d| {
            let state = &d.state;
            let summary = format!(
                "{}: {}, {}; {} sent in {}",
                state.name,
                if ok { "done" } else { "failed" },
                state.counts(),
                HumanBytes(state.bytes_uploaded),
                HumanDuration(state.started.elapsed()),
            );
            d.bar.set_style(
                ProgressStyle::with_template("{msg}").expect("a valid progress template"),
            );
            if ok {
                d.bar.finish_with_message(summary);
            } else {
                d.bar.abandon_with_message(summary);
            }
        });
    }
}

/// One log line on its way to stderr; written, with the bars lifted, when dropped.
pub struct SuspendingWriter {
    multi: MultiProgress,
    buffer: Vec<u8>,
}

impl Write for SuspendingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buffer.is_empty() {
            let buffer = std::mem::take(&mut self.buffer);
            self.multi
                .suspend(|| std::io::stderr().lock().write_all(&buffer))?;
        }
        Ok(())
    }
}

impl Drop for SuspendingWriter {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Destinations started from many threads at once each get their own bar.
    #[test]
    fn each_destination_keeps_its_own_bar() {
        let reporter = Arc::new(TerminalReporter::with_draw_target(
            ProgressDrawTarget::hidden(),
        ));
        let started: Vec<(DestinationId, String)> = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..16)
                .map(|i| {
                    let reporter = reporter.clone();
                    scope.spawn(move || {
                        let name = format!("r.local/app{i}:v1");
                        (reporter.on_destination_start(&name, i, 0), name)
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        });
        let digest = Digest::of(b"layer");
        for (id, name) in &started {
            let blob = Blob {
                digest: &digest,
                size: 100,
                is_layer: true,
            };
            reporter.on_blob_start(*id, &blob);
            reporter.on_blob_progress(*id, &blob, 40);
            reporter.destinations.with(*id, |d| {
                assert_eq!(d.state.name, *name);
                assert_eq!(d.bar.prefix(), *name);
                assert_eq!((d.bar.length(), d.bar.position()), (Some(100), 40));
            });
            reporter.on_blob_done(
                *id,
                &blob,
                BlobOutcome::Uploaded {
                    elapsed: Duration::from_secs(1),
                },
            );
            reporter.on_destination_done(*id, true);
            reporter.destinations.with(*id, |d| {
                assert!(d.bar.is_finished());
                assert!(d.bar.message().starts_with(&format!("{name}: done")));
            });
        }
    }

    #[test]
    fn counts_follow_blobs_and_retries() {
        let digest = Digest::of(b"layer");
        let config = Digest::of(b"config");
        let mounted = Digest::of(b"base layer");
        let mut d = Destination::new("r.local/x:v1", 2);
        let layer = Blob {
            digest: &digest,
            size: 100,
            is_layer: true,
        };
        let from = "base".to_string();
        d.done(
            &Blob {
                digest: &mounted,
                size: 1000,
                is_layer: true,
            },
            &BlobOutcome::Mounted { from },
        );
        d.done(
            &Blob {
                digest: &config,
                size: 10,
                is_layer: false,
            },
            &BlobOutcome::Present,
        );
        assert_eq!((d.to_send, d.sent()), (0, 0));
        d.start(&layer);
        d.in_flight.insert(digest.clone(), 60);
        assert_eq!((d.to_send, d.sent()), (100, 60));
        // A retried upload starts again from 0.
        d.in_flight.insert(digest.clone(), 0);
        assert_eq!(d.sent(), 0);
        d.done(
            &layer,
            &BlobOutcome::Uploaded {
                elapsed: Duration::from_secs(1),
            },
        );
        assert_eq!((d.to_send, d.sent(), d.bytes_uploaded), (100, 100, 100));
        assert_eq!(
            d.counts(),
            "layers 2/2: 1 uploaded, 1 mounted, 0 already there"
        );
    }
}
