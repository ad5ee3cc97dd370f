//! Packages made by the tests, and a server for them: a pure-Python wheel of `fnbuildgreet`
//! in a PEP 503 simple index (what `PIP_INDEX_URL` points at) and an npm tarball of
//! `fnbuild-greet` in a static npm registry (`NPM_CONFIG_REGISTRY`), both answering
//! `greet(name)` with `hello NAME from the local index` (or `registry`). Builds that install
//! them need no network beyond this machine's loopback.
#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::Digest as _;

pub const PY_PACKAGE: &str = "fnbuildgreet";
pub const NPM_PACKAGE: &str = "fnbuild-greet";

/// How long [`PackageServer::start`] waits for the server to answer.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// `python3 -m http.server` on 127.0.0.1 and a free port, serving [`package_server_dir`];
/// killed on drop.
pub struct PackageServer {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl PackageServer {
    /// Starts the server and waits until it answers (panics, with its log, if it exits or
    /// does not answer in time).
    pub fn start() -> PackageServer {
        let port = super::free_port();
        let dir = package_server_dir(port);
        let log = dir.path().join("server.log");
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new("python3")
            .args([
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                &port.to_string(),
            ])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting python3 -m http.server: {e}"));
        let mut server = PackageServer {
            child,
            port,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        while !super::wait_http_ok(&server.url("/simple/"), Duration::from_millis(200)) {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("the package server exited ({status}): {}", server.log());
            }
            assert!(
                Instant::now() < deadline,
                "the package server did not answer: {}",
                server.log()
            );
        }
        server
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The pip index URL (`PIP_INDEX_URL`).
    pub fn index_url(&self) -> String {
        self.url("/simple/")
    }

    /// The npm registry URL (`NPM_CONFIG_REGISTRY`).
    pub fn npm_registry(&self) -> String {
        self.url("/npm/")
    }

    /// The requests it served (its log).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for PackageServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `sha256=` in a wheel's RECORD: URL-safe base64 without padding.
fn record_hash(bytes: &[u8]) -> String {
    super::base64_encode(&sha2::Sha256::digest(bytes))
        .replace('+', "-")
        .replace('/', "_")
        .trim_end_matches('=')
        .to_string()
}

/// A pure-Python wheel of `fnbuildgreet` 1.0: the package, METADATA, WHEEL and RECORD.
fn wheel() -> (String, Vec<u8>) {
    let dist_info = format!("{PY_PACKAGE}-1.0.dist-info");
    let files = [
        (
            format!("{PY_PACKAGE}/__init__.py"),
            "def greet(name):\n    return 'hello ' + name + ' from the local index'\n".to_string(),
        ),
        (
            format!("{dist_info}/METADATA"),
            format!("Metadata-Version: 2.1\nName: {PY_PACKAGE}\nVersion: 1.0\n"),
        ),
        (
            format!("{dist_info}/WHEEL"),
            "Wheel-Version: 1.0\nGenerator: fnbuild-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
                .to_string(),
        ),
    ];
    let mut record = String::new();
    for (path, text) in &files {
        record.push_str(&format!(
            "{path},sha256={},{}\n",
            record_hash(text.as_bytes()),
            text.len()
        ));
    }
    record.push_str(&format!("{dist_info}/RECORD,,\n"));
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (path, text) in files
        .iter()
        .chain([&(format!("{dist_info}/RECORD"), record)])
    {
        zip.start_file(path.as_str(), zip::write::SimpleFileOptions::default())
            .unwrap();
        zip.write_all(text.as_bytes()).unwrap();
    }
    let bytes = zip.finish().unwrap().into_inner();
    (format!("{PY_PACKAGE}-1.0-py3-none-any.whl"), bytes)
}

/// The directory a package server on 127.0.0.1:`port` serves: a PEP 503 simple index with
/// the wheel under `/simple/`, and an npm registry under `/npm/` (`GET /npm/NAME` answers the
/// packument, whose tarball is on the same server, with its integrity).
pub fn package_server_dir(port: u16) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (wheel_name, wheel) = wheel();
    std::fs::create_dir_all(root.join("packages")).unwrap();
    std::fs::write(root.join("packages").join(&wheel_name), &wheel).unwrap();
    let project = root.join("simple").join(PY_PACKAGE);
    std::fs::create_dir_all(&project).unwrap();
    let sha256 = super::sha256_digest(&wheel);
    std::fs::write(
        project.join("index.html"),
        format!(
            "<!DOCTYPE html>\n<html><body>\n<a href=\"../../packages/{wheel_name}#sha256={}\">{wheel_name}</a>\n</body></html>\n",
            sha256.trim_start_matches("sha256:")
        ),
    )
    .unwrap();

    let tgz = super::gzip(&super::tar_of(&[
        (
            "package/package.json",
            format!(r#"{{"name":"{NPM_PACKAGE}","version":"1.0.0","main":"index.js"}}"#).as_bytes(),
        ),
        (
            "package/index.js",
            b"module.exports = (name) => 'hello ' + name + ' from the local registry';\n",
        ),
    ]));
    let tarball = format!("{NPM_PACKAGE}-1.0.0.tgz");
    std::fs::create_dir_all(root.join("tarballs")).unwrap();
    std::fs::write(root.join("tarballs").join(&tarball), &tgz).unwrap();
    let integrity = format!(
        "sha512-{}",
        super::base64_encode(&sha2::Sha512::digest(&tgz))
    );
    let packument = serde_json::json!({
        "name": NPM_PACKAGE,
        "dist-tags": { "latest": "1.0.0" },
        "versions": { "1.0.0": {
            "name": NPM_PACKAGE,
            "version": "1.0.0",
            "main": "index.js",
            "dist": {
                "tarball": format!("http://127.0.0.1:{port}/tarballs/{tarball}"),
                "integrity": integrity,
            },
        }},
    });
    std::fs::create_dir_all(root.join("npm")).unwrap();
    std::fs::write(
        root.join("npm").join(NPM_PACKAGE),
        serde_json::to_vec(&packument).unwrap(),
    )
    .unwrap();
    dir
}
