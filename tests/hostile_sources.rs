//! The hostile-source corpus: function sources written by an attacker, each built with
//! `fnbuild build` and each either refused with a message saying why, or built with what is
//! hostile in it contained. Nothing of the machine the build runs on may reach a message, a
//! layer or a file outside the build's own directories.
//!
//! Canaries prove it. Each test plants a file readable by anyone at a fixed absolute path
//! outside every workspace (`$TMPDIR/fnbuild-canary-<random>/secret.txt`, holding
//! `CANARY-FILE-<random>`), and gives every fnbuild process `FNBUILD_TEST_CANARY=CANARY-ENV-<random>`
//! and `PIP_INDEX_URL=http://canary:CANARY-PW-<random>@127.0.0.1:9/simple` (no build here
//! installs Python dependencies, so that index is never asked). After every case: no canary
//! string in its stdout or stderr, the canary directory as it was, and nothing new beside the
//! cache in the cache's parent directory. A refused case exits with 1 (2 is for usage errors
//! only), says the message fragment listed below, and leaves no tag in the registry (builds
//! push to `<registry>/hostile/<case>:t`). At the end of each test, every blob of its registry
//! (gzip layers decompressed, base-image blobs skipped) is searched for the canaries.
//!
//! ## Archives, each from a local file, stdin (`--source -`), an http URL and an S3 object
//! Every one holds a valid `hello.py` too, so that what is hostile is the only thing wrong.
//! "the chain" is `d/up -> ..` followed by 16 `d/up/` pairs and 16 `../` (lexically inside,
//! physically at the host's `/` from any workspace up to 16 levels deep).
//! - `chain` (.tar): `esc -> <chain>/<canary file>`: refused by the check of every link once
//!   all are in place, "link 'esc' points to '<chain>...', outside the function's directory".
//! - `chain-hardlink` (.tar.bz2): `esc -> <chain>/<canary dir>`, hard link
//!   `stolen -> esc/secret.txt`: "hard link 'stolen' refers to 'esc/secret.txt', which leads
//!   outside the function's directory".
//! - `proc-environ` (.tgz): `p -> <chain>/proc/self`, hard link `env -> p/environ`: "hard link
//!   'env' refers to 'p/environ', which leads outside the function's directory".
//! - `absolute-link` (.tar.xz): `leak -> <canary file>`: "link 'leak' points to '<canary
//!   file>', outside the function's directory".
//! - `dot-dot` (.tar): an entry `../../../../../../escaped-<random>.py`: "would land outside the
//!   function's directory"; no such file anywhere.
//! - `write-through` (.tar): `w -> <chain>/<canary dir>`, then an entry `w/owned.txt`:
//!   "archives may not write through links"; the canary directory gains nothing.
//! - `zip-chain` (.zip, symlinks as unix mode 0o120777 with the target as content): the chain
//!   to the canary file: "link 'esc' points to ..., outside the function's directory"; from
//!   stdin: "is a zip archive; a stream must be a tar".
//! - `gzip-crc` (.tar.gz, one byte of the gzip trailer's CRC flipped): "is corrupt".
//! - `xz-truncated` (.tar.xz without its 12-byte stream footer; the tar inside is whole):
//!   "is corrupt".
//! - `gzip-bomb` (.tar.gz of 64 KiB holding 64 MiB of zeros), `--max-source-size 8388608`:
//!   "unpacks to more than 8388608 bytes". The flag takes a number of bytes: `8MiB` is a usage
//!   error (exit 2).
//! - `long-name` (.tar, a GNU long-name header of 2 MiB): "between two entries".
//!
//! ## S3 prefix
//! - `s3://hostile-prefix/fn/` holding `fn/hello.py` and `fn/../../escape.py` (moto keeps the
//!   key as it is given): "object key 'fn/../../escape.py' would land outside the function's
//!   directory".
//!
//! ## Contained archive
//! - a tar holding `hello.py`, a character device `null` (1, 3), a FIFO `pipe`, and links
//!   `link.py -> hello.py`, `lib/up.py -> ../hello.py` (from a file and from stdin): builds,
//!   with a "skipping special file" warning; the code layer holds `hello.py` and both links,
//!   and no device or FIFO.
//!
//! ## Git repositories (`git+file://`) and the same files as a local directory
//! - `deps-link`: `requirements.txt -> <canary file>`: "the dependencies file
//!   'requirements.txt' is a link that leads outside the function's source".
//! - `handler-link`: `hello.py -> <canary file>`: "the handler module 'hello.py' is a link that
//!   leads outside the function's source".
//! - `lock-link`, `npmrc-link` (Node.js): `package-lock.json` / `.npmrc` -> the canary file:
//!   "the lock file 'package-lock.json' ..." / "npm's project settings file '.npmrc' is a link
//!   that leads outside the function's source".
//! - `subdir-link`: `--sub-dir fn`, `fn -> <canary dir>`: "sub-directory 'fn' of ... is a link
//!   that leads outside the source".
//! - `links-kept`: `hello.py` with `leak -> <canary file>`, `root -> /`,
//!   `environ -> /proc/self/environ`, `d/up -> ..`: builds; the code layer holds the four as
//!   links with their targets exactly as given (`/` stays `/`), and no file but `hello.py`.
//! - local directory only: `deps-fifo` (`requirements.txt` a FIFO) and `handler-dir`
//!   (`hello.py` a directory): "is not a regular file", and the build ends (a watchdog kills
//!   it after 120 s and fails the test).
//!
//! ## Git submodules of a repository served over the network (`git://`, `--git-submodules`)
//! - `.gitmodules` naming a repository of the build machine as `lib`, by path, by `file://`
//!   URL, and by enough `../` to climb out of the served URL: "submodule 'lib' of ...
//!   submodules of a remote repository must be remote too"; nothing of it is fetched.
//!
//! ## Python that does not compile (with the runtime's Python 3.13, from the base image)
//! - a missing colon: "hello.py does not compile with the runtime's Python 3.13: line 1".
//! - 200000 nested parentheses after the handler: "hello.py does not compile with the
//!   runtime's Python 3.13: line 4: too many nested parentheses", never a crash or a hang,
//!   and without the 400 KB line in the message.
//!
//! ## A dependency's install script (Node.js)
//! - `evil-1.0.0.tgz`, served by the test and named by URL in `package.json`, runs
//!   `node steal.js` as its npm "install" script. It tries the canary file, the canary
//!   through `/proc/1/root`, `/proc/1/environ`, every `/proc/<pid>/environ` and `cmdline`,
//!   `process.env`, `/etc/shadow` and host disks, and writes what it got into `report.json`,
//!   which lands in the deps layer. The build succeeds; the report shows uid 65534, a handful
//!   of processes, no host disk, nothing of the canaries, and no `FNBUILD_TEST_CANARY` or
//!   `PIP_INDEX_URL` in its environment.
//!
//! Slow, stalled and trickling servers (http, Git, S3) are in `tests/fetch_deadlines.rs`.
//! No assertion is about time: a watchdog kills a build that outlives its bound and fails.

mod common;

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::functions::{base_layout, files_holding, registry_with_bases, NODEJS, PYTHON};
use common::git_server::GitDaemon;
use common::hostile::{evil_npm_package, FileServer};
use common::s3_server::{isolate_aws_env, S3Server, S3Setup};
use common::{gzip, tar_of, walk, Registry};

const HELLO_PY: &str = "def handler(event, context):\n    return 'hello'\n";
const HELLO_JS: &str = "module.exports = { handler() { return 'hello'; } };\n";
const PACKAGE_JSON: &str = r#"{"name":"fn","version":"1.0.0","dependencies":{"left-pad":"1.3.0"}}"#;
/// The tag every build pushes.
const TAG: &str = "t";
/// How long a build that should be refused may run before the test kills it and fails.
const WATCHDOG: Duration = Duration::from_secs(120);
/// How long a build that should succeed may run (it may unpack a base image, run npm).
const BUILD_WATCHDOG: Duration = Duration::from_secs(600);
/// `d/up` pairs, and `..`, in a link chain: enough to reach `/` from any workspace.
const CHAIN_PAIRS: usize = 16;
/// The gzip bomb's file, and the limit it meets.
const BOMB_BYTES: u64 = 64 << 20;
const BOMB_LIMIT: u64 = 8 << 20;
/// The GNU long name of the `long-name` archive.
const LONG_NAME_BYTES: usize = 2 << 20;
/// Keys moto accepts while its authentication is off.
const S3_KEY_ID: &str = "fnbuild-test-key";
const S3_SECRET: &str = "fnbuild-test-secret";

// === Canaries ===

/// What a hostile source would love to get: a host file, and the builder's environment.
struct Canaries {
    /// Random, and in every canary: `fnbuild-canary-<token>` names nothing secret.
    token: String,
    dir: PathBuf,
    file: PathBuf,
    file_text: String,
    env_text: String,
    password: String,
}

impl Canaries {
    /// Plants `$TMPDIR/fnbuild-canary-<random>/secret.txt`, readable by anyone: only fnbuild's
    /// containment, not a file permission, may keep it in.
    fn plant() -> Canaries {
        let token = random_token();
        let dir = std::env::temp_dir().join(format!("fnbuild-canary-{token}"));
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let file = dir.join("secret.txt");
        let file_text = format!("CANARY-FILE-{token}");
        fs::write(&file, &file_text).unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        Canaries {
            env_text: format!("CANARY-ENV-{token}"),
            password: format!("CANARY-PW-{token}"),
            token,
            dir,
            file,
            file_text,
        }
    }

    fn strings(&self) -> [&str; 3] {
        [&self.file_text, &self.env_text, &self.password]
    }

    fn file_path(&self) -> &str {
        self.file.to_str().unwrap()
    }

    fn dir_path(&self) -> &str {
        self.dir.to_str().unwrap()
    }

    /// The canary environment of every fnbuild process.
    fn set_env(&self, cmd: &mut Command) {
        cmd.env("FNBUILD_TEST_CANARY", &self.env_text).env(
            "PIP_INDEX_URL",
            format!("http://canary:{}@127.0.0.1:9/simple", self.password),
        );
    }

    fn assert_not_in(&self, what: &str, text: &str) {
        for canary in self.strings() {
            assert!(
                !text.contains(canary),
                "{what} holds the canary {canary}:\n{text}"
            );
        }
    }

    /// The canary directory holds its file, as it was, and nothing else.
    fn assert_untouched(&self) {
        let names: Vec<String> = fs::read_dir(&self.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["secret.txt"], "the canary directory changed");
        assert_eq!(fs::read_to_string(&self.file).unwrap(), self.file_text);
    }
}

impl Drop for Canaries {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// 16 hex digits no other test run picks.
fn random_token() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    format!("{:016x}", hasher.finish())
}

// === The bench: a registry, canaries, and builds under a watchdog ===

/// One fnbuild run.
struct Run {
    case: String,
    code: i32,
    stdout: String,
    stderr: String,
}

/// What one test builds with.
struct Bench {
    registry: Registry,
    canaries: Canaries,
    /// Holds the cache and nothing else: nothing may appear beside it.
    root: tempfile::TempDir,
    /// Archives, function directories, repositories, `$HOME` and build logs.
    inputs: tempfile::TempDir,
}

impl Bench {
    fn new(runtimes: &[&str]) -> Bench {
        let root = tempfile::Builder::new()
            .prefix("fnbuild-corpus-")
            .tempdir()
            .unwrap();
        fs::create_dir(root.path().join("cache")).unwrap();
        let inputs = tempfile::tempdir().unwrap();
        fs::create_dir(inputs.path().join("home")).unwrap();
        Bench {
            registry: registry_with_bases(runtimes),
            canaries: Canaries::plant(),
            root,
            inputs,
        }
    }

    fn cache(&self) -> PathBuf {
        self.root.path().join("cache")
    }

    /// A new directory under the inputs.
    fn input_dir(&self, name: &str) -> PathBuf {
        let dir = self.inputs.path().join(name);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn repo(case: &str) -> String {
        format!("hostile/{case}")
    }

    /// `fnbuild build` of `source` with `hello.handler` onto `runtime`'s base layout, pushed
    /// to `<registry>/hostile/<case>:t`, with the canary environment, an empty `$HOME`, and
    /// no AWS, fnbuild or package-manager settings inherited; then `extra`.
    fn command(&self, case: &str, runtime: &str, source: &str, extra: &[&str]) -> Command {
        let mut cmd = common::fnbuild();
        for (name, _) in std::env::vars_os() {
            let name_text = name.to_string_lossy();
            if ["FNBUILD_", "PIP_", "NPM_", "npm_"]
                .iter()
                .any(|p| name_text.starts_with(p))
            {
                cmd.env_remove(&name);
            }
        }
        for var in [
            "DOCKER_CONFIG",
            "SSH_AUTH_SOCK",
            "SOURCE_DATE_EPOCH",
            "XDG_CONFIG_HOME",
        ] {
            cmd.env_remove(var);
        }
        isolate_aws_env(&mut cmd);
        self.canaries.set_env(&mut cmd);
        cmd.env("HOME", self.inputs.path().join("home"))
            .env("NO_COLOR", "1")
            .args(["build", "--source", source, "--runtime", runtime])
            .args(["--handler", "hello.handler", "--base-image"])
            .arg(format!("oci:{}", base_layout(runtime).display()))
            .arg("--image")
            .arg(format!(
                "{}/{}:{TAG}",
                self.registry.host(),
                Self::repo(case)
            ))
            .arg("--cache-dir")
            .arg(self.cache())
            .args(extra);
        cmd
    }

    /// Runs `cmd` (with `stdin` piped in, if given) until it ends, or kills it and fails
    /// after `watchdog`. Then checks what every case must keep: no canary in its output, the
    /// canary directory as it was, nothing new beside the cache, no panic.
    fn run(&self, case: &str, mut cmd: Command, stdin: Option<&[u8]>, watchdog: Duration) -> Run {
        let logs = self.input_dir(&format!("logs/{case}"));
        let (out_log, err_log) = (logs.join("stdout"), logs.join("stderr"));
        cmd.stdout(fs::File::create(&out_log).unwrap())
            .stderr(fs::File::create(&err_log).unwrap())
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            });
        let before = self.beside_the_cache();
        let mut child = cmd.spawn().unwrap();
        // A refused stream may be left unread: the writer then gets EPIPE, and stops.
        let writer = stdin.map(|bytes| {
            let mut pipe = child.stdin.take().unwrap();
            let bytes = bytes.to_vec();
            thread::spawn(move || {
                let _ = pipe.write_all(&bytes);
            })
        });
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > watchdog {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "case {case}: fnbuild still ran after {watchdog:?}; its log:\n{}",
                    fs::read_to_string(&err_log).unwrap_or_default()
                );
            }
            thread::sleep(Duration::from_millis(50));
        };
        if let Some(writer) = writer {
            writer.join().unwrap();
        }
        let run = Run {
            case: case.to_string(),
            code: status.code().unwrap_or(-1),
            stdout: fs::read_to_string(&out_log).unwrap(),
            stderr: fs::read_to_string(&err_log).unwrap(),
        };
        eprintln!("--- case {case}: exit {}\n{}", run.code, run.stderr);
        self.canaries
            .assert_not_in(&format!("case {case}: the output"), &run.stdout);
        self.canaries
            .assert_not_in(&format!("case {case}: the output"), &run.stderr);
        self.canaries.assert_untouched();
        assert_eq!(
            self.beside_the_cache(),
            before,
            "case {case}: a file appeared beside the cache"
        );
        assert!(
            !run.stderr.contains("panicked"),
            "case {case}: fnbuild panicked:\n{}",
            run.stderr
        );
        run
    }

    /// Everything in the cache's parent directory but the cache.
    fn beside_the_cache(&self) -> Vec<PathBuf> {
        let mut found: Vec<PathBuf> = walk(self.root.path())
            .into_iter()
            .filter(|p| !p.starts_with("cache"))
            .collect();
        found.sort();
        found
    }

    /// Asserts the run was refused: exit code 1, every one of `words` said, nothing on stdout,
    /// no tag pushed.
    fn refused(&self, run: &Run, words: &[&str]) {
        let case = &run.case;
        assert_eq!(
            run.code, 1,
            "case {case}: exit code; stderr:\n{}",
            run.stderr
        );
        for word in words {
            assert!(
                run.stderr.contains(word),
                "case {case}: expected the error to say {word:?}; stderr:\n{}",
                run.stderr
            );
        }
        assert!(
            run.stdout.trim().is_empty(),
            "case {case}: stdout: {}",
            run.stdout
        );
        let tags = self.registry.image_tags(&Self::repo(case));
        assert!(
            tags.is_empty(),
            "case {case}: a refused build pushed {tags:?}"
        );
    }

    /// Asserts the run built and pushed its tag.
    fn built(&self, run: &Run) {
        let case = &run.case;
        assert_eq!(run.code, 0, "case {case} failed:\n{}", run.stderr);
        assert_eq!(
            self.registry.image_tags(&Self::repo(case)),
            [TAG],
            "case {case}: the tag is missing"
        );
    }

    /// The layers of the image case `case` pushed that its base image does not have (the
    /// deps layer, if any, then the code layer), uncompressed and listed.
    fn pushed_layers(&self, case: &str, runtime: &str) -> Vec<Vec<Item>> {
        let repo = Self::repo(case);
        let manifest = self.registry.get(
            &format!("/v2/{repo}/manifests/{TAG}"),
            Some(
                "application/vnd.oci.image.manifest.v1+json,\
                 application/vnd.docker.distribution.manifest.v2+json",
            ),
        );
        assert_eq!(manifest.status, 200, "{}", manifest.text());
        let base = base_layer_digests(runtime);
        manifest.json()["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|layer| layer["digest"].as_str().unwrap().to_string())
            .filter(|digest| !base.contains(digest))
            .map(|digest| {
                let blob = self
                    .registry
                    .get(&format!("/v2/{repo}/blobs/{digest}"), None);
                assert_eq!(blob.status, 200, "GET blob {digest}");
                items(&uncompressed(&blob.body))
            })
            .collect()
    }

    /// Searches every blob of the registry for the canaries.
    fn finish(self) {
        let holding = files_holding(self.registry.storage_dir(), &self.canaries.strings());
        assert!(
            holding.is_empty(),
            "registry blobs holding a canary: {holding:?}"
        );
    }
}

// === Layers as the registry holds them ===

/// An entry of a layer.
#[derive(Debug)]
struct Item {
    /// Without a leading `/` or `./`, nor a trailing `/`.
    path: String,
    kind: tar::EntryType,
    link: Option<String>,
    data: Vec<u8>,
}

fn uncompressed(blob: &[u8]) -> Vec<u8> {
    if !blob.starts_with(&[0x1f, 0x8b]) {
        return blob.to_vec();
    }
    let mut plain = Vec::new();
    flate2::read::MultiGzDecoder::new(blob)
        .read_to_end(&mut plain)
        .unwrap();
    plain
}

fn items(tar_bytes: &[u8]) -> Vec<Item> {
    let mut archive = tar::Archive::new(tar_bytes);
    archive
        .entries()
        .unwrap()
        .map(|entry| {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let path = path
                .trim_start_matches("./")
                .trim_start_matches('/')
                .trim_end_matches('/')
                .to_string();
            let kind = entry.header().entry_type();
            let link = entry
                .link_name()
                .unwrap()
                .map(|l| l.to_string_lossy().into_owned());
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            Item {
                path,
                kind,
                link,
                data,
            }
        })
        .collect()
}

/// The layer digests of a runtime's base layout.
fn base_layer_digests(runtime: &str) -> Vec<String> {
    let layout = base_layout(runtime);
    let blob = |digest: &str| {
        let hex = digest.trim_start_matches("sha256:");
        let bytes = fs::read(layout.join("blobs/sha256").join(hex)).unwrap();
        serde_json::from_slice::<serde_json::Value>(&bytes).unwrap()
    };
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let manifest = blob(index["manifests"][0]["digest"].as_str().unwrap());
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

// === Archives written as an attacker would ===

/// A member of a hostile tar archive.
enum Member {
    File(Vec<u8>),
    Dir,
    Symlink(String),
    HardLink(String),
    CharDevice(u32, u32),
    Fifo,
}

fn member(path: impl Into<String>, member: Member) -> (String, Member) {
    (path.into(), member)
}

fn hello_member() -> (String, Member) {
    member("hello.py", Member::File(HELLO_PY.into()))
}

/// A header with name and link target set in its bytes directly (the first 100 bytes of
/// each), bypassing the `tar` builder's own path checks.
fn raw_header(name: &[u8], kind: tar::EntryType, size: u64, link: &[u8]) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(if kind == tar::EntryType::Directory {
        0o755
    } else {
        0o644
    });
    header.set_size(size);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    let old = header.as_old_mut();
    let n = name.len().min(old.name.len());
    old.name[..n].copy_from_slice(&name[..n]);
    let n = link.len().min(old.linkname.len());
    old.linkname[..n].copy_from_slice(&link[..n]);
    header.set_cksum();
    header
}

/// Appends a GNU long-name (`L`) or long-link (`K`) entry holding `text`.
fn append_long<W: Write>(builder: &mut tar::Builder<W>, kind: tar::EntryType, text: &str) {
    let mut data = text.as_bytes().to_vec();
    data.push(0);
    let header = raw_header(b"././@LongLink", kind, data.len() as u64, b"");
    builder.append(&header, data.as_slice()).unwrap();
}

/// Appends `members` to `builder`, with GNU long-name and long-link entries for names and
/// targets over 100 bytes.
fn append_members<W: Write>(builder: &mut tar::Builder<W>, members: &[(String, Member)]) {
    for (path, member) in members {
        let (kind, data, link): (_, &[u8], &str) = match member {
            Member::File(data) => (tar::EntryType::Regular, data, ""),
            Member::Dir => (tar::EntryType::Directory, &[], ""),
            Member::Symlink(target) => (tar::EntryType::Symlink, &[], target),
            Member::HardLink(target) => (tar::EntryType::Link, &[], target),
            Member::CharDevice(..) => (tar::EntryType::Char, &[], ""),
            Member::Fifo => (tar::EntryType::Fifo, &[], ""),
        };
        if path.len() > 100 {
            append_long(builder, tar::EntryType::GNULongName, path);
        }
        if link.len() > 100 {
            append_long(builder, tar::EntryType::GNULongLink, link);
        }
        let mut header = raw_header(path.as_bytes(), kind, data.len() as u64, link.as_bytes());
        if let Member::CharDevice(major, minor) = member {
            header.set_device_major(*major).unwrap();
            header.set_device_minor(*minor).unwrap();
            header.set_cksum();
        }
        builder.append(&header, data).unwrap();
    }
}

fn hostile_tar(members: &[(String, Member)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    append_members(&mut builder, members);
    builder.into_inner().unwrap()
}

fn bzip2(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

fn xz(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = liblzma::write::XzEncoder::new(Vec::new(), 6);
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// `d/up/` [`CHAIN_PAIRS`] times, then as many `../`, then `absolute` without its `/`: a
/// link target that stays inside by its words, and leads to `absolute` through `d/up -> ..`.
fn chain_to(absolute: &str) -> String {
    format!(
        "{}{}{}",
        "d/up/".repeat(CHAIN_PAIRS),
        "../".repeat(CHAIN_PAIRS),
        absolute.trim_start_matches('/')
    )
}

/// `d/` and `d/up -> ..`, the first links of every chain.
fn chain_start() -> Vec<(String, Member)> {
    vec![
        member("d", Member::Dir),
        member("d/up", Member::Symlink("..".into())),
    ]
}

/// A hostile archive, and what its build must say.
struct Archive {
    case: &'static str,
    /// Its file name (the extension tells fnbuild its kind, for a file, URL or object).
    file: &'static str,
    bytes: Vec<u8>,
    extra: Vec<String>,
    words: Vec<String>,
    /// What a build from stdin says, where that differs.
    stdin_words: Option<Vec<String>>,
}

fn archive(case: &'static str, file: &'static str, bytes: Vec<u8>, words: &[&str]) -> Archive {
    Archive {
        case,
        file,
        bytes,
        extra: Vec::new(),
        words: words.iter().map(|w| w.to_string()).collect(),
        stdin_words: None,
    }
}

const OUTSIDE: &str = "outside the function's directory";

fn hostile_archives(canaries: &Canaries) -> Vec<Archive> {
    let canary = canaries.file_path();
    let canary_dir = canaries.dir_path();
    let with_chain = |rest: Vec<(String, Member)>| {
        let mut members = vec![hello_member()];
        members.extend(chain_start());
        members.extend(rest);
        members
    };
    let mut archives = Vec::new();

    let esc_target = chain_to(canary);
    archives.push(archive(
        "chain",
        "chain.tar",
        hostile_tar(&with_chain(vec![member(
            "esc",
            Member::Symlink(esc_target.clone()),
        )])),
        &[&format!("link 'esc' points to '{esc_target}', {OUTSIDE}")],
    ));

    archives.push(archive(
        "chain-hardlink",
        "chain-hardlink.tar.bz2",
        bzip2(&hostile_tar(&with_chain(vec![
            member("esc", Member::Symlink(chain_to(canary_dir))),
            member("stolen", Member::HardLink("esc/secret.txt".into())),
        ]))),
        &[&format!(
            "hard link 'stolen' refers to 'esc/secret.txt', which leads {OUTSIDE}"
        )],
    ));

    archives.push(archive(
        "proc-environ",
        "proc-environ.tgz",
        gzip(&hostile_tar(&with_chain(vec![
            member("p", Member::Symlink(chain_to("/proc/self"))),
            member("env", Member::HardLink("p/environ".into())),
        ]))),
        &[&format!(
            "hard link 'env' refers to 'p/environ', which leads {OUTSIDE}"
        )],
    ));

    archives.push(archive(
        "absolute-link",
        "absolute-link.tar.xz",
        xz(&hostile_tar(&[
            hello_member(),
            member("leak", Member::Symlink(canary.into())),
        ])),
        &[&format!("link 'leak' points to '{canary}', {OUTSIDE}")],
    ));

    let escaped = format!("../../../../../../escaped-{}.py", canaries.token);
    archives.push(archive(
        "dot-dot",
        "dot-dot.tar",
        hostile_tar(&[
            hello_member(),
            member(
                escaped.clone(),
                Member::File(b"print('escaped')\n".to_vec()),
            ),
        ]),
        &[&format!("entry '{escaped}' would land {OUTSIDE}")],
    ));

    archives.push(archive(
        "write-through",
        "write-through.tar",
        hostile_tar(&with_chain(vec![
            member("w", Member::Symlink(chain_to(canary_dir))),
            member("w/owned.txt", Member::File(b"owned\n".to_vec())),
        ])),
        &[
            "entry 'w/owned.txt' is written through the link 'w'",
            "archives may not write through links",
        ],
    ));

    let mut zip = archive(
        "zip-chain",
        "zip-chain.zip",
        zip_chain(canary),
        &[&format!(
            "link 'esc' points to '{}', {OUTSIDE}",
            chain_to(canary)
        )],
    );
    zip.stdin_words = Some(vec![
        "stdin is a zip archive; a stream must be a tar".to_string()
    ]);
    archives.push(zip);

    let mut crc = gzip(&tar_of(&[("hello.py", HELLO_PY.as_bytes())]));
    let at = crc.len() - 8;
    crc[at] ^= 0xff;
    archives.push(archive(
        "gzip-crc",
        "gzip-crc.tar.gz",
        crc,
        &["is corrupt: "],
    ));

    let mut truncated = xz(&tar_of(&[("hello.py", HELLO_PY.as_bytes())]));
    truncated.truncate(truncated.len() - 12);
    archives.push(archive(
        "xz-truncated",
        "xz-truncated.tar.xz",
        truncated,
        &["is corrupt: "],
    ));

    let mut bomb = archive(
        "gzip-bomb",
        "gzip-bomb.tar.gz",
        gzip_bomb(),
        &[
            &format!("unpacks to more than {BOMB_LIMIT} bytes"),
            "--max-source-size",
        ],
    );
    bomb.extra = vec!["--max-source-size".into(), BOMB_LIMIT.to_string()];
    archives.push(bomb);

    archives.push(archive(
        "long-name",
        "long-name.tar",
        hostile_tar(&[
            hello_member(),
            member(
                format!("{}.py", "a".repeat(LONG_NAME_BYTES)),
                Member::File(b"x = 1\n".to_vec()),
            ),
        ]),
        &["between two entries"],
    ));
    archives
}

/// A zip holding `hello.py`, `d/`, `d/up -> ..` and `esc -> <chain>/<canary>`; links as unix
/// mode 0o120777 entries whose content is the target.
fn zip_chain(canary: &str) -> Vec<u8> {
    let options = zip::write::SimpleFileOptions::default().unix_permissions(0o644);
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    writer.start_file("hello.py", options).unwrap();
    writer.write_all(HELLO_PY.as_bytes()).unwrap();
    writer.add_directory("d/", options).unwrap();
    writer.add_symlink("d/up", "..", options).unwrap();
    writer
        .add_symlink("esc", chain_to(canary), options)
        .unwrap();
    writer.finish().unwrap().into_inner()
}

/// A .tar.gz of some 64 KiB: `hello.py` and [`BOMB_BYTES`] of zeros.
fn gzip_bomb() -> Vec<u8> {
    let encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let mut builder = tar::Builder::new(encoder);
    append_members(&mut builder, &[hello_member()]);
    let header = raw_header(b"zeros.bin", tar::EntryType::Regular, BOMB_BYTES, b"");
    builder
        .append(&header, std::io::repeat(0).take(BOMB_BYTES))
        .unwrap();
    builder.into_inner().unwrap().finish().unwrap()
}

// === Source trees ===

/// Makes `dir` with `files` (path, text) and `links` (path, target).
fn source_tree(dir: &Path, files: &[(&str, &str)], links: &[(&str, &str)]) {
    fs::create_dir_all(dir).unwrap();
    for (path, text) in files {
        let path = dir.join(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }
    for (path, target) in links {
        let path = dir.join(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        symlink(target, path).unwrap();
    }
}

/// Commits everything in `dir` into a new repository there; returns its `git+file://` URL.
fn git_repo(dir: &Path, home: &Path) -> String {
    git_in(dir, home, &["init", "-q", "-b", "main"]);
    git_in(dir, home, &["add", "-A"]);
    git_in(dir, home, &["commit", "-q", "-m", "hostile"]);
    format!("git+file://{}", dir.display())
}

/// Runs `git ARGS` in `dir` as a test user whose home is `home`; returns its stdout.
fn git_in(dir: &Path, home: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=fnbuild corpus",
            "-c",
            "user.email=corpus@example.com",
            "-c",
            "core.symlinks=true",
        ])
        .args(args)
        .current_dir(dir)
        .env("HOME", home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

// === The tests ===

#[test]
fn hostile_archives_and_s3_keys_are_refused_from_every_source_kind() {
    let bench = Bench::new(&[PYTHON]);
    let archives = hostile_archives(&bench.canaries);

    let local = bench.input_dir("archives");
    let mut served = HashMap::new();
    let mut setup = S3Setup::new()
        .bucket("hostile-archives")
        .bucket("hostile-prefix");
    for archive in &archives {
        fs::write(local.join(archive.file), &archive.bytes).unwrap();
        served.insert(format!("/{}", archive.file), archive.bytes.clone());
        setup = setup.object("hostile-archives", archive.file, &archive.bytes);
    }
    // moto keeps a key with `..` as it is given (its listing returns it so).
    setup = setup
        .object("hostile-prefix", "fn/hello.py", HELLO_PY.as_bytes())
        .object(
            "hostile-prefix",
            "fn/../../escape.py",
            b"print('escaped')\n",
        );
    let server = FileServer::start(served);
    let s3 = S3Server::start();
    s3.setup(&setup);
    let s3_command = |case: &str, source: &str, extra: &[&str]| {
        let mut cmd = bench.command(case, PYTHON, source, extra);
        cmd.arg("--s3-endpoint")
            .arg(s3.endpoint())
            .env("AWS_ACCESS_KEY_ID", S3_KEY_ID)
            .env("AWS_SECRET_ACCESS_KEY", S3_SECRET);
        cmd
    };

    for archive in &archives {
        let extra: Vec<&str> = archive.extra.iter().map(String::as_str).collect();
        for kind in ["file", "stdin", "http", "s3"] {
            let case = format!("{}-{kind}", archive.case);
            let (cmd, stdin) = match kind {
                "file" => {
                    let path = local.join(archive.file);
                    let source = path.to_str().unwrap();
                    (bench.command(&case, PYTHON, source, &extra), None)
                }
                "stdin" => (
                    bench.command(&case, PYTHON, "-", &extra),
                    Some(archive.bytes.as_slice()),
                ),
                "http" => {
                    let url = server.url(&format!("/{}", archive.file));
                    (bench.command(&case, PYTHON, &url, &extra), None)
                }
                _ => {
                    let source = format!("s3://hostile-archives/{}", archive.file);
                    (s3_command(&case, &source, &extra), None)
                }
            };
            let run = bench.run(&case, cmd, stdin, WATCHDOG);
            let words = match (&archive.stdin_words, kind) {
                (Some(words), "stdin") => words,
                _ => &archive.words,
            };
            let words: Vec<&str> = words.iter().map(String::as_str).collect();
            bench.refused(&run, &words);
        }
    }

    // Nothing the `..` entry names was written, wherever it would have landed.
    let escaped = format!("escaped-{}.py", bench.canaries.token);
    let written: Vec<PathBuf> = walk(bench.root.path())
        .into_iter()
        .filter(|p| p.ends_with(&escaped))
        .collect();
    assert!(written.is_empty(), "the dot-dot archive wrote {written:?}");
    assert!(!Path::new("/").join(&escaped).exists());
    assert!(!std::env::temp_dir().join(&escaped).exists());

    // --max-source-size takes a number of bytes, not a quantity.
    let path = local.join("gzip-bomb.tar.gz");
    let cmd = bench.command(
        "bomb-size-syntax",
        PYTHON,
        path.to_str().unwrap(),
        &["--max-source-size", "8MiB"],
    );
    let run = bench.run("bomb-size-syntax", cmd, None, WATCHDOG);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("--max-source-size"), "{}", run.stderr);

    // An S3 prefix whose key climbs out of it.
    let case = "s3-prefix-dot-dot";
    let run = bench.run(
        case,
        s3_command(case, "s3://hostile-prefix/fn/", &[]),
        None,
        WATCHDOG,
    );
    bench.refused(
        &run,
        &[&format!(
            "s3://hostile-prefix/fn/: object key 'fn/../../escape.py' would land {OUTSIDE}"
        )],
    );
    assert!(!walk(bench.root.path())
        .iter()
        .any(|p| p.ends_with("escape.py")));

    bench.finish();
}

#[test]
fn special_files_in_an_archive_are_left_out_and_its_inner_links_kept() {
    let bench = Bench::new(&[PYTHON]);
    let tar = hostile_tar(&[
        hello_member(),
        member("null", Member::CharDevice(1, 3)),
        member("pipe", Member::Fifo),
        member("link.py", Member::Symlink("hello.py".into())),
        member("lib", Member::Dir),
        member("lib/up.py", Member::Symlink("../hello.py".into())),
    ]);
    let file = bench.input_dir("archives").join("special.tar");
    fs::write(&file, &tar).unwrap();

    for kind in ["file", "stdin"] {
        let case = format!("special-files-{kind}");
        let (source, stdin) = match kind {
            "file" => (file.to_str().unwrap(), None),
            _ => ("-", Some(tar.as_slice())),
        };
        let cmd = bench.command(&case, PYTHON, source, &[]);
        let run = bench.run(&case, cmd, stdin, BUILD_WATCHDOG);
        bench.built(&run);
        assert!(
            run.stderr.contains("skipping special file"),
            "case {case}: no warning:\n{}",
            run.stderr
        );
        let layers = bench.pushed_layers(&case, PYTHON);
        let code = layers.last().unwrap();
        let find = |path: &str| {
            code.iter()
                .find(|i| i.path == path)
                .unwrap_or_else(|| panic!("case {case}: no {path} in the code layer: {code:#?}"))
        };
        let hello = find("kubeless/hello.py");
        assert_eq!(hello.kind, tar::EntryType::Regular);
        assert_eq!(hello.data, HELLO_PY.as_bytes());
        for (path, target) in [
            ("kubeless/link.py", "hello.py"),
            ("kubeless/lib/up.py", "../hello.py"),
        ] {
            let link = find(path);
            assert_eq!(link.kind, tar::EntryType::Symlink, "{path}");
            assert_eq!(link.link.as_deref(), Some(target), "{path}");
        }
        let special: Vec<&Item> = code
            .iter()
            .filter(|i| {
                i.path.ends_with("null")
                    || i.path.ends_with("pipe")
                    || !matches!(
                        i.kind,
                        tar::EntryType::Regular
                            | tar::EntryType::Directory
                            | tar::EntryType::Symlink
                    )
            })
            .collect();
        assert!(
            special.is_empty(),
            "case {case}: special files in the code layer: {special:#?}"
        );
    }
    bench.finish();
}

#[test]
fn git_and_directory_sources_keep_links_as_links_and_never_read_through_them() {
    let bench = Bench::new(&[PYTHON]);
    let home = bench.input_dir("home");
    let canary = bench.canaries.file_path();
    let canary_dir = bench.canaries.dir_path();
    let outside_source = "is a link that leads outside the function's source";

    struct Case<'a> {
        name: &'a str,
        runtime: &'a str,
        files: Vec<(&'a str, &'a str)>,
        links: Vec<(&'a str, &'a str)>,
        extra: Vec<&'a str>,
        /// The message of a refusal; none for a build that succeeds.
        words: Option<String>,
    }
    let cases = [
        Case {
            name: "deps-link",
            runtime: PYTHON,
            files: vec![("hello.py", HELLO_PY)],
            links: vec![("requirements.txt", canary)],
            extra: vec![],
            words: Some(format!(
                "the dependencies file 'requirements.txt' {outside_source}"
            )),
        },
        Case {
            name: "handler-link",
            runtime: PYTHON,
            files: vec![],
            links: vec![("hello.py", canary)],
            extra: vec![],
            words: Some(format!("the handler module 'hello.py' {outside_source}")),
        },
        Case {
            name: "lock-link",
            runtime: NODEJS,
            files: vec![("hello.js", HELLO_JS), ("package.json", PACKAGE_JSON)],
            links: vec![("package-lock.json", canary)],
            extra: vec![],
            words: Some(format!(
                "the lock file 'package-lock.json' {outside_source}"
            )),
        },
        Case {
            name: "npmrc-link",
            runtime: NODEJS,
            files: vec![("hello.js", HELLO_JS), ("package.json", PACKAGE_JSON)],
            links: vec![(".npmrc", canary)],
            extra: vec![],
            words: Some(format!(
                "npm's project settings file '.npmrc' {outside_source}"
            )),
        },
        Case {
            name: "subdir-link",
            runtime: PYTHON,
            files: vec![("README.md", "the function is in fn/\n")],
            links: vec![("fn", canary_dir)],
            extra: vec!["--sub-dir", "fn"],
            words: Some("is a link that leads outside the source".to_string()),
        },
        Case {
            name: "links-kept",
            runtime: PYTHON,
            files: vec![("hello.py", HELLO_PY)],
            links: vec![
                ("leak", canary),
                ("root", "/"),
                ("environ", "/proc/self/environ"),
                ("d/up", ".."),
            ],
            extra: vec![],
            words: None,
        },
    ];

    // Links whose target the code layer does not hold as the source has it: asserted at the
    // end, so that every case runs first.
    let mut changed_targets = Vec::new();
    for case in &cases {
        for kind in ["git", "dir"] {
            let name = format!("{}-{kind}", case.name);
            let dir = bench.inputs.path().join("trees").join(&name);
            source_tree(&dir, &case.files, &case.links);
            let source = match kind {
                "git" => git_repo(&dir, &home),
                _ => dir.display().to_string(),
            };
            let cmd = bench.command(&name, case.runtime, &source, &case.extra);
            let Some(words) = &case.words else {
                let run = bench.run(&name, cmd, None, BUILD_WATCHDOG);
                bench.built(&run);
                changed_targets.extend(assert_links_kept(&bench, &name, &case.links));
                continue;
            };
            let run = bench.run(&name, cmd, None, WATCHDOG);
            bench.refused(&run, &[words]);
            if case.name == "subdir-link" {
                assert!(
                    run.stderr.contains("sub-directory 'fn' of "),
                    "{}",
                    run.stderr
                );
            }
        }
    }

    // Local directories only: a FIFO and a directory where a file is read.
    let dir = bench.inputs.path().join("trees/deps-fifo");
    source_tree(&dir, &[("hello.py", HELLO_PY)], &[]);
    nix::unistd::mkfifo(
        &dir.join("requirements.txt"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    let cmd = bench.command("deps-fifo-dir", PYTHON, dir.to_str().unwrap(), &[]);
    let run = bench.run("deps-fifo-dir", cmd, None, WATCHDOG);
    bench.refused(
        &run,
        &[
            "the dependencies file 'requirements.txt'",
            "is not a regular file",
        ],
    );

    let dir = bench.inputs.path().join("trees/handler-dir");
    source_tree(&dir, &[("hello.py/inner.txt", "a directory\n")], &[]);
    let cmd = bench.command("handler-dir-dir", PYTHON, dir.to_str().unwrap(), &[]);
    let run = bench.run("handler-dir-dir", cmd, None, WATCHDOG);
    bench.refused(
        &run,
        &["the handler module 'hello.py'", "is not a regular file"],
    );

    bench.finish();
    assert!(
        changed_targets.is_empty(),
        "the code layer changed link targets:\n{}",
        changed_targets.join("\n")
    );
}

/// Asserts the code layer of `case` holds `hello.py`, the `links` as links, and no other
/// file; returns the links whose target it does not hold as given.
fn assert_links_kept(bench: &Bench, case: &str, links: &[(&str, &str)]) -> Vec<String> {
    let mut changed = Vec::new();
    let layers = bench.pushed_layers(case, PYTHON);
    let code = layers.last().unwrap();
    for (path, target) in links {
        let path = format!("kubeless/{path}");
        let item = code
            .iter()
            .find(|i| i.path == path)
            .unwrap_or_else(|| panic!("case {case}: no {path} in the code layer: {code:#?}"));
        assert_eq!(item.kind, tar::EntryType::Symlink, "case {case}: {path}");
        if item.link.as_deref() != Some(*target) {
            changed.push(format!(
                "case {case}: {path} -> {:?} in the layer, {target:?} in the source",
                item.link
            ));
        }
    }
    let files: Vec<&str> = code
        .iter()
        .filter(|i| i.kind != tar::EntryType::Directory && i.kind != tar::EntryType::Symlink)
        .map(|i| i.path.as_str())
        .collect();
    assert_eq!(files, ["kubeless/hello.py"], "case {case}: {code:#?}");
    changed
}

#[test]
fn python_that_does_not_compile_is_refused_with_the_runtimes_own_message() {
    let bench = Bench::new(&[PYTHON]);
    let nested = format!(
        "{HELLO_PY}\nx = {}{}\n",
        "(".repeat(200_000),
        ")".repeat(200_000)
    );
    for (case, module, words) in [
        (
            "missing-colon",
            "def handler(event, context)\n    return 1\n".to_string(),
            "hello.py does not compile with the runtime's Python 3.13: line 1",
        ),
        (
            "nested-parentheses",
            nested,
            "hello.py does not compile with the runtime's Python 3.13: line 4: too many nested \
             parentheses",
        ),
    ] {
        let dir = bench.inputs.path().join("trees").join(case);
        source_tree(&dir, &[("hello.py", &module)], &[]);
        let cmd = bench.command(case, PYTHON, dir.to_str().unwrap(), &[]);
        let run = bench.run(case, cmd, None, BUILD_WATCHDOG);
        bench.refused(&run, &[words]);
        assert!(
            !run.stderr.contains(&"(".repeat(1000)),
            "{case}: the message quotes the whole line: {} bytes of stderr",
            run.stderr.len()
        );
    }
    bench.finish();
}

#[test]
fn a_dependencys_install_script_gets_nothing_of_the_builder() {
    let bench = Bench::new(&[NODEJS]);
    let server = FileServer::start(HashMap::from([(
        "/evil-1.0.0.tgz".to_string(),
        evil_npm_package(bench.canaries.file_path(), &[]),
    )]));
    let manifest = serde_json::json!({
        "name": "fn",
        "version": "1.0.0",
        "dependencies": { "evil": server.url("/evil-1.0.0.tgz") },
    })
    .to_string();
    let dir = bench.inputs.path().join("trees/npm-install-script");
    source_tree(
        &dir,
        &[("hello.js", HELLO_JS), ("package.json", &manifest)],
        &[],
    );
    let case = "npm-install-script";
    let cmd = bench.command(case, NODEJS, dir.to_str().unwrap(), &[]);
    let run = bench.run(case, cmd, None, BUILD_WATCHDOG);
    bench.built(&run);

    let report = bench
        .pushed_layers(case, NODEJS)
        .into_iter()
        .flatten()
        .find(|i| i.path.ends_with("node_modules/evil/report.json"))
        .expect("the install script ran and wrote report.json into the deps layer");
    let text = String::from_utf8_lossy(&report.data).into_owned();
    eprintln!("--- the install script's report:\n{text}");
    bench
        .canaries
        .assert_not_in("the install script's report", &text);
    let report: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(report["uid"], 65534, "{text}");
    assert_eq!(report["gid"], 65534, "{text}");
    assert_eq!(report["canary"]["ok"], false, "{text}");
    assert_eq!(report["canaryDir"]["ok"], false, "{text}");
    assert_eq!(report["canaryThroughPid1Root"]["ok"], false, "{text}");
    assert_eq!(report["shadow"]["ok"], false, "{text}");
    assert_eq!(
        report["disks"],
        serde_json::json!({"vda": false, "sda": false})
    );
    let pids = report["pids"]["value"].as_array().unwrap();
    assert!(
        !pids.is_empty() && pids.len() < 10,
        "the install script sees {} processes: {pids:?}",
        pids.len()
    );
    let env = report["env"].as_object().unwrap();
    for name in ["FNBUILD_TEST_CANARY", "PIP_INDEX_URL"] {
        assert!(!env.contains_key(name), "{name} reached npm: {env:?}");
    }
    bench.finish();
}

#[test]
fn submodules_of_a_remote_repository_may_not_name_paths_of_the_build_machine() {
    let bench = Bench::new(&[PYTHON]);
    let home = bench.input_dir("home-git");
    // A repository of the build machine, holding a secret.
    let private = bench.input_dir("private");
    fs::write(private.join("secret.py"), &bench.canaries.file_text).unwrap();
    git_repo(&private, &home);
    let private_commit = git_in(&private, &home, &["rev-parse", "HEAD"]);
    // Functions served over the network, naming it as their submodule `lib` in every shape.
    let served = bench.input_dir("served");
    let climb = format!("{}{}", "../".repeat(12), private.display());
    let cases = [
        ("submodule-path", private.display().to_string()),
        (
            "submodule-file-url",
            format!("file://{}", private.display()),
        ),
        ("submodule-climb", climb),
    ];
    for (case, url) in &cases {
        let dir = served.join(format!("{case}.git"));
        let gitmodules = format!("[submodule \"lib\"]\n\tpath = lib\n\turl = {url}\n");
        source_tree(
            &dir,
            &[("hello.py", HELLO_PY), (".gitmodules", &gitmodules)],
            &[],
        );
        git_in(&dir, &home, &["init", "-q", "-b", "main"]);
        git_in(&dir, &home, &["add", "-A"]);
        let gitlink = format!("160000,{private_commit},lib");
        git_in(
            &dir,
            &home,
            &["update-index", "--add", "--cacheinfo", &gitlink],
        );
        git_in(&dir, &home, &["commit", "-q", "-m", "hostile submodule"]);
    }
    let daemon = GitDaemon::start(&served);
    for (case, _) in &cases {
        let source = format!("git+{}", daemon.url(&format!("{case}.git")));
        let cmd = bench.command(case, PYTHON, &source, &["--git-submodules"]);
        let run = bench.run(case, cmd, None, WATCHDOG);
        bench.refused(
            &run,
            &[
                "submodule 'lib' of",
                "submodules of a remote repository must be remote too",
            ],
        );
    }
    bench.finish();
}
