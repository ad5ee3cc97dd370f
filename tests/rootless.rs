//! Builds and runs by an ordinary user (uid 1000, through `setpriv`), with a home and a cache
//! of their own, as a developer would after the one-time package setup: dependencies are
//! installed and the handler compiled inside the base image's root filesystem through user
//! namespaces, and `fnbuild run` runs the image with runc's rootless mode. Where the kernel
//! refuses user namespaces (here: a parent user namespace whose `user.max_user_namespaces`
//! is 0, so the machine's own setting, which other tests share, is left alone), the build
//! fails with what it found and how to allow them.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::functions::*;
use common::packages::{PackageServer, NPM_PACKAGE, PY_PACKAGE};

/// The ordinary user the builds run as.
const USER: u32 = 1000;

/// A home, a cache and a copy of fnbuild (linked: the checkout may be where the user cannot
/// reach), all the user's, removed on drop.
struct UserEnv {
    dir: tempfile::TempDir,
}

impl UserEnv {
    fn new() -> UserEnv {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["home", "cache", "bin"] {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
        }
        let binary = dir.path().join("bin/fnbuild");
        if std::fs::hard_link(env!("CARGO_BIN_EXE_fnbuild"), &binary).is_err() {
            std::fs::copy(env!("CARGO_BIN_EXE_fnbuild"), &binary).unwrap();
        }
        give_to_user(dir.path());
        UserEnv { dir }
    }

    fn cache(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    /// `fnbuild` started by `launcher` (which makes it the user's), with the user's home and
    /// none of this machine's package-manager or cache settings.
    fn fnbuild(&self, mut launcher: Command) -> Command {
        launcher
            .arg(self.dir.path().join("bin/fnbuild"))
            .env("HOME", self.dir.path().join("home"));
        for name in [
            "FNBUILD_CACHE_DIR",
            "XDG_CACHE_HOME",
            "XDG_RUNTIME_DIR",
            "PIP_INDEX_URL",
            "PIP_CONFIG_FILE",
            "NPM_CONFIG_REGISTRY",
            "NPM_CONFIG_USERCONFIG",
            "NPM_REGISTRY",
        ] {
            launcher.env_remove(name);
        }
        launcher
    }

    /// `fnbuild build` started by `launcher`, onto the registry's base images, into the
    /// user's cache.
    fn build(&self, launcher: Command, registry: &common::Registry, args: &[&str]) -> Command {
        let mut cmd = self.fnbuild(launcher);
        cmd.arg("build")
            .args(args)
            .arg("--cache-dir")
            .arg(self.cache())
            .env("FNBUILD_BASE_REGISTRY", registry.host())
            .stdin(std::process::Stdio::null());
        cmd
    }
}

/// `setpriv`, running what follows as the user with no supplementary groups.
fn as_user() -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid", &USER.to_string(), "--regid", &USER.to_string()])
        .arg("--clear-groups");
    cmd
}

/// Runs what follows as the user in a new user namespace the user makes (mapping just them,
/// to their own uid) whose `user.max_user_namespaces` is 0: no user namespace can be made
/// below it. The setting is written with the namespace's capabilities, then dropped.
fn as_user_without_user_namespaces() -> Command {
    let mut cmd = as_user();
    cmd.args(["unshare", "--user", "--map-user", &USER.to_string()])
        .args(["--map-group", &USER.to_string(), "--keep-caps", "sh", "-c"])
        .arg(
            "echo 0 >/proc/sys/user/max_user_namespaces && \
             exec setpriv --inh-caps=-all --ambient-caps=-all \"$@\"",
        )
        .arg("sh");
    cmd
}

/// Hands `path` and everything under it to the user.
fn give_to_user(path: &Path) {
    std::os::unix::fs::lchown(path, Some(USER), Some(USER)).unwrap();
    for entry in common::walk(path) {
        std::os::unix::fs::lchown(path.join(entry), Some(USER), Some(USER)).unwrap();
    }
}

/// A function's files in a directory the user owns.
fn user_function(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = function_dir(files);
    give_to_user(dir.path());
    dir
}

/// The paths in the image's layers (gzip tars), fetched from the registry.
fn image_paths(registry: &common::Registry, repo: &str, tag: &str) -> Vec<String> {
    let manifest = registry
        .get(
            &format!("/v2/{repo}/manifests/{tag}"),
            Some("application/vnd.oci.image.manifest.v1+json"),
        )
        .json();
    let mut paths = Vec::new();
    for layer in manifest["layers"].as_array().unwrap() {
        let digest = layer["digest"].as_str().unwrap();
        let blob = registry
            .get(&format!("/v2/{repo}/blobs/{digest}"), None)
            .body;
        let mut archive = tar::Archive::new(flate2::read::MultiGzDecoder::new(blob.as_slice()));
        for entry in archive.entries().unwrap() {
            paths.push(entry.unwrap().path().unwrap().display().to_string());
        }
    }
    paths
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A Python function with a dependency from a package index is built by the user: pip ran
/// in the base image, the handler was compiled by its Python, the cache is the user's; the
/// image runs under `fnbuild run` as the user, answers with the dependency's help, and stops
/// on SIGTERM. A syntax error fails the user's build with its line.
#[test]
fn python_function_with_a_dependency_is_built_and_run_by_an_ordinary_user() {
    let registry = registry_with_bases(&[PYTHON]);
    let packages = PackageServer::start();
    let user = UserEnv::new();
    let src = user_function(&[
        (
            "fn.py",
            &format!(
                "import os\nimport {PY_PACKAGE}\n\ndef handler(event, context):\n    return {PY_PACKAGE}.greet(event['data']) + ' as uid %d' % os.getuid()\n"
            ),
        ),
        ("requirements.txt", &format!("{PY_PACKAGE}==1.0\n")),
    ]);
    let image = format!("{}/functions/rootless:v1", registry.host());
    let started = std::time::Instant::now();
    let out = success(
        user.build(
            as_user(),
            &registry,
            &[
                "--source",
                src.path().to_str().unwrap(),
                "--runtime",
                PYTHON,
                "--handler",
                "fn.handler",
                "--image",
                &image,
            ],
        )
        .env("PIP_INDEX_URL", packages.index_url()),
    );
    eprintln!("rootless build with a dependency: {:?}", started.elapsed());
    let log = stderr(&out);
    assert!(
        log.contains("the handler compiles with the runtime's python3.13"),
        "{log}"
    );
    assert!(log.contains("dependencies installed"), "{log}");
    assert!(
        packages
            .log()
            .contains(&format!("GET /packages/{PY_PACKAGE}-1.0-py3-none-any.whl")),
        "{}",
        packages.log()
    );
    let paths = image_paths(&registry, "functions/rootless", "v1");
    let installed = format!("kubeless/lib/python3.13/site-packages/{PY_PACKAGE}/__init__.py");
    assert!(
        paths
            .iter()
            .any(|p| p.trim_start_matches("./") == installed),
        "no {installed} in the image's layers: {paths:?}"
    );
    // What the user's build left in their cache is theirs.
    let rootfs = std::fs::read_dir(user.cache().join("rootfs"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect::<Vec<_>>();
    assert!(!rootfs.is_empty(), "no root filesystem in the user's cache");
    for dir in &rootfs {
        assert_eq!(std::fs::metadata(dir).unwrap().uid(), USER, "{dir:?}");
    }

    let function = RunningFunction::start_with(user.fnbuild(as_user()), &image, &user.cache(), &[]);
    let (status, _, body) = call(
        "POST",
        &function.url("/"),
        &[("content-type", "application/json")],
        br#""world""#,
    );
    assert_eq!(
        (status, String::from_utf8_lossy(&body).into_owned()),
        // uid 0 of the container's user namespace: the user outside.
        (200, "hello world from the local index as uid 0".to_string()),
        "{}",
        function.log()
    );
    let port = function.port;
    let log = function.stop();
    assert!(log.contains("rootless=true"), "{log}");
    assert!(log.contains("fnbuild python runtime: stopping"), "{log}");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the function still answers after SIGTERM: {log}"
    );
    // The user can clear their cache, unpacked root filesystems and all.
    success(
        as_user()
            .args(["rm", "-rf"])
            .arg(user.cache().join("rootfs")),
    );

    let bad = user_function(&[(
        "fn.py",
        "def handler(event, context):\n    return (1\n\nx = [\n",
    )]);
    let (_, err) = failure(&mut user.build(
        as_user(),
        &registry,
        &[
            "--source",
            bad.path().to_str().unwrap(),
            "--runtime",
            PYTHON,
            "--handler",
            "fn.handler",
            "--image",
            &format!("{}/functions/rootless:bad", registry.host()),
        ],
    ));
    assert!(
        err.contains("fn.py does not compile with the runtime's Python 3.13: line 2"),
        "{err}"
    );
}

/// A Node.js function with a dependency from an npm registry is built by the user, npm
/// running in the base image.
#[test]
fn nodejs_function_with_a_dependency_is_built_by_an_ordinary_user() {
    let registry = registry_with_bases(&[NODEJS]);
    let packages = PackageServer::start();
    let user = UserEnv::new();
    let src = user_function(&[
        (
            "fn.js",
            &format!(
                "const greet = require('{NPM_PACKAGE}');\nmodule.exports = {{ handler(event) {{ return greet(event.data); }} }};\n"
            ),
        ),
        (
            "package.json",
            &format!(
                r#"{{"name":"fn","version":"1.0.0","dependencies":{{"{NPM_PACKAGE}":"1.0.0"}}}}"#
            ),
        ),
    ]);
    let image = format!("{}/functions/rootless-node:v1", registry.host());
    let out = success(
        user.build(
            as_user(),
            &registry,
            &[
                "--source",
                src.path().to_str().unwrap(),
                "--runtime",
                NODEJS,
                "--handler",
                "fn.handler",
                "--image",
                &image,
            ],
        )
        .env("NPM_CONFIG_REGISTRY", packages.npm_registry()),
    );
    assert!(
        stderr(&out).contains("dependencies installed"),
        "{}",
        stderr(&out)
    );
    let paths = image_paths(&registry, "functions/rootless-node", "v1");
    let installed = format!("kubeless/node_modules/{NPM_PACKAGE}/index.js");
    assert!(
        paths
            .iter()
            .any(|p| p.trim_start_matches("./") == installed),
        "no {installed} in the image's layers: {paths:?}"
    );
}

/// With user namespaces refused (a parent user namespace, where the user is uid 1000 too,
/// whose `user.max_user_namespaces` is 0), a build with dependencies fails at once with the
/// setting it found and how to change it, and pushes nothing.
#[test]
fn without_user_namespaces_a_build_names_the_setting_to_change() {
    let registry = registry_with_bases(&[PYTHON]);
    let user = UserEnv::new();
    let src = user_function(&[
        ("fn.py", "def handler(event, context):\n    return 'hi'\n"),
        ("requirements.txt", &format!("{PY_PACKAGE}==1.0\n")),
    ]);
    let (code, err) = failure(&mut user.build(
        as_user_without_user_namespaces(),
        &registry,
        &[
            "--source",
            src.path().to_str().unwrap(),
            "--runtime",
            PYTHON,
            "--handler",
            "fn.handler",
            "--image",
            &format!("{}/functions/refused:v1", registry.host()),
        ],
    ));
    assert_ne!(code, 0);
    for expected in [
        "or else in a user namespace",
        "sysctl user.max_user_namespaces is 0",
        "sysctl -w user.max_user_namespaces=",
        "--deps-installer host",
    ] {
        assert!(err.contains(expected), "no {expected:?} in:\n{err}");
    }
    assert!(registry.image_tags("functions/refused").is_empty());
    // It failed before fetching and unpacking the base image for nothing.
    let unpacked = std::fs::read_dir(user.cache().join("rootfs"))
        .unwrap()
        .count();
    assert_eq!(unpacked, 0, "a root filesystem was unpacked");
}

/// A tar layer of directories (path, mode) and files (path, contents), in order.
fn layer(dirs: &[(&str, u32)], files: &[(&str, &str)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, mode) in dirs {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(*mode);
        header.set_size(0);
        builder
            .append_data(&mut header, path, std::io::empty())
            .unwrap();
    }
    for (path, contents) in files {
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        header.set_size(contents.len() as u64);
        builder
            .append_data(&mut header, path, contents.as_bytes())
            .unwrap();
    }
    builder.into_inner().unwrap()
}

/// An image whose layers make directories read-only, then write and delete in them, is
/// unpacked by the user for `fnbuild run` (as root needs no permission for that, the user
/// keeps the directories writable to themselves), and the user can remove what was unpacked.
#[test]
fn read_only_directories_of_a_layer_are_unpacked_and_removed_by_an_ordinary_user() {
    let user = UserEnv::new();
    let layout = user.dir.path().join("image");
    common::write_oci_layout(
        &layout,
        "ro",
        serde_json::json!({ "config": { "Entrypoint": ["/no-such-program"] } }),
        &[
            layer(
                &[("ro", 0o555), ("ro/sub", 0o555)],
                &[("ro/kept", "kept"), ("ro/sub/gone", "gone")],
            ),
            layer(&[], &[("ro/sub/.wh.gone", ""), ("ro/sub/new", "new")]),
        ],
    );
    give_to_user(&layout);
    // The image cannot start (it has no program); its root filesystem is unpacked first.
    let (_, err) = failure(
        user.fnbuild(as_user())
            .args(["run", &format!("oci:{}:ro", layout.display())])
            .args(["--port", &common::free_port().to_string(), "--cache-dir"])
            .arg(user.cache())
            .stdin(std::process::Stdio::null()),
    );
    assert!(err.contains("unpacked image root filesystem"), "{err}");
    let roots: Vec<PathBuf> = std::fs::read_dir(user.cache().join("rootfs"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(roots.len(), 1, "{roots:?}");
    let root = &roots[0];
    assert_eq!(
        std::fs::read_to_string(root.join("ro/kept")).unwrap(),
        "kept"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("ro/sub/new")).unwrap(),
        "new"
    );
    assert!(!root.join("ro/sub/gone").exists());
    assert_eq!(std::fs::metadata(root.join("ro")).unwrap().uid(), USER);
    success(
        as_user()
            .args(["rm", "-rf"])
            .arg(user.cache().join("rootfs")),
    );
    assert!(!root.exists());
}
