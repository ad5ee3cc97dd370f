//! Test support shared by the integration tests in `tests/*.rs` (each does `mod common;`).
//!
//! Everything here drives real programs: the CNCF distribution registry from Debian
//! (`docker-registry`), `htpasswd`, `openssl`, `skopeo`, and the runtime root filesystems made
//! by `tests/setup.sh`. Nothing is mocked and nothing is skipped: a missing prerequisite is a
//! panic that says how to get it (`bash tests/setup.sh`).
//!
//! The HTTP helpers use `reqwest::blocking`, always on a thread of their own, so they may be
//! called from `#[tokio::test]` functions too.
#![allow(dead_code)]

pub mod functions;
pub mod git_server;
pub mod hostile;
pub mod multiarch;
pub mod packages;
pub mod s3_server;
pub mod template_runner;

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Where `tests/setup.sh` puts what it prepares, unless `FNBUILD_TEST_CACHE` says otherwise.
pub const DEFAULT_TEST_CACHE: &str = "/var/cache/fnbuild-test";

/// The file `tests/support/make-rootfs.sh` writes last in a complete rootfs.
pub const ROOTFS_MARKER: &str = ".fnbuild-rootfs-complete";

/// How long [`Registry::start`] waits for the registry to answer.
const REGISTRY_START_TIMEOUT: Duration = Duration::from_secs(10);

/// The test cache: `$FNBUILD_TEST_CACHE`, default [`DEFAULT_TEST_CACHE`].
pub fn test_cache() -> PathBuf {
    match std::env::var_os("FNBUILD_TEST_CACHE") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(DEFAULT_TEST_CACHE),
    }
}

/// A root filesystem made by `tests/setup.sh`: `$FNBUILD_TEST_CACHE/rootfs/<name>`, a Debian
/// minbase with python3 + pip, or nodejs + npm: `"python"` and `"nodejs"` (trixie: Python
/// 3.13, Node.js 20), `"python3.11"` and `"nodejs18"` (bookworm), `"python3.9"` (bullseye).
///
/// Panics when it is missing or incomplete: tests never skip silently.
pub fn rootfs(name: &str) -> PathBuf {
    let dir = test_cache().join("rootfs").join(name);
    if !dir.join(ROOTFS_MARKER).is_file() {
        panic!(
            "the {name} test rootfs is missing or incomplete at {} (no {ROOTFS_MARKER}): \
             run `bash tests/setup.sh` (as root) first, or set FNBUILD_TEST_CACHE to where it \
             put them",
            dir.display()
        );
    }
    dir
}

/// A Knative CRD schema kept with the tests (`tests/data/knative-crds/NAME`, see its README).
pub fn knative_crd(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/knative-crds")
        .join(name);
    assert!(
        path.is_file(),
        "no Knative CRD schema at {}",
        path.display()
    );
    path
}

/// Every path under `root` (files, directories, links), relative to it; links not followed.
pub fn walk(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            found.push(path.strip_prefix(root).unwrap().to_path_buf());
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                pending.push(path);
            }
        }
    }
    found
}

/// A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("binding 127.0.0.1:0")
        .port()
}

/// The `fnbuild` binary under test, with `FNBUILD_CACHE_DIR` removed from its environment
/// (tests pass `--cache-dir` themselves, so a developer's setting never leaks in).
pub fn fnbuild() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fnbuild"));
    cmd.env_remove("FNBUILD_CACHE_DIR");
    cmd
}

/// Polls `GET url` until it answers with a 2xx status (true) or `timeout` passes (false).
/// Connection errors count as "not yet". TLS is verified with the system roots only.
pub fn wait_http_ok(url: &str, timeout: Duration) -> bool {
    off_runtime(|| {
        let client = http_client(None, Duration::from_secs(2));
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(resp) = client.get(url).send() {
                if resp.status().is_success() {
                    return true;
                }
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(50));
        }
    })
}

/// Runs `f` on a thread of its own and returns its result (re-raising its panic), so that
/// `reqwest::blocking` never runs, nor is dropped, inside a Tokio runtime.
fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    thread::scope(|scope| match scope.spawn(f).join() {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

/// A blocking HTTP client trusting the system roots plus `ca` (a PEM file) when given.
fn http_client(ca: Option<&Path>, timeout: Duration) -> reqwest::blocking::Client {
    let mut builder = reqwest::blocking::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none());
    if let Some(ca) = ca {
        let pem = fs::read(ca).unwrap_or_else(|e| panic!("reading {}: {e}", ca.display()));
        let cert = reqwest::Certificate::from_pem(&pem)
            .unwrap_or_else(|e| panic!("parsing {}: {e}", ca.display()));
        builder = builder.add_root_certificate(cert);
    }
    builder.build().expect("building an HTTP client")
}

/// Runs a command to completion; panics with its output when it fails.
fn run_ok(cmd: &mut Command) -> std::process::Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e} (run `bash tests/setup.sh`)"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// How to start a [`Registry`].
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// Require HTTP basic auth with this user and password (an htpasswd file, bcrypt).
    pub basic_auth: Option<(String, String)>,
    /// Serve HTTPS with a certificate for `127.0.0.1` and `localhost`, issued by a test CA
    /// made for this registry (see [`Registry::ca_cert`]).
    pub tls: bool,
}

/// A response read whole by [`Registry::get`].
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// A header's value as text, if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as (lossy) UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON; panics when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response is not JSON ({e}): {}", self.text()))
    }
}

/// A real OCI registry (`docker-registry serve`, the CNCF distribution registry packaged by
/// Debian) on 127.0.0.1 and a free port, storing into a temporary directory, with deletes
/// enabled. Optional basic auth and TLS, see [`RegistryOptions`]. Its log (level warn, no
/// access log) goes to a file, see [`Registry::log`]. The process is killed, and its storage
/// removed, on drop.
pub struct Registry {
    child: Child,
    port: u16,
    tls: bool,
    ca_cert: Option<PathBuf>,
    cert_dir: Option<PathBuf>,
    basic_auth: Option<(String, String)>,
    log_path: PathBuf,
    storage: PathBuf,
    // Last: removed after the process is gone.
    dir: TempDir,
}

impl Registry {
    /// Starts a registry and waits (up to ~10 s) until `GET /v2/` answers 200, or 401 when
    /// basic auth is on. Panics, with the registry's log, when it does not.
    pub fn start(options: RegistryOptions) -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("fnbuild-registry-")
            .tempdir()
            .expect("creating the registry's temporary directory");
        let storage = dir.path().join("storage");
        fs::create_dir_all(&storage).expect("creating the registry's storage directory");
        let log_path = dir.path().join("registry.log");

        let htpasswd = options.basic_auth.as_ref().map(|(user, password)| {
            let out = run_ok(Command::new("htpasswd").args(["-Bbn", user, password]));
            let path = dir.path().join("htpasswd");
            fs::write(&path, &out.stdout).expect("writing the htpasswd file");
            path
        });
        let tls = options.tls.then(|| make_tls_files(dir.path()));

        let expected_status: u16 = if options.basic_auth.is_some() {
            401
        } else {
            200
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let ca_cert = tls.as_ref().map(|t| t.ca_cert.clone());

        // The port is free when picked but may be taken before the registry binds it: retry.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = free_port();
            let config = registry_config(port, &storage, htpasswd.as_deref(), tls.as_ref());
            let config_path = dir.path().join("config.yml");
            fs::write(&config_path, config).expect("writing the registry's config");
            let log = fs::File::create(&log_path).expect("creating the registry's log");
            let mut child = Command::new("docker-registry")
                .arg("serve")
                .arg(&config_path)
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("cloning the log file handle"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("starting docker-registry: {e} (run `bash tests/setup.sh`)")
                });
            let url = format!("{scheme}://127.0.0.1:{port}/v2/");
            match wait_registry_ready(&mut child, &url, ca_cert.as_deref(), expected_status) {
                Ready::Yes => {
                    return Registry {
                        child,
                        port,
                        tls: tls.is_some(),
                        ca_cert,
                        cert_dir: tls.as_ref().map(|t| t.cert_dir.clone()),
                        basic_auth: options.basic_auth.clone(),
                        log_path,
                        storage,
                        dir,
                    };
                }
                Ready::Exited => {
                    let log = fs::read_to_string(&log_path).unwrap_or_default();
                    if !log.contains("address already in use") || attempt >= 5 {
                        panic!(
                            "docker-registry exited at start (attempt {attempt}); its log:\n{log}"
                        );
                    }
                }
                Ready::TimedOut(why) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "docker-registry did not answer in {REGISTRY_START_TIMEOUT:?} ({why}); \
                         its log:\n{}",
                        fs::read_to_string(&log_path).unwrap_or_default()
                    );
                }
            }
        }
    }

    /// `127.0.0.1:PORT`, the registry's host as image references name it.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The registry process's id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`, or `https://...` with TLS.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.host())
    }

    /// The PEM certificate of the CA that issued the server's certificate (TLS only).
    pub fn ca_cert(&self) -> Option<&Path> {
        self.ca_cert.as_deref()
    }

    /// A directory holding only `ca.crt` (TLS only): what `skopeo --cert-dir` and the
    /// containers tools expect, and what `/etc/docker/certs.d/HOST/` would hold.
    pub fn cert_dir(&self) -> Option<&Path> {
        self.cert_dir.as_deref()
    }

    /// The user and password it requires, if any.
    pub fn basic_auth(&self) -> Option<(&str, &str)> {
        self.basic_auth
            .as_ref()
            .map(|(user, password)| (user.as_str(), password.as_str()))
    }

    /// `user:password` for `skopeo --creds`, if auth is on.
    pub fn creds(&self) -> Option<String> {
        self.basic_auth().map(|(u, p)| format!("{u}:{p}"))
    }

    /// Where the registry stores its blobs and repositories (filesystem driver).
    pub fn storage_dir(&self) -> &Path {
        &self.storage
    }

    /// Writes a Docker `config.json` holding this registry's credentials (an empty `auths`
    /// entry without auth) into `dir`, and returns its path; point `DOCKER_CONFIG` at `dir`.
    pub fn write_docker_config(&self, dir: &Path) -> PathBuf {
        let entry = match self.basic_auth() {
            Some((u, p)) => {
                serde_json::json!({ "auth": base64_encode(format!("{u}:{p}").as_bytes()) })
            }
            None => serde_json::json!({}),
        };
        let config = serde_json::json!({ "auths": { self.host(): entry } });
        fs::create_dir_all(dir).expect("creating the Docker config directory");
        let path = dir.join("config.json");
        fs::write(&path, serde_json::to_vec_pretty(&config).unwrap())
            .expect("writing the Docker config");
        path
    }

    /// skopeo flags to reach this registry, with `prefix` before each flag name (`""` for
    /// inspect/delete, `"dest-"` or `"src-"` for copy).
    pub fn skopeo_args(&self, prefix: &str) -> Vec<String> {
        let mut args = Vec::new();
        match &self.cert_dir {
            Some(dir) => args.push(format!("--{prefix}cert-dir={}", dir.display())),
            None => args.push(format!("--{prefix}tls-verify=false")),
        }
        if let Some(creds) = self.creds() {
            args.push(format!("--{prefix}creds={creds}"));
        }
        args
    }

    /// `skopeo VERB` with the flags to reach this registry (for verbs that take one image,
    /// like `inspect`, `delete`, `list-tags`); add the `docker://` reference yourself.
    /// For `skopeo copy`, use [`Registry::skopeo_args`] with `"dest-"` or `"src-"`.
    pub fn skopeo(&self, verb: &str) -> Command {
        let mut cmd = Command::new("skopeo");
        cmd.arg(verb)
            .args(self.skopeo_args(""))
            .stdin(Stdio::null());
        cmd
    }

    /// The registry's log so far (level warn; no access log).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// `GET {url}{path}` with the registry's credentials and CA; `accept` sets the Accept
    /// header (manifest media types). Panics on a transport error, not on an HTTP error.
    pub fn get(&self, path: &str, accept: Option<&str>) -> HttpResponse {
        let url = format!("{}{path}", self.url());
        let ca = self.ca_cert.clone();
        let auth = self.basic_auth.clone();
        let accept = accept.map(str::to_owned);
        off_runtime(move || {
            let client = http_client(ca.as_deref(), Duration::from_secs(30));
            let mut req = client.get(&url);
            if let Some((user, password)) = auth {
                req = req.basic_auth(user, Some(password));
            }
            if let Some(accept) = accept {
                req = req.header(reqwest::header::ACCEPT, accept);
            }
            let resp = req.send().unwrap_or_else(|e| panic!("GET {url}: {e}"));
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let body = resp
                .bytes()
                .unwrap_or_else(|e| panic!("reading GET {url}: {e}"))
                .to_vec();
            HttpResponse {
                status,
                headers,
                body,
            }
        })
    }

    /// The repositories it holds (`GET /v2/_catalog`, following pagination), sorted.
    pub fn catalog(&self) -> Vec<String> {
        let mut repos = Vec::new();
        let mut path = "/v2/_catalog".to_string();
        loop {
            let resp = self.get(&path, None);
            assert_eq!(resp.status, 200, "GET {path}: {}", resp.text());
            collect_strings(&resp.json()["repositories"], &mut repos);
            match next_link(&resp) {
                Some(next) => path = next,
                None => break,
            }
        }
        repos.sort();
        repos
    }

    /// The tags of `repo` (`GET /v2/<repo>/tags/list`, following pagination), sorted; empty
    /// when the repository does not exist.
    pub fn tags(&self, repo: &str) -> Vec<String> {
        let mut tags = Vec::new();
        let mut path = format!("/v2/{repo}/tags/list");
        loop {
            let resp = self.get(&path, None);
            if resp.status == 404 {
                break;
            }
            assert_eq!(resp.status, 200, "GET {path}: {}", resp.text());
            collect_strings(&resp.json()["tags"], &mut tags);
            match next_link(&resp) {
                Some(next) => path = next,
                None => break,
            }
        }
        tags.sort();
        tags
    }

    /// The tags of `repo` that name images: without the referrers tags (`sha256-<hex>`) the
    /// images' SBOMs are listed at.
    pub fn image_tags(&self, repo: &str) -> Vec<String> {
        without_referrers_tags(self.tags(repo))
    }
}

/// Drops the tags of the OCI referrers tag schema (`sha256-<64 hex digits>`).
pub fn without_referrers_tags(tags: Vec<String>) -> Vec<String> {
    tags.into_iter()
        .filter(|t| {
            !t.strip_prefix("sha256-")
                .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        })
        .collect()
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How a registry's start went.
enum Ready {
    Yes,
    Exited,
    TimedOut(String),
}

/// Polls `GET url` (the registry's `/v2/`) until it answers `expected`, the process exits,
/// or [`REGISTRY_START_TIMEOUT`] passes.
fn wait_registry_ready(child: &mut Child, url: &str, ca: Option<&Path>, expected: u16) -> Ready {
    off_runtime(move || {
        let client = http_client(ca, Duration::from_secs(2));
        let deadline = Instant::now() + REGISTRY_START_TIMEOUT;
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                return Ready::Exited;
            }
            let last = match client.get(url).send() {
                Ok(resp) if resp.status().as_u16() == expected => return Ready::Yes,
                Ok(resp) => format!("GET {url} answered {}", resp.status()),
                Err(e) => format!("GET {url}: {e}"),
            };
            if Instant::now() >= deadline {
                return Ready::TimedOut(last);
            }
            thread::sleep(Duration::from_millis(50));
        }
    })
}

/// The TLS files of a registry.
struct TlsFiles {
    ca_cert: PathBuf,
    cert_dir: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
}

/// Makes a test CA (`openssl req -x509`) and a server certificate it signs, with
/// subjectAltName `IP:127.0.0.1,DNS:localhost`, under `dir/tls`; and `dir/certs/ca.crt`.
///
/// A CA plus a leaf, rather than one self-signed certificate: rustls (webpki) refuses a CA
/// certificate used as the server's own, and Go's x509 (skopeo) prefers it this way too.
fn make_tls_files(dir: &Path) -> TlsFiles {
    let tls = dir.join("tls");
    let cert_dir = dir.join("certs");
    fs::create_dir_all(&tls).expect("creating the TLS directory");
    fs::create_dir_all(&cert_dir).expect("creating the cert directory");
    let ca_key = tls.join("ca.key");
    let ca_cert = tls.join("ca.crt");
    let server_key = tls.join("server.key");
    let server_csr = tls.join("server.csr");
    let server_cert = tls.join("server.crt");
    let ext = tls.join("server.ext");
    fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n\
         basicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage=serverAuth\n",
    )
    .expect("writing the certificate extensions");

    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run_ok(
        Command::new("openssl")
            .args(["req", "-x509"])
            .args(ec)
            .arg("-keyout")
            .arg(&ca_key)
            .arg("-out")
            .arg(&ca_cert)
            .args(["-days", "7", "-subj", "/CN=fnbuild test CA"])
            .args(["-addext", "basicConstraints=critical,CA:TRUE"])
            .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]),
    );
    run_ok(
        Command::new("openssl")
            .arg("req")
            .args(ec)
            .arg("-keyout")
            .arg(&server_key)
            .arg("-out")
            .arg(&server_csr)
            .args(["-subj", "/CN=localhost"]),
    );
    run_ok(
        Command::new("openssl")
            .args(["x509", "-req", "-in"])
            .arg(&server_csr)
            .arg("-CA")
            .arg(&ca_cert)
            .arg("-CAkey")
            .arg(&ca_key)
            .arg("-CAcreateserial")
            .arg("-out")
            .arg(&server_cert)
            .args(["-days", "7", "-extfile"])
            .arg(&ext),
    );
    fs::copy(&ca_cert, cert_dir.join("ca.crt")).expect("copying the CA certificate");
    TlsFiles {
        ca_cert,
        cert_dir,
        server_cert,
        server_key,
    }
}

/// The registry's config.yml.
fn registry_config(
    port: u16,
    storage: &Path,
    htpasswd: Option<&Path>,
    tls: Option<&TlsFiles>,
) -> String {
    let mut config = format!(
        "version: 0.1\n\
         log:\n  level: warn\n  formatter: text\n  accesslog:\n    disabled: true\n\
         storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n\
         \x20 maintenance:\n    uploadpurging:\n      enabled: false\n\
         http:\n  addr: 127.0.0.1:{port}\n  secret: fnbuild-test-secret\n\
         \x20 headers:\n    X-Content-Type-Options: [nosniff]\n",
        storage = storage.display(),
    );
    if let Some(tls) = tls {
        config.push_str(&format!(
            "  tls:\n    certificate: {}\n    key: {}\n",
            tls.server_cert.display(),
            tls.server_key.display()
        ));
    }
    if let Some(htpasswd) = htpasswd {
        config.push_str(&format!(
            "auth:\n  htpasswd:\n    realm: fnbuild-test\n    path: {}\n",
            htpasswd.display()
        ));
    }
    config
}

/// Appends the strings of a JSON array (null or absent: nothing).
fn collect_strings(value: &serde_json::Value, into: &mut Vec<String>) {
    if let Some(items) = value.as_array() {
        into.extend(items.iter().filter_map(|v| v.as_str().map(str::to_owned)));
    }
}

/// The path of a `Link: <...>; rel="next"` header, if any.
fn next_link(resp: &HttpResponse) -> Option<String> {
    let link = resp.header("link")?;
    let start = link.find('<')? + 1;
    let end = link[start..].find('>')? + start;
    let target = &link[start..end];
    // Absolute or relative; keep the path and query.
    target.find("/v2/").map(|i| target[i..].to_string())
}

/// Standard base64 with padding (for Docker config `auth` entries).
pub fn base64_encode(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// Writes a one-image OCI image layout at `dir` (for `skopeo copy oci:DIR:TAG docker://...`,
/// to put a test image into a [`Registry`]). `layers` are uncompressed tar archives, stored
/// gzip-compressed (`application/vnd.oci.image.layer.v1.tar+gzip`, so skopeo copies them
/// as they are and the manifest digest stays the one returned); `config` is the image config without
/// `rootfs`, which is filled in (architecture and os default to amd64/linux). Returns the
/// manifest's digest. Layers are held in memory: meant for small test images.
pub fn write_oci_layout(
    dir: &Path,
    tag: &str,
    mut config: serde_json::Value,
    layers: &[Vec<u8>],
) -> String {
    use serde_json::json;
    let blobs = dir.join("blobs").join("sha256");
    fs::create_dir_all(&blobs).expect("creating the layout's blob directory");
    let put_blob = |bytes: &[u8]| -> String {
        let digest = sha256_digest(bytes);
        let hex = digest.trim_start_matches("sha256:");
        fs::write(blobs.join(hex), bytes).expect("writing a blob");
        digest
    };
    let mut layer_descriptors = Vec::new();
    let mut diff_ids = Vec::new();
    for layer in layers {
        diff_ids.push(json!(sha256_digest(layer)));
        let gzipped = gzip(layer);
        layer_descriptors.push(json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": put_blob(&gzipped),
            "size": gzipped.len(),
        }));
    }
    let obj = config
        .as_object_mut()
        .expect("the image config must be a JSON object");
    obj.entry("architecture").or_insert(json!("amd64"));
    obj.entry("os").or_insert(json!("linux"));
    obj.insert(
        "rootfs".into(),
        json!({ "type": "layers", "diff_ids": diff_ids }),
    );
    let config_bytes = serde_json::to_vec(&config).unwrap();
    let config_digest = put_blob(&config_bytes);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_bytes.len(),
        },
        "layers": layer_descriptors,
    });
    let manifest_bytes = serde_json::to_vec(&manifest).unwrap();
    let manifest_digest = put_blob(&manifest_bytes);
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_bytes.len(),
            "annotations": { "org.opencontainers.image.ref.name": tag },
        }],
    });
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap())
        .expect("writing index.json");
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
        .expect("writing oci-layout");
    manifest_digest
}

/// `bytes` gzip-compressed (reproducibly: no name, mtime 0).
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).expect("gzip into memory");
    encoder.finish().expect("gzip into memory")
}

/// An uncompressed tar archive of regular files `(path, contents)`, mode 0644, owned by
/// root, mtime 0: a small, reproducible test layer.
pub fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, contents) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(contents.len() as u64);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        builder
            .append_data(&mut header, path, *contents)
            .expect("adding a file to a tar archive");
    }
    builder.into_inner().expect("finishing a tar archive")
}
