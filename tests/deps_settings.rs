//! Package-manager settings reach the dependency install inside the base image (index URLs,
//! pip.conf, .npmrc, Kubeless's NPM_REGISTRY), their secrets reach no log and no layer, and
//! the host installer works too. A recording HTTP server on localhost stands in for a private
//! package index.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};

use common::functions::*;

const SECRET: &str = "s3cr3t-index-pw";

/// An HTTP server that answers 404 to everything and records each request's first line and
/// Authorization header.
struct Recorder {
    port: u16,
    requests: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut buf = vec![0u8; 8192];
                let n = stream.read(&mut buf).unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).into_owned();
                let first = head.lines().next().unwrap_or_default().to_string();
                let auth = head
                    .lines()
                    .find(|l| l.to_ascii_lowercase().starts_with("authorization:"))
                    .unwrap_or_default()
                    .to_string();
                seen.lock().unwrap().push(format!("{first} | {auth}"));
                let _ = stream.write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        });
        Recorder { port, requests }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

fn build(
    src: &Path,
    cache: &Path,
    runtime: &str,
    env: &[(&str, &str)],
    extra: &[&str],
) -> std::process::Output {
    let out_dir = tempfile::tempdir().unwrap();
    let output = format!("oci:{}", out_dir.path().display());
    let mut cmd = layout_build_cmd(runtime, src.to_str().unwrap(), "fn.handler", &output, cache);
    cmd.args(extra);
    for (k, v) in env {
        cmd.env(k, v);
    }
    // The output layout goes with out_dir; the cache keeps every layer for inspection.
    cmd.output().unwrap()
}

#[test]
fn pip_index_urls_reach_the_install_and_their_password_reaches_no_log_and_no_layer() {
    let index = Recorder::start();
    let src = function_dir(&[
        (
            "fn.py",
            "import six\n\ndef handler(event, context):\n    return six.__version__\n",
        ),
        ("requirements.txt", "six==1.16.0\n"),
    ]);
    let cache = tempfile::tempdir().unwrap();
    let extra_index = index
        .url("/simple")
        .replace("http://", &format!("http://fnuser:{SECRET}@"));
    let out = build(
        src.path(),
        cache.path(),
        PYTHON,
        &[("PIP_EXTRA_INDEX_URL", &extra_index)],
        &["--log-level", "debug"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let requests = index.requests();
    let expected_auth = format!(
        "Basic {}",
        common::base64_encode(format!("fnuser:{SECRET}").as_bytes())
    );
    assert!(
        requests
            .iter()
            .any(|r| r.starts_with("GET /simple/six/") && r.contains(&expected_auth)),
        "pip inside the base image did not ask the private index: {requests:?}"
    );
    assert!(
        !stderr.contains(SECRET),
        "the index password leaked into the log:\n{stderr}"
    );
    let holding = files_holding(cache.path(), &[SECRET]);
    assert!(holding.is_empty(), "the index password is in {holding:?}");
}

#[test]
fn pip_conf_from_pip_config_file_is_used() {
    let index = Recorder::start();
    let conf_dir = tempfile::tempdir().unwrap();
    let conf = conf_dir.path().join("pip.conf");
    std::fs::write(
        &conf,
        format!("[global]\nindex-url = {}\n", index.url("/from-pip-conf")),
    )
    .unwrap();
    let src = function_dir(&[
        ("fn.py", "def handler(event, context):\n    return 'x'\n"),
        ("requirements.txt", "six==1.16.0\n"),
    ]);
    let cache = tempfile::tempdir().unwrap();
    let out = build(
        src.path(),
        cache.path(),
        PYTHON,
        &[("PIP_CONFIG_FILE", conf.to_str().unwrap())],
        &[],
    );
    // The only index is the recorder, which has nothing: the install fails, after asking it.
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("installing the function's dependencies with pip failed"),
        "{stderr}"
    );
    assert!(
        index
            .requests()
            .iter()
            .any(|r| r.starts_with("GET /from-pip-conf/six/")),
        "{:?}",
        index.requests()
    );
}

#[test]
fn npmrc_in_home_and_kubeless_npm_registry_are_used() {
    let src = function_dir(&[
        ("fn.js", "module.exports = { handler() { return 'x'; } };\n"),
        (
            "package.json",
            r#"{"name":"fn","version":"1.0.0","dependencies":{"left-pad":"1.3.0"}}"#,
        ),
    ]);
    // Knative Build's creds-init puts files under $HOME: .npmrc there is read.
    let npmrc_registry = Recorder::start();
    let home = tempfile::tempdir().unwrap();
    std::fs::write(
        home.path().join(".npmrc"),
        format!("registry={}\n", npmrc_registry.url("/npmrc/")),
    )
    .unwrap();
    let cache = tempfile::tempdir().unwrap();
    let out = build(
        src.path(),
        cache.path(),
        NODEJS,
        &[("HOME", home.path().to_str().unwrap())],
        &[],
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("with npm failed"));
    assert!(
        npmrc_registry
            .requests()
            .iter()
            .any(|r| r.contains("/npmrc/left-pad")),
        "{:?}",
        npmrc_registry.requests()
    );

    let kubeless_registry = Recorder::start();
    let empty_home = tempfile::tempdir().unwrap();
    let out = build(
        src.path(),
        cache.path(),
        NODEJS,
        &[
            ("HOME", empty_home.path().to_str().unwrap()),
            ("NPM_REGISTRY", &kubeless_registry.url("/kubeless/")),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        kubeless_registry
            .requests()
            .iter()
            .any(|r| r.contains("/kubeless/left-pad")),
        "{:?}",
        kubeless_registry.requests()
    );
}

#[test]
fn host_installer_says_so_and_its_image_works() {
    let registry = common::Registry::start(common::RegistryOptions::default());
    let src = function_dir(&[
        (
            "fn.py",
            "import six\n\ndef handler(event, context):\n    return 'host ' + six.__version__\n",
        ),
        ("requirements.txt", "six==1.16.0\n"),
    ]);
    let cache = tempfile::tempdir().unwrap();
    let image = format!("{}/functions/host:v1", registry.host());
    let out = build(
        src.path(),
        cache.path(),
        PYTHON,
        &[],
        &["--deps-installer", "host", "--image", &image],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("this machine's pip"),
        "the host installer must say so:\n{stderr}"
    );
    let function = RunningFunction::start(&image, cache.path(), &[]);
    let (status, _, body) = call("GET", &function.url("/"), &[], b"");
    assert_eq!(
        (status, String::from_utf8_lossy(&body).into_owned()),
        (200, "host 1.16.0".to_string())
    );
}
