//! Docker/OCI bearer token auth against the real CNCF distribution registry
//! (`docker-registry`), the scheme of Docker Hub, GHCR, Harbor and GitLab.
//!
//! The registry is configured with `auth: token`: it answers 401 with
//! `WWW-Authenticate: Bearer realm="...",service="...",scope="..."` and accepts only JWTs
//! signed by a key whose certificate is in its `rootcertbundle`. The token server is a small
//! HTTP server in this file: it checks the Basic credentials fnbuild sends, records the
//! scopes asked for, and answers with an RS256 JWT (x5c header, signed with the `openssl`
//! CLI) granting what was asked. So every push and pull below goes through the token dance:
//! ping, challenge, `GET realm?service=...&scope=...` with Basic auth, retry with
//! `Authorization: Bearer`.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use serde_json::{json, Value};
use tempfile::TempDir;

use common::functions::{base_layout, failure, function_dir, printed_ref, success, PYTHON};
use common::{fnbuild, free_port};

const USER: &str = "fnbuild-token-user";
const PASSWORD: &str = "Tok3n-pw-n0t-in-logs-K8v";
const WRONG_PASSWORD: &str = "Wr0ng-pw-n0t-in-logs-J5q";
/// A user the token server knows (right password) but grants nothing to.
const NO_ACCESS_USER: &str = "fnbuild-no-access";
const NO_ACCESS_PASSWORD: &str = "N0-access-pw-R2d";
/// The identity token (OAuth2 refresh token) the token server accepts in a `refresh_token`
/// grant; sent any other way (as a Basic password) it is refused.
const IDENTITY_TOKEN: &str = "1dentity-t0ken-n0t-in-logs-Q7w";
const SERVICE: &str = "fnbuild-test";
const ISSUER: &str = "fnbuild-test-issuer";
const TOKEN_LIFETIME: u64 = 300;
const BASE_REPO: &str = "fnbuild/runtime-python";
const HELLO_PY: &str = "def handler(event, context):\n    return 'hello through a token'\n";

// === the token issuer: an RSA key and its self-signed certificate ===

/// The signing key and certificate of the token issuer, made with the `openssl` CLI.
struct Issuer {
    key: PathBuf,
    cert: PathBuf,
    /// The certificate, DER, standard base64: the JWT header's `x5c` entry.
    x5c: String,
    jti: AtomicU64,
}

impl Issuer {
    fn new(dir: &Path) -> Issuer {
        let key = dir.join("token-key.pem");
        let cert = dir.join("token-cert.pem");
        let der = dir.join("token-cert.der");
        run_ok(
            Command::new("openssl")
                .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout"])
                .arg(&key)
                .arg("-out")
                .arg(&cert)
                .args(["-days", "2", "-subj", "/CN=fnbuild test token issuer"]),
        );
        run_ok(
            Command::new("openssl")
                .args(["x509", "-outform", "DER", "-in"])
                .arg(&cert)
                .arg("-out")
                .arg(&der),
        );
        let x5c = STANDARD.encode(fs::read(&der).expect("reading the DER certificate"));
        Issuer {
            key,
            cert,
            x5c,
            jti: AtomicU64::new(1),
        }
    }

    /// An RS256 JWT for `user`, audience `service`, granting `access`.
    fn token(&self, user: &str, service: &str, access: &Value) -> String {
        let header = json!({ "typ": "JWT", "alg": "RS256", "x5c": [self.x5c] });
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let jti = format!(
            "fnbuild-test-{}-{}",
            now,
            self.jti.fetch_add(1, Ordering::SeqCst)
        );
        let claims = json!({
            "iss": ISSUER,
            "sub": user,
            "aud": service,
            "exp": now + TOKEN_LIFETIME,
            "nbf": now - 10,
            "iat": now,
            "jti": jti,
            "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self.sign(signing_input.as_bytes());
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }

    /// RSASSA-PKCS1-v1_5 with SHA-256 (JWS `RS256`) over `data`: `openssl dgst -sha256 -sign`.
    fn sign(&self, data: &[u8]) -> Vec<u8> {
        let mut child = Command::new("openssl")
            .args(["dgst", "-sha256", "-sign"])
            .arg(&self.key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting openssl dgst");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(data)
            .expect("writing to openssl dgst");
        let out = child.wait_with_output().expect("running openssl dgst");
        assert!(
            out.status.success(),
            "openssl dgst -sign failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }
}

// === the token server ===

/// One request the token server answered.
#[derive(Debug, Clone)]
struct TokenRequest {
    /// `GET` (Basic auth) or `POST` (an OAuth2 grant).
    method: String,
    /// The `grant_type` and `client_id` of a `POST`.
    grant: Option<String>,
    client_id: Option<String>,
    /// The user of the Basic Authorization header, if there was one.
    user: Option<String>,
    /// Whether the Basic credentials were right (and a token was issued).
    authenticated: bool,
    service: Option<String>,
    /// The `scope` query parameters, in order.
    scopes: Vec<String>,
    status: u16,
}

/// `GET /token?service=...&scope=...` with Basic auth, or `POST /token` of a form with
/// `grant_type=refresh_token` and [`IDENTITY_TOKEN`] (answered with an `access_token` only),
/// on 127.0.0.1, one thread per connection, answers with `Connection: close`. Stops on drop.
struct TokenServer {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<TokenRequest>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TokenServer {
    fn start(issuer: Arc<Issuer>) -> TokenServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the token server");
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let requests = requests.clone();
            let stop = stop.clone();
            thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let issuer = issuer.clone();
                    let requests = requests.clone();
                    thread::spawn(move || serve_token_request(stream, &issuer, &requests));
                }
            })
        };
        TokenServer {
            addr,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// Every request so far, in the order they were answered.
    fn requests(&self) -> Vec<TokenRequest> {
        self.requests.lock().unwrap().clone()
    }

    fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Reads one HTTP request, answers it, and records it (when it is a token request).
fn serve_token_request(stream: TcpStream, issuer: &Issuer, requests: &Mutex<Vec<TokenRequest>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
        return; // the wake-up connection of Drop, or a client that gave up
    }
    let mut authorization = None;
    let mut content_length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("authorization") {
                authorization = Some(value.trim().to_string());
            }
            if name.trim().eq_ignore_ascii_case("content-length") {
                content_length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default();
    let target = parts.next().unwrap_or_default();
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if !matches!(method, "GET" | "POST") || path != "/token" {
        respond(stream, 404, &json!({ "details": "not found" }));
        return;
    }
    // A POST's parameters are its form body.
    let mut body = vec![0; content_length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let parameters = if method == "POST" {
        String::from_utf8_lossy(&body).into_owned()
    } else {
        query.to_string()
    };
    let (mut service, mut grant, mut refresh_token, mut client_id) = (None, None, None, None);
    let mut scopes = Vec::new();
    for pair in parameters.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(value);
        match percent_decode(key).as_str() {
            "service" => service = Some(value),
            "scope" => scopes.extend(value.split(' ').map(str::to_owned)),
            "grant_type" => grant = Some(value),
            "refresh_token" => refresh_token = Some(value),
            "client_id" => client_id = Some(value),
            _ => {}
        }
    }
    let credentials = authorization
        .as_deref()
        .and_then(|a| a.strip_prefix("Basic "))
        .and_then(|b| STANDARD.decode(b.trim()).ok())
        .and_then(|raw| String::from_utf8(raw).ok())
        .and_then(|raw| {
            raw.split_once(':')
                .map(|(u, p)| (u.to_string(), p.to_string()))
        });
    let user = credentials.as_ref().map(|(u, _)| u.clone());
    let granted = if method == "POST" {
        (grant.as_deref() == Some("refresh_token")
            && refresh_token.as_deref() == Some(IDENTITY_TOKEN))
        .then_some(true)
    } else {
        match &credentials {
            Some((u, p)) if u == USER && p == PASSWORD => Some(true),
            Some((u, p)) if u == NO_ACCESS_USER && p == NO_ACCESS_PASSWORD => Some(false),
            _ => None,
        }
    };
    let (status, body) = match granted {
        None => (
            401,
            json!({ "errors": [{
                "code": "UNAUTHORIZED",
                "message": "incorrect username or password",
            }] }),
        ),
        Some(grant) => {
            let access = if grant {
                access_for(&scopes)
            } else {
                json!([])
            };
            let token = issuer.token(
                user.as_deref().unwrap_or_default(),
                service.as_deref().unwrap_or_default(),
                &access,
            );
            let body = if method == "POST" {
                json!({ "access_token": token, "expires_in": TOKEN_LIFETIME })
            } else {
                json!({ "token": token, "access_token": token, "expires_in": TOKEN_LIFETIME })
            };
            (200, body)
        }
    };
    requests.lock().unwrap().push(TokenRequest {
        method: method.to_string(),
        grant,
        client_id,
        user,
        authenticated: granted.is_some(),
        service,
        scopes,
        status,
    });
    respond(stream, status, &body);
}

/// The `access` claim granting what `scopes` ask: `repository:NAME:ACTIONS` each, the
/// actions of one repository merged.
fn access_for(scopes: &[String]) -> Value {
    let mut granted: Vec<(String, String, BTreeSet<String>)> = Vec::new();
    for scope in scopes {
        let Some((kind, rest)) = scope.split_once(':') else {
            continue;
        };
        let Some((name, actions)) = rest.rsplit_once(':') else {
            continue;
        };
        let actions = actions
            .split(',')
            .filter(|a| !a.is_empty())
            .map(str::to_owned);
        match granted.iter_mut().find(|(k, n, _)| k == kind && n == name) {
            Some((_, _, set)) => set.extend(actions),
            None => granted.push((kind.to_string(), name.to_string(), actions.collect())),
        }
    }
    Value::Array(
        granted
            .into_iter()
            .map(|(kind, name, actions)| {
                json!({ "type": kind, "name": name, "actions": actions.into_iter().collect::<Vec<_>>() })
            })
            .collect(),
    )
}

fn respond(mut stream: TcpStream, status: u16, body: &Value) {
    let reason = match status {
        200 => "OK",
        401 => "Unauthorized",
        404 => "Not Found",
        _ => "Error",
    };
    let body = body.to_string();
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if status == 401 {
        head.push_str("WWW-Authenticate: Basic realm=\"fnbuild test token server\"\r\n");
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body.as_bytes());
    let _ = stream.flush();
}

/// `application/x-www-form-urlencoded` decoding of a query value.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

// === the registry with token auth ===

/// `docker-registry serve` with `auth: token` pointing at a [`TokenServer`] on 127.0.0.1;
/// the registry is killed, and its storage removed, on drop.
struct TokenRegistry {
    child: Child,
    port: u16,
    log_path: PathBuf,
    storage: PathBuf,
    issuer: Arc<Issuer>,
    token_server: TokenServer,
    // Last: removed after the process and the token server are gone.
    _dir: TempDir,
}

impl TokenRegistry {
    fn start() -> TokenRegistry {
        let dir = tempfile::Builder::new()
            .prefix("fnbuild-token-registry-")
            .tempdir()
            .unwrap();
        let storage = dir.path().join("storage");
        fs::create_dir_all(&storage).unwrap();
        let log_path = dir.path().join("registry.log");
        let issuer = Arc::new(Issuer::new(dir.path()));
        let token_server = TokenServer::start(issuer.clone());

        // The port is free when picked but may be taken before the registry binds it: retry.
        for attempt in 1..=5 {
            let port = free_port();
            let config = format!(
                "version: 0.1\n\
                 log:\n  level: debug\n  formatter: text\n\
                 storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n\
                 \x20 maintenance:\n    uploadpurging:\n      enabled: false\n\
                 http:\n  addr: 127.0.0.1:{port}\n  secret: fnbuild-token-test-secret\n\
                 auth:\n  token:\n    realm: {realm}\n    service: {SERVICE}\n    \
                 issuer: {ISSUER}\n    rootcertbundle: {cert}\n",
                storage = storage.display(),
                realm = token_server.realm(),
                cert = issuer.cert.display(),
            );
            let config_path = dir.path().join("config.yml");
            fs::write(&config_path, config).unwrap();
            let log = fs::File::create(&log_path).unwrap();
            let mut child = Command::new("docker-registry")
                .arg("serve")
                .arg(&config_path)
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("starting docker-registry: {e} (run `bash tests/setup.sh`)")
                });
            let why = match wait_for_challenge(&mut child, port) {
                Ok(()) => {
                    return TokenRegistry {
                        child,
                        port,
                        log_path,
                        storage,
                        issuer,
                        token_server,
                        _dir: dir,
                    }
                }
                Err(why) => why,
            };
            let _ = child.kill();
            let _ = child.wait();
            let log = fs::read_to_string(&log_path).unwrap_or_default();
            if !log.contains("address already in use") || attempt == 5 {
                panic!("docker-registry did not start ({why}); its log:\n{log}");
            }
        }
        unreachable!("the last attempt panics")
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    fn tokens(&self) -> &TokenServer {
        &self.token_server
    }

    /// `GET path` on the registry with a bearer token minted here for `scope`s (not through
    /// the token server, so nothing is recorded): (status, headers, body).
    fn api_get(&self, path: &str, scopes: &[&str]) -> (u16, reqwest::header::HeaderMap, String) {
        let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
        let token = self.issuer.token(USER, SERVICE, &access_for(&scopes));
        let resp = http_client()
            .get(format!("http://{}{path}", self.host()))
            .bearer_auth(token)
            .send()
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        (status, headers, resp.text().unwrap_or_default())
    }

    /// The tags of `repo`, asked of the registry's API (empty when the repository does not
    /// exist).
    fn tags(&self, repo: &str) -> Vec<String> {
        let (status, _, body) = self.api_get(
            &format!("/v2/{repo}/tags/list"),
            &[&format!("repository:{repo}:pull")],
        );
        if status == 404 {
            return Vec::new();
        }
        assert_eq!(status, 200, "tags of {repo}: {body}\n{}", self.log());
        let parsed: Value = serde_json::from_str(&body).unwrap();
        let mut tags: Vec<String> = parsed["tags"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|t| t.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        tags.sort();
        tags
    }

    /// The tags of `repo` that name images (without the referrers tags of their SBOMs).
    fn image_tags(&self, repo: &str) -> Vec<String> {
        common::without_referrers_tags(self.tags(repo))
    }

    /// How many API requests (`/v2/...`, any answer) the registry's access log shows from
    /// clients whose User-Agent contains `agent`.
    fn api_requests_by(&self, agent: &str) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains(" /v2/") && l.contains(agent) && !l.starts_with("time="))
            .count()
    }

    /// `METHOD PATH` (query left out) of the requests from fnbuild the registry refused
    /// because the token did not grant what they need.
    fn insufficient_scope_requests(&self) -> Vec<String> {
        let field = |line: &str, name: &str| -> String {
            let Some(start) = line.find(&format!("{name}=")) else {
                return String::new();
            };
            let rest = &line[start + name.len() + 1..];
            let value = match rest.strip_prefix('"') {
                Some(quoted) => quoted.split('"').next().unwrap_or_default(),
                None => rest.split(' ').next().unwrap_or_default(),
            };
            value.to_string()
        };
        self.log()
            .lines()
            .filter(|l| l.contains("insufficient scope") && l.contains("fnbuild/"))
            .map(|l| {
                let uri = field(l, "http.request.uri");
                format!(
                    "{} {}",
                    field(l, "http.request.method"),
                    uri.split('?').next().unwrap_or_default()
                )
            })
            .collect()
    }

    /// Whether the registry's storage has the repository at all.
    fn has_repository(&self, repo: &str) -> bool {
        self.storage
            .join("docker/registry/v2/repositories")
            .join(repo)
            .exists()
    }

    /// A Docker config dir holding an identity token for this registry, as `docker login`
    /// writes it for an OAuth2 registry.
    fn identity_token_config(&self) -> TempDir {
        let dir = tempfile::tempdir().unwrap();
        let auth = STANDARD.encode("<token>:");
        let config =
            json!({ "auths": { self.host(): { "auth": auth, "identitytoken": IDENTITY_TOKEN } } });
        fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
        dir
    }

    /// A Docker config dir holding `user:password` for this registry.
    fn docker_config(&self, user: &str, password: &str) -> TempDir {
        let dir = tempfile::tempdir().unwrap();
        let auth = STANDARD.encode(format!("{user}:{password}"));
        let config = json!({ "auths": { self.host(): { "auth": auth } } });
        fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
        dir
    }

    /// `skopeo inspect` of `reference` with the right credentials (skopeo does the token
    /// dance too), as JSON.
    fn skopeo_inspect(&self, reference: &str) -> Value {
        let out = Command::new("skopeo")
            .args(["inspect", "--tls-verify=false"])
            .arg(format!("--creds={USER}:{PASSWORD}"))
            .arg(format!("docker://{reference}"))
            .stdin(Stdio::null())
            .output()
            .expect("running skopeo");
        assert!(
            out.status.success(),
            "skopeo inspect {reference} failed: {}\nregistry log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl Drop for TokenRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// === helpers ===

/// Polls the registry's `GET /v2/` until it answers 401 (up to 10 s); the reason otherwise.
fn wait_for_challenge(child: &mut Child, port: u16) -> Result<(), String> {
    let url = format!("http://127.0.0.1:{port}/v2/");
    let client = http_client();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("exited with {status}"));
        }
        let last = match client.get(&url).send() {
            Ok(resp) if resp.status().as_u16() == 401 => return Ok(()),
            Ok(resp) => format!("GET {url} answered {}", resp.status()),
            Err(e) => format!("GET {url}: {e}"),
        };
        if Instant::now() >= deadline {
            return Err(last);
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn http_client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `fnbuild` with no credentials from the environment: only `--docker-config` counts.
fn isolated(home: &Path) -> Command {
    let mut cmd = fnbuild();
    cmd.env_remove("DOCKER_CONFIG")
        .env("HOME", home)
        .stdin(Stdio::null());
    cmd
}

/// `fnbuild push` of the python base image layout to where the catalog names it.
fn push_base(registry: &TokenRegistry, home: &Path, config: &Path, cache: &Path) -> Command {
    let mut cmd = isolated(home);
    cmd.arg("push")
        .arg(format!("oci:{}", base_layout(PYTHON).display()))
        .arg(format!("{}/{BASE_REPO}:3.13", registry.host()))
        .arg("--docker-config")
        .arg(config)
        .arg("--cache-dir")
        .arg(cache);
    cmd
}

/// `fnbuild build` of `source` (python, hello.handler) to `image`, the base from the
/// registry (`FNBUILD_BASE_REGISTRY`).
fn build(
    registry: &TokenRegistry,
    home: &Path,
    config: &Path,
    cache: &Path,
    source: &Path,
    image: &str,
) -> Command {
    let mut cmd = isolated(home);
    cmd.arg("build")
        .arg("--source")
        .arg(source)
        .args([
            "--runtime",
            PYTHON,
            "--handler",
            "hello.handler",
            "--image",
            image,
        ])
        .arg("--docker-config")
        .arg(config)
        .arg("--cache-dir")
        .arg(cache)
        .env("FNBUILD_BASE_REGISTRY", registry.host());
    cmd
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The distinct scope sets of `requests`, each as its scopes joined by spaces.
fn scope_sets(requests: &[TokenRequest]) -> BTreeSet<String> {
    requests.iter().map(|r| r.scopes.join(" ")).collect()
}

fn describe(requests: &[TokenRequest]) -> String {
    requests
        .iter()
        .map(|r| {
            format!(
                "  {} {} grant={:?} user={:?} service={:?} scopes={:?}\n",
                r.method, r.status, r.grant, r.user, r.service, r.scopes
            )
        })
        .collect()
}

// === tests ===

/// The registry really wants bearer tokens: its challenge names the token server, a bare
/// request or a token for another repository is turned away, a token from the issuer works.
#[test]
fn the_registry_challenges_for_bearer_tokens_of_the_issuer() {
    let registry = TokenRegistry::start();
    let resp = http_client()
        .get(format!("http://{}/v2/", registry.host()))
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        challenge.starts_with("Bearer ")
            && challenge.contains(&format!("realm=\"{}\"", registry.tokens().realm()))
            && challenge.contains(&format!("service=\"{SERVICE}\"")),
        "{challenge}"
    );

    let (status, _, body) = registry.api_get("/v2/", &[]);
    assert_eq!(status, 200, "{body}\nregistry log:\n{}", registry.log());
    let (status, headers, _) = registry.api_get(
        "/v2/functions/hello/tags/list",
        &["repository:functions/other:pull"],
    );
    assert_eq!(status, 401);
    let scoped = headers
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(
        scoped.contains("scope=\"repository:functions/hello:pull\""),
        "{scoped}"
    );
    assert_eq!(
        registry.tokens().count(),
        0,
        "minting tokens here is not asking the server"
    );
}

#[test]
fn push_and_build_through_bearer_token_auth() {
    let started = Instant::now();
    let registry = TokenRegistry::start();
    let host = registry.host();
    let home = tempfile::tempdir().unwrap();
    let config = registry.docker_config(USER, PASSWORD);
    let cache = tempfile::tempdir().unwrap();
    let source = function_dir(&[("hello.py", HELLO_PY)]);

    // The runtime base, where the catalog names it.
    let pushed = success(&mut push_base(
        &registry,
        home.path(),
        config.path(),
        cache.path(),
    ));
    let push_requests = registry.tokens().requests();
    eprintln!(
        "token requests of fnbuild push:\n{}",
        describe(&push_requests)
    );
    assert!(!push_requests.is_empty(), "fnbuild push asked for no token");
    for request in &push_requests {
        assert_eq!(request.user.as_deref(), Some(USER), "{request:?}");
        assert!(request.authenticated, "{request:?}");
        assert_eq!(request.service.as_deref(), Some(SERVICE), "{request:?}");
    }
    assert!(
        push_requests
            .iter()
            .any(|r| r.scopes == [format!("repository:{BASE_REPO}:pull,push")]),
        "no push token for {BASE_REPO}:\n{}",
        describe(&push_requests)
    );
    assert_eq!(registry.tags(BASE_REPO), vec!["3.13"]);
    assert!(!stderr_of(&pushed).contains(PASSWORD));

    // The function, on the catalog's base pulled from the same registry; its layers are
    // mounted from the base's repository.
    let image = format!("{host}/functions/hello:v1");
    let mut cmd = build(
        &registry,
        home.path(),
        config.path(),
        cache.path(),
        source.path(),
        &image,
    );
    cmd.args(["--log-level", "debug"]);
    let built = success(&mut cmd);
    let stderr = stderr_of(&built);
    let pinned = printed_ref(&built);
    assert!(
        pinned.starts_with(&format!("{host}/functions/hello@sha256:")),
        "{pinned}"
    );
    assert!(!stderr.contains(PASSWORD), "the password is in:\n{stderr}");

    let build_requests = registry.tokens().requests()[push_requests.len()..].to_vec();
    eprintln!(
        "token requests of fnbuild build:\n{}",
        describe(&build_requests)
    );
    for request in &build_requests {
        assert_eq!(request.user.as_deref(), Some(USER), "{request:?}");
        assert!(request.authenticated, "{request:?}");
        assert_eq!(request.service.as_deref(), Some(SERVICE), "{request:?}");
    }
    let sets = scope_sets(&build_requests);
    for expected in [
        // pulling the base
        format!("repository:{BASE_REPO}:pull"),
        // pushing the function
        "repository:functions/hello:pull,push".to_string(),
        // mounting the base layers from the base's repository
        format!("repository:functions/hello:pull,push repository:{BASE_REPO}:pull"),
    ] {
        assert!(
            sets.contains(&expected),
            "no token asked for {expected:?}:\n{}",
            describe(&build_requests)
        );
    }
    assert!(
        stderr.contains("mounted blob"),
        "no blob was mounted from {BASE_REPO}:\n{stderr}"
    );

    // The registry holds it: skopeo (doing the token dance itself) sees what fnbuild printed.
    assert_eq!(registry.image_tags("functions/hello"), vec!["v1"]);
    let inspected = registry.skopeo_inspect(&image);
    assert_eq!(
        inspected["Digest"].as_str(),
        pinned.split('@').nth(1),
        "skopeo sees another image than fnbuild printed"
    );
    let env: Vec<&str> = inspected["Env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for expected in ["FUNC_HANDLER=handler", "MOD_NAME=hello"] {
        assert!(env.contains(&expected), "{expected} not in {env:?}");
    }
    eprintln!("push + build + checks took {:?}", started.elapsed());
}

#[test]
fn wrong_password_is_reported_without_the_password_and_nothing_is_pushed() {
    let registry = TokenRegistry::start();
    let host = registry.host();
    let home = tempfile::tempdir().unwrap();
    let good = registry.docker_config(USER, PASSWORD);
    let wrong = registry.docker_config(USER, WRONG_PASSWORD);
    let cache = tempfile::tempdir().unwrap();
    let source = function_dir(&[("hello.py", HELLO_PY)]);
    success(&mut push_base(
        &registry,
        home.path(),
        good.path(),
        cache.path(),
    ));
    let before = registry.tokens().count();

    // Building: the base pull is the first thing turned away.
    let image = format!("{host}/functions/hello:v1");
    let (code, stderr) = failure(&mut build(
        &registry,
        home.path(),
        wrong.path(),
        cache.path(),
        source.path(),
        &image,
    ));
    eprintln!("build with the wrong password:\n{stderr}");
    assert_eq!(code, 1, "{stderr}");
    for word in [
        "rejected the credentials",
        host.as_str(),
        USER,
        "incorrect username or password",
    ] {
        assert!(stderr.contains(word), "expected {word:?} in:\n{stderr}");
    }
    assert!(
        !stderr.contains(WRONG_PASSWORD) && !stderr.contains(PASSWORD),
        "a password is in:\n{stderr}"
    );
    let asked = registry.tokens().requests()[before..].to_vec();
    assert!(!asked.is_empty(), "no token was asked for");
    assert!(
        asked
            .iter()
            .all(|r| !r.authenticated && r.status == 401 && r.user.as_deref() == Some(USER)),
        "{}",
        describe(&asked)
    );
    // A client error is not retried: one request per failed build, give or take the
    // requests already in flight.
    assert!(asked.len() <= 2, "{}", describe(&asked));
    assert!(!registry.has_repository("functions/hello"));
    assert!(registry.tags("functions/hello").is_empty());

    // Pushing (the base from its layout, so the push itself is what is turned away).
    let before = registry.tokens().count();
    let mut push = isolated(home.path());
    push.arg("push")
        .arg(format!("oci:{}", base_layout(PYTHON).display()))
        .arg(format!("{host}/functions/pushed:v1"))
        .arg("--docker-config")
        .arg(wrong.path())
        .arg("--cache-dir")
        .arg(cache.path());
    let (code, stderr) = failure(&mut push);
    eprintln!("push with the wrong password:\n{stderr}");
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("rejected the credentials")
            && stderr.contains(&host)
            && stderr.contains("functions/pushed"),
        "{stderr}"
    );
    assert!(!stderr.contains(WRONG_PASSWORD), "{stderr}");
    let asked = registry.tokens().requests()[before..].to_vec();
    assert!(
        asked
            .iter()
            .all(|r| r.scopes == ["repository:functions/pushed:pull,push"]),
        "{}",
        describe(&asked)
    );
    assert!(!registry.has_repository("functions/pushed"));

    // A user the token server knows but grants nothing: the token is issued, the registry
    // refuses it, and nothing is pushed either.
    let no_access = registry.docker_config(NO_ACCESS_USER, NO_ACCESS_PASSWORD);
    let (code, stderr) = failure(&mut build(
        &registry,
        home.path(),
        no_access.path(),
        cache.path(),
        source.path(),
        &image,
    ));
    eprintln!("build with a token granting nothing:\n{stderr}");
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains(&host), "{stderr}");
    assert!(!stderr.contains(NO_ACCESS_PASSWORD), "{stderr}");
    assert!(!registry.has_repository("functions/hello"));
}

/// A bearer token is fetched once per set of scopes and reused: a build asks the token
/// server for a handful of tokens (pull the base; push the function; HEAD its blobs; mount
/// from the base's repository), not one per blob request, and a second build (a code change
/// only, same cache) does not ask for more.
#[test]
fn tokens_are_cached_per_scope_within_a_build() {
    let registry = TokenRegistry::start();
    let host = registry.host();
    let home = tempfile::tempdir().unwrap();
    let config = registry.docker_config(USER, PASSWORD);
    let cache = tempfile::tempdir().unwrap();
    let source = function_dir(&[("hello.py", HELLO_PY)]);
    success(&mut push_base(
        &registry,
        home.path(),
        config.path(),
        cache.path(),
    ));
    // The push of the base: blobs are HEADed and uploaded 4 at a time, with no 401 and no
    // mount on the way, so any repeat here is concurrent requests each fetching a token.
    let pushed = registry.tokens().requests();
    eprintln!(
        "push of the base: {} token requests for {} scope sets:\n{}",
        pushed.len(),
        scope_sets(&pushed).len(),
        describe(&pushed)
    );

    let mut per_build = vec![("push of the base", pushed)];
    for (tag, code) in [
        ("build v1", HELLO_PY),
        (
            "build v2",
            "def handler(event, context):\n    return 'changed'\n",
        ),
    ] {
        fs::write(source.path().join("hello.py"), code).unwrap();
        let before_tokens = registry.tokens().count();
        let before_requests = registry.api_requests_by("fnbuild/");
        let started = Instant::now();
        success(&mut build(
            &registry,
            home.path(),
            config.path(),
            cache.path(),
            source.path(),
            &format!("{host}/functions/hello:{}", &tag[6..]),
        ));
        let asked = registry.tokens().requests()[before_tokens..].to_vec();
        let api_requests = registry.api_requests_by("fnbuild/") - before_requests;
        eprintln!(
            "{tag} ({:?}): {api_requests} registry API requests, {} token requests for {} \
             scope sets:\n{}",
            started.elapsed(),
            asked.len(),
            scope_sets(&asked).len(),
            describe(&asked)
        );
        per_build.push((tag, asked));
    }
    assert_eq!(registry.image_tags("functions/hello"), vec!["v1", "v2"]);
    let mut problems = Vec::new();
    for (what, asked) in &per_build {
        let sets = scope_sets(asked);
        let repeated: Vec<String> = sets
            .iter()
            .map(|set| {
                let n = asked.iter().filter(|r| &r.scopes.join(" ") == set).count();
                (set, n)
            })
            .filter(|(_, n)| *n > 1)
            .map(|(set, n)| format!("{n}x {set}"))
            .collect();
        if !repeated.is_empty() || asked.len() > 4 {
            problems.push(format!(
                "{what}: {} token requests for {} scope sets; fetched more than once: \
                 {repeated:?}",
                asked.len(),
                sets.len()
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "tokens are not reused (see the token requests above):\n  {}",
        problems.join("\n  ")
    );
}

/// Every request fnbuild sends with a token is one the token allows: the registry never
/// answers fnbuild with `insufficient_scope` (which would also make fnbuild drop its cached
/// tokens and fetch them again).
#[test]
fn no_request_of_a_build_exceeds_the_scopes_of_its_token() {
    let registry = TokenRegistry::start();
    let host = registry.host();
    let home = tempfile::tempdir().unwrap();
    let config = registry.docker_config(USER, PASSWORD);
    let cache = tempfile::tempdir().unwrap();
    let source = function_dir(&[("hello.py", HELLO_PY)]);
    success(&mut push_base(
        &registry,
        home.path(),
        config.path(),
        cache.path(),
    ));
    success(&mut build(
        &registry,
        home.path(),
        config.path(),
        cache.path(),
        source.path(),
        &format!("{host}/functions/hello:v1"),
    ));
    assert_eq!(registry.image_tags("functions/hello"), vec!["v1"]);
    let refused = registry.insufficient_scope_requests();
    assert!(
        refused.is_empty(),
        "the registry refused {} fnbuild requests for insufficient scope (the token did not \
         allow them):\n  {}",
        refused.len(),
        refused.join("\n  ")
    );
}

/// A Docker config `identitytoken` (what `docker login` stores for OAuth2 registries such as
/// Azure Container Registry) is exchanged with a `POST` of the `refresh_token` grant, never
/// sent as a Basic password (which this token server refuses), and never shown.
#[test]
fn an_identity_token_is_exchanged_as_an_oauth2_refresh_token() {
    let registry = TokenRegistry::start();
    let home = tempfile::tempdir().unwrap();
    let config = registry.identity_token_config();
    let cache = tempfile::tempdir().unwrap();
    let mut push = push_base(&registry, home.path(), config.path(), cache.path());
    push.args(["--log-level", "debug"]);
    let pushed = success(&mut push);
    let asked = registry.tokens().requests();
    eprintln!("token requests:\n{}", describe(&asked));
    assert!(!asked.is_empty(), "no token was asked for");
    for request in &asked {
        assert_eq!(request.method, "POST", "{request:?}");
        assert_eq!(
            request.grant.as_deref(),
            Some("refresh_token"),
            "{request:?}"
        );
        assert_eq!(request.client_id.as_deref(), Some("fnbuild"), "{request:?}");
        assert_eq!(request.service.as_deref(), Some(SERVICE), "{request:?}");
        assert!(
            request.authenticated && request.status == 200,
            "{request:?}"
        );
    }
    assert!(
        asked
            .iter()
            .any(|r| r.scopes == [format!("repository:{BASE_REPO}:pull,push")]),
        "{}",
        describe(&asked)
    );
    assert_eq!(registry.tags(BASE_REPO), vec!["3.13"]);
    let stderr = stderr_of(&pushed);
    assert!(
        !stderr.contains(IDENTITY_TOKEN),
        "the identity token is in:\n{stderr}"
    );
}
