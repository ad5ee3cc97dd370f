//! fnbuild's build templates (`build-templates/`) run for real: the builder image is made with
//! `fnbuild builder-image` and pushed to a test registry, then `common::template_runner`
//! applies each template's parameters as Knative Build or Tekton would and runs its step as
//! a runc container of that image. What comes out is checked as a user would: the image is in
//! the registry, the results name it, and `fnbuild run` serves it.
//!
//! The last tests check every YAML under `build-templates/` against JSON schemas transcribed
//! from the Knative Build and Tekton types (`tests/support/schemas`, with jsonschema), and
//! check that every variable a template uses is declared, and every declaration used.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde_json::{json, Value};
use tempfile::TempDir;

use common::functions::*;
use common::git_server::GitDaemon;
use common::hostile::{evil_npm_package, FileServer};
use common::s3_server::{S3Server, S3Setup};
use common::template_runner::{
    apply_build_template, load_yaml, resolve_task, restricted_pss_violations, run_task, BuildPod,
    ParamValue, PodSecurityContext, RunError, StepOutput, TaskRun, TaskRunOutcome,
    WorkspaceBinding,
};
use common::{fnbuild, Registry, RegistryOptions};

const USER: &str = "builder";
const PASSWORD: &str = "s3cret-push-password";
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// A Python function reading its settings from the environment; `label` tells commits apart.
fn hello_py(label: &str) -> String {
    format!(
        "import os\n\ndef handler(event, context):\n    \
         return os.environ['GREETING'] + ' ' + os.environ['STAGE'] + ' from {label}'\n"
    )
}

/// A Python function using MarkupSafe's native extension (a cp313 wheel with a C module).
const MARKUPSAFE_PY: &str = "import markupsafe\nfrom markupsafe import _speedups\n\n\
                             def handler(event, context):\n    \
                             return str(markupsafe.escape('<b>')) + ' ' + _speedups.__name__\n";
const LEFT_PAD_JS: &str = "const leftPad = require('left-pad');\n\n\
                           module.exports = { handler: (event, context) => 'padded ' + leftPad('7', 3, '0') };\n";
const HELLO_JS: &str = "const greeting = require('./lib/greeting');\n\n\
                        module.exports = { handler: (event, context) => greeting.text + ' from s3' };\n";
const GREETING_JS: &str = "module.exports = { text: 'hello' };\n";

fn template(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("build-templates")
        .join(path)
}

fn support(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/support")
        .join(path)
}

/// Prints how long something took (shown with `--nocapture`).
fn timed<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let value = f();
    eprintln!("[timing] {what}: {:.1?}", started.elapsed());
    value
}

/// The repository of the builder images in `registry`, `HOST/fnbuild/builder`: the
/// templates' BUILDER_IMAGE, each image tagged with its runtime's name.
fn builder_repository(registry: &Registry) -> String {
    format!("{}/fnbuild/builder", registry.host())
}

/// Runs `fnbuild builder-image ARGS --image HOST/fnbuild/builder:RUNTIME` with a cache of its
/// own; returns the repository ([`builder_repository`]).
fn make_builder_image(registry: &Registry, runtime: &str, args: &[&str]) -> String {
    let repository = builder_repository(registry);
    let cache = tempfile::tempdir().unwrap();
    timed(&format!("fnbuild builder-image {args:?}"), || {
        success(
            fnbuild()
                .arg("builder-image")
                .args(args)
                .args(["--image", &format!("{repository}:{runtime}"), "--cache-dir"])
                .arg(cache.path()),
        )
    });
    repository
}

/// The builder image of `runtime` made from the fnbuild under test: the runtime's base image
/// in `registry` (its Python or Node.js, which install dependencies in place) plus fnbuild,
/// pushed as `HOST/fnbuild/builder:RUNTIME`; returns the repository.
fn push_builder_image(registry: &Registry, runtime: &str) -> String {
    let base = base_ref(registry, runtime);
    make_builder_image(
        registry,
        runtime,
        &["--runtime", runtime, "--base-image", &base],
    )
}

/// The generic builder image (fnbuild, its libraries and CA certificates: no interpreter),
/// pushed as `HOST/fnbuild/builder:RUNTIME`, for builds without dependencies; returns the
/// repository.
fn push_generic_builder_image(registry: &Registry, runtime: &str) -> String {
    make_builder_image(registry, runtime, &[])
}

/// The workspaces of a Task run that builds with dependencies in a restricted pod: the
/// function's source, the push credentials of `registry`, a cache, and the CA certificates the
/// package indexes need ([`index_ca_workspace`]).
struct DepsPod {
    source: TempDir,
    dockerconfig: TempDir,
    cache: TempDir,
    certs: TempDir,
}

impl DepsPod {
    fn new(registry: &Registry, files: &[(&str, &str)]) -> Self {
        let dockerconfig = tempfile::tempdir().unwrap();
        registry.write_docker_config(dockerconfig.path());
        Self {
            source: function_dir(files),
            dockerconfig,
            cache: tempfile::tempdir().unwrap(),
            certs: index_ca_workspace(),
        }
    }

    /// The Task run with `params`, under the restricted standard's pod settings.
    fn task_run(&self, params: &[(&str, &str)]) -> TaskRun {
        TaskRun {
            pod_security_context: restricted_pod(),
            ..TaskRun::new(
                params,
                &[
                    WorkspaceBinding::dir("source", self.source.path()),
                    WorkspaceBinding::secret("dockerconfig", self.dockerconfig.path()),
                    WorkspaceBinding::dir("cache", self.cache.path()),
                    WorkspaceBinding::secret("sslcertdir", self.certs.path()),
                ],
            )
        }
    }
}

/// The `sslcertdir` workspace of a build pod whose package indexes are reached through a
/// TLS-intercepting proxy or hold a private CA's certificates: this machine's CA bundle (which
/// trusts the proxy the tests reach PyPI and npm through), as a cluster mounts a ConfigMap.
fn index_ca_workspace() -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::copy(
        "/etc/ssl/certs/ca-certificates.crt",
        dir.path().join("ca.crt"),
    )
    .expect("this machine's CA bundle (ca-certificates)");
    dir
}

/// The content of `path` in the layers of `repository@digest` in `registry` (the last layer
/// holding it).
fn layer_file(registry: &Registry, repository: &str, digest: &str, path: &str) -> String {
    let layers = manifest(registry, repository, digest)["layers"].clone();
    let mut found = None;
    for layer in layers.as_array().unwrap() {
        let blob = registry.get(
            &format!(
                "/v2/{repository}/blobs/{}",
                layer["digest"].as_str().unwrap()
            ),
            None,
        );
        assert_eq!(blob.status, 200);
        let mut archive = tar::Archive::new(flate2::read::MultiGzDecoder::new(&blob.body[..]));
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            if entry.path().unwrap().to_string_lossy() == path {
                let mut text = String::new();
                std::io::Read::read_to_string(&mut entry, &mut text).unwrap();
                found = Some(text);
            }
        }
    }
    found.unwrap_or_else(|| panic!("{path} is in no layer of {repository}@{digest}"))
}

/// The restricted Pod Security Standard's pod settings a cluster admin (or the TaskRun's
/// podTemplate) gives a build pod: the Task's step runs as uid 1000, and `fsGroup` 1000 makes
/// the PVC workspaces writable for it.
fn restricted_pod() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        fs_group: Some(1000),
        ..PodSecurityContext::default()
    }
}

/// The manifest `registry` serves for `repository:reference`, as JSON.
fn manifest(registry: &Registry, repository: &str, reference: &str) -> Value {
    let resp = registry.get(
        &format!("/v2/{repository}/manifests/{reference}"),
        Some(MANIFEST),
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    resp.json()
}

/// The config (JSON) of the image `registry` serves at `repository@digest`.
fn image_config(registry: &Registry, repository: &str, digest: &str) -> Value {
    let config = &manifest(registry, repository, digest)["config"]["digest"];
    let resp = registry.get(
        &format!("/v2/{repository}/blobs/{}", config.as_str().unwrap()),
        None,
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    resp.json()
}

/// Asserts IMAGE_URL is the image as pushed (`expected`, no digest) and IMAGE_DIGEST is in
/// `registry`'s `repository`; returns `IMAGE_URL@IMAGE_DIGEST`, what Tekton Chains signs (the
/// tests serve it with `fnbuild run`, a client resolving it).
fn assert_image_results(
    outcome: &TaskRunOutcome,
    registry: &Registry,
    repository: &str,
    expected: &str,
) -> String {
    let (url, digest) = (
        &outcome.results["IMAGE_URL"],
        &outcome.results["IMAGE_DIGEST"],
    );
    assert!(is_digest(digest), "IMAGE_DIGEST is {digest:?}");
    assert_eq!(*url, expected);
    assert!(!url.contains('@'), "IMAGE_URL {url:?} has a digest");
    assert_eq!(manifest_digest(registry, repository, digest), *digest);
    format!("{url}@{digest}")
}

/// A registry requiring basic auth (`USER`, `PASSWORD`).
fn auth_registry() -> Registry {
    Registry::start(RegistryOptions {
        basic_auth: Some((USER.into(), PASSWORD.into())),
        tls: false,
    })
}

/// Unwraps a run's outcome, printing every step's output and time.
fn succeeded<T>(outcome: Result<T, RunError>, steps: impl Fn(&T) -> &[StepOutput]) -> T {
    let value = outcome.unwrap_or_else(|e| panic!("the run failed: {e}"));
    for step in steps(&value) {
        eprintln!(
            "[timing] step {}: {:.1?}\n--- its stderr\n{}",
            step.name, step.elapsed, step.stderr
        );
    }
    value
}

/// The digest `registry` serves for `repository:reference` (404 panics).
fn manifest_digest(registry: &Registry, repository: &str, reference: &str) -> String {
    let resp = registry.get(
        &format!("/v2/{repository}/manifests/{reference}"),
        Some(MANIFEST),
    );
    assert_eq!(
        resp.status,
        200,
        "{repository}:{reference} is not in the registry: {}",
        resp.text()
    );
    resp.header("docker-content-digest").unwrap().to_string()
}

/// A function image served by `fnbuild run`; stopped when dropped.
struct Served {
    function: RunningFunction,
    _cache: TempDir,
}

/// Serves `image` of `registry`, pulled with the registry's credentials when it has some.
fn serve(image: &str, registry: &Registry) -> Served {
    let config = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let mut cmd = fnbuild();
    if registry.basic_auth().is_some() {
        registry.write_docker_config(config.path());
        cmd.env("DOCKER_CONFIG", config.path());
    }
    let function = timed("fnbuild run until healthy", || {
        RunningFunction::start_with(cmd, image, cache.path(), &[])
    });
    Served {
        function,
        _cache: cache,
    }
}

impl Served {
    /// `GET /`: (status, body).
    fn get(&self) -> (u16, String) {
        let (status, _, body) = call("GET", &self.function.url("/"), &[], b"");
        (status, String::from_utf8_lossy(&body).into_owned())
    }
}

/// `sha256:` and 64 hex digits.
fn is_digest(text: &str) -> bool {
    text.strip_prefix("sha256:")
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

// ----------------------------------------------------------------------------------------
// Knative Build
// ----------------------------------------------------------------------------------------

/// A bare repository `functions.git` under the returned directory: `hello/hello.py` answers
/// "... from v1" at the tag `v1`, and "... from main" on `main`, one commit later.
fn function_repository() -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    fs::create_dir_all(work.join("hello")).unwrap();
    let git = |args: &[&str]| {
        success(
            Command::new("git")
                .args(args)
                .current_dir(&work)
                .env("HOME", dir.path())
                .env("GIT_CONFIG_NOSYSTEM", "1")
                .env("GIT_AUTHOR_NAME", "Fixture Author")
                .env("GIT_AUTHOR_EMAIL", "author@fixture.test")
                .env("GIT_COMMITTER_NAME", "Fixture Author")
                .env("GIT_COMMITTER_EMAIL", "author@fixture.test")
                .stdin(Stdio::null()),
        )
    };
    git(&["init", "-q", "-b", "main"]);
    for label in ["v1", "main"] {
        fs::write(work.join("hello/hello.py"), hello_py(label)).unwrap();
        git(&["add", "-A"]);
        git(&["commit", "-q", "-m", label]);
        if label == "v1" {
            git(&["tag", "v1"]);
        }
    }
    let bare = dir.path().join("repos/functions.git");
    git(&["clone", "-q", "--bare", ".", bare.to_str().unwrap()]);
    dir
}

/// A Build of `hello/` at the tag `v1` of a Git repository (served by git daemon) with the
/// template at `template_file`, its step running restricted (uid 1000, no capabilities,
/// the runtime's default seccomp profile) in the generic builder image: the function is
/// pushed, records the Git URL and commit given as SOURCE_URL and SOURCE_REVISION, and
/// answers with the Build's ENV.
fn knative_build_builds_pushes_and_serves(template_file: &str) {
    let started = Instant::now();
    let registry = timed("registry with the base image", || {
        registry_with_bases(&[PYTHON])
    });
    let builder = push_generic_builder_image(&registry, PYTHON);
    let repository = function_repository();
    let daemon = GitDaemon::start(&repository.path().join("repos"));
    let url = daemon.url("functions.git");

    let pod = BuildPod::new();
    pod.fetch_git_source(&url, "v1");
    let commit = String::from_utf8(
        success(
            Command::new("git")
                .args(["rev-parse", "HEAD"])
                .current_dir(pod.workspace()),
        )
        .stdout,
    )
    .unwrap();
    let image = format!("{}/functions/hello:v1", registry.host());
    let steps = succeeded(
        pod.run_template(
            &template(template_file),
            &[
                ("IMAGE", &image),
                ("RUNTIME", PYTHON),
                ("HANDLER", "hello.handler"),
                ("SUB_DIR", "hello"),
                ("ENV", "GREETING=hi,STAGE=test"),
                ("SOURCE_URL", &url),
                ("SOURCE_REVISION", commit.trim()),
                ("BASE_REGISTRY", &registry.host()),
                ("BUILDER_IMAGE", &builder),
            ],
        ),
        |steps| steps,
    );

    // The step printed the image by digest: the digest the registry serves for the tag.
    let printed = steps[0]
        .stdout
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    let digest = manifest_digest(&registry, "functions/hello", "v1");
    assert_eq!(
        printed,
        format!("{}/functions/hello@{digest}", registry.host()),
        "the step's stdout: {}",
        steps[0].stdout
    );
    let annotations = &manifest(&registry, "functions/hello", &digest)["annotations"];
    assert_eq!(annotations["org.opencontainers.image.source"], url.as_str());
    assert_eq!(
        annotations["org.opencontainers.image.revision"],
        commit.trim()
    );
    let served = serve(&printed, &registry);
    assert_eq!(served.get(), (200, "hi test from v1".to_string()));
    eprintln!(
        "[timing] {template_file}, in all: {:.1?}",
        started.elapsed()
    );
}

#[test]
fn the_build_template_builds_a_function_from_git_pushes_it_and_it_serves() {
    knative_build_builds_pushes_and_serves("knative-build/buildtemplate.yaml");
}

#[test]
fn the_cluster_build_template_builds_a_function_from_git_pushes_it_and_it_serves() {
    knative_build_builds_pushes_and_serves("knative-build/clusterbuildtemplate.yaml");
}

/// creds-init runs as root and writes `$HOME/.docker/config.json` with mode 0600: the
/// template's step, running as uid 1000, cannot read it, and says so; nothing is pushed.
#[test]
fn the_build_templates_restricted_step_cannot_read_what_creds_init_wrote() {
    let bases = registry_with_bases(&[PYTHON]);
    let builder = push_generic_builder_image(&bases, PYTHON);
    let registry = auth_registry();
    let pod = BuildPod::new();
    fs::write(pod.workspace().join("hello.py"), hello_py("workspace")).unwrap();
    pod.creds_init_docker(&format!("https://{}", registry.host()), USER, PASSWORD);
    let image = format!("{}/functions/hello:v1", registry.host());
    let outcome = pod.run_template(
        &template("knative-build/buildtemplate.yaml"),
        &[
            ("IMAGE", &image),
            ("RUNTIME", PYTHON),
            ("HANDLER", "hello.handler"),
            ("BASE_REGISTRY", &bases.host()),
            ("BUILDER_IMAGE", &builder),
        ],
    );
    match outcome {
        Err(RunError::StepFailed(step)) => assert!(
            step.stderr.contains("config.json") && step.stderr.contains("ermission denied"),
            "{}",
            step.stderr
        ),
        other => panic!("expected the step to fail reading config.json, got {other:?}"),
    }
    assert!(registry.image_tags("functions/hello").is_empty());
}

/// Missing parameters, duplicate arguments and unknown workspaces are refused before any
/// step runs (the builder image named here does not exist, and nothing is pulled).
#[test]
fn runs_missing_a_required_parameter_are_refused_before_anything_runs() {
    let nowhere = "127.0.0.1:1/fnbuild/builder:none";
    for file in [
        "knative-build/buildtemplate.yaml",
        "knative-build/clusterbuildtemplate.yaml",
    ] {
        let pod = BuildPod::new();
        let arguments = [
            ("IMAGE", "127.0.0.1:1/functions/hello:v1"),
            ("RUNTIME", "python3.7"),
            ("BUILDER_IMAGE", nowhere),
        ];
        match pod.run_template(&template(file), &arguments) {
            Err(RunError::Invalid(message)) => {
                assert_eq!(
                    message,
                    "UnsatisfiedParameter: build does not specify these required parameters: \
                     [{HANDLER MODULE.FUNCTION, e.g. hello.handler.}]",
                    "{file}"
                );
            }
            other => panic!("{file}: expected a refusal, got {other:?}"),
        }
        let twice = [("HANDLER", "a.b"), ("HANDLER", "c.d")];
        match pod.run_template(&template(file), &[arguments.as_slice(), &twice].concat()) {
            Err(RunError::Invalid(message)) => assert_eq!(
                message,
                "DuplicateArgName: duplicate argument name \"HANDLER\""
            ),
            other => panic!("{file}: expected a refusal, got {other:?}"),
        }
        assert_eq!(fs::read_dir(pod.workspace()).unwrap().count(), 0);
    }

    let task = template("tekton/task.yaml");
    let params = [("IMAGE", "127.0.0.1:1/f/hello:v1"), ("RUNTIME", "nodejs20")];
    match run_task(&task, &params, &[]) {
        Err(RunError::Invalid(message)) => assert_eq!(
            message,
            "invalid input params for task fnbuild: missing parameters: [HANDLER]"
        ),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let dir = tempfile::tempdir().unwrap();
    let with_handler = [params.as_slice(), &[("HANDLER", "a.b")]].concat();
    match run_task(
        &task,
        &with_handler,
        &[WorkspaceBinding::dir("sources", dir.path())],
    ) {
        Err(RunError::Invalid(message)) => assert_eq!(
            message,
            "workspace binding \"sources\" does not match any declared workspace"
        ),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

// ----------------------------------------------------------------------------------------
// Tekton
// ----------------------------------------------------------------------------------------

/// The Task on a `source` workspace holding a Python function with a requirements.txt
/// (MarkupSafe, a wheel with a native module, installed by the pip of the per-runtime builder image, as uid 1000 without
/// privileges), registry credentials from the `dockerconfig` workspace, a `cache` workspace
/// and SERVICE_FILE, in a pod with fsGroup 1000: the results name the image
/// (IMAGE_URL@IMAGE_DIGEST), the Service written into the source workspace runs it, and it
/// serves.
#[test]
fn the_task_builds_from_the_source_workspace_with_dependencies_and_reports_the_image() {
    let started = Instant::now();
    let bases = timed("registry with the base image", || {
        registry_with_bases(&[PYTHON])
    });
    let builder = push_builder_image(&bases, PYTHON);
    let registry = auth_registry();
    let pod = DepsPod::new(
        &registry,
        &[
            ("fn.py", MARKUPSAFE_PY),
            ("requirements.txt", "markupsafe==3.0.2\n"),
        ],
    );
    let image = format!("{}/functions/markupsafe:v1", registry.host());
    let cache_repo = format!("{}/fnbuild/cache", registry.host());
    let run = pod.task_run(&[
        ("IMAGE", &image),
        ("RUNTIME", PYTHON),
        ("HANDLER", "fn.handler"),
        ("SERVICE_FILE", "service.yaml"),
        ("BASE_REGISTRY", &bases.host()),
        ("BUILDER_IMAGE", &builder),
        ("CACHE_REPO", &cache_repo),
        // The base image's one platform, asked for: a plain image, as without it.
        ("PLATFORMS", "linux/amd64"),
    ]);
    let outcome = succeeded(run.run(&template("tekton/task.yaml")), |outcome| {
        &outcome.steps
    });

    let pinned = assert_image_results(&outcome, &registry, "functions/markupsafe", &image);
    let digest = &outcome.results["IMAGE_DIGEST"];
    assert_eq!(
        manifest_digest(&registry, "functions/markupsafe", "v1"),
        *digest
    );
    // The deps layer was recorded in the cache workspace and the cache repository, for the
    // next build; the image's SBOM is listed at its referrers tag.
    assert_eq!(
        fs::read_dir(pod.cache.path().join("deps")).unwrap().count(),
        1
    );
    let cached = registry.tags("fnbuild/cache");
    assert!(
        cached.len() == 1 && cached[0].starts_with("deps-"),
        "{cached:?}"
    );
    assert!(registry
        .tags("functions/markupsafe")
        .contains(&digest.replace(':', "-")));

    let service = pod.source.path().join("service.yaml");
    let out = Command::new("python3")
        .arg(support("validate_crd.py"))
        .arg(common::knative_crd("serving-service.yaml"))
        .arg(&service)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the Service is not valid against Knative's CRD: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let service = load_yaml(&service);
    assert_eq!(
        service["spec"]["template"]["spec"]["containers"][0]["image"],
        format!("{}/functions/markupsafe@{digest}", registry.host())
    );

    let served = serve(&pinned, &registry);
    assert_eq!(
        served.get(),
        (200, "&lt;b&gt; markupsafe._speedups".to_string())
    );
    eprintln!(
        "[timing] Task with dependencies, in all: {:.1?}",
        started.elapsed()
    );
}

/// The Task with a Node.js function with dependencies in package.json, in the per-runtime
/// builder image: npm installs them as uid 1000, without privileges, and the function serves.
/// One dependency is hostile: its install script (`common::hostile`) tries the registry
/// credentials in the `dockerconfig` workspace, the source and cache workspaces, the step's
/// home and every process's environment, and reports what it got in the deps layer: the
/// Landlock confinement leaves it nothing.
#[test]
fn the_task_installs_node_dependencies_in_the_restricted_builder_image() {
    let bases = registry_with_bases(&[NODEJS]);
    let builder = push_builder_image(&bases, NODEJS);
    let registry = auth_registry();
    let targets = [
        "/workspace/dockerconfig/config.json",
        "/workspace/source/fn.js",
        "/workspace/cache",
        "/tekton/home",
        "/tekton/results",
    ];
    let evil = FileServer::start(HashMap::from([(
        "/evil-1.0.0.tgz".to_string(),
        evil_npm_package("/workspace/dockerconfig/config.json", &targets),
    )]));
    let manifest = json!({
        "name": "fn",
        "version": "1.0.0",
        "dependencies": {"left-pad": "1.3.0", "evil": evil.url("/evil-1.0.0.tgz")},
    });
    let pod = DepsPod::new(
        &registry,
        &[
            ("fn.js", LEFT_PAD_JS),
            ("package.json", &manifest.to_string()),
        ],
    );
    let image = format!("{}/functions/left-pad:v1", registry.host());
    let run = pod.task_run(&[
        ("IMAGE", &image),
        ("RUNTIME", NODEJS),
        ("HANDLER", "fn.handler"),
        ("BASE_REGISTRY", &bases.host()),
        ("BUILDER_IMAGE", &builder),
    ]);
    let outcome = succeeded(run.run(&template("tekton/task.yaml")), |outcome| {
        &outcome.steps
    });
    let pinned = assert_image_results(&outcome, &registry, "functions/left-pad", &image);

    let report = layer_file(
        &registry,
        "functions/left-pad",
        &outcome.results["IMAGE_DIGEST"],
        "kubeless/node_modules/evil/report.json",
    );
    eprintln!("--- the install script's report:\n{report}");
    assert!(
        !report.contains(PASSWORD),
        "the install script read the push password"
    );
    let report: Value = serde_json::from_str(&report).unwrap();
    assert_eq!(report["uid"], 1000, "{report}");
    for target in targets {
        assert_eq!(report["targets"][target]["ok"], false, "{target}: {report}");
    }
    for (pid, seen) in report["perPid"].as_object().unwrap() {
        let environ = seen["environ"]["value"].as_str().unwrap_or("");
        assert!(
            !environ.contains("FNBUILD_BASE_REGISTRY="),
            "the install script read fnbuild's environment (process {pid})"
        );
    }
    let served = serve(&pinned, &registry);
    assert_eq!(served.get(), (200, "padded 007".to_string()));
}

/// The Task with SOURCE an S3 prefix (moto), its credentials only in the `aws` workspace
/// and no source workspace, restricted in the generic builder image (no dependencies), with
/// EXTRA_ARGS: a Node.js function is built from the prefix's files, carries the label the
/// extra arguments gave, and serves.
#[test]
fn the_task_builds_from_an_s3_prefix_with_credentials_from_the_aws_workspace() {
    let started = Instant::now();
    let bases = timed("registry with the base image", || {
        registry_with_bases(&[NODEJS])
    });
    let builder = push_generic_builder_image(&bases, NODEJS);
    let s3 = S3Server::start();
    s3.setup(
        &S3Setup::new()
            .bucket("functions")
            .object("functions", "hello-node/hello.js", HELLO_JS.as_bytes())
            .object(
                "functions",
                "hello-node/lib/greeting.js",
                GREETING_JS.as_bytes(),
            ),
    );
    let aws = function_dir(&[(
        "credentials",
        "[default]\naws_access_key_id = AKIAFNBUILDTEST00001\n\
         aws_secret_access_key = fnbuild-test-secret\n",
    )]);
    let (image, endpoint, base_registry) = (
        format!("{}/functions/hello-node:v1", bases.host()),
        s3.endpoint(),
        bases.host(),
    );
    let params = [
        ("IMAGE", image.as_str()),
        ("RUNTIME", NODEJS),
        ("HANDLER", "hello.handler"),
        ("SOURCE", "s3://functions/hello-node/"),
        ("S3_ENDPOINT", &endpoint),
        ("BASE_REGISTRY", &base_registry),
        ("BUILDER_IMAGE", &builder),
    ];
    let run = TaskRun::new(&params, &[WorkspaceBinding::secret("aws", aws.path())]).param(
        "EXTRA_ARGS",
        ParamValue::array(&["--label=team=payments", "--label", "tier=gold"]),
    );
    let outcome = succeeded(run.run(&template("tekton/task.yaml")), |outcome| {
        &outcome.steps
    });

    let pinned = assert_image_results(&outcome, &bases, "functions/hello-node", &image);
    let labels = &image_config(
        &bases,
        "functions/hello-node",
        &outcome.results["IMAGE_DIGEST"],
    )["config"]["Labels"];
    assert_eq!(
        (&labels["team"], &labels["tier"]),
        (&json!("payments"), &json!("gold"))
    );
    let served = serve(&pinned, &bases);
    assert_eq!(served.get(), (200, "hello from s3".to_string()));
    drop(served);

    // The container gets no AWS settings but the Task's: without the workspace, no credentials.
    match run_task(&template("tekton/task.yaml"), &params, &[]) {
        Err(RunError::StepFailed(step)) => assert!(
            step.stderr.contains("no S3 credentials found"),
            "{}",
            step.stderr
        ),
        other => panic!("expected the step to fail for want of credentials, got {other:?}"),
    }
    eprintln!("[timing] Task from S3, in all: {:.1?}", started.elapsed());
}

/// A registry with a certificate of its own CA: the Task pushes to it trusting the CA in the
/// `sslcertdir` workspace (a Secret holding ca.crt), and fails without it, pointing at the
/// CA; an IMAGE without a tag is pushed by digest, and IMAGE_URL names it without a tag.
#[test]
fn the_task_trusts_the_registry_ca_of_the_sslcertdir_workspace() {
    let bases = registry_with_bases(&[NODEJS]);
    let builder = push_generic_builder_image(&bases, NODEJS);
    let registry = Registry::start(RegistryOptions {
        basic_auth: None,
        tls: true,
    });
    let source = function_dir(&[("hello.js", HELLO_JS), ("lib/greeting.js", GREETING_JS)]);
    let image = format!("{}/functions/hello-tls", registry.host());
    let params = [
        ("IMAGE", image.as_str()),
        ("RUNTIME", NODEJS),
        ("HANDLER", "hello.handler"),
        ("BASE_REGISTRY", &bases.host()),
        ("BUILDER_IMAGE", &builder),
    ];
    let source_workspace = WorkspaceBinding::dir("source", source.path());
    let untrusted = TaskRun {
        pod_security_context: restricted_pod(),
        ..TaskRun::new(&params, std::slice::from_ref(&source_workspace))
    };
    match untrusted.run(&template("tekton/task.yaml")) {
        Err(RunError::StepFailed(step)) => {
            assert!(step.stderr.contains("--registry-ca"), "{}", step.stderr)
        }
        other => panic!("expected the push to fail for want of the CA, got {other:?}"),
    }
    let cert_dir = registry.cert_dir().unwrap();
    let trusted = TaskRun {
        workspaces: vec![
            source_workspace,
            WorkspaceBinding::secret("sslcertdir", cert_dir),
        ],
        ..untrusted
    };
    let outcome = succeeded(trusted.run(&template("tekton/task.yaml")), |outcome| {
        &outcome.steps
    });
    assert_image_results(&outcome, &registry, "functions/hello-tls", &image);
}

/// A Task whose one step runs `command` in `image` with `security_context`, written into
/// `dir`.
fn probe_task(dir: &Path, image: &str, command: &[&str], security_context: Value) -> PathBuf {
    let task = json!({
        "apiVersion": "tekton.dev/v1",
        "kind": "Task",
        "metadata": { "name": "probe" },
        "spec": { "steps": [{
            "name": "probe", "image": image, "command": command,
            "securityContext": security_context,
        }] },
    });
    let path = dir.join(format!("probe-{}.json", fs::read_dir(dir).unwrap().count()));
    fs::write(&path, serde_json::to_vec_pretty(&task).unwrap()).unwrap();
    path
}

/// The restricted securityContext of the templates' steps.
fn restricted_context() -> Value {
    load_yaml(&template("tekton/task.yaml"))["spec"]["steps"][0]["securityContext"].clone()
}

/// Probes the harness's restricted step from inside: each privileged operation a sandbox
/// would need (a user or mount namespace, chroot, mount, setns) fails with EPERM, clone3 with
/// ENOSYS, while Landlock stays allowed; the same probe in a privileged step succeeds. The
/// runtime's base image (Debian with util-linux and Python) runs the probe.
#[test]
fn a_restricted_step_cannot_unshare_chroot_or_mount_and_a_privileged_one_can() {
    let registry = registry_with_bases(&[PYTHON]);
    let base = base_ref(&registry, PYTHON);
    let dir = tempfile::tempdir().unwrap();
    let script = r#"
import ctypes, errno, os, subprocess, sys
libc = ctypes.CDLL(None, use_errno=True)
def call(number, *args):
    result = libc.syscall(number, *args)
    return errno.errorcode.get(ctypes.get_errno(), "?") if result == -1 else "ok"
def run(*command):
    out = subprocess.run(command, capture_output=True, text=True)
    return "ok" if out.returncode == 0 else out.stderr.strip().split(": ")[-1]
results = {
    "unshare -r": run("unshare", "-r", "true"),
    "unshare -m": run("unshare", "-m", "true"),
    "chroot": run("chroot", "/", "true"),
    "mount": run("mount", "-t", "tmpfs", "none", "/mnt"),
    "setns": call(308, -1, 0),
    "clone3": call(435, None, 0),
    "landlock": call(444, None, 0, 1),
}
for name, result in results.items():
    print(f"{name}: {result}")
"#;
    let command = ["python3", "-c", script];
    let restricted = probe_task(dir.path(), &base, &command, restricted_context());
    let outcome = succeeded(run_task(&restricted, &[], &[]), |outcome| &outcome.steps);
    let printed = &outcome.steps[0].stdout;
    for expected in [
        "unshare -r: Operation not permitted",
        "unshare -m: Operation not permitted",
        "chroot: Operation not permitted",
        "setns: EPERM",
        "clone3: ENOSYS",
    ] {
        assert!(
            printed.contains(expected),
            "{expected:?} not in:\n{printed}"
        );
    }
    assert!(
        printed.contains("mount: ") && !printed.contains("mount: ok"),
        "{printed}"
    );
    assert!(!printed.contains("landlock: EPERM"), "{printed}");

    let privileged = probe_task(
        dir.path(),
        &base,
        &command,
        json!({ "privileged": true, "runAsUser": 0 }),
    );
    let outcome = succeeded(run_task(&privileged, &[], &[]), |outcome| &outcome.steps);
    let printed = &outcome.steps[0].stdout;
    for expected in [
        "unshare -r: ok",
        "unshare -m: ok",
        "chroot: ok",
        "mount: ok",
    ] {
        assert!(
            printed.contains(expected),
            "{expected:?} not in:\n{printed}"
        );
    }
}

/// `runAsNonRoot: true` without `runAsUser`, in an image whose user is root, is refused as
/// kubelet refuses it (CreateContainerConfigError) before the step runs, and so is a
/// runAsUser of 0; in the runtime's base image, whose user is 1000:1000, the step runs as
/// that user, with fsGroup a supplementary group.
#[test]
fn run_as_non_root_with_a_root_image_is_refused_before_the_step_runs() {
    let registry = registry_with_bases(&[PYTHON]);
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("root-image");
    let layer = common::tar_of(&[("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")]);
    common::write_oci_layout(&layout, "v1", json!({ "config": {} }), &[layer]);
    let root_image = format!("{}/probe/root:v1", registry.host());
    let cache = tempfile::tempdir().unwrap();
    success(
        fnbuild()
            .arg("push")
            .arg(format!("oci:{}:v1", layout.display()))
            .arg(&root_image)
            .arg("--cache-dir")
            .arg(cache.path()),
    );
    let mut without_user = restricted_context();
    without_user.as_object_mut().unwrap().remove("runAsUser");
    without_user.as_object_mut().unwrap().remove("runAsGroup");
    for (context, message) in [
        (
            without_user.clone(),
            "container has runAsNonRoot and image will run as root (container: probe)",
        ),
        (
            json!({ "runAsNonRoot": true, "runAsUser": 0 }),
            "container's runAsUser breaks non-root policy (container: probe)",
        ),
    ] {
        let task = probe_task(dir.path(), &root_image, &["true"], context);
        match run_task(&task, &[], &[]) {
            Err(RunError::CreateContainerConfig { step, message: got }) => {
                assert_eq!((step.as_str(), got.as_str()), ("probe", message))
            }
            other => panic!("expected CreateContainerConfigError, got {other:?}"),
        }
    }

    let base = base_ref(&registry, PYTHON);
    let task = probe_task(dir.path(), &base, &["id"], without_user);
    let run = TaskRun {
        pod_security_context: restricted_pod(),
        ..TaskRun::default()
    };
    let outcome = succeeded(run.run(&task), |outcome| &outcome.steps);
    let id = &outcome.steps[0].stdout;
    for part in ["uid=1000", "gid=1000", "groups=1000"] {
        assert!(id.contains(part), "{part} not in {id}");
    }
}

// ----------------------------------------------------------------------------------------
// Schemas and variables
// ----------------------------------------------------------------------------------------

/// Every YAML file under build-templates/, sorted.
fn template_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in ["knative-build", "tekton"] {
        for entry in fs::read_dir(template(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// Runs tests/support/validate_schema.py on `files`: (valid, its report).
fn validate_schema(files: &[PathBuf]) -> (bool, String) {
    let out = Command::new("python3")
        .arg(support("validate_schema.py"))
        .arg(support("schemas"))
        .args(files)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn every_template_and_example_is_valid_against_its_schema() {
    let files = template_files();
    assert_eq!(files.len(), 6, "{files:?}");
    let (valid, report) = validate_schema(&files);
    eprintln!("{report}");
    assert!(valid, "{report}");
    assert_eq!(
        report.matches(": valid against ").count(),
        files.len(),
        "{report}"
    );
}

/// A copy of a template file broken by `mutate`, written as JSON.
fn broken_copy(dir: &Path, file: &str, mutate: impl FnOnce(&mut Value)) -> PathBuf {
    let mut document = load_yaml(&template(file));
    mutate(&mut document);
    let path = dir.join(file.replace('/', "-") + ".json");
    fs::write(&path, serde_json::to_vec_pretty(&document).unwrap()).unwrap();
    path
}

#[test]
fn the_schemas_refuse_broken_copies() {
    let dir = tempfile::tempdir().unwrap();
    let remove = |value: &mut Value, key: &str| {
        value.as_object_mut().unwrap().remove(key);
    };
    // Each broken copy, and (where, what) its report must say.
    let cases: Vec<(PathBuf, &[(&str, &str)])> = vec![
        (
            broken_copy(dir.path(), "knative-build/buildtemplate.yaml", |d| {
                remove(&mut d["spec"]["steps"][0], "image");
                d["spec"]["parameters"][4]["default"] = json!(1);
            }),
            &[
                ("/spec/steps/0: ", "'image' is a required property"),
                ("/spec/parameters/4/default: ", "1 is not of type 'string'"),
            ],
        ),
        (
            broken_copy(dir.path(), "knative-build/clusterbuildtemplate.yaml", |d| {
                d["spec"]["volumes"][0]["hostPath"] = json!({ "path": "/cache" });
                d["spec"]["steps"][0]["workingdir"] = json!("/workspace");
            }),
            &[
                ("/spec/volumes/0: ", "has too many properties"),
                ("/spec/steps/0: ", "('workingdir' was unexpected)"),
            ],
        ),
        (
            broken_copy(dir.path(), "knative-build/build.yaml", |d| {
                remove(&mut d["spec"]["template"]["arguments"][0], "value");
                d["spec"]["timeout"] = json!("ten minutes");
            }),
            &[
                (
                    "/spec/template/arguments/0: ",
                    "'value' is a required property",
                ),
                ("/spec/timeout: ", "'ten minutes' does not match"),
            ],
        ),
        (
            broken_copy(dir.path(), "tekton/task.yaml", |d| {
                d["spec"]["params"][0]["type"] = json!("number");
                d["spec"]["params"][8]["default"] = json!(180);
                remove(&mut d["spec"]["steps"][0], "name");
            }),
            &[
                ("/spec/params/0/type: ", "'number' is not one of"),
                ("/spec/params/8/default: ", "180 is not of type 'string'"),
                ("/spec/steps/0: ", "'name' is a required property"),
            ],
        ),
        (
            broken_copy(dir.path(), "tekton/taskrun.yaml", |d| {
                d["spec"]["workspaces"][0]["emptyDir"] = json!({});
                remove(&mut d["spec"]["params"][1], "name");
            }),
            &[
                ("/spec/params/1: ", "'name' is a required property"),
                ("/spec/workspaces/0: ", "is valid under each of"),
            ],
        ),
        (
            broken_copy(dir.path(), "tekton/pipeline.yaml", |d| {
                remove(&mut d["spec"]["results"][0], "value");
                d["spec"]["tasks"][2]["taskRef"] = json!({ "name": "kubectl" });
            }),
            &[
                ("/spec/results/0: ", "'value' is a required property"),
                ("/spec/tasks/2: ", "is valid under each of"),
            ],
        ),
    ];
    for (file, expected) in cases {
        let (valid, report) = validate_schema(std::slice::from_ref(&file));
        assert!(!valid, "{} was accepted:\n{report}", file.display());
        for (at, what) in expected {
            assert!(
                report.lines().any(|l| l.contains(at) && l.contains(what)),
                "{at}{what:?} not in:\n{report}"
            );
        }
    }
}

/// Every string under `value` with its JSON path, leaving out `description` fields (prose)
/// and the subtrees named in `skip`.
fn strings_in(value: &Value, path: &str, skip: &[&str], out: &mut Vec<(String, String)>) {
    match value {
        Value::String(text) => out.push((path.to_string(), text.clone())),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                strings_in(item, &format!("{path}/{i}"), skip, out);
            }
        }
        Value::Object(fields) => {
            for (key, item) in fields {
                if key != "description" && !skip.contains(&key.as_str()) {
                    strings_in(item, &format!("{path}/{key}"), skip, out);
                }
            }
        }
        _ => {}
    }
}

/// The text between each `open` and the next `close` in `text`.
fn placeholders(text: &str, open: &str, close: char) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(open) {
        let after = &rest[start + open.len()..];
        let Some(end) = after.find(close) else { break };
        found.push(after[..end].to_string());
        rest = &after[end + 1..];
    }
    found
}

/// The `name` of each item of the list `value[key]`.
fn names(value: &Value, key: &str) -> BTreeSet<String> {
    value[key]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| item["name"].as_str().map(str::to_owned))
        .collect()
}

/// Reports each `what` declared but never used.
fn unused(what: &str, declared: &BTreeSet<String>, used: &BTreeSet<String>) -> Vec<String> {
    declared
        .difference(used)
        .map(|name| format!("{what} {name} is declared but never used"))
        .collect()
}

/// A Knative Build template's `${X}`: each a declared parameter, each parameter used.
fn build_template_problems(template: &Value) -> Vec<String> {
    let spec = &template["spec"];
    let declared = names(spec, "parameters");
    let mut strings = Vec::new();
    strings_in(spec, "/spec", &["parameters"], &mut strings);
    let mut problems = Vec::new();
    let mut used = BTreeSet::new();
    for (path, text) in &strings {
        for name in placeholders(text, "${", '}') {
            if !declared.contains(&name) {
                problems.push(format!("{path}: ${{{name}}} is not a declared parameter"));
            }
            used.insert(name);
        }
    }
    problems.extend(unused("parameter", &declared, &used));
    problems
}

/// A Task's (or an embedded taskSpec's) `$(...)`: params, workspaces and results it declares
/// (`context.*` is Tekton's own); each declaration used.
fn task_problems(spec: &Value) -> Vec<String> {
    let params = names(spec, "params");
    let workspaces = names(spec, "workspaces");
    let results = names(spec, "results");
    let mut strings = Vec::new();
    strings_in(spec, "/spec", &[], &mut strings);
    let mut problems = Vec::new();
    let mut used: HashMap<String, BTreeSet<String>> = HashMap::new();
    for (path, text) in &strings {
        for expression in placeholders(text, "$(", ')') {
            let parts: Vec<&str> = expression.split('.').collect();
            let known = match parts.as_slice() {
                ["params", name] => params.contains(name.trim_end_matches("[*]")),
                ["workspaces", name, "path" | "bound" | "claim" | "volume"] => {
                    workspaces.contains(*name)
                }
                ["results", name, "path"] => results.contains(*name),
                ["context", ..] => true,
                _ => false,
            };
            if !known {
                problems.push(format!("{path}: $({expression}) is not declared"));
            } else if parts.len() > 1 {
                let name = parts[1].trim_end_matches("[*]").to_string();
                used.entry(parts[0].to_string()).or_default().insert(name);
            }
        }
    }
    for (what, declared) in [
        ("params", &params),
        ("workspaces", &workspaces),
        ("results", &results),
    ] {
        problems.extend(unused(
            what,
            declared,
            &used.remove(what).unwrap_or_default(),
        ));
    }
    problems
}

/// A Pipeline's own `$(...)` (its params, its tasks' results, which a Task in
/// build-templates/ must declare), its tasks' workspaces and runAfter, and what it passes to
/// those Tasks (declared params and workspaces, required ones given); embedded taskSpecs are
/// checked as Tasks. Tasks of the Tekton catalog (not here) are taken on trust.
fn pipeline_problems(pipeline: &Value, tasks: &HashMap<String, Value>) -> Vec<String> {
    let spec = &pipeline["spec"];
    let params = names(spec, "params");
    let workspaces = names(spec, "workspaces");
    let pipeline_tasks: HashMap<String, &Value> = spec["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["name"].as_str().unwrap().to_string(), t))
        .collect();
    let task_of = |name: &str| {
        let reference = pipeline_tasks.get(name)?["taskRef"]["name"].as_str()?;
        tasks.get(reference)
    };
    let mut problems = Vec::new();
    let mut strings = Vec::new();
    strings_in(spec, "/spec", &["taskSpec"], &mut strings);
    let mut used = BTreeSet::new();
    for (path, text) in &strings {
        for expression in placeholders(text, "$(", ')') {
            let parts: Vec<&str> = expression.split('.').collect();
            let known = match parts.as_slice() {
                ["params", name] => {
                    used.insert(name.to_string());
                    params.contains(*name)
                }
                ["tasks", task, "results", result] => match task_of(task) {
                    Some(task) => names(&task["spec"], "results").contains(*result),
                    None => pipeline_tasks.contains_key(*task),
                },
                ["context", ..] => true,
                _ => false,
            };
            if !known {
                problems.push(format!("{path}: $({expression}) is not declared"));
            }
        }
    }
    problems.extend(unused("param", &params, &used));

    let mut bound_workspaces = BTreeSet::new();
    for (name, pipeline_task) in &pipeline_tasks {
        let at = format!("/spec/tasks/{name}");
        for binding in pipeline_task["workspaces"].as_array().into_iter().flatten() {
            let workspace = binding["workspace"].as_str().unwrap_or_default();
            if !workspaces.contains(workspace) {
                problems.push(format!("{at}: workspace {workspace} is not declared"));
            }
            bound_workspaces.insert(workspace.to_string());
        }
        for after in pipeline_task["runAfter"].as_array().into_iter().flatten() {
            if !pipeline_tasks.contains_key(after.as_str().unwrap()) {
                problems.push(format!("{at}: runAfter {after} is not a task"));
            }
        }
        let task_spec = match (task_of(name), &pipeline_task["taskSpec"]) {
            (Some(task), _) => &task["spec"],
            (None, Value::Object(_)) => {
                let spec = &pipeline_task["taskSpec"];
                problems.extend(
                    task_problems(spec)
                        .into_iter()
                        .map(|p| format!("{at}: {p}")),
                );
                spec
            }
            (None, _) => {
                eprintln!(
                    "{at}: {} is a catalog task, not checked",
                    pipeline_task["taskRef"]["name"]
                );
                continue;
            }
        };
        problems.extend(passed_problems(&at, task_spec, pipeline_task));
    }
    problems.extend(unused("workspace", &workspaces, &bound_workspaces));
    problems
}

/// What a pipeline task passes to its Task: only declared params and workspaces, every
/// param without a default and every non-optional workspace.
fn passed_problems(at: &str, task_spec: &Value, pipeline_task: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let given = names(pipeline_task, "params");
    let declared = names(task_spec, "params");
    for name in given.difference(&declared) {
        problems.push(format!("{at}: param {name} is not a param of its Task"));
    }
    for param in task_spec["params"].as_array().into_iter().flatten() {
        let name = param["name"].as_str().unwrap();
        if param.get("default").is_none() && !given.contains(name) {
            problems.push(format!(
                "{at}: the Task's param {name} is required but not given"
            ));
        }
    }
    let given = names(pipeline_task, "workspaces");
    let declared = names(task_spec, "workspaces");
    for name in given.difference(&declared) {
        problems.push(format!(
            "{at}: workspace {name} is not a workspace of its Task"
        ));
    }
    for workspace in task_spec["workspaces"].as_array().into_iter().flatten() {
        let name = workspace["name"].as_str().unwrap();
        if workspace["optional"] != true && !given.contains(name) {
            problems.push(format!(
                "{at}: the Task's workspace {name} is required but not bound"
            ));
        }
    }
    problems
}

/// The `(name, value)` pairs of a list of `{name, value}`.
fn name_values(list: &Value) -> Vec<(String, String)> {
    list.as_array()
        .into_iter()
        .flatten()
        .map(|item| {
            let text = |key: &str| item[key].as_str().unwrap_or_default().to_string();
            (text("name"), text("value"))
        })
        .collect()
}

fn as_refs(pairs: &[(String, String)]) -> Vec<(&str, &str)> {
    pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

#[test]
fn every_variable_a_template_uses_is_declared_and_the_examples_resolve() {
    let mut problems = Vec::new();
    let mut tasks = HashMap::new();
    let documents: Vec<(PathBuf, Value)> = template_files()
        .into_iter()
        .map(|file| {
            let document = load_yaml(&file);
            (file, document)
        })
        .collect();
    for (file, document) in &documents {
        let at = |p: String| format!("{}: {p}", file.display());
        match document["kind"].as_str().unwrap() {
            "BuildTemplate" | "ClusterBuildTemplate" => {
                problems.extend(build_template_problems(document).into_iter().map(at))
            }
            "Task" => {
                problems.extend(task_problems(&document["spec"]).into_iter().map(at));
                let name = document["metadata"]["name"].as_str().unwrap();
                tasks.insert(name.to_string(), document.clone());
            }
            _ => {}
        }
    }
    for (file, document) in &documents {
        if document["kind"] == "Pipeline" {
            let found = pipeline_problems(document, &tasks);
            problems.extend(
                found
                    .into_iter()
                    .map(|p| format!("{}: {p}", file.display())),
            );
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");

    // The example Build applies to the template it names, leaving no placeholder.
    let build = load_yaml(&template("knative-build/build.yaml"));
    assert_eq!(build["spec"]["template"]["kind"], "BuildTemplate");
    let build_template = load_yaml(&template("knative-build/buildtemplate.yaml"));
    assert_eq!(
        build["spec"]["template"]["name"],
        build_template["metadata"]["name"]
    );
    let arguments = name_values(&build["spec"]["template"]["arguments"]);
    let applied = apply_build_template(&build_template, &as_refs(&arguments))
        .unwrap_or_else(|e| panic!("build.yaml: {e}"));
    let step = format!("{:?}", applied.steps);
    assert!(!step.contains("${"), "{step}");
    assert!(
        step.contains("--image=registry.example.com/functions/hello:v1"),
        "{step}"
    );

    // The example TaskRun resolves against the Task it names, leaving no variable.
    let taskrun = load_yaml(&template("tekton/taskrun.yaml"));
    let task = &tasks[taskrun["spec"]["taskRef"]["name"].as_str().unwrap()];
    let params: Vec<(String, ParamValue)> = taskrun["spec"]["params"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let value = ParamValue::from_json(&p["value"]).expect("a string or array value");
            (p["name"].as_str().unwrap().to_string(), value)
        })
        .collect();
    let bound: Vec<(&str, bool)> = taskrun["spec"]["workspaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| (w["name"].as_str().unwrap(), w.get("secret").is_some()))
        .collect();
    let resolved =
        resolve_task(task, &params, &bound).unwrap_or_else(|e| panic!("taskrun.yaml: {e}"));
    let step = format!("{:?}", resolved.steps);
    assert!(!step.contains("$("), "{step}");
    assert!(
        step.contains("--source=s3://functions/hello-node/"),
        "{step}"
    );
    assert!(
        step.contains("--docker-config=/workspace/dockerconfig"),
        "{step}"
    );

    // The Pipeline records git-clone's URL and commit in the image.
    let pipeline = load_yaml(&template("tekton/pipeline.yaml"));
    let pipeline_tasks = pipeline["spec"]["tasks"].as_array().unwrap();
    let task_named = |name: &str| pipeline_tasks.iter().find(|t| t["name"] == name).unwrap();
    assert_eq!(task_named("fetch")["taskRef"]["name"], "git-clone");
    let build_params = name_values(&task_named("build")["params"]);
    for (param, value) in [
        ("SOURCE_URL", "$(tasks.fetch.results.url)"),
        ("SOURCE_REVISION", "$(tasks.fetch.results.commit)"),
    ] {
        assert!(
            build_params.contains(&(param.to_string(), value.to_string())),
            "{param}: {build_params:?}"
        );
    }
}

/// EXTRA_ARGS, an array parameter, becomes separate arguments at the end of the step's args
/// (none by default); an array where a string is declared, or a string where an array is,
/// is refused as Tekton refuses it; an array written inside a string is refused.
#[test]
fn extra_args_expand_into_separate_arguments() {
    let task = load_yaml(&template("tekton/task.yaml"));
    let base = [
        ("IMAGE", "r.test/f:v1"),
        ("RUNTIME", NODEJS),
        ("HANDLER", "a.b"),
    ];
    let run = TaskRun::new(&base, &[]);
    let args_of = |run: &TaskRun| -> Result<Vec<String>, RunError> {
        let resolved = resolve_task(&task, &run.params, &[])?;
        Ok(resolved.steps[0].args.clone())
    };
    let plain = args_of(&run).unwrap();
    assert_eq!(
        plain.last().unwrap(),
        "--image-url-file=/tekton/results/IMAGE_URL"
    );
    let extra = ["--memory=256Mi", "--label", "team=a b"];
    let with_extra = args_of(&run.clone().param("EXTRA_ARGS", ParamValue::array(&extra))).unwrap();
    assert_eq!(with_extra[..plain.len()], plain[..]);
    assert_eq!(with_extra[plain.len()..], extra.map(String::from));

    let mistyped = [
        run.clone().param("EXTRA_ARGS", "--memory=256Mi".into()),
        run.clone()
            .param("IMAGE", ParamValue::array(&["r.test/f:v1"])),
    ];
    for (run, name) in mistyped.iter().zip(["EXTRA_ARGS", "IMAGE"]) {
        match args_of(run) {
            Err(RunError::Invalid(message)) => assert_eq!(
                message,
                format!(
                    "invalid input params for task fnbuild: param types don't match the user-specified type: [{name}]"
                )
            ),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
    let mut inside = task.clone();
    inside["spec"]["steps"][0]["args"][0] = json!("build $(params.EXTRA_ARGS[*])");
    match resolve_task(&inside, &run.params, &[]) {
        Err(RunError::Invalid(message)) => assert!(message.contains("EXTRA_ARGS"), "{message}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// PLATFORMS becomes `--platform`: empty by default (every platform the base image has), the
/// platforms given otherwise, in the Task, both Knative Build templates and the Pipeline,
/// which passes its own PLATFORMS to the Task.
#[test]
fn the_platforms_parameter_becomes_the_platform_flag() {
    let required = [
        ("IMAGE", "r.test/f:v1"),
        ("RUNTIME", PYTHON),
        ("HANDLER", "a.b"),
    ];
    let platform_args = |args: &[String]| -> Vec<String> {
        args.iter()
            .filter(|a| a.starts_with("--platform"))
            .cloned()
            .collect()
    };
    let task = load_yaml(&template("tekton/task.yaml"));
    let run = TaskRun::new(&required, &[]);
    for (run, expected) in [
        (run.clone(), "--platform="),
        (
            run.clone()
                .param("PLATFORMS", "linux/amd64,linux/arm64".into()),
            "--platform=linux/amd64,linux/arm64",
        ),
    ] {
        let resolved = resolve_task(&task, &run.params, &[]).unwrap();
        assert_eq!(platform_args(&resolved.steps[0].args), [expected]);
    }
    for file in [
        "knative-build/buildtemplate.yaml",
        "knative-build/clusterbuildtemplate.yaml",
    ] {
        let build_template = load_yaml(&template(file));
        for (extra, expected) in [
            (None, "--platform="),
            (Some(("PLATFORMS", "linux/arm64")), "--platform=linux/arm64"),
        ] {
            let arguments: Vec<(&str, &str)> = required.into_iter().chain(extra).collect();
            let applied = apply_build_template(&build_template, &arguments).unwrap();
            assert_eq!(platform_args(&applied.steps[0].args), [expected], "{file}");
        }
    }
    let pipeline = load_yaml(&template("tekton/pipeline.yaml"));
    let build = pipeline["spec"]["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "build")
        .unwrap();
    assert!(name_values(&build["params"])
        .contains(&("PLATFORMS".to_string(), "$(params.PLATFORMS)".to_string())));
}

/// The pods the templates make, as the restricted Pod Security Standard sees them: the
/// Task's steps (which the Pipeline's build task runs) and volumes, the Pipeline's embedded
/// deploy task, each Knative Build template's steps and volumes.
fn template_pods() -> Vec<(String, Value)> {
    let pod_of = |spec: &Value| json!({ "containers": spec["steps"], "volumes": spec["volumes"] });
    let mut pods = Vec::new();
    for file in [
        "tekton/task.yaml",
        "knative-build/buildtemplate.yaml",
        "knative-build/clusterbuildtemplate.yaml",
    ] {
        pods.push((
            file.to_string(),
            pod_of(&load_yaml(&template(file))["spec"]),
        ));
    }
    let pipeline = load_yaml(&template("tekton/pipeline.yaml"));
    for task in pipeline["spec"]["tasks"].as_array().unwrap() {
        match (&task["taskSpec"], task["taskRef"]["name"].as_str()) {
            (Value::Object(_), _) => pods.push((
                format!("tekton/pipeline.yaml task {}", task["name"]),
                pod_of(&task["taskSpec"]),
            )),
            (_, Some("fnbuild")) => assert!(pods.iter().any(|(f, _)| f == "tekton/task.yaml")),
            (_, other) => eprintln!("{other:?}: a catalog task, not checked"),
        }
    }
    pods
}

/// Every step of the templates runs in a pod the restricted Pod Security Standard admits;
/// the check does report a privileged step, a missing `drop: [ALL]`, a hostPath volume and a
/// step left to run as root.
#[test]
fn every_template_step_meets_the_restricted_pod_security_standard() {
    let pods = template_pods();
    assert_eq!(pods.len(), 4, "{pods:#?}");
    for (what, pod) in &pods {
        assert_eq!(
            restricted_pss_violations(pod),
            Vec::<String>::new(),
            "{what}"
        );
    }

    let (_, task_pod) = &pods[0];
    let broken = |mutate: &dyn Fn(&mut Value)| {
        let mut pod = task_pod.clone();
        mutate(&mut pod);
        restricted_pss_violations(&pod)
    };
    assert_eq!(
        broken(&|pod| pod["containers"][0]["securityContext"]["privileged"] = json!(true)),
        ["privileged (container \"build-and-push\" must not set securityContext.privileged=true)"]
    );
    assert_eq!(
        broken(&|pod| {
            let context = pod["containers"][0]["securityContext"].as_object_mut().unwrap();
            context.remove("capabilities");
        }),
        ["unrestricted capabilities (container \"build-and-push\" must set securityContext.capabilities.drop=[\"ALL\"])"]
    );
    assert_eq!(
        broken(&|pod| {
            let context = pod["containers"][0]["securityContext"].as_object_mut().unwrap();
            context.remove("runAsNonRoot");
            context.remove("seccompProfile");
            context.insert("capabilities".into(), json!({ "drop": ["ALL"], "add": ["SYS_ADMIN"] }));
            pod["volumes"] = json!([{ "name": "host", "hostPath": { "path": "/" } }]);
        }),
        [
            "unrestricted capabilities (container \"build-and-push\" must not include capabilities other than NET_BIND_SERVICE in securityContext.capabilities.add)",
            "restricted volume types (\"host\" uses hostPath)",
            "runAsNonRoot != true (container \"build-and-push\" must set securityContext.runAsNonRoot=true)",
            "seccompProfile (container \"build-and-push\" must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")",
        ]
    );
    // The pod's own settings count for its containers.
    assert_eq!(
        broken(&|pod| {
            let context = pod["containers"][0]["securityContext"]
                .as_object_mut()
                .unwrap();
            context.remove("runAsNonRoot");
            context.remove("seccompProfile");
            pod["securityContext"] =
                json!({ "runAsNonRoot": true, "seccompProfile": { "type": "RuntimeDefault" } });
        }),
        Vec::<String>::new()
    );
}

fn sorted(mut problems: Vec<String>) -> Vec<String> {
    problems.sort();
    problems
}

/// The variable checks do fail: undeclared and unused names in broken copies are reported.
#[test]
fn the_variable_checks_report_undeclared_and_unused_names() {
    let mut build_template = load_yaml(&template("knative-build/buildtemplate.yaml"));
    let args = build_template["spec"]["steps"][0]["args"]
        .as_array_mut()
        .unwrap();
    args.retain(|a| a != "--label=${LABELS}");
    args.push(json!("--s3-region=${S3_REGION}"));
    let pushed = format!(
        "/spec/steps/0/args/{}: ${{S3_REGION}} is not a declared parameter",
        args.len() - 1
    );
    assert_eq!(
        sorted(build_template_problems(&build_template)),
        [
            pushed.as_str(),
            "parameter LABELS is declared but never used"
        ]
    );

    let mut task = load_yaml(&template("tekton/task.yaml"));
    task["spec"]["steps"][0]["workingDir"] = json!("$(workspaces.src.path)");
    let image_url_arg = task["spec"]["steps"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .position(|a| {
            a.as_str()
                .is_some_and(|a| a.starts_with("--image-url-file="))
        })
        .unwrap();
    task["spec"]["steps"][0]["args"][image_url_arg] =
        json!("--image-url-file=$(results.IMAGE_REF.path)");
    let undeclared_result =
        format!("/spec/steps/0/args/{image_url_arg}: $(results.IMAGE_REF.path) is not declared");
    assert_eq!(
        sorted(task_problems(&task["spec"])),
        [
            undeclared_result.as_str(),
            "/spec/steps/0/workingDir: $(workspaces.src.path) is not declared",
            "results IMAGE_URL is declared but never used",
        ]
    );

    let mut pipeline = load_yaml(&template("tekton/pipeline.yaml"));
    pipeline["spec"]["results"][0]["value"] = json!("$(tasks.build.results.IMAGE_REF)");
    pipeline["spec"]["tasks"][1]["params"][0]["name"] = json!("IMAGES");
    let tasks = HashMap::from([(
        "fnbuild".to_string(),
        load_yaml(&template("tekton/task.yaml")),
    )]);
    let problems = pipeline_problems(&pipeline, &tasks);
    for expected in [
        "/spec/results/0/value: $(tasks.build.results.IMAGE_REF) is not declared",
        "/spec/tasks/build: param IMAGES is not a param of its Task",
        "/spec/tasks/build: the Task's param IMAGE is required but not given",
    ] {
        assert!(
            problems.iter().any(|p| p == expected),
            "{expected:?} not in {problems:#?}"
        );
    }
}
