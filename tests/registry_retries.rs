//! The retry policy against registries that are failing or busy: a fixture standing in for
//! a registry (every request answered 500), and a small proxy in front of the real CNCF
//! distribution registry that answers some requests itself (429 with `Retry-After`, the
//! spec's `TOOMANYREQUESTS` error code with status 400) and forwards the rest.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::functions::{failure, success};
use common::{fnbuild, Registry, RegistryOptions};

/// A request the fixture received.
#[derive(Debug, Clone)]
struct Seen {
    at: Instant,
    method: String,
    path: String,
    /// The status the fixture answered with itself; `None` when it forwarded the request.
    answered: Option<u16>,
}

/// What the fixture does with the request numbered so (from 0, counting every request it has
/// seen, whatever its method) and of that method: answer it with a status, headers and body,
/// or forward it.
type Script = dyn Fn(usize, &str) -> Option<(u16, &'static str, &'static str)> + Send + Sync;

/// An HTTP/1.1 server on 127.0.0.1, one request per connection: each request is answered as
/// the script says, or forwarded to `upstream`. Anything that is not HTTP (a TLS client
/// hello) gets a plain 500, as a plain-HTTP server answers it.
struct Fixture {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Fixture {
    fn start(upstream: Option<SocketAddr>, script: Box<Script>) -> Fixture {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let script: Arc<Script> = Arc::from(script);
        let log = seen.clone();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (log, script) = (log.clone(), script.clone());
                thread::spawn(move || serve(stream, upstream, &log, &*script));
            }
        });
        Fixture { addr, seen }
    }

    fn host(&self) -> String {
        self.addr.to_string()
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn serve(stream: TcpStream, upstream: Option<SocketAddr>, log: &Mutex<Vec<Seen>>, script: &Script) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    if reader
        .fill_buf()
        .map_or(true, |b| !b.first().is_some_and(u8::is_ascii_uppercase))
    {
        respond(stream, 500, "", "not HTTP");
        return;
    }
    let mut head = Vec::new();
    let mut content_length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        let (name, value) = line.split_once(':').unwrap_or((&line, ""));
        if name.eq_ignore_ascii_case("content-length") {
            content_length = value.trim().parse().unwrap_or(0);
        }
        if !name.eq_ignore_ascii_case("connection") {
            head.push(line);
        }
    }
    let mut body = vec![0; content_length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let mut words = head
        .first()
        .map(|l| l.split_whitespace())
        .into_iter()
        .flatten();
    let (method, path) = (
        words.next().unwrap_or_default().to_string(),
        words.next().unwrap_or_default().to_string(),
    );
    let answer = {
        let mut log = log.lock().unwrap();
        let answer = script(log.len(), &method);
        log.push(Seen {
            at: Instant::now(),
            method,
            path,
            answered: answer.map(|(status, _, _)| status),
        });
        answer
    };
    match (answer, upstream) {
        (Some((status, headers, body)), _) => respond(stream, status, headers, body),
        (None, Some(upstream)) => forward(stream, upstream, &head, &body),
        (None, None) => respond(stream, 500, "", "nothing to forward to"),
    }
}

fn respond(mut stream: TcpStream, status: u16, headers: &str, body: &str) {
    let response = format!(
        "HTTP/1.1 {status} Fixture\r\nContent-Type: application/json\r\n{headers}\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes());
    let _ = stream.flush();
}

/// Sends the request on to `upstream` with `Connection: close`, and its answer back.
fn forward(mut client: TcpStream, upstream: SocketAddr, head: &[String], body: &[u8]) {
    let mut server = TcpStream::connect(upstream).unwrap();
    let mut request = head.concat().into_bytes();
    request.extend_from_slice(b"Connection: close\r\n\r\n");
    request.extend_from_slice(body);
    server.write_all(&request).unwrap();
    let mut answer = Vec::new();
    let _ = server.read_to_end(&mut answer);
    let _ = client.write_all(&answer);
    let _ = client.flush();
}

/// A one-image OCI layout of a tiny image.
fn tiny_layout(dir: &Path) {
    common::write_oci_layout(
        dir,
        "v1",
        serde_json::json!({ "config": {} }),
        &[common::tar_of(&[(
            "hello.txt",
            b"hello through a busy registry",
        )])],
    );
}

/// `fnbuild push oci:LAYOUT TARGET` with no credentials from the environment.
fn push(layout: &Path, target: &str, home: &Path, cache: &Path) -> Command {
    let mut cmd = fnbuild();
    cmd.env_remove("DOCKER_CONFIG")
        .env("HOME", home)
        .arg("push")
        .arg(format!("oci:{}", layout.display()))
        .arg(target)
        .arg("--cache-dir")
        .arg(cache);
    cmd
}

/// A registry whose `/v2/` answers 500 every time, reached as an `--insecure-registry`: the
/// HTTPS attempt fails with a TLS error (the server speaks plain HTTP), the plain-HTTP
/// attempts get the 500. What the user sees is the 500, the last real cause.
#[test]
fn a_registry_answering_500_is_reported_by_its_500_not_a_tls_error() {
    let fixture = Fixture::start(
        None,
        Box::new(|_, _| {
            Some((
                500,
                "",
                r#"{"errors":[{"code":"UNKNOWN","message":"the fixture always fails"}]}"#,
            ))
        }),
    );
    let (home, cache, layout) = (tempdir(), tempdir(), tempdir());
    tiny_layout(layout.path());
    let host = fixture.host();
    let mut cmd = push(
        layout.path(),
        &format!("{host}/fn/x:1"),
        home.path(),
        cache.path(),
    );
    cmd.args(["--insecure-registry", &host]);
    let (code, stderr) = failure(&mut cmd);
    eprintln!("{stderr}");
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("500") && stderr.contains("the fixture always fails"),
        "the registry's 500 is not what is reported:\n{stderr}"
    );
    assert!(
        !stderr.contains("InvalidContentType"),
        "the TLS error is reported:\n{stderr}"
    );
    let pings = fixture.seen().iter().filter(|s| s.path == "/v2/").count();
    assert!(pings >= 2, "the 500 was not retried: {:?}", fixture.seen());
}

/// In front of the real registry: the first request is answered 429 with `Retry-After: 2`,
/// the first POST (an upload session; a HEAD answer has no body to hold an error code) 400
/// with the `TOOMANYREQUESTS` error code; both are retried, the first no sooner than the
/// registry asked, and the push succeeds.
#[test]
fn busy_answers_are_retried_after_the_pause_asked_for() {
    let registry = Registry::start(RegistryOptions::default());
    let posted = AtomicBool::new(false);
    let upstream: SocketAddr = registry.host().parse().unwrap();
    let fixture = Fixture::start(
        Some(upstream),
        Box::new(move |n, method| {
            if n == 0 {
                Some((429, "Retry-After: 2\r\n", r#"{"errors":[]}"#))
            } else if method == "POST" && !posted.swap(true, Ordering::SeqCst) {
                Some((
                    400,
                    "",
                    r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}"#,
                ))
            } else {
                None
            }
        }),
    );
    let (home, cache, layout) = (tempdir(), tempdir(), tempdir());
    tiny_layout(layout.path());
    let target = format!("{}/fn/busy:v1", fixture.host());
    let pushed = success(&mut push(layout.path(), &target, home.path(), cache.path()));
    let seen = fixture.seen();
    eprintln!("{}\n{seen:#?}", String::from_utf8_lossy(&pushed.stderr));
    assert_eq!(seen[0].answered, Some(429), "{seen:?}");
    let gap = seen[1].at - seen[0].at;
    assert!(
        gap >= Duration::from_millis(1900),
        "retried {gap:?} after a 429 with Retry-After: 2"
    );
    let busy = seen
        .iter()
        .position(|s| s.answered == Some(400))
        .expect("a POST was answered TOOMANYREQUESTS");
    let (method, path) = (&seen[busy].method, &seen[busy].path);
    assert!(
        seen[busy + 1..]
            .iter()
            .any(|s| &s.method == method && &s.path == path),
        "the TOOMANYREQUESTS answer to {method} {path} was not retried: {seen:?}",
    );
    assert_eq!(registry.image_tags("fn/busy"), vec!["v1"]);
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}
