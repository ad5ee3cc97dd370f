//! Functions built from Git: `--source git+file://`, `git://` (git daemon), `git+http://`
//! (smart HTTP with basic auth, `git http-backend`) and `git+ssh://` (OpenSSH's sshd), at a
//! branch, a tag or a commit, from a sub-directory, with submodules, with credentials from
//! where clusters mount them. Every build writes an OCI layout (the python base image read
//! from a layout too), which is then read back: the manifest's annotations and the config's
//! labels name the source and the commit, and the code layer (the last one) holds exactly the files taken.
//!
//! Servers and the fixture repository: `tests/common/git_server.rs`.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::free_port;
use common::functions::{base_layout, files_holding, function_dir, success, PYTHON};
use common::git_server::{hello_py, GitDaemon, GitFixture, GitHttpServer, SshServer, LIB_UTIL_PY};
use tempfile::TempDir;

const REVISION: &str = "org.opencontainers.image.revision";
const SOURCE: &str = "org.opencontainers.image.source";

/// The HTTP server's user and password. The password is long and odd enough that finding
/// it anywhere means it leaked.
const USER: &str = "ci-bot";
const PASSWORD: &str = "pw-Zq7x-Kd93-Lm0P-secret";
const WRONG_PASSWORD: &str = "pw-WRONG-Tt51-guess";

/// One `fnbuild build` run, into an OCI layout of its own, with a cache and a `$HOME` of
/// its own (empty unless the test fills it).
struct Build {
    code: i32,
    stdout: String,
    stderr: String,
    out: TempDir,
    cache: TempDir,
    _home: TempDir,
}

impl Build {
    /// Where the image was to be written (`oci:<layout>:fn`).
    fn layout(&self) -> PathBuf {
        self.out.path().join("layout")
    }

    /// Asserts success; returns the image.
    fn image(&self) -> Image {
        assert_eq!(
            self.code, 0,
            "the build failed ({}):\n{}",
            self.code, self.stderr
        );
        Image::read(&self.layout())
    }

    /// Asserts the build failed with `code`, saying each of `needles`, writing nothing to
    /// its output; returns stderr.
    fn failed(&self, code: i32, needles: &[&str]) -> &str {
        assert_eq!(
            self.code, code,
            "expected exit code {code}; stdout: {}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        for needle in needles {
            assert!(
                self.stderr.contains(needle),
                "the message should say {needle:?}:\n{}",
                self.stderr
            );
        }
        assert!(
            !self.layout().exists(),
            "a failed build wrote to its output layout:\n{}",
            self.stderr
        );
        assert!(self.stdout.trim().is_empty(), "stdout: {}", self.stdout);
        &self.stderr
    }

    /// What the build printed, both streams.
    fn output(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

/// `fnbuild build --runtime python3.13 [--handler hello.handler] ARGS --base-image oci:...
/// --output oci:<temp>:fn --cache-dir <temp>`, with `$HOME` an empty temporary directory
/// and none of fnbuild's or Git's credential variables, then `env` on top.
fn build(args: &[&str], env: &[(&str, &str)]) -> Build {
    let out = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let mut cmd = common::fnbuild();
    cmd.args(["build", "--runtime", PYTHON]);
    if !args.contains(&"--handler") {
        cmd.args(["--handler", "hello.handler"]);
    }
    cmd.args(args)
        .arg("--base-image")
        .arg(format!("oci:{}", base_layout(PYTHON).display()))
        .arg("--output")
        .arg(format!("oci:{}:fn", out.path().join("layout").display()))
        .arg("--cache-dir")
        .arg(cache.path());
    for var in [
        "FNBUILD_GIT_TOKEN",
        "FNBUILD_GIT_USERNAME",
        "FNBUILD_LOG",
        "FNBUILD_LOG_FORMAT",
        "XDG_CONFIG_HOME",
        "DOCKER_CONFIG",
        "SSH_AUTH_SOCK",
        "SOURCE_DATE_EPOCH",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("HOME", home.path()).env("NO_COLOR", "1");
    for (key, value) in env {
        cmd.env(key, value);
    }
    let output = cmd.stdin(Stdio::null()).output().unwrap();
    Build {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        out,
        cache,
        _home: home,
    }
}

/// An image read back from an OCI layout holding one manifest.
struct Image {
    layout: PathBuf,
    manifest: serde_json::Value,
    config: serde_json::Value,
}

impl Image {
    fn read(layout: &Path) -> Image {
        let index: serde_json::Value =
            serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
        let manifests = index["manifests"].as_array().unwrap();
        assert_eq!(manifests.len(), 1, "{index}");
        let digest = manifests[0]["digest"].as_str().unwrap();
        let manifest: serde_json::Value =
            serde_json::from_slice(&fs::read(blob_path(layout, digest)).unwrap())
                .unwrap_or_else(|e| panic!("the manifest {digest} is not JSON: {e}"));
        let config_digest = manifest["config"]["digest"].as_str().unwrap();
        let config = serde_json::from_slice(&fs::read(blob_path(layout, config_digest)).unwrap())
            .unwrap_or_else(|e| panic!("the config {config_digest} is not JSON: {e}"));
        Image {
            layout: layout.to_path_buf(),
            manifest,
            config,
        }
    }

    /// What the image records of its source under `key`: the manifest's annotation, which
    /// must equal the config's label of the same name (what `skopeo inspect`, `docker
    /// inspect`, GHCR and Harbor show).
    fn recorded(&self, key: &str) -> Option<&str> {
        let annotation = self.manifest["annotations"][key].as_str();
        assert_eq!(
            self.config["config"]["Labels"][key].as_str(),
            annotation,
            "the config label {key} differs from the annotation"
        );
        annotation
    }

    /// The code layer's digest: the last layer.
    fn code_layer(&self) -> String {
        self.manifest["layers"].as_array().unwrap().last().unwrap()["digest"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// The code layer's entries: path (no leading `/` or `./`, no trailing `/`) to the
    /// contents of a regular file, or None for anything else.
    fn code_entries(&self) -> BTreeMap<String, Option<String>> {
        let gz = fs::read(blob_path(&self.layout, &self.code_layer())).unwrap();
        let mut archive = tar::Archive::new(flate2::read::MultiGzDecoder::new(gz.as_slice()));
        let mut entries = BTreeMap::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let path = path
                .trim_start_matches("./")
                .trim_start_matches('/')
                .trim_end_matches('/')
                .to_string();
            let contents = if entry.header().entry_type().is_file() {
                let mut text = String::new();
                entry.read_to_string(&mut text).unwrap();
                Some(text)
            } else {
                None
            };
            entries.insert(path, contents);
        }
        entries
    }

    /// The regular files of the code layer with their contents.
    fn code_files(&self) -> BTreeMap<String, String> {
        self.code_entries()
            .into_iter()
            .filter_map(|(path, contents)| contents.map(|c| (path, c)))
            .collect()
    }

    /// Asserts the code layer's files are exactly `expected`, and that no `.git` is among
    /// its entries.
    fn assert_code(&self, expected: &[(&str, &str)], what: &str) {
        let expected: BTreeMap<String, String> = expected
            .iter()
            .map(|(p, c)| (p.to_string(), c.to_string()))
            .collect();
        let entries = self.code_entries();
        let git: Vec<&String> = entries
            .keys()
            .filter(|p| p.split('/').any(|part| part == ".git"))
            .collect();
        assert!(
            git.is_empty(),
            "{what}: Git metadata in the code layer: {git:?}"
        );
        assert_eq!(
            self.code_files(),
            expected,
            "{what}: the code layer's files"
        );
    }
}

fn blob_path(layout: &Path, digest: &str) -> PathBuf {
    layout
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

/// Asserts that no output, log, cache file or layout file of `builds` holds `secret`.
fn assert_secret_absent(builds: &[&Build], secret: &str) {
    for build in builds {
        assert!(
            !build.output().contains(secret),
            "the secret is in fnbuild's output:\n{}",
            build.output()
        );
        for dir in [build.cache.path(), build.out.path()] {
            let found = files_holding(dir, &[secret]);
            assert!(found.is_empty(), "the secret is in {found:?}");
        }
    }
}

/// A `$HOME` holding `files` (path relative to it, text).
fn home_with(files: &[(&str, &str)]) -> TempDir {
    function_dir(files)
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

// --- revisions, sub-directories, what is taken ---------------------------------------------

#[test]
fn every_kind_of_revision_builds_the_commit_it_names_from_the_sub_directory() {
    let repo = GitFixture::new();
    let source = format!("git+{}", repo.file_url());
    let check = |build: &Build, commit: &str, label: &str, what: &str| {
        let image = build.image();
        assert_eq!(image.recorded(REVISION), Some(commit), "{what}");
        assert_eq!(
            image.recorded(SOURCE),
            Some(repo.file_url().as_str()),
            "{what}"
        );
        image.assert_code(&[("kubeless/hello.py", &hello_py(label))], what);
        assert!(
            build.stderr.contains("fetched the Git revision")
                && build.stderr.contains(&format!("commit={commit}")),
            "{what}: the log should name the commit:\n{}",
            build.stderr
        );
    };

    // No revision: the repository's HEAD branch, main.
    check(
        &build(&["--source", &source, "--sub-dir", "fn"], &[]),
        &repo.main,
        "main",
        "default revision",
    );
    check(
        &build(
            &["--git-url", &repo.file_url(), "--context-sub-path", "fn"],
            &[],
        ),
        &repo.main,
        "main",
        "--git-url without a revision",
    );

    let cases: Vec<(&str, String, &str, &str)> = vec![
        ("branch", "develop".into(), &repo.develop, "develop"),
        (
            "branch by its ref name",
            "refs/heads/develop".into(),
            &repo.develop,
            "develop",
        ),
        ("annotated tag", "v1.0".into(), &repo.tagged, "v1.0"),
        ("lightweight tag", "light".into(), &repo.first, "first"),
        (
            "full SHA of the first commit",
            repo.first.clone(),
            &repo.first,
            "first",
        ),
        (
            "short SHA of the first commit (tagged light)",
            repo.first[..7].into(),
            &repo.first,
            "first",
        ),
        (
            "short SHA of a branch tip",
            repo.develop[..10].into(),
            &repo.develop,
            "develop",
        ),
        (
            "full SHA of a commit no ref names",
            repo.middle.clone(),
            &repo.middle,
            "middle",
        ),
    ];
    for (what, revision, commit, label) in &cases {
        check(
            &build(
                &[
                    "--source",
                    &format!("{source}#{revision}"),
                    "--sub-dir",
                    "fn",
                ],
                &[],
            ),
            commit,
            label,
            &format!("{what}, as #{revision}"),
        );
        check(
            &build(
                &[
                    "--source",
                    &source,
                    "--git-revision",
                    revision,
                    "--git-sub-dir",
                    "fn",
                ],
                &[],
            ),
            commit,
            label,
            &format!("{what}, as --git-revision {revision}"),
        );
    }
    // The annotated tag's revision is its commit, not the tag object.
    assert_ne!(repo.tag_object, repo.tagged);
}

#[test]
fn without_a_sub_directory_the_whole_tree_is_taken_without_git_metadata() {
    let repo = GitFixture::new();
    let b = build(
        &[
            "--source",
            &format!("git+{}#develop", repo.file_url()),
            "--handler",
            "app.handler",
        ],
        &[],
    );
    let image = b.image();
    assert_eq!(image.recorded(REVISION), Some(repo.develop.as_str()));
    image.assert_code(
        &[
            ("kubeless/README.md", "# The fixture function\n"),
            (
                "kubeless/app.py",
                "def handler(event, context):\n    return 'top'\n",
            ),
            ("kubeless/docs/guide.md", "Call it.\n"),
            ("kubeless/fn/hello.py", &hello_py("develop")),
        ],
        "the whole tree",
    );
}

/// `--source-url` and `--source-revision` record where a checkout another step made came from
/// (git-clone's `url` and `commit` in a Tekton Pipeline): for a directory, which records
/// nothing by itself, and in place of what a Git fetch found; an empty one is not given. A
/// given URL is recorded without its credentials and query string, and `skopeo inspect`
/// shows both as labels.
#[test]
fn source_url_and_revision_flags_replace_what_the_fetch_recorded() {
    let repo = GitFixture::new();
    let url = "https://git.example.com/team/fn.git";
    let url_with_secrets = format!("https://{USER}:{PASSWORD}@git.example.com/team/fn.git?t=1");
    let dir = function_dir(&[("hello.py", &hello_py("dir"))]);
    let plain = build(&["--source", path_str(dir.path())], &[]).image();
    assert_eq!(
        (plain.recorded(SOURCE), plain.recorded(REVISION)),
        (None, None)
    );
    let told = build(
        &[
            "--source",
            path_str(dir.path()),
            "--source-url",
            &url_with_secrets,
            "--source-revision",
            &repo.main,
        ],
        &[],
    );
    assert_eq!(
        (
            told.image().recorded(SOURCE),
            told.image().recorded(REVISION)
        ),
        (Some(url), Some(repo.main.as_str()))
    );
    let inspected = success(
        std::process::Command::new("skopeo")
            .arg("inspect")
            .arg(format!("oci:{}:fn", told.layout().display())),
    );
    let labels = &serde_json::from_slice::<serde_json::Value>(&inspected.stdout).unwrap()["Labels"];
    assert_eq!(
        (labels[SOURCE].as_str(), labels[REVISION].as_str()),
        (Some(url), Some(repo.main.as_str())),
        "skopeo inspect: {labels}"
    );
    assert_secret_absent(&[&told], PASSWORD);
    let git = build(
        &[
            "--source",
            &format!("git+{}#develop", repo.file_url()),
            "--sub-dir",
            "fn",
            "--source-url",
            url,
            "--source-revision",
            "",
        ],
        &[],
    )
    .image();
    assert_eq!(
        (git.recorded(SOURCE), git.recorded(REVISION)),
        (Some(url), Some(repo.develop.as_str()))
    );
}

// --- smart HTTP and credentials ---------------------------------------------------------------

#[test]
fn smart_http_builds_with_credentials_from_git_credentials_gitconfig_or_a_token() {
    let repo = GitFixture::new();
    let server = GitHttpServer::start(&repo.root, USER, PASSWORD);
    let url = server.url("fn.git");
    let source = format!("git+{url}");
    let stored = format!("http://{USER}:{PASSWORD}@{}\n", server.host());

    // Knative's creds-init and Tekton: $HOME/.git-credentials, next to credentials of
    // another host.
    let home = home_with(&[(
        ".git-credentials",
        &format!("https://someone:not-this-one@git.example.com\n{stored}"),
    )]);
    let from_store = build(
        &["--source", &source, "--sub-dir", "fn"],
        &[("HOME", path_str(home.path()))],
    );
    // A .gitconfig naming the store helper with a file elsewhere.
    let elsewhere = tempfile::tempdir().unwrap();
    let creds_file = elsewhere.path().join("git-creds");
    fs::write(&creds_file, &stored).unwrap();
    let home_config = home_with(&[(
        ".gitconfig",
        &format!(
            "[user]\n\tname = x\n[credential]\n\thelper = store --file {}\n",
            creds_file.display()
        ),
    )]);
    let from_config = build(
        &["--source", &source, "--sub-dir", "fn"],
        &[("HOME", path_str(home_config.path()))],
    );
    // A token in the environment, with its user name; --git-url takes http:// as Git.
    let from_token = build(
        &["--git-url", &url, "--sub-dir", "fn"],
        &[
            ("FNBUILD_GIT_TOKEN", PASSWORD),
            ("FNBUILD_GIT_USERNAME", USER),
        ],
    );
    // Credentials in the URL itself: used, and recorded nowhere.
    let from_url = build(
        &[
            "--source",
            &format!("git+http://{USER}:{PASSWORD}@{}/fn.git", server.host()),
            "--sub-dir",
            "fn",
        ],
        &[],
    );

    let builds = [
        ("~/.git-credentials", &from_store),
        (".gitconfig helper = store --file", &from_config),
        ("FNBUILD_GIT_TOKEN", &from_token),
        ("credentials in the URL", &from_url),
    ];
    for (what, b) in &builds {
        assert_eq!(b.code, 0, "{what}: {}\nserver:\n{}", b.stderr, server.log());
        let image = b.image();
        assert_eq!(image.recorded(REVISION), Some(repo.main.as_str()), "{what}");
        assert_eq!(image.recorded(SOURCE), Some(url.as_str()), "{what}");
        image.assert_code(&[("kubeless/hello.py", &hello_py("main"))], what);
    }
    let requests = server.requests();
    assert!(
        requests
            .iter()
            .any(|r| r["credentials_right"] == true && r["method"] == "POST"),
        "the server never served an authenticated fetch: {requests:?}"
    );
    assert_secret_absent(&builds.map(|(_, b)| b), PASSWORD);
}

#[test]
fn smart_http_with_wrong_or_no_credentials_fails_saying_so_without_the_password() {
    let repo = GitFixture::new();
    let server = GitHttpServer::start(&repo.root, USER, PASSWORD);
    let source = format!("git+{}", server.url("fn.git"));
    let args = [
        "--source",
        source.as_str(),
        "--sub-dir",
        "fn",
        "--log-level",
        "debug",
    ];

    let home = home_with(&[(
        ".git-credentials",
        &format!("http://{USER}:{WRONG_PASSWORD}@{}\n", server.host()),
    )]);
    let wrong_stored = build(&args, &[("HOME", path_str(home.path()))]);
    wrong_stored.failed(1, &["authentication failed", USER, ".git-credentials"]);

    let wrong_token = build(
        &args,
        &[
            ("FNBUILD_GIT_TOKEN", WRONG_PASSWORD),
            ("FNBUILD_GIT_USERNAME", USER),
        ],
    );
    wrong_token.failed(1, &["authentication failed", "FNBUILD_GIT_TOKEN"]);

    let wrong_in_url = build(
        &[
            "--source",
            &format!(
                "git+http://{USER}:{WRONG_PASSWORD}@{}/fn.git",
                server.host()
            ),
            "--sub-dir",
            "fn",
            "--log-level",
            "debug",
        ],
        &[],
    );
    wrong_in_url.failed(1, &["authentication failed"]);

    // None at all: the message says where to put them.
    let none = build(&args, &[]);
    none.failed(
        1,
        &[
            "authentication failed",
            ".git-credentials",
            "FNBUILD_GIT_TOKEN",
        ],
    );

    // The wrong credentials did reach the server (the failure is the server's answer).
    let requests = server.requests();
    assert!(
        requests
            .iter()
            .any(|r| r["credentials_came"] == true && r["credentials_right"] == false),
        "{requests:?}"
    );
    assert!(
        requests.iter().all(|r| r["status"] == 401),
        "nothing may be served without the right credentials: {requests:?}"
    );
    let all = [&wrong_stored, &wrong_token, &wrong_in_url, &none];
    assert_secret_absent(&all, WRONG_PASSWORD);
    assert_secret_absent(&all, PASSWORD);
}

#[test]
fn smart_http_fetches_only_the_commit_it_builds() {
    let repo = GitFixture::new();
    let server = GitHttpServer::start(&repo.root, USER, PASSWORD);
    let token = [
        ("FNBUILD_GIT_TOKEN", PASSWORD),
        ("FNBUILD_GIT_USERNAME", USER),
    ];
    let source = format!("git+{}", server.url("fn.git"));
    for (revision, commit) in [("main", &repo.main), (repo.develop.as_str(), &repo.develop)] {
        let before = server.requests().len();
        let b = build(
            &[
                "--source",
                &source,
                "--git-revision",
                revision,
                "--sub-dir",
                "fn",
            ],
            &token,
        );
        assert_eq!(
            b.image().recorded(REVISION),
            Some(commit.as_str()),
            "{revision}"
        );
        let fetches: Vec<serde_json::Value> = server.requests()[before..]
            .iter()
            .filter(|r| r["method"] == "POST" && r["path"] == "/fn.git/git-upload-pack")
            .cloned()
            .collect();
        assert!(
            !fetches.is_empty(),
            "no upload-pack request: {}",
            server.log()
        );
        assert!(
            fetches.iter().all(|r| r["deepen"] == true),
            "{revision}: the fetch asked for the whole history (no `deepen`): {fetches:?}"
        );
        assert!(
            fetches.iter().all(|r| r["body_start"]
                .as_str()
                .unwrap()
                .contains(&format!("want {commit}"))),
            "{revision}: {fetches:?}"
        );
    }
}

#[test]
fn smart_http_builds_a_full_sha_that_no_branch_or_tag_names() {
    // `git http-backend` as it comes (uploadpack.allowReachableSHA1InWant unset) does not
    // serve a commit by SHA unless a ref points at it: fnbuild has to get it another way
    // (the history of the branches and tags), as `git fetch` users do.
    let repo = GitFixture::new();
    let server = GitHttpServer::start(&repo.root, USER, PASSWORD);
    let b = build(
        &[
            "--source",
            &format!("git+{}#{}", server.url("fn.git"), repo.middle),
            "--sub-dir",
            "fn",
        ],
        &[
            ("FNBUILD_GIT_TOKEN", PASSWORD),
            ("FNBUILD_GIT_USERNAME", USER),
        ],
    );
    let image = b.image();
    assert_eq!(image.recorded(REVISION), Some(repo.middle.as_str()));
    image.assert_code(&[("kubeless/hello.py", &hello_py("middle"))], "middle");
}

// --- git://, and one code layer from every source ------------------------------------------

#[test]
fn the_code_layer_depends_on_the_files_only_whatever_brought_them() {
    let repo = GitFixture::new();
    let daemon = GitDaemon::start(&repo.root);
    let server = GitHttpServer::start(&repo.root, USER, PASSWORD);
    let token = [
        ("FNBUILD_GIT_TOKEN", PASSWORD),
        ("FNBUILD_GIT_USERNAME", USER),
    ];
    let main_hello = hello_py("main");

    let over_git = build(&["--source", &daemon.url("fn.git"), "--sub-dir", "fn"], &[]);
    let image = over_git.image();
    assert_eq!(image.recorded(REVISION), Some(repo.main.as_str()));
    assert_eq!(image.recorded(SOURCE), Some(daemon.url("fn.git").as_str()));
    image.assert_code(&[("kubeless/hello.py", &main_hello)], "git://");

    let over_file = build(
        &[
            "--source",
            &format!("git+{}", repo.file_url()),
            "--sub-dir",
            "fn",
        ],
        &[],
    );
    let over_http = build(
        &[
            "--source",
            &format!("git+{}", server.url("fn.git")),
            "--sub-dir",
            "fn",
        ],
        &token,
    );
    // The same files as a directory, and as a .tar.gz.
    let dir = function_dir(&[("hello.py", &main_hello)]);
    let from_dir = build(&["--source", path_str(dir.path())], &[]);
    let tgz = repo.scratch().join("fn.tar.gz");
    {
        let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
            fs::File::create(&tgz).unwrap(),
            flate2::Compression::default(),
        ));
        let mut header = tar::Header::new_gnu();
        header.set_size(main_hello.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(1_700_000_000);
        header.set_cksum();
        tar.append_data(&mut header, "hello.py", main_hello.as_bytes())
            .unwrap();
        tar.into_inner().unwrap().finish().unwrap().flush().unwrap();
    }
    let from_tgz = build(&["--source", path_str(&tgz)], &[]);

    let expected = image.code_layer();
    for (what, b) in [
        ("git+file://", &over_file),
        ("git+http://", &over_http),
        ("a directory", &from_dir),
        ("a .tar.gz", &from_tgz),
    ] {
        assert_eq!(b.image().code_layer(), expected, "{what} vs git://");
    }
}

// --- errors --------------------------------------------------------------------------------

#[test]
fn a_missing_repository_is_reported_as_not_found_at_once() {
    let repo = GitFixture::new();
    let server = GitHttpServer::start(&repo.root, USER, PASSWORD);
    let daemon = GitDaemon::start(&repo.root);
    let token = [
        ("FNBUILD_GIT_TOKEN", PASSWORD),
        ("FNBUILD_GIT_USERNAME", USER),
    ];
    let missing_path = repo.root.join("nope.git");
    let cases = [
        (
            "HTTP 404",
            format!("git+{}", server.url("nope.git")),
            server.url("nope.git"),
        ),
        (
            "a path that does not exist",
            format!("git+file://{}", missing_path.display()),
            format!("file://{}", missing_path.display()),
        ),
        ("git daemon", daemon.url("nope.git"), daemon.url("nope.git")),
    ];
    for (what, source, shown) in &cases {
        let b = build(&["--source", source, "--sub-dir", "fn"], &token);
        let stderr = b.failed(1, &["repository not found", shown]);
        // Not found is not a transient failure: nothing to retry.
        assert!(
            !stderr.contains("retrying"),
            "{what}: a missing repository was retried:\n{stderr}"
        );
    }
}

#[test]
fn an_unknown_revision_lists_the_branches_and_tags_and_suggests_a_near_name() {
    let repo = GitFixture::new();
    let source = format!("git+{}", repo.file_url());
    let b = build(
        &["--source", &format!("{source}#mian"), "--sub-dir", "fn"],
        &[],
    );
    b.failed(
        1,
        &[
            "revision 'mian' not found",
            "did you mean 'main'",
            "develop",
            "v1.0",
            "light",
        ],
    );
    // A well-formed SHA of no commit in the repository: "not found", not a fetch error.
    let b = build(
        &[
            "--source",
            &source,
            "--git-revision",
            "0123456789abcdef0123456789abcdef01234567",
            "--sub-dir",
            "fn",
        ],
        &[],
    );
    b.failed(1, &["'0123456789abcdef0123456789abcdef01234567' not found"]);
}

#[test]
fn a_missing_sub_directory_lists_the_top_level_directories() {
    let repo = GitFixture::new();
    let source = format!("git+{}", repo.file_url());
    let b = build(&["--source", &source, "--sub-dir", "function"], &[]);
    b.failed(1, &["sub-directory 'function' not found", "docs, fn"]);
    // Outside the repository: a usage error.
    let b = build(&["--source", &source, "--sub-dir", "../repos"], &[]);
    b.failed(2, &["--sub-dir"]);
}

/// A refused connection ends the build after a few retries, not when a deadline passes:
/// with deadlines of an hour, the build fails naming the server and the refusal, having
/// retried at most twice.
#[test]
fn an_unreachable_server_fails_on_the_refused_connection_naming_it() {
    // Ports nothing listens on (free a moment ago).
    for source in [
        format!("git+http://127.0.0.1:{}/fn.git", free_port()),
        format!("git://127.0.0.1:{}/fn.git", free_port()),
    ] {
        let b = build(
            &[
                "--source",
                &source,
                "--sub-dir",
                "fn",
                "--fetch-timeout",
                "1h",
                "--fetch-idle-timeout",
                "1h",
            ],
            &[],
        );
        let shown = source.trim_start_matches("git+");
        let stderr = b.failed(1, &[shown, "connect"]);
        assert!(
            !stderr.contains("--fetch-timeout") && !stderr.contains("--fetch-idle-timeout"),
            "{source}: the build should fail on the refusal, not on a deadline:\n{stderr}"
        );
        let retries = stderr.matches("retrying in").count();
        assert!(retries <= 2, "{source}: retried {retries} times:\n{stderr}");
    }
}

#[test]
fn conflicting_or_misplaced_git_flags_are_usage_errors() {
    let repo = GitFixture::new();
    let source = format!("git+{}", repo.file_url());
    build(
        &[
            "--source",
            &format!("{source}#main"),
            "--git-revision",
            "develop",
        ],
        &[],
    )
    .failed(2, &["'main'", "'develop'"]);
    let dir = function_dir(&[("hello.py", &hello_py("dir"))]);
    build(
        &["--source", path_str(dir.path()), "--git-revision", "main"],
        &[],
    )
    .failed(2, &["--git-revision"]);
    build(&["--source", path_str(dir.path()), "--git-submodules"], &[])
        .failed(2, &["--git-submodules"]);
}

#[test]
fn source_limits_apply_to_the_checked_out_tree() {
    let repo = GitFixture::new();
    let source = format!("git+{}", repo.file_url());
    build(
        &[
            "--source",
            &source,
            "--sub-dir",
            "fn",
            "--max-source-files",
            "2",
        ],
        &[],
    )
    .failed(1, &["--max-source-files"]);
    build(
        &[
            "--source",
            &source,
            "--sub-dir",
            "fn",
            "--max-source-size",
            "10",
        ],
        &[],
    )
    .failed(1, &["--max-source-size"]);
    // Within the limits, the same build works.
    build(
        &[
            "--source",
            &source,
            "--sub-dir",
            "fn",
            "--max-source-files",
            "50",
        ],
        &[],
    )
    .image();
}

// --- submodules ----------------------------------------------------------------------------

#[test]
fn submodules_are_taken_only_when_asked() {
    let repo = GitFixture::with_submodule();
    let source = format!("git+{}", repo.file_url());
    let with = build(
        &["--source", &source, "--sub-dir", "fn", "--git-submodules"],
        &[],
    );
    let image = with.image();
    assert_eq!(image.recorded(REVISION), Some(repo.main.as_str()));
    image.assert_code(
        &[
            ("kubeless/hello.py", &hello_py("main")),
            ("kubeless/lib/util.py", LIB_UTIL_PY),
        ],
        "with --git-submodules",
    );

    let without = build(&["--source", &source, "--sub-dir", "fn"], &[]);
    let image = without.image();
    assert_eq!(image.recorded(REVISION), Some(repo.main.as_str()));
    image.assert_code(
        &[("kubeless/hello.py", &hello_py("main"))],
        "without --git-submodules",
    );
}

// --- SSH -----------------------------------------------------------------------------------

#[test]
fn ssh_builds_with_a_key_and_known_hosts_from_flags_or_from_home() {
    let repo = GitFixture::new();
    let sshd = SshServer::start();
    let source = format!("git+{}", sshd.url(&repo.repo));
    let check = |b: &Build, what: &str| {
        assert_eq!(b.code, 0, "{what}: {}\nsshd:\n{}", b.stderr, sshd.log());
        let image = b.image();
        assert_eq!(image.recorded(REVISION), Some(repo.main.as_str()), "{what}");
        assert_eq!(
            image.recorded(SOURCE),
            Some(format!("ssh://127.0.0.1:{}{}", sshd.port(), repo.repo.display()).as_str()),
            "{what}: recorded without the user"
        );
        image.assert_code(&[("kubeless/hello.py", &hello_py("main"))], what);
    };
    check(
        &build(
            &[
                "--source",
                &source,
                "--sub-dir",
                "fn",
                "--git-ssh-key",
                path_str(&sshd.client_key),
                "--git-known-hosts",
                path_str(&sshd.known_hosts),
            ],
            &[],
        ),
        "--git-ssh-key and --git-known-hosts",
    );
    // Where creds-init puts them: ~/.ssh/id_* and ~/.ssh/known_hosts.
    let home = home_with(&[
        (
            ".ssh/id_ed25519",
            &fs::read_to_string(&sshd.client_key).unwrap(),
        ),
        (
            ".ssh/known_hosts",
            &fs::read_to_string(&sshd.known_hosts).unwrap(),
        ),
    ]);
    check(
        &build(
            &["--source", &source, "--sub-dir", "fn"],
            &[("HOME", path_str(home.path()))],
        ),
        "~/.ssh",
    );
}

#[test]
fn ssh_host_keys_are_checked_unless_told_not_to() {
    let repo = GitFixture::new();
    let sshd = SshServer::start();
    let source = format!("git+{}", sshd.url(&repo.repo));
    let key = path_str(&sshd.client_key).to_string();
    let args = |known_hosts: &Path| -> Vec<String> {
        [
            "--source",
            &source,
            "--sub-dir",
            "fn",
            "--git-ssh-key",
            &key,
            "--git-known-hosts",
            path_str(known_hosts),
        ]
        .map(str::to_string)
        .to_vec()
    };
    let run = |args: &[String]| build(&args.iter().map(String::as_str).collect::<Vec<_>>(), &[]);

    let empty = sshd.write_file("empty_known_hosts", "");
    run(&args(&empty)).failed(1, &["host key unknown", "--git-known-hosts"]);

    // Another key listed for this host and port: a possible impersonation.
    let other = fs::read_to_string(sshd.wrong_key.with_extension("pub")).unwrap();
    let other: Vec<&str> = other.split_whitespace().take(2).collect();
    let mismatch = sshd.write_file(
        "mismatch_known_hosts",
        &format!("[127.0.0.1]:{} {}\n", sshd.port(), other.join(" ")),
    );
    run(&args(&mismatch)).failed(1, &["host key mismatch"]);

    let mut skip = args(&empty);
    skip.push("--git-insecure-skip-host-key-check".into());
    let b = run(&skip);
    assert_eq!(b.code, 0, "{}", b.stderr);
    assert!(
        b.stderr.contains("WARN") && b.stderr.contains("host key checking is off"),
        "no warning about the skipped check:\n{}",
        b.stderr
    );
    assert_eq!(b.image().recorded(REVISION), Some(repo.main.as_str()));
}

#[test]
fn ssh_with_a_key_the_server_does_not_accept_fails_saying_so() {
    let repo = GitFixture::new();
    let sshd = SshServer::start();
    let b = build(
        &[
            "--source",
            &format!("git+{}", sshd.url(&repo.repo)),
            "--sub-dir",
            "fn",
            "--git-ssh-key",
            path_str(&sshd.wrong_key),
            "--git-insecure-skip-host-key-check",
        ],
        &[],
    );
    let stderr = b.failed(1, &[]);
    assert!(
        stderr.contains("authentication failed")
            || stderr.contains("accepted none of the SSH keys"),
        "the message should say the key was refused:\n{stderr}"
    );
    // No key at all: says how to give one.
    let b = build(
        &[
            "--source",
            &format!("git+{}", sshd.url(&repo.repo)),
            "--sub-dir",
            "fn",
            "--git-insecure-skip-host-key-check",
        ],
        &[],
    );
    b.failed(1, &["--git-ssh-key"]);
}
