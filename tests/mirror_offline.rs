//! Air-gapped clusters. `fnbuild mirror` copies the runtime base images from a registry into
//! one OCI layout or tarball, and from there into another registry, keeping every digest; a
//! build then runs with no network at all (a new network namespace with nothing but its own
//! loopback) from such a layout, its dependencies installed from package indexes served inside
//! that namespace: a PEP 503 "simple" index for pip and a static npm registry, holding a wheel
//! and a tarball the test makes itself. The images built offline are run and called, to show
//! the dependency is there and works.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::functions::*;
use common::packages::{package_server_dir, NPM_PACKAGE, PY_PACKAGE};
use common::{Registry, RegistryOptions};

const PYTHON_NAME: &str = "fnbuild/runtime-python:3.13";
const NODEJS_NAME: &str = "fnbuild/runtime-nodejs:20";
const MANIFEST_TYPES: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json";
/// The port the package server listens on inside the namespace (nothing else is there).
const PACKAGE_PORT: u16 = 7000;

fn cache_arg<'a>(cmd: &'a mut Command, cache: &Path) -> &'a mut Command {
    cmd.arg("--cache-dir").arg(cache).stdin(Stdio::null())
}

/// `fnbuild mirror ARGS --cache-dir CACHE`.
fn mirror_cmd(args: &[&str], cache: &Path) -> Command {
    let mut cmd = common::fnbuild();
    cmd.arg("mirror").args(args);
    cache_arg(&mut cmd, cache);
    cmd
}

/// The digest a registry gives a manifest.
fn registry_digest(registry: &Registry, repository: &str, tag: &str) -> String {
    let resp = registry.get(
        &format!("/v2/{repository}/manifests/{tag}"),
        Some(MANIFEST_TYPES),
    );
    assert_eq!(resp.status, 200, "{repository}:{tag}: {}", resp.text());
    resp.header("docker-content-digest").unwrap().to_string()
}

/// The images of a layout: name -> digest.
fn layout_images(dir: &Path) -> BTreeMap<String, String> {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["annotations"]["org.opencontainers.image.ref.name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                d["digest"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The digest skopeo reads for `transport:image` (`oci:DIR:NAME`, `oci-archive:FILE:NAME`).
fn skopeo_digest(image: &str) -> String {
    let out = success(
        Command::new("skopeo")
            .args(["inspect", "--raw", image])
            .stdin(Stdio::null()),
    );
    common::sha256_digest(&out.stdout)
}

/// Lines `NAME<TAB>PUBLISHED` that `fnbuild mirror` printed: name -> published.
fn printed(out: &Output) -> BTreeMap<String, String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| {
            let (name, published) = line
                .split_once('\t')
                .unwrap_or_else(|| panic!("not NAME<TAB>PUBLISHED: {line:?}"));
            (name.to_string(), published.to_string())
        })
        .collect()
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `script` with `sh` in a new network namespace whose only interface is its loopback
/// (brought up first); the package server is started there, serving `serve`, before the
/// script's commands, and stopped after them.
fn offline(script: &str, serve: &Path, env: &[(&str, &str)], log_dir: &Path) -> Output {
    let prelude = format!(
        r#"set -eu
ip link set lo up
cd "$SERVE_DIR"
python3 -m http.server --bind 127.0.0.1 {PACKAGE_PORT} >"$LOG_DIR/packages.log" 2>&1 &
server=$!
trap 'kill $server' EXIT
tries=0
until python3 -c 'import urllib.request; urllib.request.urlopen("http://127.0.0.1:{PACKAGE_PORT}/")' 2>/dev/null; do
    tries=$((tries + 1))
    if [ "$tries" -ge 100 ]; then echo "the package server did not start"; cat "$LOG_DIR/packages.log"; exit 1; fi
    sleep 0.1
done
cd /
"#
    );
    let home = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("unshare");
    cmd.args(["--net", "--", "sh", "-c"])
        .arg(format!("{prelude}{script}"))
        .env("SERVE_DIR", serve)
        .env("LOG_DIR", log_dir)
        .env("FNBUILD", env!("CARGO_BIN_EXE_fnbuild"))
        // Only the settings given here: none of this machine's package-manager settings.
        .env("HOME", home.path())
        .env_remove("FNBUILD_CACHE_DIR")
        .stdin(Stdio::null());
    for name in [
        "PIP_INDEX_URL",
        "PIP_EXTRA_INDEX_URL",
        "PIP_CONFIG_FILE",
        "NPM_CONFIG_REGISTRY",
        "NPM_CONFIG_USERCONFIG",
        "NPM_REGISTRY",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "FNBUILD_BASE_REGISTRY",
        "XDG_CONFIG_HOME",
    ] {
        cmd.env_remove(name);
    }
    for (name, value) in env {
        cmd.env(name, value);
    }
    cmd.output().expect("running unshare (util-linux)")
}

// === the tests ===

/// Both base images mirrored from a registry into one layout (names keep repository and tag,
/// digests kept; the catalog's versions the registry lacks skipped with a warning), then Python and Node.js functions with dependencies built from that layout
/// inside a network namespace that cannot reach the registry or anything else, a dependency
/// of each coming from a local simple index or a local npm registry and another vendored in
/// the source; the images run and answer.
#[test]
fn builds_run_offline_from_a_mirrored_layout_with_local_package_indexes() {
    let registry = registry_with_bases(&[PYTHON, NODEJS]);
    let work = tempfile::tempdir().unwrap();
    let mirror = work.path().join("mirror");
    let mirror_cache = tempfile::tempdir().unwrap();

    // From the catalog's registry ($FNBUILD_BASE_REGISTRY), every runtime, into one layout.
    let started = std::time::Instant::now();
    let out = success(
        mirror_cmd(
            &["--to", &format!("oci:{}", mirror.display())],
            mirror_cache.path(),
        )
        .env("FNBUILD_BASE_REGISTRY", registry.host()),
    );
    eprintln!("mirrored both base images in {:?}", started.elapsed());
    // The catalog's other versions are not in this registry: skipped, each with a warning.
    let log = stderr_of(&out);
    for missing in ["runtime-python:3.9", "runtime-nodejs:22"] {
        assert!(
            log.contains(&format!(
                "not mirrored: {}/fnbuild/{missing}",
                registry.host()
            )),
            "{log}"
        );
    }
    let images = layout_images(&mirror);
    let expected: BTreeMap<String, String> = [
        (
            PYTHON_NAME.to_string(),
            registry_digest(&registry, "fnbuild/runtime-python", "3.13"),
        ),
        (
            NODEJS_NAME.to_string(),
            registry_digest(&registry, "fnbuild/runtime-nodejs", "20"),
        ),
    ]
    .into();
    assert_eq!(images, expected, "the layout's names and digests");
    assert_eq!(
        printed(&out).keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    for (name, digest) in &expected {
        // skopeo reads the names the same way (the path ends at the first ':').
        assert_eq!(
            &skopeo_digest(&format!("oci:{}:{name}", mirror.display())),
            digest
        );
    }

    // One dependency from the package index, one vendored in the source.
    let python_src = function_dir(&[
        (
            "fn.py",
            &format!(
                "import {PY_PACKAGE}\nimport vendoredpkg\n\ndef handler(event, context):\n    return {PY_PACKAGE}.greet(event['data']) + vendoredpkg.SUFFIX\n"
            ),
        ),
        ("requirements.txt", &format!("{PY_PACKAGE}==1.0\n")),
        ("vendoredpkg/__init__.py", "SUFFIX = ' (vendored too)'\n"),
    ]);
    let node_src = function_dir(&[
        (
            "fn.js",
            &format!(
                "const greet = require('{NPM_PACKAGE}');\nconst suffix = require('vendored-suffix');\nmodule.exports = {{ handler(event) {{ return greet(event.data) + suffix; }} }};\n"
            ),
        ),
        (
            "node_modules/vendored-suffix/index.js",
            "module.exports = ' (vendored too)';\n",
        ),
        (
            "package.json",
            &format!(r#"{{"name":"fn","version":"1.0.0","dependencies":{{"{NPM_PACKAGE}":"1.0.0"}}}}"#),
        ),
    ]);
    let serve = package_server_dir(PACKAGE_PORT);
    let build_cache = tempfile::tempdir().unwrap();
    let (out_py, out_node) = (work.path().join("out-py"), work.path().join("out-node"));
    let script = format!(
        r#"
# Nothing outside the namespace answers: not even the registry the images came from.
if python3 -c 'import socket; socket.create_connection(("127.0.0.1", {registry_port}), 2)' 2>/dev/null; then
    echo "the registry is reachable: the namespace is not offline"; exit 1
fi
"$FNBUILD" build --source "{py_src}" --runtime python3.13 --handler fn.handler \
    --base-image "oci:{mirror}:{PYTHON_NAME}" --output "oci:{out_py}" --cache-dir "{cache}"
"$FNBUILD" build --source "{node_src}" --runtime nodejs20 --handler fn.handler \
    --base-image "oci:{mirror}:{NODEJS_NAME}" --output "oci:{out_node}" --cache-dir "{cache}"
"#,
        registry_port = registry.port(),
        py_src = python_src.path().display(),
        node_src = node_src.path().display(),
        mirror = mirror.display(),
        out_py = out_py.display(),
        out_node = out_node.display(),
        cache = build_cache.path().display(),
    );
    let logs = tempfile::tempdir().unwrap();
    let index_url = format!("http://127.0.0.1:{PACKAGE_PORT}/simple/");
    let npm_url = format!("http://127.0.0.1:{PACKAGE_PORT}/npm/");
    let started = std::time::Instant::now();
    let out = offline(
        &script,
        serve.path(),
        &[
            ("PIP_INDEX_URL", &index_url),
            ("NPM_CONFIG_REGISTRY", &npm_url),
        ],
        logs.path(),
    );
    let served = std::fs::read_to_string(logs.path().join("packages.log")).unwrap_or_default();
    assert!(
        out.status.success(),
        "the offline builds failed ({}):\nstdout: {}\nstderr: {}\npackage server log:\n{served}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        stderr_of(&out)
    );
    eprintln!("built both functions offline in {:?}", started.elapsed());
    for request in [
        format!("GET /simple/{PY_PACKAGE}/"),
        format!("GET /packages/{PY_PACKAGE}-1.0-py3-none-any.whl"),
        format!("GET /npm/{NPM_PACKAGE}"),
        format!("GET /tarballs/{NPM_PACKAGE}-1.0.0.tgz"),
    ] {
        assert!(
            served.contains(&request),
            "no {request} at the local package server:\n{served}"
        );
    }

    // Out of the namespace: run what was built there, and call it.
    for (out_dir, expected) in [
        (&out_py, "hello air from the local index (vendored too)"),
        (
            &out_node,
            "hello air from the local registry (vendored too)",
        ),
    ] {
        let function = RunningFunction::start(
            &format!("oci:{}", out_dir.display()),
            build_cache.path(),
            &[],
        );
        let (status, _, body) = call(
            "POST",
            &function.url("/"),
            &[("content-type", "application/json")],
            br#""air""#,
        );
        assert_eq!(
            (status, String::from_utf8_lossy(&body).into_owned()),
            (200, expected.to_string()),
            "{}",
            function.log()
        );
    }
}

/// Registry -> layout -> second registry (under a path), layout -> tarball -> third place:
/// every copy keeps every digest, the builder image travels along, skopeo reads the layout and
/// the tarball by name, and a build against the second registry (FNBUILD_BASE_REGISTRY, the
/// first one gone) works.
#[test]
fn mirror_round_trip_keeps_digests_and_feeds_a_build() {
    let source = registry_with_bases(&[PYTHON]);
    let cache = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();

    // A small image standing in for the builder image.
    let builder_layout = work.path().join("builder");
    common::write_oci_layout(
        &builder_layout,
        "b",
        serde_json::json!({ "config": { "Entrypoint": ["/usr/local/bin/fnbuild"] } }),
        &[common::tar_of(&[("usr/local/bin/fnbuild", b"stand-in")])],
    );
    let builder_ref = format!("{}/fnbuild/builder:test", source.host());
    success(cache_arg(
        common::fnbuild()
            .arg("push")
            .arg(format!("oci:{}:b", builder_layout.display()))
            .arg(&builder_ref),
        cache.path(),
    ));
    let python_digest = registry_digest(&source, "fnbuild/runtime-python", "3.13");
    let builder_digest = registry_digest(&source, "fnbuild/builder", "test");
    let expected: BTreeMap<String, String> = [
        (PYTHON_NAME.to_string(), python_digest.clone()),
        ("fnbuild/builder:test".to_string(), builder_digest.clone()),
    ]
    .into();

    // Registry -> layout: only the runtime named (the language's name), plus the builder image.
    let mirror = work.path().join("mirror");
    let out = success(&mut mirror_cmd(
        &[
            "--from",
            &source.host(),
            "--runtime",
            "python",
            "--builder-image",
            &builder_ref,
            "--to",
            &format!("oci:{}", mirror.display()),
        ],
        cache.path(),
    ));
    assert!(
        stderr_of(&out).contains("runtime 'python' is built as 'python3.13'"),
        "the language's name is accepted with a warning: {}",
        stderr_of(&out)
    );
    assert_eq!(layout_images(&mirror), expected);

    // Layout -> second registry, under a path.
    let target = Registry::start(RegistryOptions::default());
    let started = std::time::Instant::now();
    let out = success(&mut mirror_cmd(
        &[
            "--from",
            &format!("oci:{}", mirror.display()),
            "--to",
            &format!("{}/airgap", target.host()),
        ],
        cache.path(),
    ));
    eprintln!("layout -> registry in {:?}", started.elapsed());
    assert_eq!(
        printed(&out),
        [
            (
                PYTHON_NAME.to_string(),
                format!(
                    "{}/airgap/fnbuild/runtime-python@{python_digest}",
                    target.host()
                )
            ),
            (
                "fnbuild/builder:test".to_string(),
                format!("{}/airgap/fnbuild/builder@{builder_digest}", target.host())
            ),
        ]
        .into()
    );
    assert_eq!(
        registry_digest(&target, "airgap/fnbuild/runtime-python", "3.13"),
        python_digest
    );
    assert_eq!(
        registry_digest(&target, "airgap/fnbuild/builder", "test"),
        builder_digest
    );

    // Layout -> tarball -> layout and registry: the same digests, read by name.
    let tarball = work.path().join("mirror.tar");
    success(&mut mirror_cmd(
        &[
            "--from",
            &format!("oci:{}", mirror.display()),
            "--to",
            &format!("tar:{}", tarball.display()),
        ],
        cache.path(),
    ));
    for (name, digest) in &expected {
        assert_eq!(
            &skopeo_digest(&format!("oci-archive:{}:{name}", tarball.display())),
            digest,
            "{name} in the tarball"
        );
    }
    // A fresh cache: everything comes out of the tarball.
    let tar_cache = tempfile::tempdir().unwrap();
    let from_tar = work.path().join("from-tar");
    success(&mut mirror_cmd(
        &[
            "--from",
            &format!("tar:{}", tarball.display()),
            "--to",
            &format!("oci:{}", from_tar.display()),
        ],
        tar_cache.path(),
    ));
    assert_eq!(layout_images(&from_tar), expected);
    let out = success(cache_arg(
        common::fnbuild()
            .arg("push")
            .arg(format!("tar:{}:fnbuild/builder:test", tarball.display()))
            .arg(format!("{}/copied/builder:v1", target.host())),
        tar_cache.path(),
    ));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&builder_digest),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        registry_digest(&target, "copied/builder", "v1"),
        builder_digest
    );

    // The first registry is gone: a build finds its base image in the second one.
    drop(source);
    let src = function_dir(&[(
        "hello.py",
        "def handler(event, context):\n    return 'hello from the mirror'\n",
    )]);
    let build_cache = tempfile::tempdir().unwrap();
    let image = format!("{}/functions/hello:v1", target.host());
    let mut cmd = build_cmd(
        &target,
        build_cache.path(),
        &[
            "--source",
            src.path().to_str().unwrap(),
            "--runtime",
            PYTHON,
            "--handler",
            "hello.handler",
            "--image",
            &image,
        ],
    );
    let out = success(cmd.env("FNBUILD_BASE_REGISTRY", format!("{}/airgap", target.host())));
    printed_ref(&out);
    let function = RunningFunction::start(&image, build_cache.path(), &[]);
    let (status, _, body) = call("GET", &function.url("/"), &[], b"");
    assert_eq!(
        (status, String::from_utf8_lossy(&body).into_owned()),
        (200, "hello from the mirror".to_string())
    );
}

/// Bad mirror inputs, and reading multi-image layouts and tarballs: every error names what
/// failed and what is accepted; names with '/' and ':' select images in layouts and tarballs.
#[test]
fn mirror_inputs_are_checked_and_named_images_are_read_from_layouts_and_tarballs() {
    let cache = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let path = |name: &str| work.path().join(name).display().to_string();

    // Two small images in one layout, by name: the second one does not replace the first.
    let mut digests = Vec::new();
    for (i, name) in ["tools/one:1", "tools/two:2"].iter().enumerate() {
        let single = work.path().join(format!("single-{i}"));
        common::write_oci_layout(
            &single,
            "x",
            serde_json::json!({ "config": { "Env": [format!("N={i}")] } }),
            &[common::tar_of(&[("n", format!("{i}").as_bytes())])],
        );
        let out = success(cache_arg(
            common::fnbuild()
                .arg("push")
                .arg(format!("oci:{}:x", single.display()))
                .arg(format!("oci:{}:{name}", path("multi"))),
            cache.path(),
        ));
        digests.push(
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .rsplit('@')
                .next()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(
        layout_images(&work.path().join("multi")),
        [
            ("tools/one:1".to_string(), digests[0].clone()),
            ("tools/two:2".to_string(), digests[1].clone()),
        ]
        .into()
    );
    // Layout -> tarball -> layout, by name, keeping the digest.
    success(cache_arg(
        common::fnbuild()
            .arg("push")
            .arg(format!("oci:{}:tools/two:2", path("multi")))
            .arg(format!("tar:{}:tools/two:2", path("two.tar"))),
        cache.path(),
    ));
    let out = success(cache_arg(
        common::fnbuild()
            .arg("push")
            .arg(format!("tar:{}:tools/two:2", path("two.tar")))
            .arg(format!("oci:{}:copy/two:b", path("copy"))),
        cache.path(),
    ));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&digests[1]));
    assert_eq!(
        skopeo_digest(&format!("docker-archive:{}:tools/two:2", path("two.tar"))).len(),
        71,
        "skopeo reads the named tarball as docker-archive: too"
    );

    // An image named by a tag only cannot say where it goes.
    common::write_oci_layout(
        &work.path().join("tag-only"),
        "v1",
        serde_json::json!({}),
        &[common::tar_of(&[("a", b"a")])],
    );
    let empty = Registry::start(RegistryOptions::default());
    let not_tar = work.path().join("not.tar");
    std::fs::write(&not_tar, "not a tar archive, clearly").unwrap();

    let multi = format!("oci:{}", path("multi"));
    let cases: Vec<(Vec<String>, i32, Vec<String>)> = vec![
        (
            vec!["mirror".into(), "--to".into(), "registry".into()],
            2,
            vec![
                "--to 'registry'".into(),
                "not a registry host".into(),
                "oci:DIR, tar:FILE or REGISTRY[/PREFIX]".into(),
            ],
        ),
        (
            vec![
                "mirror".into(),
                "--to".into(),
                format!("oci:{}:v1", path("m")),
            ],
            2,
            vec!["takes no name".into(), "REPOSITORY:TAG".into()],
        ),
        (
            vec![
                "mirror".into(),
                "--to".into(),
                "registry.local/Upper".into(),
            ],
            2,
            vec!["'Upper'".into(), "lowercase".into()],
        ),
        (
            vec![
                "mirror".into(),
                "--runtime".into(),
                "ruby2.6".into(),
                "--to".into(),
                format!("oci:{}", path("m")),
            ],
            2,
            vec!["unknown runtime 'ruby2.6'".into(), "python3.13".into()],
        ),
        (
            vec![
                "mirror".into(),
                "--from".into(),
                multi.clone(),
                "--image".into(),
                "registry.local/x:1".into(),
                "--to".into(),
                format!("oci:{}", path("m")),
            ],
            2,
            vec!["--image".into(), "every image it holds".into()],
        ),
        (
            vec![
                "mirror".into(),
                "--from".into(),
                multi.clone(),
                "--runtime".into(),
                "nodejs20".into(),
                "--to".into(),
                format!("oci:{}", path("m")),
            ],
            1,
            vec![
                NODEJS_NAME.into(),
                "nodejs20".into(),
                "tools/one:1, tools/two:2".into(),
            ],
        ),
        (
            vec![
                "mirror".into(),
                "--from".into(),
                format!("oci:{}", path("tag-only")),
                "--to".into(),
                format!("oci:{}", path("m")),
            ],
            1,
            vec!["'v1'".into(), "REPOSITORY:TAG".into()],
        ),
        (
            vec![
                "mirror".into(),
                "--from".into(),
                empty.host(),
                "--to".into(),
                format!("oci:{}", path("m")),
            ],
            1,
            vec![
                format!("{}/fnbuild/runtime-python:3.13", empty.host()),
                "runtime python3.13".into(),
                format!("{} holds none of the images to mirror", empty.host()),
            ],
        ),
        (
            vec!["push".into(), multi.clone(), format!("oci:{}", path("m"))],
            1,
            vec![
                "several images".into(),
                format!("{multi}:NAME"),
                "tools/one:1, tools/two:2".into(),
            ],
        ),
        (
            vec![
                "push".into(),
                format!("{multi}:tools/three:3"),
                format!("oci:{}", path("m")),
            ],
            1,
            vec!["no image named 'tools/three:3'".into()],
        ),
        (
            vec![
                "push".into(),
                format!("tar:{}", not_tar.display()),
                format!("oci:{}", path("m")),
            ],
            1,
            vec![format!("tar:{}", not_tar.display()), "tar".into()],
        ),
        (
            vec![
                "push".into(),
                format!("{multi}:"),
                format!("oci:{}", path("m")),
            ],
            2,
            vec!["empty".into(), "oci:./out:NAME".into()],
        ),
    ];
    for (args, code, words) in cases {
        let out = cache_arg(common::fnbuild().args(&args), cache.path())
            .output()
            .unwrap();
        let stderr = stderr_of(&out);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        for word in &words {
            assert!(
                stderr.contains(word.as_str()),
                "{args:?}: no {word:?} in {stderr}"
            );
        }
        assert!(!work.path().join("m").exists(), "{args:?} wrote a layout");
    }
}
