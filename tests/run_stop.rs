//! `fnbuild run` stops and bounds a function whatever it does: a Node.js handler that blocks
//! its event loop ignores SIGTERM, so after the grace period (`--stop-timeout`) the function
//! is killed and `fnbuild run` exits; left alone, it ends itself after `FUNC_BLOCKED_TIMEOUT`
//! (as process 1 of the container under runc, where it cannot kill itself with SIGKILL), and
//! `fnbuild run` exits with its status, 137; a Python handler that allocates past `--memory` is
//! killed by the kernel inside the container's memory cgroup, and `fnbuild run` says it ran
//! out of memory. Waits follow the process and its log, not a clock.

mod common;

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use common::fnbuild;
use common::functions::{
    function_dir, printed_ref, registry_with_bases, source_build_cmd, success, RunningFunction,
    NODEJS, PYTHON,
};

/// How long `fnbuild run`'s log may stay unchanged before a test stops waiting for it.
const QUIET: Duration = Duration::from_secs(60);

/// A call that may never be answered, or be cut off: its status, if any.
fn call_tolerating_failure(url: &str, timeout: Duration) -> Option<u16> {
    let client = reqwest::blocking::Client::builder()
        .timeout(timeout)
        .build()
        .unwrap();
    client
        .post(url)
        .body("x")
        .send()
        .ok()
        .map(|r| r.status().as_u16())
}

/// Builds a one-file function into the registry; returns the pinned reference.
fn build(registry: &common::Registry, runtime: &str, file: (&str, &str), handler: &str) -> String {
    let src = function_dir(&[file]);
    let cache = tempfile::tempdir().unwrap();
    let image = format!(
        "{}/functions/{}:v1",
        registry.host(),
        handler.replace('.', "-")
    );
    printed_ref(&success(&mut source_build_cmd(
        registry,
        cache.path(),
        src.path(),
        runtime,
        handler,
        &image,
    )))
}

/// A Node.js function whose handler loops synchronously.
fn build_spin(registry: &common::Registry) -> String {
    build(
        registry,
        NODEJS,
        (
            "spin.js",
            "module.exports = { handler() { for (;;) {} } };\n",
        ),
        "spin.handler",
    )
}

/// A Node.js function looping in its handler, under `fnbuild run`, with what it runs from.
struct Spinning {
    function: RunningFunction,
    _registry: common::Registry,
    _cache: tempfile::TempDir,
}

/// Runs the looping function with `flags` and starts a call to it, which sets it looping.
fn run_spinning(flags: &[&str]) -> Spinning {
    let registry = registry_with_bases(&[NODEJS]);
    let image = build_spin(&registry);
    let cache = tempfile::tempdir().unwrap();
    let function = RunningFunction::start_with_flags(fnbuild(), &image, cache.path(), flags);
    let url = function.url("/");
    std::thread::spawn(move || call_tolerating_failure(&url, Duration::from_secs(600)));
    Spinning {
        function,
        _registry: registry,
        _cache: cache,
    }
}

#[test]
fn a_function_blocking_its_event_loop_is_killed_after_the_grace_period() {
    let mut spinning = run_spinning(&["--stop-timeout", "2s"]);
    let function = &mut spinning.function;
    // The event loop is blocked once /healthz stops answering.
    while common::wait_http_ok(&function.url("/healthz"), Duration::from_secs(2)) {
        std::thread::sleep(Duration::from_millis(100));
    }
    function.signal(Signal::SIGTERM);
    let status = function.wait_exit(QUIET);
    let log = function.log();
    assert!(
        status.is_some(),
        "fnbuild run did not exit after SIGTERM:\n{log}"
    );
    assert!(
        log.contains("did not stop in its grace period: killing it"),
        "{log}"
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", function.port)).is_err(),
        "the function still listens"
    );
}

#[test]
fn a_function_blocking_its_event_loop_ends_itself_after_func_blocked_timeout() {
    let mut spinning = run_spinning(&["--env", "FUNC_BLOCKED_TIMEOUT=2"]);
    let function = &mut spinning.function;
    // The runtime says once that it exits, and does: a runtime that cannot end itself says it
    // again at every tick of its watchdog.
    let said = "exiting so that the function is restarted";
    let (mut length, mut changed) = (0, Instant::now());
    let status = loop {
        if let Some(status) = function.exited() {
            break status;
        }
        let log = function.log();
        let times = log.matches(said).count();
        assert!(
            times <= 1,
            "said {times} times that it exits, still running:\n{log}"
        );
        if log.len() != length {
            (length, changed) = (log.len(), Instant::now());
        }
        assert!(
            changed.elapsed() < QUIET,
            "fnbuild run neither exited nor logged for {QUIET:?}:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let log = function.log();
    assert_eq!(status.code(), Some(137), "{log}");
    assert_eq!(log.matches(said).count(), 1, "{log}");
}

#[test]
fn a_function_over_its_memory_limit_is_killed_and_reported() {
    let registry = registry_with_bases(&[PYTHON]);
    let image = build(
        &registry,
        PYTHON,
        (
            "hog.py",
            "def handler(event, context):\n    hog = bytearray(512 * 1024 * 1024)\n    return len(hog)\n",
        ),
        "hog.handler",
    );
    let cache = tempfile::tempdir().unwrap();
    let mut function =
        RunningFunction::start_with_flags(fnbuild(), &image, cache.path(), &["--memory", "96Mi"]);
    let answered = call_tolerating_failure(&function.url("/"), Duration::from_secs(120));
    assert_ne!(
        answered,
        Some(200),
        "512 MiB were allocated under a 96 MiB limit"
    );
    let status = function.wait_exit(QUIET);
    let log = function.log();
    assert!(status.is_some_and(|s| !s.success()), "{status:?}:\n{log}");
    assert!(
        log.contains("the function was killed: out of memory (its limit is 96 MiB)"),
        "{log}"
    );
}
