//! Network fetches of a source run under deadlines: `--fetch-timeout` for the whole fetch and
//! `--fetch-idle-timeout` for a wait for data. Servers written here, on 127.0.0.1, stall or
//! trickle a byte a second: an http(s) source, a Git source (`git://`, and smart HTTP with a
//! password in the URL) and an S3 source (one object, and a prefix). Each build fails with exit
//! code 1 and a message naming the source, the deadline and its flag, shows neither
//! credentials nor query strings, and logs "still fetching" while it waits.
//!
//! No assertion is about time: small deadlines keep the tests short, and a watchdog kills a
//! build that outlives [`WATCHDOG`], so that a deadline that never fires fails the test
//! instead of hanging it.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::functions::{layout_build_cmd, PYTHON};
use common::s3_server::isolate_aws_env;

/// How long a build may run before the test kills it and fails.
const WATCHDOG: Duration = Duration::from_secs(120);

/// Found anywhere in a build's output, these mean a credential or a query string leaked.
const PASSWORD: &str = "pw-Hq4-SECRET-9xT";
const TOKEN: &str = "tok-Zr8-SECRET-2mW";
const S3_SECRET: &str = "s3-Kd7-SECRET-5pQ";

/// The head of an HTTP answer whose body never ends.
const HTTP_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\
                           Content-Length: 1000000\r\n\r\n";
/// The start of a Git packet line announcing 256 bytes, that never all come.
const GIT_PKT_HEAD: &[u8] = b"0100";

/// What a test server does after it has read a request and written its head.
#[derive(Clone, Copy)]
enum Then {
    /// Sends a byte a second, until the client goes.
    Trickle,
    /// Sends nothing more, keeping the connection open until the client goes.
    Stall,
}

/// A server on 127.0.0.1 answering every connection, on a thread of its own, with `head`
/// and then `then`; returns its port.
fn server(head: &'static [u8], then: Then) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            thread::spawn(move || answer(stream, head, then));
        }
    });
    port
}

fn answer(mut stream: TcpStream, head: &[u8], then: Then) {
    let _ = stream.set_nodelay(true);
    let mut request = [0u8; 8192];
    if stream.read(&mut request).is_err() || stream.write_all(head).is_err() {
        return;
    }
    match then {
        Then::Trickle => {
            while stream.write_all(b"a").is_ok() {
                thread::sleep(Duration::from_secs(1));
            }
        }
        Then::Stall => while stream.read(&mut request).is_ok_and(|n| n > 0) {},
    }
}

/// A build of `source` into an OCI layout, with `args` added, `$HOME` empty and no
/// fnbuild or AWS settings from the environment.
fn build_cmd(source: &str, args: &[&str], work: &Path) -> Command {
    let output = format!("oci:{}:fn", work.join("layout").display());
    let cache = work.join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    let home = work.join("home");
    std::fs::create_dir_all(&home).unwrap();
    let mut cmd = layout_build_cmd(PYTHON, source, "hello.handler", &output, &cache);
    cmd.args(args);
    for var in [
        "FNBUILD_LOG",
        "FNBUILD_LOG_FORMAT",
        "FNBUILD_FETCH_TIMEOUT",
        "FNBUILD_FETCH_IDLE_TIMEOUT",
        "FNBUILD_GIT_TOKEN",
        "SSH_AUTH_SOCK",
    ] {
        cmd.env_remove(var);
    }
    isolate_aws_env(&mut cmd);
    cmd.env("HOME", &home).env("NO_COLOR", "1");
    cmd
}

/// Runs a build expected to fail; returns its exit code and stderr. Kills it, and fails,
/// when it outlives [`WATCHDOG`].
fn run_failing(cmd: &mut Command, work: &Path) -> (i32, String) {
    let log = work.join("stderr.log");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > WATCHDOG {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} still ran after {WATCHDOG:?}: no deadline ended it; its log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        thread::sleep(Duration::from_millis(100));
    };
    let stderr = std::fs::read_to_string(&log).unwrap();
    eprintln!("--- {cmd:?} exited {status}:\n{stderr}");
    assert!(
        !work.join("layout").exists(),
        "a failed build wrote its output"
    );
    (status.code().unwrap_or(-1), stderr)
}

/// Asserts a build failed with exit code 1 and an error saying `message`, without a panic,
/// a credential or a query string; and, when `logged` is given, that this "still fetching"
/// line came before the error.
fn assert_failed(code: i32, stderr: &str, message: &str, logged: Option<&str>) {
    assert_eq!(code, 1, "exit code; stderr:\n{stderr}");
    assert!(
        stderr.contains(message),
        "expected the error to say {message:?}; stderr:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "fnbuild panicked:\n{stderr}");
    for secret in [PASSWORD, TOKEN, S3_SECRET, "?token"] {
        assert!(!stderr.contains(secret), "{secret} leaked:\n{stderr}");
    }
    if let Some(logged) = logged {
        let line = stderr.find(logged).unwrap_or_else(|| {
            panic!("expected a log line saying {logged:?} before the error; stderr:\n{stderr}")
        });
        assert!(
            line < stderr.find("error:").unwrap(),
            "the progress line came after the error:\n{stderr}"
        );
    }
}

#[test]
fn an_http_source_that_trickles_fails_at_the_overall_deadline() {
    let port = server(HTTP_HEAD, Then::Trickle);
    let work = tempfile::tempdir().unwrap();
    let source = format!("http://ci:{PASSWORD}@127.0.0.1:{port}/f.tgz?token={TOKEN}");
    let mut cmd = build_cmd(
        &source,
        &["--fetch-timeout", "7s", "--fetch-idle-timeout", "3s"],
        work.path(),
    );
    let (code, stderr) = run_failing(&mut cmd, work.path());
    let shown = format!("http://127.0.0.1:{port}/f.tgz");
    assert_failed(
        code,
        &stderr,
        &format!("cannot fetch {shown}: took longer than 7s (--fetch-timeout; "),
        Some(&format!("still fetching {shown}: ")),
    );
}

#[test]
fn an_http_source_that_stops_sending_fails_at_the_idle_deadline() {
    // Headers, then nothing; and a server that never answers at all.
    for (head, words) in [(HTTP_HEAD, "0 B received so far"), (&b""[..], "")] {
        let port = server(head, Then::Stall);
        let work = tempfile::tempdir().unwrap();
        let source = format!("http://127.0.0.1:{port}/f.tgz?token={TOKEN}");
        let mut cmd = build_cmd(&source, &["--fetch-idle-timeout", "3s"], work.path());
        let (code, stderr) = run_failing(&mut cmd, work.path());
        assert_failed(
            code,
            &stderr,
            &format!("cannot fetch http://127.0.0.1:{port}/f.tgz: no data for 3s ({words}"),
            None,
        );
        assert!(stderr.contains("--fetch-idle-timeout)"), "{stderr}");
    }

    // A bad duration is a usage error, before anything is fetched.
    let work = tempfile::tempdir().unwrap();
    let mut cmd = build_cmd(
        "http://127.0.0.1:1/f.tgz",
        &["--fetch-timeout", "soon"],
        work.path(),
    );
    let (code, stderr) = run_failing(&mut cmd, work.path());
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--fetch-timeout soon"), "{stderr}");
}

#[test]
fn a_git_source_that_stalls_or_trickles_fails_at_its_deadlines() {
    // Smart HTTP with a password in the URL; the server reads the request and says nothing.
    let port = server(b"", Then::Stall);
    let work = tempfile::tempdir().unwrap();
    let source = format!("git+http://ci:{PASSWORD}@127.0.0.1:{port}/fn.git");
    let mut cmd = build_cmd(&source, &["--fetch-idle-timeout", "3s"], work.path());
    let (code, stderr) = run_failing(&mut cmd, work.path());
    assert_failed(
        code,
        &stderr,
        &format!(
            "cannot fetch http://127.0.0.1:{port}/fn.git: no data for 3s (0 B received so far; \
             --fetch-idle-timeout)"
        ),
        None,
    );

    // git://, a reference listing trickled a byte a second: libgit2 stays blocked in it
    // (every read gets its byte), and the build gives up on it at the overall deadline.
    let port = server(GIT_PKT_HEAD, Then::Trickle);
    let work = tempfile::tempdir().unwrap();
    let source = format!("git://127.0.0.1:{port}/fn.git");
    let mut cmd = build_cmd(&source, &["--fetch-timeout", "7s"], work.path());
    let (code, stderr) = run_failing(&mut cmd, work.path());
    assert_failed(
        code,
        &stderr,
        &format!("cannot fetch {source}: took longer than 7s (--fetch-timeout; 0 B received)"),
        Some(&format!("still fetching {source}: ")),
    );
}

#[test]
fn an_s3_source_that_stalls_or_trickles_fails_at_its_deadlines() {
    let keys = tempfile::tempdir().unwrap();
    let (access, secret) = (keys.path().join("access"), keys.path().join("secret"));
    std::fs::write(&access, "fnbuild-test-key\n").unwrap();
    std::fs::write(&secret, format!("{S3_SECRET}\n")).unwrap();
    let s3_args = |endpoint: &str| -> Vec<String> {
        vec![
            "--s3-endpoint".into(),
            endpoint.into(),
            "--s3-access-key-file".into(),
            access.display().to_string(),
            "--s3-secret-key-file".into(),
            secret.display().to_string(),
        ]
    };

    // One object, whose body trickles: the overall deadline.
    let port = server(HTTP_HEAD, Then::Trickle);
    let work = tempfile::tempdir().unwrap();
    let mut args = s3_args(&format!("http://127.0.0.1:{port}"));
    args.extend(["--fetch-timeout".into(), "7s".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut cmd = build_cmd("s3://functions/fn.tgz", &args, work.path());
    let (code, stderr) = run_failing(&mut cmd, work.path());
    assert_failed(
        code,
        &stderr,
        "cannot fetch s3://functions/fn.tgz: took longer than 7s (--fetch-timeout; ",
        Some("still fetching s3://functions/fn.tgz: "),
    );

    // A prefix, whose listing never comes: the idle deadline, set by its variable.
    let port = server(b"", Then::Stall);
    let work = tempfile::tempdir().unwrap();
    let args = s3_args(&format!("http://127.0.0.1:{port}"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut cmd = build_cmd("s3://functions/team/", &args, work.path());
    cmd.env("FNBUILD_FETCH_IDLE_TIMEOUT", "3s");
    let (code, stderr) = run_failing(&mut cmd, work.path());
    assert_failed(
        code,
        &stderr,
        "cannot fetch s3://functions/team/: no data for 3s (0 B received so far; \
         --fetch-idle-timeout)",
        None,
    );
}
