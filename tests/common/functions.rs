//! Fixtures for building and running function images in tests: the runtime base images (made
//! once per test cache from the debootstrap root filesystems with `fnbuild base`, kept as OCI
//! layouts), a registry preloaded with them, `fnbuild build` invocations, and functions
//! running under `fnbuild run` (runc) that are stopped when dropped.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use sha2::{Digest as _, Sha256};

use super::{fnbuild, free_port, rootfs, test_cache, wait_http_ok, Registry, RegistryOptions};

/// The catalog names of the runtimes the tests build for: the default versions (Debian
/// trixie's), the older ones of Debian bookworm, and Debian bullseye's Python 3.9, the version
/// old Kubeless Python names are built as.
pub const PYTHON: &str = "python3.13";
pub const NODEJS: &str = "nodejs20";
pub const PYTHON_3_11: &str = "python3.11";
pub const NODEJS_18: &str = "nodejs18";
pub const PYTHON_3_9: &str = "python3.9";

/// The catalog's entry for `runtime`, a runtime name (not a Kubeless alias).
fn catalog_entry(runtime: &str) -> fnbuild::runtime::Runtime {
    let catalog = fnbuild::runtime::Catalog::embedded();
    let resolved = catalog
        .resolve(runtime)
        .unwrap_or_else(|e| panic!("{runtime}: {e}"));
    assert!(
        resolved.alias_warning.is_none(),
        "{runtime} is an alias: name the runtime it maps to"
    );
    resolved.runtime.clone()
}

/// The test root filesystem (made by `tests/setup.sh`) holding `runtime`'s interpreter.
fn rootfs_of(runtime: &str) -> PathBuf {
    rootfs(match runtime {
        PYTHON => "python",
        NODEJS => "nodejs",
        PYTHON_3_11 | NODEJS_18 | PYTHON_3_9 => runtime,
        _ => panic!(
            "no test root filesystem has {runtime}'s interpreter; tests/setup.sh makes them \
             for {PYTHON}, {NODEJS}, {PYTHON_3_11}, {NODEJS_18} and {PYTHON_3_9}"
        ),
    })
}

/// The runtime base image of `runtime` (a catalog name) as an OCI layout, made with
/// `fnbuild base --from rootfs:` from the test root filesystem with its interpreter the first
/// time and kept in the test cache, keyed by what it is made from (the runtime server and
/// fnbuild's layering code), so a change to either makes a new one.
pub fn base_layout(runtime: &str) -> PathBuf {
    let language = catalog_entry(runtime).language;
    let root = env!("CARGO_MANIFEST_DIR");
    let mut hasher = Sha256::new();
    for file in [
        format!("runtimes/{language}/{}", language.server().0),
        "src/base.rs".to_string(),
        "src/image/layer.rs".to_string(),
        "src/image/config.rs".to_string(),
    ] {
        hasher.update(std::fs::read(Path::new(root).join(&file)).expect("reading a source file"));
    }
    let key = hex::encode(&hasher.finalize()[..8]);
    let dir = test_cache()
        .join("base-images")
        .join(format!("{runtime}-{key}"));
    if dir.join("index.json").is_file() {
        return dir;
    }
    std::fs::create_dir_all(dir.parent().unwrap()).unwrap();
    let temp = tempfile::tempdir_in(dir.parent().unwrap()).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let out = fnbuild()
        .args(["base", "--runtime", runtime, "--from"])
        .arg(format!("rootfs:{}", rootfs_of(runtime).display()))
        .arg("--image")
        .arg(format!("oci:{}", temp.path().join("layout").display()))
        .arg("--cache-dir")
        .arg(cache.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "fnbuild base failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Another test binary may have made it meanwhile; either copy is the same image.
    let _ = std::fs::rename(temp.path().join("layout"), &dir);
    dir
}

/// The reference the catalog gives a runtime's base image in `registry`.
pub fn base_ref(registry: &Registry, runtime: &str) -> String {
    catalog_entry(runtime).base_image_ref_in(&registry.host())
}

/// A plain registry holding the base images of `runtimes` under their catalog names.
pub fn registry_with_bases(runtimes: &[&str]) -> Registry {
    let registry = Registry::start(RegistryOptions::default());
    for runtime in runtimes {
        let cache = tempfile::tempdir().unwrap();
        let out = fnbuild()
            .arg("push")
            .arg(format!("oci:{}", base_layout(runtime).display()))
            .arg(base_ref(&registry, runtime))
            .arg("--cache-dir")
            .arg(cache.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "fnbuild push failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    registry
}

/// `fnbuild build` with the registry as the base registry (`FNBUILD_BASE_REGISTRY`) and the
/// given cache directory; extra arguments follow.
pub fn build_cmd(registry: &Registry, cache_dir: &Path, args: &[&str]) -> Command {
    let mut cmd = fnbuild();
    cmd.arg("build")
        .args(args)
        .arg("--cache-dir")
        .arg(cache_dir)
        .env("FNBUILD_BASE_REGISTRY", registry.host())
        .stdin(Stdio::null());
    cmd
}

/// `fnbuild build` of the directory `source` for `runtime` with `handler`, pushed as `image`
/// (see [`build_cmd`]). Further arguments may be added to the command.
pub fn source_build_cmd(
    registry: &Registry,
    cache_dir: &Path,
    source: &Path,
    runtime: &str,
    handler: &str,
    image: &str,
) -> Command {
    build_cmd(
        registry,
        cache_dir,
        &[
            "--source",
            source.to_str().unwrap(),
            "--runtime",
            runtime,
            "--handler",
            handler,
            "--image",
            image,
        ],
    )
}

/// `fnbuild build` of `source` with `handler` onto `runtime`'s base image layout (no registry
/// needed), written to `output` (`oci:DIR[:TAG]` or `tar:FILE`), with the given cache
/// directory. Further arguments may be added to the command.
pub fn layout_build_cmd(
    runtime: &str,
    source: &str,
    handler: &str,
    output: &str,
    cache_dir: &Path,
) -> Command {
    let mut cmd = fnbuild();
    cmd.args([
        "build",
        "--source",
        source,
        "--runtime",
        runtime,
        "--handler",
        handler,
    ])
    .arg("--base-image")
    .arg(format!("oci:{}", base_layout(runtime).display()))
    .args(["--output", output, "--cache-dir"])
    .arg(cache_dir);
    cmd
}

/// Runs a command and returns its output, asserting success.
pub fn success(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs a command expected to fail; returns its exit code and stderr.
pub fn failure(cmd: &mut Command) -> (i32, String) {
    let out = cmd.output().unwrap();
    assert!(
        !out.status.success(),
        "{cmd:?} succeeded but should have failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The `REF@sha256:...` line a successful build printed.
pub fn printed_ref(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default().to_string();
    assert!(
        line.contains("@sha256:"),
        "expected REF@sha256:... on stdout, got {stdout:?}"
    );
    line
}

/// How long `fnbuild run` may make no progress at all before a wait for it fails.
const QUIET_LIMIT: Duration = Duration::from_secs(60);

/// Tells a process that works from one that stalled: `stalled` is true once the observed
/// progress has not changed for `quiet`.
struct ProgressWatch<T> {
    quiet: Duration,
    last: Option<(T, std::time::Instant)>,
}

impl<T: PartialEq> ProgressWatch<T> {
    fn new(quiet: Duration) -> Self {
        Self { quiet, last: None }
    }

    fn stalled(&mut self, now: T) -> bool {
        match &self.last {
            Some((seen, since)) if *seen == now => since.elapsed() > self.quiet,
            _ => {
                self.last = Some((now, std::time::Instant::now()));
                false
            }
        }
    }
}

/// A function image running under `fnbuild run`; stopped (SIGTERM) when dropped.
pub struct RunningFunction {
    child: Child,
    pub port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl RunningFunction {
    /// Starts the image and waits until /healthz answers.
    pub fn start(image: &str, cache_dir: &Path, env: &[&str]) -> RunningFunction {
        Self::start_with(fnbuild(), image, cache_dir, env)
    }

    /// Starts the image with `fnbuild` prepared by the caller (its environment, say).
    pub fn start_with(
        cmd: Command,
        image: &str,
        cache_dir: &Path,
        env: &[&str],
    ) -> RunningFunction {
        let flags: Vec<&str> = env.iter().flat_map(|e| ["--env", e]).collect();
        Self::start_with_flags(cmd, image, cache_dir, &flags)
    }

    /// Starts the image with further flags of `fnbuild run` (`--memory 64Mi`, say).
    pub fn start_with_flags(
        mut cmd: Command,
        image: &str,
        cache_dir: &Path,
        flags: &[&str],
    ) -> RunningFunction {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("run.log");
        cmd.args(["run", image, "--port", &port.to_string(), "--cache-dir"])
            .arg(cache_dir)
            .args(flags);
        let file = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let mut running = RunningFunction {
            child,
            port,
            log,
            _dir: dir,
        };
        // Unpacking a large base on a busy machine takes long: wait while fnbuild makes
        // progress (its log, its CPU time, its disk writes), not by a clock.
        let mut watch = ProgressWatch::new(QUIET_LIMIT);
        while !wait_http_ok(&running.url("/healthz"), Duration::from_millis(500)) {
            if let Ok(Some(status)) = running.child.try_wait() {
                panic!(
                    "fnbuild run exited ({status}) before the function was healthy; its log:\n{}",
                    running.log()
                );
            }
            if watch.stalled(running.progress()) {
                panic!(
                    "the function did not become healthy, and fnbuild run made no progress for \
                     {QUIET_LIMIT:?}; its log:\n{}",
                    running.log()
                );
            }
        }
        running
    }

    /// What changes while `fnbuild run` works: its log's length, its CPU time and the bytes
    /// it wrote (from /proc).
    fn progress(&self) -> (usize, String, String) {
        let proc_file = |name: &str| {
            std::fs::read_to_string(format!("/proc/{}/{name}", self.child.id())).unwrap_or_default()
        };
        let cpu = proc_file("stat")
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .skip(11)
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        let written = proc_file("io")
            .lines()
            .find(|l| l.starts_with("wchar:"))
            .unwrap_or("")
            .to_string();
        (self.log().len(), cpu, written)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `signal` to `fnbuild run`.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, signal).expect("signalling fnbuild run");
    }

    /// Waits for `fnbuild run` to exit while it makes progress (see [`Self::progress`]) or
    /// `quiet` has not passed since it last did; its exit status, or `None` when it stalled
    /// without exiting.
    pub fn wait_exit(&mut self, quiet: Duration) -> Option<std::process::ExitStatus> {
        let mut watch = ProgressWatch::new(quiet);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if watch.stalled(self.progress()) {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `fnbuild run`'s exit status once it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Stops the function and waits for `fnbuild run` to exit; returns its log.
    pub fn stop(mut self) -> String {
        self.terminate();
        self.log()
    }

    fn terminate(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RunningFunction {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.terminate();
        }
    }
}

/// A blocking HTTP call: (status, content type, body).
pub fn call(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    let (method, url, body) = (method.to_string(), url.to_string(), body.to_vec());
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    std::thread::spawn(move || {
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let mut request = client.request(method.parse().unwrap(), &url).body(body);
        for (k, v) in headers {
            request = request.header(k, v);
        }
        let response = request.send().unwrap();
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap_or_default().to_string())
            .unwrap_or_default();
        (status, content_type, response.bytes().unwrap().to_vec())
    })
    .join()
    .unwrap()
}

/// Writes files into a new directory.
pub fn function_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    dir
}

/// The files under `dir` whose content, or for gzip files (layers) whose uncompressed
/// content, holds any of `secrets`. Blobs the test base images have too are skipped: the build
/// did not make them, and decompressing a root filesystem for every search is slow.
pub fn files_holding(dir: &Path, secrets: &[&str]) -> Vec<PathBuf> {
    let base_blobs: Vec<PathBuf> = std::fs::read_dir(test_cache().join("base-images"))
        .map(|list| {
            list.flatten()
                .map(|e| e.path().join("blobs/sha256"))
                .collect()
        })
        .unwrap_or_default();
    let holds = |bytes: &[u8]| {
        secrets
            .iter()
            .any(|s| bytes.windows(s.len()).any(|w| w == s.as_bytes()))
    };
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            pending.extend(
                std::fs::read_dir(&path)
                    .unwrap()
                    .flatten()
                    .map(|e| e.path()),
            );
            continue;
        }
        let name = path.file_name().unwrap_or_default();
        if !meta.is_file() || base_blobs.iter().any(|b| b.join(name).is_file()) {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap_or_default();
        let mut plain = Vec::new();
        let gzip_holds = bytes.starts_with(&[0x1f, 0x8b])
            && std::io::Read::read_to_end(
                &mut flate2::read::MultiGzDecoder::new(bytes.as_slice()),
                &mut plain,
            )
            .is_ok()
            && holds(&plain);
        if holds(&bytes) || gzip_holds {
            found.push(path);
        }
    }
    found.sort();
    found
}
