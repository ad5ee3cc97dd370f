//! `fnbuild build --source s3://...` against a real S3-compatible store: moto in server mode
//! on 127.0.0.1 (see `common::s3_server`), one per test. Single objects (plain files and
//! archives), prefixes laid out as directories, versioned buckets, every way to give
//! credentials (against moto with IAM authentication on), and the errors a user meets.
//!
//! Every fnbuild process gets `--s3-endpoint http://127.0.0.1:PORT` (or `AWS_ENDPOINT_URL`
//! pointing there), explicit credentials, and no ambient AWS setup: no shared files, no
//! instance metadata service. The runtime base image is read from an OCI layout and the
//! image is written to one (`--output oci:DIR:TAG`), which the tests then read.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::functions::*;
use common::s3_server::{isolate_aws_env, read_policy, Keys, S3Server, S3Setup};
use common::{fnbuild, free_port, sha256_digest};

const HELLO_PY: &str = "def handler(event, context):\n    return 'hello from s3'\n";
const UTIL_PY: &str = "GREETING = 'hi'\n";
const INFO_JSON: &str = "{\"answer\": 42}\n";

/// The tag the tests give their output layouts.
const TAG: &str = "fn";
const SOURCE_ANNOTATION: &str = "org.opencontainers.image.source";
const REVISION_ANNOTATION: &str = "org.opencontainers.image.revision";

/// Credentials moto accepts while authentication is off (it checks none then).
fn any_keys() -> Keys {
    Keys {
        access_key_id: "fnbuild-test-key".into(),
        secret_access_key: "fnbuild-test-secret".into(),
    }
}

// ----------------------------------------------------------------------------------------
// Builds and the images they write.
// ----------------------------------------------------------------------------------------

/// A build's own directories: the cache, and where the OCI layout goes (made by fnbuild;
/// absent until a build succeeds).
struct Job {
    work: tempfile::TempDir,
}

impl Job {
    fn new() -> Job {
        let work = tempfile::tempdir().unwrap();
        fs::create_dir(work.path().join("cache")).unwrap();
        Job { work }
    }

    fn cache(&self) -> PathBuf {
        self.work.path().join("cache")
    }

    fn layout(&self) -> PathBuf {
        self.work.path().join("out")
    }

    /// `fnbuild build --source SOURCE` with the python base layout, the hello.handler
    /// handler, this job's output and cache, no ambient AWS setup, then `extra`. No
    /// endpoint nor credentials: see [`Job::s3`].
    fn cmd(&self, source: &str, extra: &[&str]) -> Command {
        let mut cmd = fnbuild();
        isolate_aws_env(&mut cmd);
        cmd.args(["build", "--source", source, "--runtime", PYTHON])
            .args(["--handler", "hello.handler", "--base-image"])
            .arg(format!("oci:{}", base_layout(PYTHON).display()))
            .arg("--output")
            .arg(format!("oci:{}:{TAG}", self.layout().display()))
            .arg("--cache-dir")
            .arg(self.cache())
            .args(extra);
        cmd
    }

    /// [`Job::cmd`] against `s3` (`--s3-endpoint`) with `keys` in the environment
    /// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`).
    fn s3(&self, s3: &S3Server, source: &str, keys: &Keys, extra: &[&str]) -> Command {
        let mut cmd = self.cmd(source, extra);
        cmd.arg("--s3-endpoint")
            .arg(s3.endpoint())
            .env("AWS_ACCESS_KEY_ID", &keys.access_key_id)
            .env("AWS_SECRET_ACCESS_KEY", &keys.secret_access_key);
        cmd
    }

    /// The image the build wrote.
    fn image(&self) -> Image {
        Image::read(&self.layout(), TAG)
    }

    /// Asserts that a failed build wrote no output layout.
    fn assert_no_output(&self, what: &str) {
        assert!(
            !self.layout().exists(),
            "{what}: a failed build wrote {}",
            self.layout().display()
        );
    }
}

/// An image in an OCI layout: its manifest, read through index.json.
struct Image {
    layout: PathBuf,
    digest: String,
    manifest: serde_json::Value,
}

impl Image {
    fn read(layout: &Path, tag: &str) -> Image {
        let index: serde_json::Value =
            serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
        let descriptor = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
            .unwrap_or_else(|| panic!("no manifest tagged {tag} in {index}"));
        let digest = descriptor["digest"].as_str().unwrap().to_string();
        let manifest = serde_json::from_slice(&blob(layout, &digest)).unwrap();
        Image {
            layout: layout.to_path_buf(),
            digest,
            manifest,
        }
    }

    fn annotation(&self, name: &str) -> Option<&str> {
        self.manifest["annotations"][name].as_str()
    }

    /// The digest of the last layer: the function's code.
    fn code_layer_digest(&self) -> String {
        let layers = self.manifest["layers"].as_array().unwrap();
        layers.last().unwrap()["digest"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// The regular files of the code layer (gzip tar), path to content.
    fn code_files(&self) -> BTreeMap<String, Vec<u8>> {
        let gz = blob(&self.layout, &self.code_layer_digest());
        let mut archive = tar::Archive::new(flate2::read::MultiGzDecoder::new(gz.as_slice()));
        let mut files = BTreeMap::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            if entry.header().entry_type() != tar::EntryType::Regular {
                continue;
            }
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let mut content = Vec::new();
            entry.read_to_end(&mut content).unwrap();
            files.insert(path, content);
        }
        files
    }
}

fn blob(layout: &Path, digest: &str) -> Vec<u8> {
    let hex = digest.strip_prefix("sha256:").unwrap();
    fs::read(layout.join("blobs/sha256").join(hex)).unwrap()
}

/// `(path, content)` pairs as the code layer map holds them: under `kubeless/`.
fn under_kubeless(files: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
    files
        .iter()
        .map(|(p, c)| (format!("kubeless/{p}"), c.as_bytes().to_vec()))
        .collect()
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts that `text` holds every one of `words`.
fn assert_mentions(text: &str, words: &[&str]) {
    for word in words {
        assert!(text.contains(word), "expected {word:?} in:\n{text}");
    }
}

// ----------------------------------------------------------------------------------------
// Archives.
// ----------------------------------------------------------------------------------------

fn tar_bytes(files: &[(&str, &str)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, text) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(text.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(1_700_000_000);
        header.set_cksum();
        builder
            .append_data(&mut header, name, text.as_bytes())
            .unwrap();
    }
    builder.into_inner().unwrap()
}

fn tar_gz(files: &[(&str, &str)]) -> Vec<u8> {
    common::gzip(&tar_bytes(files))
}

fn zip_bytes(files: &[(&str, &str)]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, text) in files {
        zip.start_file(*name, zip::write::SimpleFileOptions::default())
            .unwrap();
        zip.write_all(text.as_bytes()).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

// ----------------------------------------------------------------------------------------
// Secrets.
// ----------------------------------------------------------------------------------------

/// Asserts that the secret key shows in none of the build's output, cache or layout.
fn assert_secret_kept(what: &str, secret: &str, out: &Output, job: &Job) {
    assert!(
        !stderr_of(out).contains(secret),
        "{what}: the secret key is in stderr:\n{}",
        stderr_of(out)
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains(secret),
        "{what}: the secret key is in stdout"
    );
    for dir in [job.cache(), job.layout()] {
        let leaks = files_holding(&dir, &[secret]);
        assert!(leaks.is_empty(), "{what}: the secret key is in {leaks:?}");
    }
}

// ----------------------------------------------------------------------------------------
// Tests.
// ----------------------------------------------------------------------------------------

#[test]
fn a_single_object_is_built_and_its_etag_recorded() {
    let s3 = S3Server::start();
    let put = s3.setup(&S3Setup::new().bucket("functions").object(
        "functions",
        "team/hello.py",
        HELLO_PY.as_bytes(),
    ));
    let etag = &put.object("functions", "team/hello.py").etag;
    let source = "s3://functions/team/hello.py";

    let job = Job::new();
    let out = success(&mut job.s3(&s3, source, &any_keys(), &[]));
    let image = job.image();
    assert_eq!(
        image.code_files(),
        under_kubeless(&[("hello.py", HELLO_PY)])
    );
    assert_eq!(image.annotation(SOURCE_ANNOTATION), Some(source));
    assert_eq!(
        image.annotation(REVISION_ANNOTATION),
        Some(format!("etag:{etag}").as_str())
    );
    let printed = printed_ref(&out);
    assert!(
        printed.starts_with(&format!("oci:{}", job.layout().display()))
            && printed.ends_with(&format!("@{}", image.digest)),
        "{printed}"
    );

    // AWS_ENDPOINT_URL instead of --s3-endpoint: the same image.
    let again = Job::new();
    let mut cmd = again.cmd(source, &[]);
    cmd.env("AWS_ENDPOINT_URL", s3.endpoint())
        .env("AWS_ACCESS_KEY_ID", any_keys().access_key_id)
        .env("AWS_SECRET_ACCESS_KEY", any_keys().secret_access_key);
    success(&mut cmd);
    assert_eq!(again.image().digest, image.digest);

    // AWS_ENDPOINT_URL_S3, the S3-specific variable, gets path-style addressing too.
    let s3_specific = Job::new();
    let mut cmd = s3_specific.cmd(source, &[]);
    cmd.env(
        "AWS_ENDPOINT_URL_S3",
        s3.endpoint().replace("127.0.0.1", "localhost"),
    )
    .env("AWS_ACCESS_KEY_ID", any_keys().access_key_id)
    .env("AWS_SECRET_ACCESS_KEY", any_keys().secret_access_key);
    success(&mut cmd);
    assert_eq!(s3_specific.image().digest, image.digest);
}

/// A single object is stored under the handler's module name, as Kubeless stores
/// `--from-file`, whatever it is called: even `src`, the name of the workspace's directory.
#[test]
fn a_single_object_is_stored_under_the_handler_module_whatever_its_name() {
    let s3 = S3Server::start();
    s3.setup(&S3Setup::new().bucket("functions").object(
        "functions",
        "team/src",
        HELLO_PY.as_bytes(),
    ));
    let job = Job::new();
    let out = success(&mut job.s3(&s3, "s3://functions/team/src", &any_keys(), &[]));
    let stderr = stderr_of(&out);
    assert_mentions(
        &stderr,
        &[
            "stored under the handler's module name",
            "stored_as=hello.py",
        ],
    );
    assert_eq!(
        job.image().code_files(),
        under_kubeless(&[("hello.py", HELLO_PY)])
    );
}

#[test]
fn archive_objects_give_the_code_layer_of_the_same_files_in_a_directory() {
    let files = [
        ("hello.py", HELLO_PY),
        ("lib/util.py", UTIL_PY),
        ("lib/data/info.json", INFO_JSON),
    ];
    let s3 = S3Server::start();
    s3.setup(
        &S3Setup::new()
            .bucket("archives")
            .object("archives", "fn.zip", &zip_bytes(&files))
            .object("archives", "builds/fn.tar.gz", &tar_gz(&files)),
    );

    let local = Job::new();
    let dir = function_dir(&files);
    success(&mut local.cmd(dir.path().to_str().unwrap(), &[]));
    let expected = local.image();
    assert_eq!(expected.code_files(), under_kubeless(&files));

    for source in ["s3://archives/fn.zip", "s3://archives/builds/fn.tar.gz"] {
        let job = Job::new();
        success(&mut job.s3(&s3, source, &any_keys(), &[]));
        let image = job.image();
        assert_eq!(
            image.code_layer_digest(),
            expected.code_layer_digest(),
            "{source}: {:?}",
            image.code_files().keys()
        );
        assert_eq!(image.annotation(SOURCE_ANNOTATION), Some(source));
        let revision = image.annotation(REVISION_ANNOTATION).unwrap_or_default();
        assert!(revision.starts_with("etag:"), "{source}: {revision}");
    }
}

#[test]
fn a_prefix_is_built_as_a_directory_of_its_objects_only() {
    let s3 = S3Server::start();
    s3.setup(
        &S3Setup::new()
            .bucket("functions")
            .object("functions", "team/fn/", b"") // a "directory" marker
            .object("functions", "team/fn/hello.py", HELLO_PY.as_bytes())
            .object("functions", "team/fn/lib/util.py", UTIL_PY.as_bytes())
            .object(
                "functions",
                "team/fn/lib/data/info.json",
                INFO_JSON.as_bytes(),
            )
            // Outside the prefix, some sharing its first characters.
            .object("functions", "team/fn2/hello.py", b"OTHER = 1\n")
            .object("functions", "team/fn.py", b"OTHER = 2\n")
            .object("functions", "team/other.py", b"OTHER = 3\n")
            .object("functions", "hello.py", b"OTHER = 4\n"),
    );
    let source = "s3://functions/team/fn/";
    let job = Job::new();
    success(&mut job.s3(&s3, source, &any_keys(), &[]));
    let image = job.image();
    assert_eq!(
        image.code_files(),
        under_kubeless(&[
            ("hello.py", HELLO_PY),
            ("lib/util.py", UTIL_PY),
            ("lib/data/info.json", INFO_JSON),
        ])
    );
    assert_eq!(image.annotation(SOURCE_ANNOTATION), Some(source));
    let revision = image.annotation(REVISION_ANNOTATION).unwrap().to_string();
    let hex = revision
        .strip_prefix("listing:")
        .unwrap_or_else(|| panic!("expected listing:HEX, got {revision}"));
    assert!(
        hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
        "{revision}"
    );

    // Changing an object under the prefix changes the revision and the code; changing one
    // outside changes neither.
    s3.setup(&S3Setup::new().object("functions", "team/other.py", b"OTHER = 5\n"));
    let same = Job::new();
    success(&mut same.s3(&s3, source, &any_keys(), &[]));
    assert_eq!(same.image().digest, image.digest);
    s3.setup(&S3Setup::new().object("functions", "team/fn/lib/util.py", b"GREETING = 'hey'\n"));
    let changed = Job::new();
    success(&mut changed.s3(&s3, source, &any_keys(), &[]));
    let changed = changed.image();
    assert_ne!(
        changed.annotation(REVISION_ANNOTATION),
        Some(revision.as_str())
    );
    assert_eq!(
        changed.code_files()["kubeless/lib/util.py"],
        b"GREETING = 'hey'\n"
    );
}

#[test]
fn a_versioned_bucket_records_the_version_id() {
    let s3 = S3Server::start();
    let v2 = "def handler(event, context):\n    return 'v2'\n";
    let put = s3.setup(
        &S3Setup::new()
            .versioned_bucket("versioned")
            .object("versioned", "hello.py", HELLO_PY.as_bytes())
            .object("versioned", "hello.py", v2.as_bytes()),
    );
    let latest = put.object("versioned", "hello.py");
    let version = latest
        .version_id
        .clone()
        .expect("moto gives a version ID in a versioned bucket");
    assert_ne!(put.objects[0].version_id.as_deref(), Some(version.as_str()));

    let job = Job::new();
    success(&mut job.s3(&s3, "s3://versioned/hello.py", &any_keys(), &[]));
    let image = job.image();
    assert_eq!(
        image.annotation(REVISION_ANNOTATION),
        Some(format!("version:{version}").as_str())
    );
    assert_eq!(image.code_files(), under_kubeless(&[("hello.py", v2)]));
}

/// A moto with authentication on, holding `functions/hello.py`, a bucket `whole-fn` that is
/// a function directory (`hello.py`, `lib/util.py`), and two users: `reader` (may list and
/// read both buckets) and `nobody` (no policy).
///
/// The prefix built with authentication on is a whole bucket: moto checks signatures
/// wrongly when the query string holds a percent-encoded `/` (see `common::s3_server`).
fn auth_server() -> (S3Server, Keys, Keys) {
    let s3 = S3Server::start();
    let made = s3.setup(
        &S3Setup::new()
            .bucket("functions")
            .object("functions", "hello.py", HELLO_PY.as_bytes())
            .bucket("whole-fn")
            .object("whole-fn", "hello.py", HELLO_PY.as_bytes())
            .object("whole-fn", "lib/util.py", UTIL_PY.as_bytes())
            .user("reader", Some(read_policy(&["functions", "whole-fn"])))
            .user("nobody", None),
    );
    s3.set_auth(true);
    (s3, made.keys("reader").clone(), made.keys("nobody").clone())
}

#[test]
fn credentials_from_key_files_environment_and_shared_files_work_and_stay_secret() {
    let (s3, reader, _) = auth_server();
    let secrets = tempfile::tempdir().unwrap();
    let secret = reader.secret_access_key.as_str();
    let expected = under_kubeless(&[("hello.py", HELLO_PY)]);
    let debug = ["--log-level", "debug"];

    // Key files, as a mounted Kubernetes secret has them (with a trailing newline).
    let access_file = secrets.path().join("access-key");
    let secret_file = secrets.path().join("secret-key");
    fs::write(&access_file, format!("{}\n", reader.access_key_id)).unwrap();
    fs::write(&secret_file, format!("{secret}\n")).unwrap();
    let job = Job::new();
    let mut cmd = job.cmd("s3://functions/hello.py", &debug);
    cmd.arg("--s3-endpoint")
        .arg(s3.endpoint())
        .arg("--s3-access-key-file")
        .arg(&access_file)
        .arg("--s3-secret-key-file")
        .arg(&secret_file);
    let out = success(&mut cmd);
    assert_eq!(job.image().code_files(), expected);
    assert_secret_kept("key files", secret, &out, &job);

    // The environment, with a region given.
    let job = Job::new();
    let mut cmd = job.s3(
        &s3,
        "s3://whole-fn/",
        &reader,
        &["--log-level", "debug", "--s3-region", "eu-central-1"],
    );
    let out = success(&mut cmd);
    assert_eq!(
        job.image().code_files(),
        under_kubeless(&[("hello.py", HELLO_PY), ("lib/util.py", UTIL_PY)])
    );
    assert_secret_kept("environment", secret, &out, &job);

    // A shared credentials file and a profile in it; the default profile's keys are wrong.
    let shared = secrets.path().join("credentials");
    fs::write(
        &shared,
        format!(
            "[default]\naws_access_key_id = AKIAWRONGWRONGWRONG0\n\
             aws_secret_access_key = wrong-wrong-wrong\n\n\
             [fnbuild-test]\naws_access_key_id = {}\naws_secret_access_key = {secret}\n",
            reader.access_key_id
        ),
    )
    .unwrap();
    // The search finds the secret where it is (the key file and the shared file).
    assert_eq!(files_holding(secrets.path(), &[secret]), {
        let mut holding = vec![secret_file.clone(), shared.clone()];
        holding.sort();
        holding
    },);
    let job = Job::new();
    let mut cmd = job.cmd("s3://functions/hello.py", &debug);
    cmd.arg("--s3-endpoint")
        .arg(s3.endpoint())
        .env("AWS_SHARED_CREDENTIALS_FILE", &shared)
        .env("AWS_PROFILE", "fnbuild-test");
    let out = success(&mut cmd);
    assert_eq!(job.image().code_files(), expected);
    assert_secret_kept("shared credentials file", secret, &out, &job);
}

#[test]
fn authentication_and_permission_failures_say_so() {
    let (s3, reader, nobody) = auth_server();

    // A user without S3 permissions: access denied, for an object and for a prefix.
    for source in ["s3://functions/hello.py", "s3://whole-fn/"] {
        let job = Job::new();
        let (code, stderr) = failure(&mut job.s3(&s3, source, &nobody, &[]));
        assert_eq!(code, 1, "{stderr}");
        assert_mentions(&stderr, &["access denied", source, "read permission"]);
        assert!(!stderr.contains(&nobody.secret_access_key), "{stderr}");
        job.assert_no_output(source);
    }

    // An access key moto does not know.
    let unknown = Keys {
        access_key_id: "AKIAUNKNOWNUNKNOWN00".into(),
        secret_access_key: "not-a-real-secret".into(),
    };
    let job = Job::new();
    let (code, stderr) = failure(&mut job.s3(&s3, "s3://functions/hello.py", &unknown, &[]));
    assert_eq!(code, 1, "{stderr}");
    assert_mentions(&stderr, &["authentication failed", "InvalidAccessKeyId"]);
    job.assert_no_output("unknown key");

    // The reader's key with a wrong secret.
    let wrong_secret = Keys {
        access_key_id: reader.access_key_id.clone(),
        secret_access_key: "this-is-not-the-secret".into(),
    };
    let job = Job::new();
    let (code, stderr) = failure(&mut job.s3(&s3, "s3://functions/hello.py", &wrong_secret, &[]));
    assert_eq!(code, 1, "{stderr}");
    assert_mentions(&stderr, &["authentication failed", "SignatureDoesNotMatch"]);
    assert!(!stderr.contains("this-is-not-the-secret"), "{stderr}");
    job.assert_no_output("wrong secret");
}

#[test]
fn bad_locations_and_missing_credentials_say_what_is_wrong() {
    let s3 = S3Server::start();
    s3.setup(
        &S3Setup::new()
            .bucket("functions")
            .object("functions", "team/fn/hello.py", HELLO_PY.as_bytes())
            // S3 keys may hold `..`: under a prefix, this one would climb out of it.
            .object("functions", "team/evil/hello.py", HELLO_PY.as_bytes())
            .object("functions", "team/evil/../../escape.py", b"ESCAPED = 1\n"),
    );
    let endpoint = s3.endpoint();
    let cases: [(&str, Vec<String>); 5] = [
        (
            "s3://no-such-bucket/hello.py",
            vec!["bucket 'no-such-bucket' not found".into(), endpoint.clone()],
        ),
        (
            "s3://no-such-bucket/team/fn/",
            vec!["bucket 'no-such-bucket' not found".into()],
        ),
        (
            "s3://functions/team/fn/missing.py",
            vec!["key 'team/fn/missing.py' not found in bucket 'functions'".into()],
        ),
        (
            "s3://functions/team/empty/",
            vec!["no objects under s3://functions/team/empty/".into()],
        ),
        (
            "s3://functions/team/evil/",
            vec![
                "team/evil/../../escape.py".into(),
                "outside the function's directory".into(),
            ],
        ),
    ];
    for (source, words) in cases {
        let job = Job::new();
        let (code, stderr) = failure(&mut job.s3(&s3, source, &any_keys(), &[]));
        assert_eq!(code, 1, "{source}: {stderr}");
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        assert_mentions(&stderr, &words);
        job.assert_no_output(source);
    }

    // No credentials anywhere (no key files, no environment, no shared files, no web
    // identity): the build fails before asking, and says none were found.
    let job = Job::new();
    let mut cmd = job.cmd("s3://functions/team/fn/hello.py", &[]);
    cmd.arg("--s3-endpoint").arg(&endpoint);
    let (code, stderr) = failure(&mut cmd);
    assert_eq!(code, 1, "{stderr}");
    assert_mentions(&stderr, &["no credentials"]);
    job.assert_no_output("no credentials");
}

/// An endpoint nothing answers on ends the build after the SDK's few retries, not when a
/// deadline passes: with deadlines of an hour, a refused connection fails naming the
/// endpoint, and an endpoint that hangs up on every connection is tried three times.
#[test]
fn an_unreachable_endpoint_fails_after_its_retries_not_a_deadline() {
    let refused = format!("http://127.0.0.1:{}", free_port()); // nothing listens there
    let hangs_up = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hangs_up_endpoint = format!("http://{}", hangs_up.local_addr().unwrap());
    let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = connections.clone();
    std::thread::spawn(move || {
        for stream in hangs_up.incoming() {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(stream);
        }
    });
    for endpoint in [&refused, &hangs_up_endpoint] {
        let job = Job::new();
        let mut cmd = job.cmd(
            "s3://functions/hello.py",
            &["--fetch-timeout", "1h", "--fetch-idle-timeout", "1h"],
        );
        cmd.args(["--s3-endpoint", endpoint])
            .env("AWS_ACCESS_KEY_ID", any_keys().access_key_id)
            .env("AWS_SECRET_ACCESS_KEY", any_keys().secret_access_key);
        let (code, stderr) = failure(&mut cmd);
        assert_eq!(code, 1, "{stderr}");
        assert_mentions(&stderr, &["cannot reach the S3 endpoint", endpoint]);
        assert!(
            !stderr.contains("--fetch-timeout") && !stderr.contains("--fetch-idle-timeout"),
            "{endpoint}: the build should fail on the connection, not on a deadline:\n{stderr}"
        );
        job.assert_no_output("unreachable endpoint");
    }
    assert_eq!(
        connections.load(std::sync::atomic::Ordering::SeqCst),
        3,
        "the endpoint that hangs up should be tried three times (the SDK's attempts)"
    );
}

#[test]
fn usage_errors_and_checksums() {
    let s3 = S3Server::start();
    let files = [("hello.py", HELLO_PY), ("lib/util.py", UTIL_PY)];
    let tgz = tar_gz(&files);
    s3.setup(
        &S3Setup::new()
            .bucket("functions")
            .object("functions", "fn.tgz", &tgz)
            .object("functions", "team/fn/hello.py", HELLO_PY.as_bytes()),
    );
    let keys = tempfile::tempdir().unwrap();
    let access_file = keys.path().join("access-key");
    fs::write(&access_file, "fnbuild-test-key\n").unwrap();

    // --s3-access-key-file without --s3-secret-key-file.
    let job = Job::new();
    let mut cmd = job.cmd("s3://functions/fn.tgz", &[]);
    cmd.arg("--s3-endpoint")
        .arg(s3.endpoint())
        .arg("--s3-access-key-file")
        .arg(&access_file);
    let (code, stderr) = failure(&mut cmd);
    assert_eq!(code, 2, "{stderr}");
    assert_mentions(&stderr, &["--s3-secret-key-file"]);
    job.assert_no_output("access key file alone");

    // --checksum with a prefix: a usage error before anything is fetched (this prefix is
    // empty, which would otherwise be the error).
    let checksum = sha256_digest(&tgz);
    let job = Job::new();
    let (code, stderr) = failure(&mut job.s3(
        &s3,
        "s3://functions/nothing-here/",
        &any_keys(),
        &["--checksum", &checksum],
    ));
    assert_eq!(code, 2, "{stderr}");
    assert_mentions(&stderr, &["--checksum", "prefix"]);
    job.assert_no_output("checksum with a prefix");

    // The right checksum of an archive object builds; a wrong one fails, naming both.
    let job = Job::new();
    success(&mut job.s3(
        &s3,
        "s3://functions/fn.tgz",
        &any_keys(),
        &["--checksum", &checksum],
    ));
    assert_eq!(job.image().code_files(), under_kubeless(&files));
    let wrong = sha256_digest(b"something else");
    let job = Job::new();
    let (code, stderr) = failure(&mut job.s3(
        &s3,
        "s3://functions/fn.tgz",
        &any_keys(),
        &["--checksum", &wrong],
    ));
    assert_eq!(code, 1, "{stderr}");
    assert_mentions(&stderr, &["checksum mismatch", &checksum, &wrong]);
    job.assert_no_output("wrong checksum");
}

#[test]
fn source_limits_apply_to_s3_sources() {
    let s3 = S3Server::start();
    let big = "x".repeat(1000);
    s3.setup(
        &S3Setup::new()
            .bucket("functions")
            .object("functions", "team/fn/hello.py", HELLO_PY.as_bytes())
            .object("functions", "team/fn/a.txt", b"a\n")
            .object("functions", "team/fn/b.txt", b"b\n")
            .object("functions", "big/hello.py", big.as_bytes()),
    );

    let job = Job::new();
    let (code, stderr) = failure(&mut job.s3(
        &s3,
        "s3://functions/team/fn/",
        &any_keys(),
        &["--max-source-files", "1"],
    ));
    assert_eq!(code, 1, "{stderr}");
    assert_mentions(&stderr, &["s3://functions/team/fn/", "--max-source-files"]);
    job.assert_no_output("too many objects");

    for source in ["s3://functions/big/hello.py", "s3://functions/big/"] {
        let job = Job::new();
        let (code, stderr) =
            failure(&mut job.s3(&s3, source, &any_keys(), &["--max-source-size", "10"]));
        assert_eq!(code, 1, "{source}: {stderr}");
        assert_mentions(&stderr, &["--max-source-size"]);
        job.assert_no_output(source);
    }

    // Within the limits, the same prefix builds.
    let job = Job::new();
    success(&mut job.s3(
        &s3,
        "s3://functions/team/fn/",
        &any_keys(),
        &["--max-source-files", "3", "--max-source-size", "100"],
    ));
    assert_eq!(job.image().code_files().len(), 3);
}

/// Web identity (IRSA on EKS, MinIO's STS): the token file and role are exchanged with
/// AssumeRoleWithWebIdentity at the endpoint's STS, and those credentials read the object.
#[test]
fn web_identity_credentials_are_exchanged_at_the_endpoint() {
    let s3 = S3Server::start();
    s3.setup(&S3Setup::new().bucket("functions").object(
        "functions",
        "hello.py",
        HELLO_PY.as_bytes(),
    ));
    let token_dir = tempfile::tempdir().unwrap();
    let token_file = token_dir.path().join("token");
    std::fs::write(
        &token_file,
        "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJmbmJ1aWxkIn0.c2lnbmF0dXJl\n",
    )
    .unwrap();
    let with_identity = |job: &Job, token: &Path| {
        let mut cmd = job.cmd(
            "s3://functions/hello.py",
            &["--s3-endpoint", &s3.endpoint()],
        );
        cmd.env("AWS_WEB_IDENTITY_TOKEN_FILE", token).env(
            "AWS_ROLE_ARN",
            "arn:aws:iam::123456789012:role/function-reader",
        );
        cmd
    };
    // No access keys anywhere (the environment is cleared): only the web identity can sign.
    let job = Job::new();
    success(&mut with_identity(&job, &token_file));
    assert_eq!(
        job.image().code_files(),
        under_kubeless(&[("hello.py", HELLO_PY)])
    );

    let job = Job::new();
    let (code, stderr) = failure(&mut with_identity(&job, &token_dir.path().join("missing")));
    assert_eq!(code, 1, "{stderr}");
    assert_mentions(&stderr, &["web identity token", "missing"]);
    job.assert_no_output("missing web identity token");
}
