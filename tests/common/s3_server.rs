//! An S3-compatible store for the `s3://` source tests: moto in server mode (`moto_server`,
//! from `pip install 'moto[server]'`) on 127.0.0.1 and a free port, killed on drop.
//!
//! Buckets, objects and IAM users are put in with boto3 by `tests/support/s3_setup.py`
//! (moto takes unsigned object requests as anonymous ones and answers 403, so plain HTTP
//! PUTs do not do). Authentication starts off, as moto starts; [`S3Server::set_auth`] turns
//! it on through moto's `/moto-api/reset-auth` (what `INITIAL_NO_AUTH_ACTION_COUNT=0` does
//! at start): every request must then be signed with the keys of an IAM user created by
//! [`S3Setup::user`], whose policies decide what it may read.
//!
//! A limit of moto (5.2) with authentication on: it checks signatures against the query
//! string as decoded, so a request whose query holds a percent-encoded character (a
//! ListObjectsV2 `prefix=team%2Ffn%2F`) fails with SignatureDoesNotMatch, from any client,
//! boto3 included. Listing a whole bucket (`s3://BUCKET/`, an empty prefix) and getting
//! objects (the key is in the path) are checked correctly.
//!
//! Nothing here talks to any address but 127.0.0.1; [`isolate_aws_env`] keeps the
//! developer's AWS setup, and the instance metadata service, away from the processes tests
//! start.
#![allow(dead_code)]

use std::cell::Cell;
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;
use tempfile::TempDir;

use super::{base64_encode, free_port};

/// How long [`S3Server::start`] waits for moto to answer.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Removes every inherited `AWS_*` variable from `cmd`'s environment, and sets
/// `AWS_EC2_METADATA_DISABLED=true`, `AWS_CONFIG_FILE=/nonexistent` and
/// `AWS_SHARED_CREDENTIALS_FILE=/nonexistent`: no credentials, profile, endpoint or region
/// from the machine running the tests, and never the instance metadata service. Proxies are
/// bypassed for 127.0.0.1 (`NO_PROXY`), so a proxy set in CI never sees the test traffic.
/// Tests set what they need after this.
pub fn isolate_aws_env(cmd: &mut Command) -> &mut Command {
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("AWS_") {
            cmd.env_remove(&name);
        }
    }
    cmd.env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
}

/// An IAM policy allowing to list `buckets` and read their objects (and their versions).
pub fn read_policy(buckets: &[&str]) -> serde_json::Value {
    let resources: Vec<String> = buckets
        .iter()
        .flat_map(|b| [format!("arn:aws:s3:::{b}"), format!("arn:aws:s3:::{b}/*")])
        .collect();
    json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Action": ["s3:ListBucket", "s3:GetObject", "s3:GetObjectVersion"],
            "Resource": resources,
        }],
    })
}

/// An access key pair of an IAM user made in moto.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    pub access_key_id: String,
    pub secret_access_key: String,
}

/// What to put into the store, applied by [`S3Server::setup`].
#[derive(Debug, Default)]
pub struct S3Setup {
    buckets: Vec<serde_json::Value>,
    objects: Vec<serde_json::Value>,
    users: Vec<serde_json::Value>,
}

impl S3Setup {
    pub fn new() -> S3Setup {
        S3Setup::default()
    }

    /// A bucket without versioning.
    pub fn bucket(mut self, name: &str) -> S3Setup {
        self.buckets
            .push(json!({ "name": name, "versioning": false }));
        self
    }

    /// A bucket with versioning enabled (before any object is put).
    pub fn versioned_bucket(mut self, name: &str) -> S3Setup {
        self.buckets
            .push(json!({ "name": name, "versioning": true }));
        self
    }

    /// An object, put after the buckets, in the order given (a key put twice gets two
    /// versions in a versioned bucket).
    pub fn object(mut self, bucket: &str, key: &str, data: &[u8]) -> S3Setup {
        self.objects.push(json!({
            "bucket": bucket,
            "key": key,
            "data": base64_encode(data),
        }));
        self
    }

    /// An IAM user with one access key, and `policy` as its inline policy (none: the user
    /// may do nothing once authentication is on).
    pub fn user(mut self, name: &str, policy: Option<serde_json::Value>) -> S3Setup {
        self.users.push(json!({ "name": name, "policy": policy }));
        self
    }
}

/// What an object put answered.
#[derive(Debug, Clone)]
pub struct PutObject {
    pub bucket: String,
    pub key: String,
    /// The ETag without quotes.
    pub etag: String,
    /// The version ID, in a versioned bucket.
    pub version_id: Option<String>,
}

/// What [`S3Server::setup`] made.
#[derive(Debug, Clone, Default)]
pub struct SetupResult {
    pub objects: Vec<PutObject>,
    pub users: HashMap<String, Keys>,
}

impl SetupResult {
    /// The last put of `bucket/key`.
    pub fn object(&self, bucket: &str, key: &str) -> &PutObject {
        self.objects
            .iter()
            .rev()
            .find(|o| o.bucket == bucket && o.key == key)
            .unwrap_or_else(|| panic!("no object {bucket}/{key} was put"))
    }

    /// The keys of user `name`.
    pub fn keys(&self, name: &str) -> &Keys {
        self.users
            .get(name)
            .unwrap_or_else(|| panic!("no user {name} was made"))
    }
}

/// A moto server on 127.0.0.1, killed on drop.
pub struct S3Server {
    child: Child,
    port: u16,
    log_path: PathBuf,
    auth: Cell<bool>,
    // Last: removed after the process is gone.
    dir: TempDir,
}

impl S3Server {
    /// Starts `moto_server` on a free port and waits (up to ~30 s) until it answers.
    /// Authentication is off. Panics, with its log, when it does not start.
    pub fn start() -> S3Server {
        let dir = tempfile::Builder::new()
            .prefix("fnbuild-moto-")
            .tempdir()
            .expect("creating moto's temporary directory");
        let log_path = dir.path().join("moto.log");
        // The port is free when picked but may be taken before moto binds it: retry.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = free_port();
            let log = fs::File::create(&log_path).expect("creating moto's log");
            let mut cmd = Command::new("moto_server");
            isolate_aws_env(&mut cmd);
            let mut child = cmd
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .current_dir(dir.path())
                // Moto's own settings: authentication off until set_auth(true).
                .env_remove("INITIAL_NO_AUTH_ACTION_COUNT")
                .env_remove("MOTO_ACCOUNT_ID")
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("cloning the log file handle"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "starting moto_server: {e} (install it with `pip install 'moto[server]'`)"
                    )
                });
            let url = format!("http://127.0.0.1:{port}/moto-api/");
            let deadline = Instant::now() + START_TIMEOUT;
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    let log = fs::read_to_string(&log_path).unwrap_or_default();
                    if log.contains("already in use") && attempt < 5 {
                        break;
                    }
                    panic!("moto_server exited at start ({status}); its log:\n{log}");
                }
                if http("GET", &url, None).is_some_and(|(status, _)| status == 200) {
                    return S3Server {
                        child,
                        port,
                        log_path,
                        auth: Cell::new(false),
                        dir,
                    };
                }
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "moto_server did not answer {url} in {START_TIMEOUT:?}; its log:\n{}",
                        fs::read_to_string(&log_path).unwrap_or_default()
                    );
                }
                thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// `http://127.0.0.1:PORT`, for `--s3-endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// moto's log so far (one line per request).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Turns authentication on (every request must be signed by an IAM user's key and be
    /// allowed by its policies) or off (anything goes, as moto starts).
    pub fn set_auth(&self, on: bool) {
        let url = format!("{}/moto-api/reset-auth", self.endpoint());
        let body = if on { "0" } else { "inf" };
        match http("POST", &url, Some(body.as_bytes().to_vec())) {
            Some((200, _)) => self.auth.set(on),
            other => panic!("POST {url} {body}: {other:?}; moto's log:\n{}", self.log()),
        }
    }

    /// Puts what `setup` describes (authentication is off meanwhile, then as it was).
    pub fn setup(&self, setup: &S3Setup) -> SetupResult {
        let auth = self.auth.get();
        if auth {
            self.set_auth(false);
        }
        let spec = json!({
            "endpoint": self.endpoint(),
            "buckets": setup.buckets,
            "objects": setup.objects,
            "users": setup.users,
        });
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/s3_setup.py");
        let mut cmd = Command::new("python3");
        isolate_aws_env(&mut cmd);
        let mut child = cmd
            .arg(&script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("running python3 {}: {e}", script.display()));
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            stdin
                .write_all(&serde_json::to_vec(&spec).unwrap())
                .expect("writing the setup to python3");
        }
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{} failed ({}): {}\n(is boto3 installed? `pip install 'moto[server]'`)\n\
             moto's log:\n{}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        if auth {
            self.set_auth(true);
        }
        let answer: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{} printed no JSON ({e})", script.display()));
        let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
        SetupResult {
            objects: answer["objects"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| PutObject {
                    bucket: text(&o["bucket"]),
                    key: text(&o["key"]),
                    etag: text(&o["etag"]),
                    version_id: o["version_id"].as_str().map(str::to_owned),
                })
                .collect(),
            users: answer["users"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(name, k)| {
                    (
                        name.clone(),
                        Keys {
                            access_key_id: text(&k["access_key_id"]),
                            secret_access_key: text(&k["secret_access_key"]),
                        },
                    )
                })
                .collect(),
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One blocking HTTP request to 127.0.0.1 (on a thread of its own, so it may be called
/// from async tests too): `Some((status, body))`, `None` on a transport error.
fn http(method: &str, url: &str, body: Option<Vec<u8>>) -> Option<(u16, Vec<u8>)> {
    assert!(
        url.starts_with("http://127.0.0.1:"),
        "the S3 fixture only talks to 127.0.0.1, not {url}"
    );
    let (method, url) = (method.to_string(), url.to_string());
    thread::spawn(move || {
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(5))
            .no_proxy()
            .build()
            .ok()?;
        let mut request = client.request(method.parse().ok()?, &url);
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request.send().ok()?;
        let status = response.status().as_u16();
        Some((status, response.bytes().ok()?.to_vec()))
    })
    .join()
    .expect("the HTTP thread does not panic")
}
