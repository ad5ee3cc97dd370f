//! The Dockerfiles under `images/`, built for real as their header comments say, with buildah
//! (`buildah bud`, which reads Dockerfiles as Docker does) instead of a Docker daemon: each
//! test has buildah storage of its own (vfs, in a temporary directory), runs `RUN` steps with
//! chroot isolation, and pushes what it builds to a test registry over plain HTTP.
//!
//! The upstream images the Dockerfiles start `FROM` stand in for Docker Hub's `python` and
//! `node` images: plain images made from the test root filesystems (`tests/setup.sh`), the
//! root filesystem as one layer with `PATH`, `LANG` and a `CMD` as Docker Hub's have. They are
//! made once per root filesystem, kept as OCI layouts in the test cache, and put into each
//! test's registry, where `UPSTREAM`/`BASE` name them as users name an upstream image.
//!
//! - `images/runtime-{python,nodejs}/Dockerfile` must make what `fnbuild base` makes from the
//!   same root filesystem (entrypoint, cmd, env, user, working directory, port, labels, the
//!   runtime server's files), and `fnbuild build` must make a function image on it that
//!   serves calls under `fnbuild run`.
//! - `images/builder/Dockerfile` packages the fnbuild binary under test onto the python
//!   upstream (a Debian trixie; its `RUN apt-get` reaches Debian's mirror); the image runs
//!   under runc as a Tekton step runs it: `fnbuild runtimes` lists the catalog, and the Tekton
//!   Task of `build-templates/` builds and pushes a function with it.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Instant;

use serde_json::Value;
use sha2::{Digest as _, Sha256};
use tempfile::TempDir;

use common::functions::*;
use common::template_runner::{run_task, StepOutput, WorkspaceBinding};
use common::{fnbuild, rootfs, test_cache, Registry, RegistryOptions, ROOTFS_MARKER};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// The environment `fnbuild base` gives a root filesystem, which the upstream images get too.
const UPSTREAM_ENV: [&str; 2] = [
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG=C.UTF-8",
];

/// Changing how the upstream images are made changes their key in the test cache.
const UPSTREAM_RECIPE: &str = "rootfs copied with cp -a, PATH and LANG, CMD; gzip layer; v1";

fn repo_path(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Prints how long something took (shown with `--nocapture`).
fn timed<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let value = f();
    eprintln!("[timing] {what}: {:.1?}", started.elapsed());
    value
}

/// Runs a command to success and returns its stdout (trimmed); panics with its output when it
/// fails.
fn run(cmd: &mut Command) -> String {
    let out = success(cmd.stdin(Stdio::null()));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// buildah with storage of its own: vfs under a temporary directory, removed on drop.
struct Buildah {
    dir: TempDir,
}

impl Buildah {
    fn new() -> Buildah {
        Buildah {
            dir: tempfile::Builder::new()
                .prefix("fnbuild-buildah-")
                .tempdir()
                .expect("creating buildah's storage directory"),
        }
    }

    /// `buildah VERB` on this storage.
    fn cmd(&self, verb: &str) -> Command {
        let mut cmd = Command::new("buildah");
        cmd.arg("--root")
            .arg(self.dir.path().join("root"))
            .arg("--runroot")
            .arg(self.dir.path().join("run"))
            .args(["--storage-driver", "vfs", verb]);
        cmd
    }

    /// `buildah bud` of `dockerfile` in `context` with `build_args`, tagged `tag`, then pushed
    /// to `tag` (a plain-HTTP registry). The build's output is shown when it fails.
    /// Proxy variables of this process reach `RUN` steps by themselves (`--http-proxy`, on
    /// by default), as Docker passes them from its client configuration.
    fn build_and_push(
        &self,
        dockerfile: &Path,
        context: &Path,
        build_args: &[(&str, &str)],
        tag: &str,
    ) {
        let mut bud = self.cmd("bud");
        bud.args(["--isolation", "chroot", "--tls-verify=false", "-f"])
            .arg(dockerfile)
            .args(["-t", tag]);
        for (name, value) in build_args {
            bud.arg("--build-arg").arg(format!("{name}={value}"));
        }
        bud.arg(context);
        timed(&format!("buildah bud {}", dockerfile.display()), || {
            run(&mut bud)
        });
        timed(&format!("buildah push {tag}"), || {
            run(self
                .cmd("push")
                .args(["--tls-verify=false", tag])
                .arg(format!("docker://{tag}")))
        });
    }
}

/// The upstream image of `lang` ("python" or "nodejs") as an OCI layout (tag `trixie`), made
/// from its test root filesystem the first time and kept in the test cache, keyed by that
/// root filesystem's completion marker and [`UPSTREAM_RECIPE`]; once per test process.
fn upstream_layout(lang: &str) -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    static NODEJS: OnceLock<PathBuf> = OnceLock::new();
    let cell = match lang {
        "python" => &PYTHON,
        "nodejs" => &NODEJS,
        other => panic!("no upstream image for {other}"),
    };
    cell.get_or_init(|| {
        timed(&format!("the {lang} upstream image"), || {
            make_upstream(lang)
        })
    })
}

fn make_upstream(lang: &str) -> PathBuf {
    let root = rootfs(lang);
    let mut hasher = Sha256::new();
    hasher.update(fs::read(root.join(ROOTFS_MARKER)).expect("reading the rootfs marker"));
    hasher.update(UPSTREAM_RECIPE);
    let key = hex::encode(&hasher.finalize()[..8]);
    let parent = test_cache().join("dockerfile-upstreams");
    let dir = parent.join(format!("{lang}-{key}"));
    if dir.join("index.json").is_file() {
        return dir;
    }
    fs::create_dir_all(&parent).expect("creating the upstream images' directory");
    // Images made from an older root filesystem are of no more use.
    for entry in fs::read_dir(&parent).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(&format!("{lang}-")) {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
    let temp = tempfile::tempdir_in(&parent).unwrap();
    let layout = temp.path().join("layout");
    let buildah = Buildah::new();
    let container = run(buildah.cmd("from").args(["-q", "scratch"]));
    let mount = run(buildah.cmd("mount").arg(&container));
    // cp -a keeps owners, modes and device nodes, as the root filesystem has them.
    run(Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", root.display()))
        .arg(format!("{mount}/")));
    run(buildah.cmd("umount").arg(&container));
    let cmd = if lang == "python" {
        r#"["python3"]"#
    } else {
        r#"["node"]"#
    };
    let mut config = buildah.cmd("config");
    for env in UPSTREAM_ENV {
        config.args(["--env", env]);
    }
    run(config.args(["--cmd", cmd]).arg(&container));
    run(buildah
        .cmd("commit")
        .args(["-q", "--disable-compression=false"])
        .arg(&container)
        .arg(format!("oci:{}:trixie", layout.display())));
    // A test process running at the same time may have made it meanwhile: the same image.
    let _ = fs::rename(&layout, &dir);
    assert!(
        dir.join("index.json").is_file(),
        "the {lang} upstream image is not at {}",
        dir.display()
    );
    dir
}

/// Copies the upstream image of `lang` into `registry` as `HOST/upstream/LANG:trixie`;
/// returns that reference.
fn push_upstream(registry: &Registry, lang: &str) -> String {
    let layout = upstream_layout(lang);
    let reference = format!("{}/upstream/{lang}:trixie", registry.host());
    timed(&format!("skopeo copy of the {lang} upstream"), || {
        run(Command::new("skopeo")
            .args(["copy", "--quiet"])
            .args(registry.skopeo_args("dest-"))
            .arg(format!("oci:{}:trixie", layout.display()))
            .arg(format!("docker://{reference}")))
    });
    reference
}

// --- images, as registries and OCI layouts hold them -------------------------------------

/// An image's manifest and config.
struct Image {
    manifest: Value,
    config: Value,
}

impl Image {
    fn layer_digests(&self) -> Vec<String> {
        self.manifest["layers"]
            .as_array()
            .expect("a manifest has layers")
            .iter()
            .map(|l| l["digest"].as_str().unwrap().to_string())
            .collect()
    }
}

fn registry_blob(registry: &Registry, repo: &str, digest: &str) -> Vec<u8> {
    let resp = registry.get(&format!("/v2/{repo}/blobs/{digest}"), None);
    assert_eq!(resp.status, 200, "blob {digest} of {repo}: {}", resp.text());
    resp.body
}

fn registry_image(registry: &Registry, repo: &str, tag: &str) -> Image {
    let resp = registry.get(&format!("/v2/{repo}/manifests/{tag}"), Some(OCI_MANIFEST));
    assert_eq!(resp.status, 200, "{repo}:{tag}: {}", resp.text());
    let manifest = resp.json();
    let digest = manifest["config"]["digest"].as_str().unwrap();
    let config = serde_json::from_slice(&registry_blob(registry, repo, digest)).unwrap();
    Image { manifest, config }
}

fn layout_blob(layout: &Path, digest: &str) -> Vec<u8> {
    let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
    fs::read(layout.join("blobs/sha256").join(hex)).expect("reading a blob of an OCI layout")
}

/// The (only) image of an OCI layout.
fn layout_image(layout: &Path) -> Image {
    let index: Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let digest = index["manifests"][0]["digest"].as_str().unwrap();
    let manifest: Value = serde_json::from_slice(&layout_blob(layout, digest)).unwrap();
    let config_digest = manifest["config"]["digest"].as_str().unwrap();
    let config = serde_json::from_slice(&layout_blob(layout, config_digest)).unwrap();
    Image { manifest, config }
}

/// An entry of a layer: its type, mode bits, owner and (for regular files) content.
#[derive(Debug, PartialEq, Eq)]
struct LayerEntry {
    kind: String,
    mode: u32,
    owner: (u64, u64),
    content: Vec<u8>,
}

/// The entries of a gzip-compressed tar layer, by path (no leading `./`, no trailing `/`).
fn layer_entries(gzipped: &[u8]) -> BTreeMap<String, LayerEntry> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(gzipped));
    let mut entries = BTreeMap::new();
    for entry in archive.entries().expect("reading a layer") {
        let mut entry = entry.expect("reading a layer entry");
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let path = path
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_string();
        let header = entry.header();
        let (kind, mode) = (
            format!("{:?}", header.entry_type()),
            header.mode().unwrap() & 0o7777,
        );
        let owner = (header.uid().unwrap(), header.gid().unwrap());
        let mut content = Vec::new();
        entry.read_to_end(&mut content).unwrap();
        entries.insert(
            path,
            LayerEntry {
                kind,
                mode,
                owner,
                content,
            },
        );
    }
    entries
}

/// A string list of a config (`Entrypoint`, `Cmd`, `Env`); absent or null is empty.
fn strings(config: &Value, key: &str) -> Vec<String> {
    config["config"][key]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

// --- the runtime images ------------------------------------------------------------------

struct RuntimeCase {
    runtime: &'static str,
    lang: &'static str,
    repo: &'static str,
    tag: &'static str,
    /// The runtime server in the image, and where it comes from in the repository.
    server: &'static str,
    server_source: &'static str,
    file: &'static str,
    source: &'static str,
}

const PYTHON_CASE: RuntimeCase = RuntimeCase {
    runtime: PYTHON,
    lang: "python",
    repo: "fnbuild/runtime-python",
    tag: "3.13",
    server: "opt/fnbuild/runtime/kubeless.py",
    server_source: "runtimes/python/kubeless.py",
    file: "hello.py",
    source: "def handler(event, context):\n    return 'hello ' + event['data']['name']\n",
};

const NODEJS_CASE: RuntimeCase = RuntimeCase {
    runtime: NODEJS,
    lang: "nodejs",
    repo: "fnbuild/runtime-nodejs",
    tag: "20",
    server: "opt/fnbuild/runtime/kubeless.js",
    server_source: "runtimes/nodejs/kubeless.js",
    file: "hello.js",
    source: "module.exports = {\n  handler: (event, context) => 'hello ' + event.data.name,\n};\n",
};

/// Builds `images/runtime-LANG/Dockerfile` from the repository root onto the upstream image,
/// checks it against `fnbuild base`'s image of the same root filesystem, then builds a
/// function onto it with `fnbuild build --base-image` and calls it under `fnbuild run`.
fn runtime_dockerfile_case(case: &RuntimeCase) {
    let started = Instant::now();
    let registry = Registry::start(RegistryOptions::default());
    let upstream = push_upstream(&registry, case.lang);
    let base = format!("{}/{}:{}", registry.host(), case.repo, case.tag);
    let buildah = Buildah::new();
    buildah.build_and_push(
        &repo_path(&format!("images/runtime-{}/Dockerfile", case.lang)),
        &repo_path("."),
        &[("UPSTREAM", &upstream)],
        &base,
    );

    let made = registry_image(&registry, case.repo, case.tag);
    let upstream_image = registry_image(&registry, &format!("upstream/{}", case.lang), "trixie");
    let layout = base_layout(case.runtime);
    let expected = layout_image(&layout);

    // The config: what starts the server, as whom, where, and what describes the image.
    for key in ["Entrypoint", "Cmd"] {
        assert_eq!(
            strings(&made.config, key),
            strings(&expected.config, key),
            "{key} of the Dockerfile's image"
        );
    }
    // Both drop the upstream's CMD, which would be appended to the entrypoint's arguments.
    assert!(!strings(&upstream_image.config, "Cmd").is_empty());
    assert!(strings(&made.config, "Cmd").is_empty());
    let mut env = strings(&made.config, "Env");
    let mut expected_env = strings(&expected.config, "Env");
    env.sort();
    expected_env.sort();
    assert_eq!(env, expected_env, "Env of the Dockerfile's image");
    for key in ["User", "WorkingDir", "ExposedPorts"] {
        assert_eq!(
            made.config["config"][key], expected.config["config"][key],
            "{key} of the Dockerfile's image"
        );
    }
    assert_eq!(made.config["config"]["User"], "1000:1000");
    let mut labels = made.config["config"]["Labels"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    // buildah's own mark; Docker adds none.
    labels.remove("io.buildah.version");
    assert_eq!(
        Value::Object(labels),
        expected.config["config"]["Labels"],
        "Labels of the Dockerfile's image"
    );
    for key in ["os", "architecture"] {
        assert_eq!(made.config[key], expected.config[key], "{key}");
    }

    // The files: the Dockerfile's layers on the upstream's hold what fnbuild's runtime layer
    // holds, with the same content and owners; the server is readable by the runtime user.
    let upstream_layers = upstream_image.layer_digests();
    let made_layers = made.layer_digests();
    assert_eq!(
        made_layers[..upstream_layers.len()],
        upstream_layers[..],
        "the Dockerfile's image starts with the upstream's layers"
    );
    let mut added = BTreeMap::new();
    for digest in &made_layers[upstream_layers.len()..] {
        added.extend(layer_entries(&registry_blob(&registry, case.repo, digest)));
    }
    let server_digest = expected.layer_digests().pop().unwrap();
    let fnbuild_layer = layer_entries(&layout_blob(&layout, &server_digest));
    assert_eq!(
        added.keys().collect::<Vec<_>>(),
        fnbuild_layer.keys().collect::<Vec<_>>(),
        "the paths the Dockerfile adds to the upstream"
    );
    for (path, entry) in &fnbuild_layer {
        let made_entry = &added[path];
        assert_eq!(
            (&made_entry.kind, made_entry.owner),
            (&entry.kind, entry.owner),
            "{path}"
        );
        assert!(
            made_entry.mode & 0o444 == 0o444,
            "{path} must be readable by every user: {:o}",
            made_entry.mode
        );
        if entry.kind == "Directory" {
            assert_eq!(made_entry.mode, entry.mode, "{path}");
        }
    }
    assert!(
        added[case.server].content == fnbuild_layer[case.server].content,
        "{} of the Dockerfile's image differs from fnbuild's runtime server",
        case.server
    );
    assert!(
        added[case.server].content == fs::read(repo_path(case.server_source)).unwrap(),
        "{} of the Dockerfile's image is not {}",
        case.server,
        case.server_source
    );

    // A function built onto it serves calls.
    let source = function_dir(&[(case.file, case.source)]);
    let cache = tempfile::tempdir().unwrap();
    let image = format!("{}/functions/hello-{}:v1", registry.host(), case.lang);
    let handler = format!("{}.handler", case.file.split('.').next().unwrap());
    let out = timed("fnbuild build onto the Dockerfile's image", || {
        success(
            fnbuild()
                .args(["build", "--source"])
                .arg(source.path())
                .args(["--runtime", case.runtime, "--handler", &handler])
                .args(["--base-image", &base, "--image", &image, "--cache-dir"])
                .arg(cache.path())
                .stdin(Stdio::null()),
        )
    });
    let pinned = printed_ref(&out);
    let function = timed("fnbuild run until healthy", || {
        RunningFunction::start(&pinned, cache.path(), &[])
    });
    let (status, _, body) = call(
        "POST",
        &function.url("/"),
        &[("content-type", "application/json")],
        br#"{"name": "dockerfile"}"#,
    );
    assert_eq!(
        (status, String::from_utf8_lossy(&body).into_owned()),
        (200, "hello dockerfile".to_string()),
        "the function's log:\n{}",
        function.log()
    );
    eprintln!(
        "[timing] the {} runtime Dockerfile, in all: {:.1?}",
        case.lang,
        started.elapsed()
    );
}

#[test]
fn the_python_runtime_dockerfile_makes_what_fnbuild_base_makes_and_functions_run_on_it() {
    runtime_dockerfile_case(&PYTHON_CASE);
}

#[test]
fn the_nodejs_runtime_dockerfile_makes_what_fnbuild_base_makes_and_functions_run_on_it() {
    runtime_dockerfile_case(&NODEJS_CASE);
}

// --- the builder image -------------------------------------------------------------------

/// A Tekton Task running the builder image's fnbuild with `runtimes`, as a non-root user.
const RUNTIMES_TASK: &str = "\
apiVersion: tekton.dev/v1
kind: Task
metadata:
  name: fnbuild-runtimes
spec:
  params:
  - name: BUILDER_IMAGE
    type: string
  steps:
  - name: runtimes
    image: $(params.BUILDER_IMAGE)
    args: [runtimes]
    securityContext:
      runAsUser: 65534
";

fn step_outputs(steps: &[StepOutput]) -> String {
    steps
        .iter()
        .map(|s| format!("step {}:\n{}{}", s.name, s.stdout, s.stderr))
        .collect()
}

/// `images/builder/Dockerfile` with BASE the python upstream (Debian trixie) and BINARY the
/// fnbuild under test, from a context holding just those two: the image runs `fnbuild
/// runtimes` under runc, and the build templates' Tekton Task builds a function with it.
#[test]
fn the_builder_dockerfile_packages_the_binary_and_the_tekton_task_builds_with_it() {
    let started = Instant::now();
    let registry = timed("registry with the python base image", || {
        registry_with_bases(&[PYTHON])
    });
    let upstream = push_upstream(&registry, "python");
    let context = tempfile::tempdir().unwrap();
    fs::copy(
        repo_path("images/builder/Dockerfile"),
        context.path().join("Dockerfile"),
    )
    .unwrap();
    let binary = context.path().join("fnbuild");
    if fs::hard_link(env!("CARGO_BIN_EXE_fnbuild"), &binary).is_err() {
        fs::copy(env!("CARGO_BIN_EXE_fnbuild"), &binary).unwrap();
    }
    // Tagged by runtime, as the templates' BUILDER_IMAGE repository holds builder images.
    let builder_repository = format!("{}/fnbuild/builder", registry.host());
    let builder = format!("{builder_repository}:{PYTHON}");
    let buildah = Buildah::new();
    buildah.build_and_push(
        &context.path().join("Dockerfile"),
        context.path(),
        &[("BASE", &upstream), ("BINARY", "fnbuild")],
        &builder,
    );

    let made = registry_image(&registry, "fnbuild/builder", PYTHON);
    assert_eq!(
        strings(&made.config, "Entrypoint"),
        ["/usr/local/bin/fnbuild"]
    );
    assert_eq!(made.config["config"]["WorkingDir"], "/workspace");
    assert!(
        strings(&made.config, "Env")
            .contains(&"SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt".to_string()),
        "{}",
        made.config
    );

    // fnbuild runs in it, as any user, and knows its runtimes.
    let task_dir = tempfile::tempdir().unwrap();
    let task = task_dir.path().join("runtimes.yaml");
    fs::write(&task, RUNTIMES_TASK).unwrap();
    let outcome = timed("fnbuild runtimes in the builder image", || {
        run_task(&task, &[("BUILDER_IMAGE", &builder)], &[])
    })
    .unwrap_or_else(|e| panic!("the runtimes step failed: {e}"));
    let listed: Vec<&str> = outcome.steps[0]
        .stdout
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    for runtime in [PYTHON, NODEJS] {
        assert!(
            listed.contains(&runtime),
            "`fnbuild runtimes` lists no {runtime}:\n{}",
            step_outputs(&outcome.steps)
        );
    }

    // The Tekton Task of build-templates/ builds and pushes a function with it.
    let source = function_dir(&[(PYTHON_CASE.file, PYTHON_CASE.source)]);
    let image = format!("{}/functions/hello:v1", registry.host());
    let outcome = timed("the Tekton Task with the builder image", || {
        run_task(
            &repo_path("build-templates/tekton/task.yaml"),
            &[
                ("IMAGE", &image),
                ("RUNTIME", PYTHON),
                ("HANDLER", "hello.handler"),
                ("BASE_REGISTRY", &registry.host()),
                ("BUILDER_IMAGE", &builder_repository),
            ],
            &[WorkspaceBinding::dir("source", source.path())],
        )
    })
    .unwrap_or_else(|e| panic!("the Task failed: {e}"));
    let (url, digest) = (
        &outcome.results["IMAGE_URL"],
        &outcome.results["IMAGE_DIGEST"],
    );
    assert_eq!(url, &image, "{}", step_outputs(&outcome.steps));
    let cache = tempfile::tempdir().unwrap();
    let function = timed("fnbuild run until healthy", || {
        RunningFunction::start(&format!("{url}@{digest}"), cache.path(), &[])
    });
    let (status, _, body) = call(
        "POST",
        &function.url("/"),
        &[("content-type", "application/json")],
        br#"{"name": "the builder image"}"#,
    );
    assert_eq!(
        (status, String::from_utf8_lossy(&body).into_owned()),
        (200, "hello the builder image".to_string()),
        "the function's log:\n{}",
        function.log()
    );
    eprintln!(
        "[timing] the builder Dockerfile, in all: {:.1?}",
        started.elapsed()
    );
}
