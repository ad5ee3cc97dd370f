//! Git fixtures for the Git source tests (`tests/source_git.rs`): a fixture repository made
//! with the `git` command line, and real servers in front of it: a smart-HTTP server with
//! basic auth (`git http-backend` behind `tests/support/git_http_server.py`), `git daemon`
//! for `git://`, and OpenSSH's `sshd` for `ssh://`. Each server listens on 127.0.0.1 only and
//! is killed when dropped. A missing program is a panic that says what to install.
#![allow(dead_code)]

use std::fs;
use std::io::BufRead;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::free_port;

/// How long a server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The text of `fn/hello.py` at a commit: a handler returning `label`.
pub fn hello_py(label: &str) -> String {
    format!("def handler(event, context):\n    return '{label}'\n")
}

/// What the submodule repository holds: `util.py` with this text.
pub const LIB_UTIL_PY: &str = "VALUE = 'from the submodule'\n";

/// A bare repository `fn.git` (and, when asked, `lib.git` used by it as a submodule) under
/// [`GitFixture::root`], made with the `git` command line. Every commit holds a top-level
/// `README.md`, `app.py` (handler `app.handler`, returning `'top'`), `docs/guide.md` and
/// `fn/hello.py` (handler `hello.handler`) returning the commit's label:
///
/// ```text
///   first ── tagged ── middle ── main        (branch main, the HEAD)
///   (light)  (v1.0)        \
///               \           (no ref names `middle`)
///                develop                      (branch develop)
/// ```
///
/// `light` is a lightweight tag on the first commit, `v1.0` an annotated tag on the second.
/// With a submodule, `main`'s commit also adds `lib.git` at `fn/lib` (its URL a `file://`).
/// Authors and dates are fixed, so the SHAs are the same on every run.
pub struct GitFixture {
    /// The directory holding the bare repositories: what the servers export.
    pub root: PathBuf,
    /// `root/fn.git`.
    pub repo: PathBuf,
    /// `root/lib.git`, when made with a submodule.
    pub lib: Option<PathBuf>,
    /// The first commit (`fn/hello.py` returns 'first'); the lightweight tag `light`.
    pub first: String,
    /// The second commit ('v1.0'), which the annotated tag `v1.0` points at.
    pub tagged: String,
    /// The SHA of the `v1.0` tag object itself (not a commit).
    pub tag_object: String,
    /// The third commit ('middle'): on main's history, named by no branch or tag.
    pub middle: String,
    /// main's tip, the repository's HEAD ('main').
    pub main: String,
    /// develop's tip ('develop'), forked from `tagged`.
    pub develop: String,
    dir: TempDir,
}

impl GitFixture {
    /// The fixture without a submodule.
    pub fn new() -> GitFixture {
        Self::make(false)
    }

    /// The fixture whose `main` has `lib.git` as a submodule at `fn/lib`.
    pub fn with_submodule() -> GitFixture {
        Self::make(true)
    }

    fn make(submodule: bool) -> GitFixture {
        let dir = tempfile::Builder::new()
            .prefix("fnbuild-git-fixture-")
            .tempdir()
            .expect("creating the fixture's temporary directory");
        let root = dir.path().join("repos");
        let home = dir.path().join("home");
        let work = dir.path().join("work");
        fs::create_dir_all(&root).unwrap();
        fs::create_dir_all(&home).unwrap();
        let git = |cwd: &Path, args: &[&str]| git_in(&home, cwd, args);

        let lib = submodule.then(|| {
            let lib_work = dir.path().join("lib-work");
            fs::create_dir_all(&lib_work).unwrap();
            git(&lib_work, &["init", "-q", "-b", "main"]);
            fs::write(lib_work.join("util.py"), LIB_UTIL_PY).unwrap();
            git(&lib_work, &["add", "-A"]);
            git(&lib_work, &["commit", "-q", "-m", "lib"]);
            let lib = root.join("lib.git");
            git(
                dir.path(),
                &[
                    "clone",
                    "-q",
                    "--bare",
                    lib_work.to_str().unwrap(),
                    lib.to_str().unwrap(),
                ],
            );
            lib
        });

        fs::create_dir_all(work.join("fn")).unwrap();
        fs::create_dir_all(work.join("docs")).unwrap();
        let commit = |label: &str| -> String {
            fs::write(work.join("fn/hello.py"), hello_py(label)).unwrap();
            git(&work, &["add", "-A"]);
            git(&work, &["commit", "-q", "-m", label]);
            git(&work, &["rev-parse", "HEAD"])
        };
        git(&work, &["init", "-q", "-b", "main"]);
        fs::write(work.join("README.md"), "# The fixture function\n").unwrap();
        fs::write(
            work.join("app.py"),
            "def handler(event, context):\n    return 'top'\n",
        )
        .unwrap();
        fs::write(work.join("docs/guide.md"), "Call it.\n").unwrap();
        let first = commit("first");
        git(&work, &["tag", "light"]);
        let tagged = commit("v1.0");
        git(&work, &["tag", "-a", "v1.0", "-m", "release 1.0"]);
        let tag_object = git(&work, &["rev-parse", "v1.0"]);
        let middle = commit("middle");
        if let Some(lib) = &lib {
            let url = format!("file://{}", lib.display());
            git(
                &work,
                &[
                    "-c",
                    "protocol.file.allow=always",
                    "submodule",
                    "add",
                    "-q",
                    &url,
                    "fn/lib",
                ],
            );
        }
        let main = commit("main");
        git(&work, &["checkout", "-q", "-b", "develop", &tagged]);
        let develop = commit("develop");
        git(&work, &["checkout", "-q", "main"]);

        let repo = root.join("fn.git");
        git(
            dir.path(),
            &[
                "clone",
                "-q",
                "--bare",
                work.to_str().unwrap(),
                repo.to_str().unwrap(),
            ],
        );
        // `clone --bare` copies the branches and tags as they are; HEAD is main.
        assert_eq!(git(&repo, &["symbolic-ref", "HEAD"]), "refs/heads/main");
        GitFixture {
            root,
            repo,
            lib,
            first,
            tagged,
            tag_object,
            middle,
            main,
            develop,
            dir,
        }
    }

    /// `file:///.../fn.git`.
    pub fn file_url(&self) -> String {
        format!("file://{}", self.repo.display())
    }

    /// A scratch directory inside the fixture (for archives, copies).
    pub fn scratch(&self) -> PathBuf {
        let dir = self.dir.path().join("scratch");
        fs::create_dir_all(&dir).unwrap();
        dir
    }
}

/// Runs `git` in `cwd` with a fixed identity and dates and no user or system config; returns
/// its trimmed stdout. Panics with its output when it fails.
fn git_in(home: &Path, cwd: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(cwd)
        .env("HOME", home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", home.join("gitconfig"))
        .env("GIT_AUTHOR_NAME", "Fixture Author")
        .env("GIT_AUTHOR_EMAIL", "author@fixture.test")
        .env("GIT_AUTHOR_DATE", "2024-01-02T03:04:05Z")
        .env("GIT_COMMITTER_NAME", "Fixture Author")
        .env("GIT_COMMITTER_EMAIL", "author@fixture.test")
        .env("GIT_COMMITTER_DATE", "2024-01-02T03:04:05Z")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running git {args:?}: {e} (run `bash tests/setup.sh`)"));
    if !out.status.success() {
        panic!(
            "git {args:?} in {} failed ({}):\n{}{}",
            cwd.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// True once a TCP connection to 127.0.0.1:`port` succeeds, false after `timeout` or when
/// `child` exits first.
fn wait_port(child: &mut Child, port: u16, timeout: Duration) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(25));
    }
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// The smart-HTTP Git server of `tests/support/git_http_server.py`: `git http-backend` for
/// the repositories under a root, every request requiring basic auth with one user and
/// password. Its request log (one JSON object a line) is read with [`GitHttpServer::requests`].
pub struct GitHttpServer {
    child: Child,
    port: u16,
    log: PathBuf,
    stderr: PathBuf,
    _dir: TempDir,
}

impl GitHttpServer {
    /// Starts the server for the repositories under `root`, requiring `user` and `password`.
    pub fn start(root: &Path, user: &str, password: &str) -> GitHttpServer {
        let dir = tempfile::Builder::new()
            .prefix("fnbuild-git-http-")
            .tempdir()
            .unwrap();
        let log = dir.path().join("requests.jsonl");
        let stderr = dir.path().join("stderr.log");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/git_http_server.py");
        let mut child = Command::new("python3")
            .arg(&script)
            .arg("--root")
            .arg(root)
            .args(["--user", user, "--password", password])
            .arg("--log")
            .arg(&log)
            // Kept open until drop: the server exits when it closes.
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("starting python3 {}: {e}", script.display()));
        // The first stdout line is the port, printed once it listens.
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let port = match rx.recv_timeout(START_TIMEOUT) {
            Ok(line) => line.trim().parse::<u16>().ok(),
            Err(_) => None,
        };
        let Some(port) = port else {
            kill(&mut child);
            panic!(
                "the Git HTTP server did not print its port; its stderr:\n{}",
                fs::read_to_string(&stderr).unwrap_or_default()
            );
        };
        GitHttpServer {
            child,
            port,
            log,
            stderr,
            _dir: dir,
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT/<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{path}", self.host())
    }

    /// The requests served so far, oldest first: `method`, `path`, `query`, `status`,
    /// `credentials_came`, `credentials_right`, `chunked`, `body_bytes`, `deepen` (the body
    /// asked for a shallow fetch) and `body_start`.
    pub fn requests(&self) -> Vec<serde_json::Value> {
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v.get("method").is_some())
            .collect()
    }

    /// The raw request log, with the backend's stderr lines, and the server's stderr.
    pub fn log(&self) -> String {
        format!(
            "{}{}",
            fs::read_to_string(&self.log).unwrap_or_default(),
            fs::read_to_string(&self.stderr).unwrap_or_default()
        )
    }
}

impl Drop for GitHttpServer {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// `git daemon` serving every repository under a root over `git://127.0.0.1:PORT/`.
pub struct GitDaemon {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: TempDir,
}

impl GitDaemon {
    /// Starts it and waits until its port accepts connections.
    pub fn start(root: &Path) -> GitDaemon {
        let dir = tempfile::Builder::new()
            .prefix("fnbuild-git-daemon-")
            .tempdir()
            .unwrap();
        let log = dir.path().join("daemon.log");
        let program =
            Path::new(&git_in(dir.path(), dir.path(), &["--exec-path"])).join("git-daemon");
        for attempt in 1..=5 {
            let port = free_port();
            // `git daemon` would run git-daemon as a child and not pass on a kill: run it.
            let mut child = Command::new(&program)
                .arg("--export-all")
                .arg(format!("--base-path={}", root.display()))
                .arg("--listen=127.0.0.1")
                .arg(format!("--port={port}"))
                .arg("--reuseaddr")
                .arg("--informative-errors")
                .env("GIT_CONFIG_NOSYSTEM", "1")
                .env("HOME", dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(fs::File::create(&log).unwrap())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "starting {}: {e} (run `bash tests/setup.sh`)",
                        program.display()
                    )
                });
            if wait_port(&mut child, port, START_TIMEOUT) {
                return GitDaemon {
                    child,
                    port,
                    log,
                    _dir: dir,
                };
            }
            kill(&mut child);
            let text = fs::read_to_string(&log).unwrap_or_default();
            if attempt == 5 || !text.contains("in use") {
                panic!("git daemon did not start (attempt {attempt}); its log:\n{text}");
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// `git://127.0.0.1:PORT/<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("git://127.0.0.1:{}/{path}", self.port)
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// OpenSSH's `sshd` on 127.0.0.1 and a free port, with a host key made for it, letting root
/// in with one test key (ed25519, no passphrase), which runs `git-upload-pack` like any
/// Git server over SSH. Its own config only: nothing of `/etc/ssh` is read.
pub struct SshServer {
    child: Child,
    port: u16,
    /// The private key the server accepts.
    pub client_key: PathBuf,
    /// A private key the server does not accept.
    pub wrong_key: PathBuf,
    /// A known_hosts file holding `[127.0.0.1]:PORT <type> <key>` of the server.
    pub known_hosts: PathBuf,
    /// The server's host key line (`<type> <base64>`).
    pub host_key_line: String,
    log: PathBuf,
    dir: TempDir,
}

/// Where Debian's OpenSSH server is.
pub const SSHD: &str = "/usr/sbin/sshd";

impl SshServer {
    /// Starts sshd; panics, saying how to get it, when it is not installed.
    pub fn start() -> SshServer {
        if !Path::new(SSHD).is_file() {
            panic!("{SSHD} is missing: install openssh-server (apt-get install openssh-server)");
        }
        // Debian's sshd needs its privilege separation directory.
        fs::create_dir_all("/run/sshd").expect("creating /run/sshd for sshd");
        let dir = tempfile::Builder::new()
            .prefix("fnbuild-sshd-")
            .tempdir()
            .unwrap();
        let keygen = |name: &str| -> PathBuf {
            let path = dir.path().join(name);
            let out = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
                .arg(&path)
                .stdin(Stdio::null())
                .output()
                .unwrap_or_else(|e| panic!("running ssh-keygen: {e} (install openssh-client)"));
            assert!(
                out.status.success(),
                "ssh-keygen failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            path
        };
        let host_key = keygen("host_key");
        let client_key = keygen("client_key");
        let wrong_key = keygen("wrong_key");
        let authorized_keys = dir.path().join("authorized_keys");
        fs::copy(client_key.with_extension("pub"), &authorized_keys).unwrap();
        let host_pub = fs::read_to_string(host_key.with_extension("pub")).unwrap();
        let host_key_line = host_pub
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        let log = dir.path().join("sshd.log");
        let config = dir.path().join("sshd_config");
        for attempt in 1..=5 {
            let port = free_port();
            fs::write(
                &config,
                format!(
                    "Port {port}\n\
                     ListenAddress 127.0.0.1\n\
                     HostKey {host_key}\n\
                     AuthorizedKeysFile {authorized_keys}\n\
                     StrictModes no\n\
                     UsePAM no\n\
                     PasswordAuthentication no\n\
                     KbdInteractiveAuthentication no\n\
                     PubkeyAuthentication yes\n\
                     PermitRootLogin prohibit-password\n\
                     PidFile none\n\
                     LogLevel VERBOSE\n",
                    host_key = host_key.display(),
                    authorized_keys = authorized_keys.display(),
                ),
            )
            .unwrap();
            let mut child = Command::new(SSHD)
                .arg("-D")
                .arg("-e")
                .arg("-f")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(fs::File::create(&log).unwrap())
                .spawn()
                .unwrap_or_else(|e| panic!("starting {SSHD}: {e}"));
            if wait_port(&mut child, port, START_TIMEOUT) {
                let known_hosts = dir.path().join("known_hosts");
                fs::write(
                    &known_hosts,
                    format!("[127.0.0.1]:{port} {host_key_line}\n"),
                )
                .unwrap();
                return SshServer {
                    child,
                    port,
                    client_key,
                    wrong_key,
                    known_hosts,
                    host_key_line,
                    log,
                    dir,
                };
            }
            kill(&mut child);
            let text = fs::read_to_string(&log).unwrap_or_default();
            if attempt == 5 || !text.contains("in use") {
                panic!("sshd did not start (attempt {attempt}); its log:\n{text}");
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `ssh://root@127.0.0.1:PORT<absolute path>`.
    pub fn url(&self, path: &Path) -> String {
        format!("ssh://root@127.0.0.1:{}{}", self.port, path.display())
    }

    /// Writes a file in the server's temporary directory; returns its path.
    pub fn write_file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        fs::write(&path, text).unwrap();
        path
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for SshServer {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}
