//! Interrupted builds: a build stopped by SIGTERM or SIGINT removes its temporary files from
//! the cache and exits with 128 plus the signal's number; what a killed build (SIGKILL) left is
//! removed by the next build using the cache; and a build never removes the temporary files of
//! another one still running on the same cache directory.
//!
//! The builds download their source from a server that sends a first part and then stalls, so
//! each stays in progress, with data in its session under `CACHE/tmp/`, until the test stops
//! it. Waits follow that progress; watchdogs only bound them.

mod common;

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use common::functions::{function_dir, layout_build_cmd, success, PYTHON};

/// What the stalled server sends before it stalls.
const FIRST_PART: usize = 1 << 20;
/// How long a build may take to reach a point, or to exit, before the test gives up.
const WATCHDOG: Duration = Duration::from_secs(180);

/// An HTTP server on localhost answering every request with a 64 MiB body of which it sends
/// only the first MiB, then keeps the connection open, sending nothing more, for as long as the
/// test runs. Returns the URL of a source archive on it.
fn stalled_source() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/fn.tar", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for mut stream in listener.incoming().flatten() {
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/x-tar\r\n\r\n",
                64 << 20
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&vec![b'x'; FIRST_PART]);
            let _ = stream.flush();
            held.push(stream);
        }
    });
    url
}

/// A `fnbuild build` running in the background, its log going to a file.
struct Build {
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Build {
    /// Starts a build of the stalled source with `cache` as its cache directory.
    fn start_stalled(cache: &Path) -> Build {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("build.log");
        let output = format!("oci:{}", dir.path().join("out").display());
        let child = layout_build_cmd(PYTHON, &stalled_source(), "hello.handler", &output, cache)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Build {
            child,
            log,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }

    /// Waits until one of the cache's sessions holds all the stalled server sends; returns
    /// that session's directory.
    fn wait_for_session_data(&mut self, cache: &Path) -> PathBuf {
        let deadline = Instant::now() + WATCHDOG;
        loop {
            if let Some(session) = sessions(cache)
                .into_iter()
                .find(|s| tree_size(s) >= FIRST_PART as u64)
            {
                return session;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the build exited ({status}) before its download started; its log:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no session in {} received the download within {WATCHDOG:?}; the build's log:\n{}",
                cache.display(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the build to exit.
    fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WATCHDOG;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "the build did not exit within {WATCHDOG:?}; its log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Build {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The session directories in `cache/tmp`.
fn sessions(cache: &Path) -> Vec<PathBuf> {
    entries(&cache.join("tmp"))
        .into_iter()
        .filter(|p| p.is_dir())
        .collect()
}

/// What `dir` holds.
fn entries(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .map(|list| list.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// The bytes of the files under `path`.
fn tree_size(path: &Path) -> u64 {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => entries(path).iter().map(|p| tree_size(p)).sum(),
        Ok(meta) => meta.len(),
        Err(_) => 0,
    }
}

/// A complete build of a small function with `cache` as its cache directory; returns its log.
fn complete_build(cache: &Path) -> String {
    let source = function_dir(&[("hello.py", "def handler(event, context):\n    return 1\n")]);
    let out = tempfile::tempdir().unwrap();
    let output = format!("oci:{}", out.path().join("layout").display());
    let built = success(
        layout_build_cmd(
            PYTHON,
            &source.path().display().to_string(),
            "hello.handler",
            &output,
            cache,
        )
        .stdin(Stdio::null()),
    );
    String::from_utf8_lossy(&built.stderr).into_owned()
}

/// Stops a build in progress with `signal`: it exits with `code`, says so, and leaves nothing
/// in the cache's `tmp/`.
fn stopping_removes_the_builds_temporary_files(signal: Signal, code: i32) {
    let cache = tempfile::tempdir().unwrap();
    let mut build = Build::start_stalled(cache.path());
    build.wait_for_session_data(cache.path());
    build.signal(signal);
    let status = build.wait();
    let log = build.log();
    assert_eq!(
        status.code(),
        Some(code),
        "exit status {status}; log:\n{log}"
    );
    assert!(
        log.contains(&format!("stopped by {signal}")),
        "no line says the build was stopped; log:\n{log}"
    );
    let left = entries(&cache.path().join("tmp"));
    assert!(left.is_empty(), "left in the cache: {left:?}; log:\n{log}");
}

#[test]
fn sigterm_removes_the_builds_temporary_files() {
    stopping_removes_the_builds_temporary_files(Signal::SIGTERM, 143);
}

#[test]
fn sigint_removes_the_builds_temporary_files() {
    stopping_removes_the_builds_temporary_files(Signal::SIGINT, 130);
}

#[test]
fn the_next_build_removes_what_a_killed_build_left() {
    let cache = tempfile::tempdir().unwrap();
    let mut killed = Build::start_stalled(cache.path());
    let session = killed.wait_for_session_data(cache.path());
    killed.signal(Signal::SIGKILL);
    assert_eq!(killed.wait().signal(), Some(Signal::SIGKILL as i32));
    assert!(
        tree_size(&session) >= FIRST_PART as u64,
        "the killed build's session is not there to be removed"
    );

    let log = complete_build(cache.path());
    assert!(
        log.contains("left in the cache by 1 interrupted build"),
        "the removal is not logged; log:\n{log}"
    );
    let left = entries(&cache.path().join("tmp"));
    assert!(left.is_empty(), "left in the cache: {left:?}; log:\n{log}");
}

#[test]
fn a_build_keeps_the_session_of_another_one_running() {
    let cache = tempfile::tempdir().unwrap();
    let mut running = Build::start_stalled(cache.path());
    let session = running.wait_for_session_data(cache.path());

    let log = complete_build(cache.path());
    assert!(
        !log.contains("left in the cache"),
        "a build removed something; log:\n{log}"
    );
    assert!(
        tree_size(&session) >= FIRST_PART as u64,
        "the running build's session lost its files"
    );
    assert_eq!(sessions(cache.path()), [session]);

    running.signal(Signal::SIGTERM);
    let status = running.wait();
    assert_eq!(status.code(), Some(143), "log:\n{}", running.log());
    let left = entries(&cache.path().join("tmp"));
    assert!(left.is_empty(), "left in the cache: {left:?}");
}
