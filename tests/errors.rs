//! Bad inputs to `fnbuild build`: each gives a clear message naming what failed and what is
//! accepted, a non-zero exit code (2 for a bad command line, 1 for a failed build), and
//! nothing pushed to the destination registry.
//!
//! The runtime base image is read from an OCI layout (`--base-image oci:...`) wherever a
//! registry base is not the point, so these tests stay fast and independent of each other:
//! each has its own registry, cache and function directories.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::functions::*;
use common::{free_port, sha256_digest, walk, Registry, RegistryOptions};

const HELLO_PY: &str = "def handler(event, context):\n    return 'hello'\n\n\
                        def helper():\n    return 1\n";

/// `oci:DIR` of the python runtime base image (built once, cached).
fn base_arg() -> String {
    format!("oci:{}", base_layout(PYTHON).display())
}

/// A function directory holding `hello.py` only.
fn hello_dir() -> tempfile::TempDir {
    function_dir(&[("hello.py", HELLO_PY)])
}

/// `fnbuild build` with the base image read from the OCI layout, then `args`; never picks
/// up a developer's `DOCKER_CONFIG`.
fn build_with(registry: &Registry, cache: &Path, args: &[&str]) -> Command {
    let base = base_arg();
    let mut all: Vec<&str> = vec!["--base-image", &base];
    all.extend_from_slice(args);
    let mut cmd = build_cmd(registry, cache, &all);
    // Never pick up a developer's credentials or Docker config.
    cmd.env_remove("DOCKER_CONFIG");
    cmd
}

/// The usual arguments of a build of `source`, with `handler`, pushed to `<registry>/fn/hello:v1`.
fn standard_args(registry: &Registry, source: &Path, handler: &str) -> Vec<String> {
    vec![
        "--source".into(),
        source.display().to_string(),
        "--runtime".into(),
        PYTHON.into(),
        "--handler".into(),
        handler.into(),
        "--image".into(),
        image_ref(registry),
    ]
}

fn image_ref(registry: &Registry) -> String {
    format!("{}/fn/hello:v1", registry.host())
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// Asserts the registry holds no function repository (base images under `fnbuild/` are fine).
fn assert_nothing_pushed(registry: &Registry) {
    let pushed: Vec<String> = registry
        .catalog()
        .into_iter()
        .filter(|repo| !repo.starts_with("fnbuild/"))
        .collect();
    assert!(
        pushed.is_empty(),
        "a failed build pushed repositories: {pushed:?}"
    );
    assert!(registry.tags("fn/hello").is_empty());
}

/// Asserts that `stderr` contains every one of `words`.
fn assert_mentions(stderr: &str, words: &[&str]) {
    for word in words {
        assert!(
            stderr.contains(word),
            "expected the error to mention {word:?}; stderr:\n{stderr}"
        );
    }
}

/// Runs a build expected to fail with `code`; returns its stderr. Checks that it failed with
/// an `error:` line (not a panic) and that nothing reached the registry.
fn expect_failure(registry: &Registry, cmd: &mut Command, code: i32) -> String {
    let (actual, stderr) = failure(cmd);
    eprintln!("--- {cmd:?} exited {actual}:\n{stderr}");
    assert_eq!(actual, code, "exit code; stderr:\n{stderr}");
    assert!(
        stderr.contains("error:") || stderr.contains("ERROR"),
        "expected an error message; stderr:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "fnbuild panicked:\n{stderr}");
    assert_nothing_pushed(registry);
    stderr
}

/// A tar archive written as an attacker would: entry names and link targets set in the
/// header bytes directly, bypassing the `tar` builder's own path checks.
/// Entries: (path, type, data, link target).
fn hostile_tar(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, kind, data, link) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(*kind);
        header.set_mode(0o644);
        header.set_size(data.len() as u64);
        header.set_mtime(0);
        let name = &mut header.as_old_mut().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        if let Some(link) = link {
            header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        header.set_cksum();
        builder.append(&header, *data).unwrap();
    }
    builder.into_inner().unwrap()
}

#[test]
fn unknown_runtime_lists_the_accepted_runtimes() {
    let registry = Registry::start(RegistryOptions::default());
    let cache = tempfile::tempdir().unwrap();
    let source = hello_dir();
    let mut args = standard_args(&registry, source.path(), "hello.handler");
    args[3] = "ruby2.6".into();
    let stderr = expect_failure(
        &registry,
        &mut build_with(&registry, cache.path(), &strs(&args)),
        2,
    );
    assert_mentions(
        &stderr,
        &["unknown runtime", "ruby2.6", "python3.13", "nodejs20"],
    );
}

#[test]
fn handler_without_a_dot_says_module_dot_function() {
    let registry = Registry::start(RegistryOptions::default());
    let cache = tempfile::tempdir().unwrap();
    let source = hello_dir();
    let args = standard_args(&registry, source.path(), "hello");
    let stderr = expect_failure(
        &registry,
        &mut build_with(&registry, cache.path(), &strs(&args)),
        2,
    );
    assert_mentions(&stderr, &["--handler", "'hello'", "MODULE.FUNCTION"]);
}

#[test]
fn missing_module_is_named_with_the_files_found() {
    let registry = Registry::start(RegistryOptions::default());
    let cache = tempfile::tempdir().unwrap();
    let source = function_dir(&[("hello.py", HELLO_PY), ("util.py", "X = 1\n")]);
    let args = standard_args(&registry, source.path(), "nope.handler");
    let stderr = expect_failure(
        &registry,
        &mut build_with(&registry, cache.path(), &strs(&args)),
        1,
    );
    assert_mentions(
        &stderr,
        &["no module 'nope'", "nope.py", "hello.py", "util.py"],
    );
}

#[test]
fn missing_function_is_named_with_the_names_found() {
    let registry = Registry::start(RegistryOptions::default());
    let cache = tempfile::tempdir().unwrap();
    let source = hello_dir();
    let args = standard_args(&registry, source.path(), "hello.nope");
    let stderr = expect_failure(
        &registry,
        &mut build_with(&registry, cache.path(), &strs(&args)),
        1,
    );
    assert_mentions(
        &stderr,
        &["no function 'nope'", "hello.py", "handler", "helper"],
    );
}

#[test]
fn checksum_mismatch_shows_both_digests() {
    let registry = Registry::start(RegistryOptions::default());
    let cache = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("hello.tgz");
    let bytes = common::gzip(&common::tar_of(&[("hello.py", HELLO_PY.as_bytes())]));
    fs::write(&archive, &bytes).unwrap();
    let actual = sha256_digest(&bytes);
    let wrong = format!("sha256:{}", "0123456789abcdef".repeat(4));
    assert_ne!(actual, wrong);

    let mut args = standard_args(&registry, &archive, "hello.handler");
    args.extend(["--checksum".into(), wrong.clone()]);
    let stderr = expect_failure(
        &registry,
        &mut build_with(&registry, cache.path(), &strs(&args)),
        1,
    );
    assert_mentions(
        &stderr,
        &["checksum mismatch", "hello.tgz", &actual, &wrong],
    );

    // The right checksum builds: the archive itself was fine.
    let mut args = standard_args(&registry, &archive, "hello.handler");
    args.extend(["--checksum".into(), actual]);
    success(&mut build_with(&registry, cache.path(), &strs(&args)));
    assert_eq!(registry.image_tags("fn/hello"), vec!["v1"]);
}

#[test]
fn malformed_checksum_is_a_usage_error() {
    let registry = Registry::start(RegistryOptions::default());
    let cache = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("hello.tgz");
    fs::write(
        &archive,
        common::gzip(&common::tar_of(&[("hello.py", HELLO_PY.as_bytes())])),
    )
    .unwrap();
    let mut args = standard_args(&registry, &archive, "hello.handler");
    args.extend(["--checksum".into(), "md5:abc".into()]);
    let stderr = expect_failure(
        &registry,
        &mut build_with(&registry, cache.path(), &strs(&args)),
        2,
    );
    assert_mentions(&stderr, &["--checksum", "md5:abc", "sha256:", "64"]);
}

#[test]
fn archive_entry_with_dot_dot_is_refused_and_nothing_escapes() {
    let registry = Registry::start(RegistryOptions::default());
    let root = tempfile::tempdir().unwrap();
    // The source is unpacked under CACHE/tmp/source-*/src: four levels below `root`, so
    // the entry below would land right in `root` if it were followed.
    let cache = root.path().join("cache");
    let archive = root.path().join("fn.tar");
    fs::write(
        &archive,
        hostile_tar(&[
            (
                "hello.py",
                tar::EntryType::Regular,
                HELLO_PY.as_bytes(),
                None,
            ),
            (
                "../../../../escaped.py",
                tar::EntryType::Regular,
                b"print('escaped')\n",
                None,
            ),
        ]),
    )
    .unwrap();
    let before = walk(root.path());
    let args = standard_args(&registry, &archive, "hello.handler");
    let stderr = expect_failure(
        &registry,
        &mut build_with(&registry, &cache, &strs(&args)),
        1,
    );
    assert_mentions(
        &stderr,
        &[
            "fn.tar",
            "../../../../escaped.py",
            "outside the function's directory",
        ],
    );
    let written: Vec<PathBuf> = walk(root.path())
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n == "escaped.py"))
        .collect();
    assert!(written.is_empty(), "the archive wrote {written:?}");
    assert!(
        !before.iter().any(|p| p.ends_with("escaped.py"))
            && !Path::new("/escaped.py").exists()
            && !std::env::temp_dir().join("escaped.py").exists()
    );
    // The failed build left no unpacked source behind in the cache.
    let leftovers: Vec<PathBuf> = walk(&cache.join("tmp"));
    assert!(leftovers.is_empty(), "left in the cache: {leftovers:?}");
}

#[test]
fn archive_symlinks_pointing_outside_are_refused() {
    let registry = Registry::start(RegistryOptions::default());
    let root = tempfile::tempdir().unwrap();
    let cache = root.path().join("cache");
    for (i, (link, target)) in [("passwd", "/etc/passwd"), ("up/x", "../../../../../x")]
        .into_iter()
        .enumerate()
    {
        let archive = root.path().join(format!("fn{i}.tar"));
        fs::write(
            &archive,
            hostile_tar(&[
                (
                    "hello.py",
                    tar::EntryType::Regular,
                    HELLO_PY.as_bytes(),
                    None,
                ),
                (link, tar::EntryType::Symlink, b"", Some(target)),
                // Written through the link if it were created.
                (
                    &format!("{link}/through.txt"),
                    tar::EntryType::Regular,
                    b"through\n",
                    None,
                ),
            ]),
        )
        .unwrap();
        let passwd_before = fs::read("/etc/passwd").unwrap();
        let args = standard_args(&registry, &archive, "hello.handler");
        let stderr = expect_failure(
            &registry,
            &mut build_with(&registry, &cache, &strs(&args)),
            1,
        );
        assert_mentions(
            &stderr,
            &[
                &format!("fn{i}.tar"),
                link,
                target,
                "outside the function's directory",
            ],
        );
        assert_eq!(fs::read("/etc/passwd").unwrap(), passwd_before);
        let escaped: Vec<PathBuf> = walk(root.path())
            .into_iter()
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n == "x" || n == "through.txt" || n == "passwd")
            })
            .collect();
        assert!(escaped.is_empty(), "the archive wrote {escaped:?}");
    }
}

/// A registry that refuses connections is named after a few quick retries (their waits in
/// the log), not after minutes of them.
#[test]
fn unreachable_registry_is_named_after_a_few_retries() {
    let registry = Registry::start(RegistryOptions::default());
    let cache = tempfile::tempdir().unwrap();
    let source = hello_dir();
    let port = free_port();
    let target = format!("127.0.0.1:{port}");
    let mut args = standard_args(&registry, source.path(), "hello.handler");
    args[7] = format!("{target}/fn/x:1");
    let mut cmd = build_with(&registry, cache.path(), &strs(&args));
    let stderr = expect_failure(&registry, &mut cmd, 1);
    assert_mentions(&stderr, &["cannot reach registry", &target]);
    let waits: Vec<&str> = stderr
        .lines()
        .filter_map(|line| line.split("retrying in ").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .collect();
    assert!(
        (1..=3).contains(&waits.len()) && waits.iter().all(|w| w.ends_with("ms") || w.trim_end_matches('s').parse::<f64>().is_ok_and(|s| s <= 2.0)),
        "expected up to three retries of at most 2 s each before giving up, got waits {waits:?}:\n{stderr}"
    );
}

/// A basic-auth registry and a Docker config holding a wrong password for it.
#[test]
fn wrong_credentials_are_reported_without_the_password() {
    let registry = Registry::start(RegistryOptions {
        basic_auth: Some(("fnuser".into(), "right-pass-4711".into())),
        tls: false,
    });
    let cache = tempfile::tempdir().unwrap();
    let source = hello_dir();
    let config = tempfile::tempdir().unwrap();
    let wrong = "WrongPass-9f3e1c";
    let auth = common::base64_encode(format!("fnuser:{wrong}").as_bytes());
    fs::write(
        config.path().join("config.json"),
        serde_json::json!({ "auths": { registry.host(): { "auth": auth } } }).to_string(),
    )
    .unwrap();

    let mut args = standard_args(&registry, source.path(), "hello.handler");
    args.extend([
        "--docker-config".into(),
        config.path().display().to_string(),
        "--log-level".into(),
        "debug".into(),
    ]);
    let stderr = expect_failure(
        &registry,
        &mut build_with(&registry, cache.path(), &strs(&args)),
        1,
    );
    assert_mentions(
        &stderr,
        &["rejected the credentials", &registry.host(), "fnuser"],
    );
    assert_mentions(&stderr, &[&config.path().display().to_string()]);
    for secret in [wrong, auth.as_str(), "right-pass-4711"] {
        assert!(
            !stderr.contains(secret),
            "the error shows a secret ({secret}):\n{stderr}"
        );
    }
}

#[test]
fn missing_credentials_hint_where_to_put_them() {
    let registry = Registry::start(RegistryOptions {
        basic_auth: Some(("fnuser".into(), "right-pass-4711".into())),
        tls: false,
    });
    let cache = tempfile::tempdir().unwrap();
    let source = hello_dir();
    let home = tempfile::tempdir().unwrap();
    let args = standard_args(&registry, source.path(), "hello.handler");
    let mut cmd = build_with(&registry, cache.path(), &strs(&args));
    cmd.env("HOME", home.path());
    let stderr = expect_failure(&registry, &mut cmd, 1);
    assert_mentions(
        &stderr,
        &[
            &registry.host(),
            "credentials",
            "config.json",
            "--docker-config",
            "DOCKER_CONFIG",
        ],
    );
}

#[test]
fn dependencies_that_do_not_exist_show_pips_output() {
    let registry = Registry::start(RegistryOptions::default());
    let cache = tempfile::tempdir().unwrap();
    let source = function_dir(&[
        ("hello.py", HELLO_PY),
        (
            "requirements.txt",
            "this-package-does-not-exist-fnbuild-test==0.0.1\n",
        ),
    ]);
    let args = standard_args(&registry, source.path(), "hello.handler");
    let stderr = expect_failure(
        &registry,
        &mut build_with(&registry, cache.path(), &strs(&args)),
        1,
    );
    assert_mentions(
        &stderr,
        &[
            "installing the function's dependencies",
            "pip",
            "failed",
            "this-package-does-not-exist-fnbuild-test",
        ],
    );
    // pip's own words, whether it reached the index or not.
    assert!(
        stderr.contains("No matching distribution") || stderr.contains("Could not find a version"),
        "expected pip's output tail; stderr:\n{stderr}"
    );
}

#[test]
fn dependencies_file_that_does_not_exist_is_a_usage_error() {
    let registry = Registry::start(RegistryOptions::default());
    let cache = tempfile::tempdir().unwrap();
    let source = hello_dir();
    let mut args = standard_args(&registry, source.path(), "hello.handler");
    args.extend([
        "--dependencies".into(),
        "/nonexistent/requirements.txt".into(),
    ]);
    let stderr = expect_failure(
        &registry,
        &mut build_with(&registry, cache.path(), &strs(&args)),
        2,
    );
    assert_mentions(
        &stderr,
        &[
            "--dependencies",
            "/nonexistent/requirements.txt",
            "requirements.txt",
        ],
    );
}

#[test]
fn source_that_does_not_exist_is_named() {
    let registry = Registry::start(RegistryOptions::default());
    let cache = tempfile::tempdir().unwrap();
    let args = standard_args(
        &registry,
        Path::new("/nonexistent-fnbuild/fn"),
        "hello.handler",
    );
    let (code, stderr) = failure(&mut build_with(&registry, cache.path(), &strs(&args)));
    assert!(
        code == 1 || code == 2,
        "exit code {code}; stderr:\n{stderr}"
    );
    assert_mentions(
        &stderr,
        &["/nonexistent-fnbuild/fn", "no such file or directory"],
    );
    assert_nothing_pushed(&registry);
}

#[test]
fn no_output_is_a_usage_error() {
    let registry = Registry::start(RegistryOptions::default());
    let cache = tempfile::tempdir().unwrap();
    let source = hello_dir();
    let args = standard_args(&registry, source.path(), "hello.handler");
    // Everything but --image REF.
    let stderr = expect_failure(
        &registry,
        &mut build_with(&registry, cache.path(), &strs(&args[..6])),
        2,
    );
    assert_mentions(&stderr, &["--image", "--output"]);
}

#[test]
fn bad_image_reference_shows_the_expected_form() {
    let registry = Registry::start(RegistryOptions::default());
    let cache = tempfile::tempdir().unwrap();
    let source = hello_dir();
    let mut args = standard_args(&registry, source.path(), "hello.handler");
    args[7] = "UPPER/Case".into();
    let stderr = expect_failure(
        &registry,
        &mut build_with(&registry, cache.path(), &strs(&args)),
        2,
    );
    assert_mentions(
        &stderr,
        &["UPPER/Case", "lowercase", "[REGISTRY/]REPOSITORY[:TAG]"],
    );
}

/// Flags whose values are checked before anything is fetched: each a usage error naming the
/// flag.
#[test]
fn malformed_flag_values_are_usage_errors() {
    let registry = Registry::start(RegistryOptions::default());
    let cache = tempfile::tempdir().unwrap();
    let source = hello_dir();
    let layout = tempfile::tempdir().unwrap();
    let oci_output = format!("oci:{}", layout.path().join("out").display());
    let registry_as_output = image_ref(&registry);
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        // A bare KEY is an empty variable, as in Kubeless; a value without a key is wrong.
        (
            vec!["--env", "=VALUE"],
            vec!["--env", "=VALUE", "non-empty"],
        ),
        (vec!["--timeout", "0"], vec!["--timeout", "at least 1"]),
        (
            vec!["--output", &registry_as_output],
            vec!["--output", "oci:DIR", "tar:FILE", "--image"],
        ),
        (vec!["--image", &oci_output], vec!["--image", "--output"]),
        (
            vec!["--registry-ca", "/nonexistent/ca.pem"],
            vec!["--registry-ca", "/nonexistent/ca.pem"],
        ),
        (
            vec!["--docker-config", "/nonexistent/docker"],
            vec!["--docker-config", "/nonexistent/docker", "config.json"],
        ),
        (
            vec!["--source", "ftp://example.com/fn.tgz"],
            vec!["ftp://", "not supported", "http(s)"],
        ),
        (vec!["--no-such-flag"], vec!["--no-such-flag"]),
    ];
    for (extra, words) in cases {
        let mut args = standard_args(&registry, source.path(), "hello.handler");
        if extra[0] == "--source" {
            args[1] = extra[1].to_owned();
        } else {
            args.extend(extra.iter().map(|s| s.to_string()));
        }
        let stderr = expect_failure(
            &registry,
            &mut build_with(&registry, cache.path(), &strs(&args)),
            2,
        );
        assert_mentions(&stderr, &words);
        assert!(
            !layout.path().join("out").exists(),
            "{extra:?} wrote a layout"
        );
    }
}

/// The catalog's base image missing from the base registry: the message names the runtime
/// and the image it looked for.
#[test]
fn missing_base_image_names_the_runtime_and_the_image() {
    let registry = Registry::start(RegistryOptions::default());
    let cache = tempfile::tempdir().unwrap();
    let source = hello_dir();
    let args = standard_args(&registry, source.path(), "hello.handler");
    let mut cmd = build_cmd(&registry, cache.path(), &strs(&args));
    cmd.env_remove("DOCKER_CONFIG");
    let stderr = expect_failure(&registry, &mut cmd, 1);
    assert_mentions(
        &stderr,
        &[
            "base image",
            &base_ref(&registry, PYTHON),
            "python3.13",
            "not found",
        ],
    );
}

/// Every command takes an empty registry flag (a template parameter left unset) as not given:
/// the error is about what is really wrong, not about the empty value.
#[test]
fn empty_registry_flags_mean_not_given_for_every_command() {
    let out = tempfile::tempdir().unwrap();
    let (code, stderr) = failure(
        common::fnbuild()
            .args(["push", "oci:/nonexistent-layout"])
            .arg(format!("oci:{}", out.path().join("copy").display()))
            .args([
                "--registry-ca",
                "",
                "--docker-config",
                "",
                "--insecure-registry",
                "",
            ])
            .env("FNBUILD_CACHE_DIR", ""),
    );
    assert_ne!(code, 0);
    assert!(stderr.contains("/nonexistent-layout"), "{stderr}");
    assert!(!stderr.contains("--registry-ca"), "{stderr}");
}

#[test]
fn image_references_outside_the_distribution_grammar_are_refused() {
    let registry = Registry::start(RegistryOptions::default());
    let cache = tempfile::tempdir().unwrap();
    let source = hello_dir();
    for (bad, failed) in [
        ("-", "component '-'"),
        ("localhost:5000/../x:t", "component '..'"),
    ] {
        // After a good destination, which must receive nothing either.
        let mut args = standard_args(&registry, source.path(), "hello.handler");
        args.extend(["--image".into(), bad.into()]);
        let stderr = expect_failure(
            &registry,
            &mut build_with(&registry, cache.path(), &strs(&args)),
            2,
        );
        assert_mentions(
            &stderr,
            &[
                &format!("'{bad}' is not an image reference"),
                failed,
                "expected [REGISTRY/]REPOSITORY[:TAG]",
            ],
        );
    }
}
