//! Pushing and pulling through registries that want credentials, over plain HTTP and TLS,
//! with the credentials found where build systems put them (`--docker-config`,
//! `DOCKER_CONFIG`, a Tekton `.dockerconfigjson`, Knative's `$HOME/.docker/config.json`).
//! What fnbuild pushed is read back with skopeo; the password must never show up in
//! fnbuild's output, the registry's storage or fnbuild's cache.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::functions::*;
use common::{base64_encode, fnbuild, free_port, wait_http_ok, Registry, RegistryOptions};

const USER: &str = "fnbuild-user";
const PASSWORD: &str = "Pw-n0t-in-logs-7Q2x9";
const HELLO_PY: &str = "def handler(event, context):\n    return 'hello from auth'\n";

fn auth_registry(tls: bool) -> Registry {
    Registry::start(RegistryOptions {
        basic_auth: Some((USER.into(), PASSWORD.into())),
        tls,
    })
}

/// The secrets that must never be shown or stored: the password and `base64(user:password)`
/// (what a Basic header and a config.json `auth` hold).
fn secrets() -> [String; 2] {
    [
        PASSWORD.to_string(),
        base64_encode(format!("{USER}:{PASSWORD}").as_bytes()),
    ]
}

/// A Docker config file of credentials for `hosts`, written as `dir/name`.
fn write_config(dir: &Path, name: &str, hosts: &[&str]) -> PathBuf {
    let auth = base64_encode(format!("{USER}:{PASSWORD}").as_bytes());
    let auths: serde_json::Map<String, serde_json::Value> = hosts
        .iter()
        .map(|h| (h.to_string(), serde_json::json!({ "auth": auth })))
        .collect();
    fs::create_dir_all(dir).unwrap();
    let path = dir.join(name);
    fs::write(&path, serde_json::json!({ "auths": auths }).to_string()).unwrap();
    path
}

/// `fnbuild` with no credentials from the environment: `DOCKER_CONFIG` unset and `HOME` an
/// empty directory, so only what a test passes counts.
fn isolated(mut cmd: Command, home: &Path) -> Command {
    cmd.env_remove("DOCKER_CONFIG").env("HOME", home);
    cmd
}

/// `fnbuild build` of `source` (hello.handler, python) to `image`, the base from the OCI
/// layout, with `extra` arguments; isolated from the environment's credentials.
fn build_from_layout(
    registry: &Registry,
    cache: &Path,
    home: &Path,
    source: &Path,
    image: &str,
    extra: &[&str],
) -> Command {
    let base = format!("oci:{}", base_layout(PYTHON).display());
    let source = source.display().to_string();
    let mut args = vec![
        "--source",
        &source,
        "--runtime",
        PYTHON,
        "--handler",
        "hello.handler",
        "--base-image",
        &base,
        "--image",
        image,
    ];
    args.extend_from_slice(extra);
    isolated(build_cmd(registry, cache, &args), home)
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_no_secret_in(what: &str, text: &str) {
    for secret in secrets() {
        assert!(
            !text.contains(&secret),
            "{what} shows a secret ({secret}):\n{text}"
        );
    }
}

/// Files under `dir` holding a secret, as stored or, for gzip files (layers), uncompressed.
fn files_with_secrets(dir: &Path) -> Vec<PathBuf> {
    let secrets = secrets();
    files_holding(dir, &secrets.iter().map(String::as_str).collect::<Vec<_>>())
}

/// `skopeo inspect` of `reference` in `registry` (with its credentials and CA), as JSON.
fn skopeo_inspect(registry: &Registry, reference: &str) -> serde_json::Value {
    let out = registry
        .skopeo("inspect")
        .arg(format!("docker://{reference}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo inspect {reference} failed: {}",
        stderr_of(&out)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The `Env` of an image as skopeo reads it.
fn env_of(registry: &Registry, reference: &str) -> Vec<String> {
    skopeo_inspect(registry, reference)["Env"]
        .as_array()
        .unwrap_or_else(|| panic!("no Env in the inspect output of {reference}"))
        .iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

fn assert_function_env(registry: &Registry, reference: &str) {
    let env = env_of(registry, reference);
    for expected in [
        "FUNC_HANDLER=handler",
        "MOD_NAME=hello",
        "FUNC_RUNTIME=python3.13",
    ] {
        assert!(
            env.iter().any(|e| e == expected),
            "{reference}: {expected} not in {env:?}"
        );
    }
}

#[test]
fn basic_auth_over_http_push_build_and_no_password_anywhere() {
    let registry = auth_registry(false);
    let host = registry.host();
    let home = tempfile::tempdir().unwrap();
    let config = tempfile::tempdir().unwrap();
    registry.write_docker_config(config.path());
    let config_arg = config.path().display().to_string();
    let cache = tempfile::tempdir().unwrap();
    let source = function_dir(&[("hello.py", HELLO_PY)]);

    // The registry enforces auth: skopeo without credentials is turned away.
    let anonymous = Command::new("skopeo")
        .args(["list-tags", "--tls-verify=false"])
        .arg(format!("docker://{host}/fn/hello"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!anonymous.status.success());

    // The runtime base, where the catalog names it, through the credentials.
    let mut push = isolated(fnbuild(), home.path());
    push.arg("push")
        .arg(format!("oci:{}", base_layout(PYTHON).display()))
        .arg(base_ref(&registry, PYTHON))
        .args(["--docker-config", &config_arg, "--log-level", "debug"])
        .arg("--cache-dir")
        .arg(cache.path());
    let pushed = success(&mut push);
    assert_no_secret_in("fnbuild push's stderr", &stderr_of(&pushed));
    assert_eq!(registry.tags("fnbuild/runtime-python"), vec!["3.13"]);

    // The function, on the catalog's base read from the same registry.
    let image = format!("{host}/fn/hello:v1");
    let mut build = isolated(
        build_cmd(
            &registry,
            cache.path(),
            &[
                "--source",
                &source.path().display().to_string(),
                "--runtime",
                PYTHON,
                "--handler",
                "hello.handler",
                "--image",
                &image,
                "--docker-config",
                &config_arg,
                "--log-level",
                "debug",
            ],
        ),
        home.path(),
    );
    let built = success(&mut build);
    let pinned = printed_ref(&built);
    assert!(
        pinned.starts_with(&format!("{host}/fn/hello@sha256:")),
        "{pinned}"
    );
    assert_no_secret_in("fnbuild build's stderr", &stderr_of(&built));
    assert_no_secret_in(
        "fnbuild build's stdout",
        &String::from_utf8_lossy(&built.stdout),
    );

    assert_function_env(&registry, &image);
    let inspected = skopeo_inspect(&registry, &image);
    assert_eq!(
        inspected["Digest"].as_str(),
        pinned.split('@').nth(1),
        "skopeo sees another image than fnbuild printed"
    );
    assert_eq!(registry.image_tags("fn/hello"), vec!["v1"]);

    let stored = files_with_secrets(registry.storage_dir());
    assert!(
        stored.is_empty(),
        "the registry stores the password in {stored:?}"
    );
    let cached = files_with_secrets(cache.path());
    assert!(
        cached.is_empty(),
        "fnbuild's cache holds the password in {cached:?}"
    );
}

/// Over TLS the registry's certificate is verified, on the loopback address too:
/// `--registry-ca` makes it trusted, and `--insecure-registry` skips verification.
#[test]
fn tls_with_basic_auth_needs_the_ca_or_insecure_registry() {
    let registry = auth_registry(true);
    let ca = registry.ca_cert().unwrap().display().to_string();
    let host = registry.host();
    let home = tempfile::tempdir().unwrap();
    let config = tempfile::tempdir().unwrap();
    write_config(config.path(), "config.json", &[&host]);
    let config_arg = config.path().display().to_string();
    let cache = tempfile::tempdir().unwrap();
    let source = function_dir(&[("hello.py", HELLO_PY)]);

    // Not trusted: a message about the certificate, and what to do about it.
    let (code, stderr) = failure(&mut build_from_layout(
        &registry,
        cache.path(),
        home.path(),
        source.path(),
        &format!("{host}/fn/tls:v1"),
        &["--docker-config", &config_arg],
    ));
    eprintln!("without --registry-ca:\n{stderr}");
    assert_eq!(code, 1, "{stderr}");
    for word in [
        "cannot reach registry",
        host.as_str(),
        "certificate",
        "--registry-ca",
    ] {
        assert!(stderr.contains(word), "expected {word:?} in:\n{stderr}");
    }
    assert_no_secret_in("the TLS error", &stderr);
    assert!(
        registry.catalog().is_empty(),
        "pushed: {:?}",
        registry.catalog()
    );

    // Trusted through --registry-ca.
    let out = success(&mut build_from_layout(
        &registry,
        cache.path(),
        home.path(),
        source.path(),
        &format!("{host}/fn/tls:v1"),
        &["--docker-config", &config_arg, "--registry-ca", &ca],
    ));
    assert_no_secret_in("fnbuild build's stderr", &stderr_of(&out));
    assert_function_env(&registry, &format!("{}/fn/tls:v1", registry.host()));

    // Unverified through --insecure-registry (and still authenticated).
    success(&mut build_from_layout(
        &registry,
        cache.path(),
        home.path(),
        source.path(),
        &format!("{host}/fn/tls:v2"),
        &["--docker-config", &config_arg, "--insecure-registry", &host],
    ));
    assert_eq!(registry.image_tags("fn/tls"), vec!["v1", "v2"]);
    assert_function_env(&registry, &format!("{}/fn/tls:v2", registry.host()));
}

/// The places build systems put credentials, each enough on its own.
#[test]
fn credentials_are_found_where_build_systems_put_them() {
    let registry = auth_registry(false);
    let host = registry.host();
    let cache = tempfile::tempdir().unwrap();
    let empty_home = tempfile::tempdir().unwrap();
    let source = function_dir(&[("hello.py", HELLO_PY)]);
    let image = |tag: &str| format!("{host}/fn/hello:{tag}");

    // Control: with none of them, the push is refused with a hint.
    let (code, stderr) = failure(&mut build_from_layout(
        &registry,
        cache.path(),
        empty_home.path(),
        source.path(),
        &image("none"),
        &[],
    ));
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("none were found") && stderr.contains("DOCKER_CONFIG"),
        "{stderr}"
    );

    // Kaniko: DOCKER_CONFIG names the directory holding config.json.
    let kaniko = tempfile::tempdir().unwrap();
    write_config(kaniko.path(), "config.json", &[&host]);
    let mut cmd = build_from_layout(
        &registry,
        cache.path(),
        empty_home.path(),
        source.path(),
        &image("kaniko"),
        &[],
    );
    cmd.env("DOCKER_CONFIG", kaniko.path());
    success(&mut cmd);

    // Tekton: a dockerconfig workspace holding a kubernetes.io/dockerconfigjson secret's
    // `.dockerconfigjson`, by --docker-config and by DOCKER_CONFIG.
    let tekton = tempfile::tempdir().unwrap();
    write_config(tekton.path(), ".dockerconfigjson", &[&host]);
    assert!(!tekton.path().join("config.json").exists());
    let tekton_arg = tekton.path().display().to_string();
    success(&mut build_from_layout(
        &registry,
        cache.path(),
        empty_home.path(),
        source.path(),
        &image("tekton"),
        &["--docker-config", &tekton_arg],
    ));
    let mut cmd = build_from_layout(
        &registry,
        cache.path(),
        empty_home.path(),
        source.path(),
        &image("tekton-env"),
        &[],
    );
    cmd.env("DOCKER_CONFIG", tekton.path());
    success(&mut cmd);

    // Knative Build's creds-init: $HOME/.docker/config.json, no flag, no DOCKER_CONFIG.
    let knative_home = tempfile::tempdir().unwrap();
    write_config(
        &knative_home.path().join(".docker"),
        "config.json",
        &[&host],
    );
    success(&mut build_from_layout(
        &registry,
        cache.path(),
        knative_home.path(),
        source.path(),
        &image("knative"),
        &[],
    ));

    assert_eq!(
        registry.image_tags("fn/hello"),
        vec!["kaniko", "knative", "tekton", "tekton-env"]
    );
    assert_function_env(&registry, &image("knative"));
}

/// `fnbuild run` pulls the function from the registry with the credentials of DOCKER_CONFIG
/// and serves it.
#[test]
fn run_pulls_the_function_through_the_credentials() {
    let registry = auth_registry(false);
    let host = registry.host();
    let home = tempfile::tempdir().unwrap();
    let config = tempfile::tempdir().unwrap();
    registry.write_docker_config(config.path());
    let config_arg = config.path().display().to_string();
    let source = function_dir(&[("hello.py", HELLO_PY)]);
    let image = format!("{host}/fn/hello:v1");
    let build_cache = tempfile::tempdir().unwrap();
    success(&mut build_from_layout(
        &registry,
        build_cache.path(),
        home.path(),
        source.path(),
        &image,
        &["--docker-config", &config_arg],
    ));

    // A cache of its own, so the image really comes from the registry.
    let run_cache = tempfile::tempdir().unwrap();
    let port = free_port();
    let run_cmd = |with_config: bool| {
        let mut cmd = isolated(fnbuild(), home.path());
        cmd.args(["run", &image, "--port", &port.to_string(), "--cache-dir"])
            .arg(run_cache.path())
            .stdin(Stdio::null());
        if with_config {
            cmd.env("DOCKER_CONFIG", config.path());
        }
        cmd
    };

    // Without credentials it stops at once, saying why.
    let (code, stderr) = failure(&mut run_cmd(false));
    eprintln!("fnbuild run without credentials:\n{stderr}");
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("credentials") && stderr.contains(&host),
        "{stderr}"
    );

    let log_dir = tempfile::tempdir().unwrap();
    let log_path = log_dir.path().join("run.log");
    let log = fs::File::create(&log_path).unwrap();
    let mut child = run_cmd(true)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let log_text = || fs::read_to_string(&log_path).unwrap_or_default();
    let healthy = wait_http_ok(
        &format!("http://127.0.0.1:{port}/healthz"),
        Duration::from_secs(60),
    );
    let answer = healthy.then(|| call("POST", &format!("http://127.0.0.1:{port}/"), &[], b"{}"));

    // Stop it (SIGTERM, as Ctrl-C or a supervisor would) before judging, so a failed
    // assertion never leaves it running.
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };

    assert!(
        healthy,
        "the function never became healthy; log:\n{}",
        log_text()
    );
    let (code, _, body) = answer.unwrap();
    assert_eq!(code, 200, "log:\n{}", log_text());
    assert_eq!(String::from_utf8_lossy(&body), "hello from auth");
    assert!(
        status.is_some(),
        "fnbuild run did not stop within 15 s of SIGTERM; log:\n{}",
        log_text()
    );
    assert_no_secret_in("fnbuild run's output", &log_text());
    let cached = files_with_secrets(run_cache.path());
    assert!(
        cached.is_empty(),
        "the run cache holds the password in {cached:?}"
    );
}
