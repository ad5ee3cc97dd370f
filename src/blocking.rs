//! Blocking work (walking directories, writing layers: tar, gzip and sha256; unpacking
//! images; running installers) moved off the async runtime's worker threads, which must stay
//! free for the network.

/// Runs `work` on tokio's blocking threads and waits for it; a panic in `work` goes on here.
pub async fn run<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}
