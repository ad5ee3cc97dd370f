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
use common::s3_server::{S3Server, S3Setup};
use common::template_runner::{
    apply_build_template, load_yaml, resolve_task, run_task, BuildPod, RunError, StepOutput,
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

const SIX_PY: &str =
    "import six\n\ndef handler(event, context):\n    return 'six ' + six.__version__\n";
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

/// The builder image made from the fnbuild under test, pushed to `registry` as
/// `HOST/fnbuild/builder:test`; returns that reference.
fn push_builder_image(registry: &Registry) -> String {
    let image = format!("{}/fnbuild/builder:test", registry.host());
    let cache = tempfile::tempdir().unwrap();
    timed("fnbuild builder-image", || {
        success(
            fnbuild()
                .args(["builder-image", "--image", &image, "--cache-dir"])
                .arg(cache.path()),
        )
    });
    image
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
/// template at `template_file`, pushing to a basic-auth registry with creds-init's
/// credentials; the function then answers with the Build's ENV.
fn knative_build_builds_pushes_and_serves(template_file: &str) {
    let started = Instant::now();
    let bases = timed("registry with the base image", || {
        registry_with_bases(&[PYTHON])
    });
    let builder = push_builder_image(&bases);
    let registry = auth_registry();
    let repository = function_repository();
    let daemon = GitDaemon::start(&repository.path().join("repos"));

    let pod = BuildPod::new();
    pod.fetch_git_source(&daemon.url("functions.git"), "v1");
    pod.creds_init_docker(&format!("https://{}", registry.host()), USER, PASSWORD);
    let image = format!("{}/functions/hello:v1", registry.host());
    let steps = succeeded(
        pod.run_template(
            &template(template_file),
            &[
                ("IMAGE", &image),
                ("RUNTIME", "python3.7"),
                ("HANDLER", "hello.handler"),
                ("SUB_DIR", "hello"),
                ("ENV", "GREETING=hi,STAGE=test"),
                ("BASE_REGISTRY", &bases.host()),
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

/// The Task on a `source` workspace holding a Python function with a requirements.txt (six,
/// installed inside the privileged builder container), registry credentials from the
/// `dockerconfig` workspace, a `cache` workspace and SERVICE_FILE: the results name the
/// image by digest, the Service written into the source workspace runs it, and it serves.
#[test]
fn the_task_builds_from_the_source_workspace_with_dependencies_and_reports_the_image() {
    let started = Instant::now();
    let bases = timed("registry with the base image", || {
        registry_with_bases(&[PYTHON])
    });
    let builder = push_builder_image(&bases);
    let registry = auth_registry();
    let source = function_dir(&[("fn.py", SIX_PY), ("requirements.txt", "six==1.16.0\n")]);
    let dockerconfig = tempfile::tempdir().unwrap();
    registry.write_docker_config(dockerconfig.path());
    let cache = tempfile::tempdir().unwrap();
    let image = format!("{}/functions/six:v1", registry.host());
    let cache_repo = format!("{}/fnbuild/cache", registry.host());
    let outcome = succeeded(
        run_task(
            &template("tekton/task.yaml"),
            &[
                ("IMAGE", &image),
                ("RUNTIME", PYTHON),
                ("HANDLER", "fn.handler"),
                ("SERVICE_FILE", "service.yaml"),
                ("BASE_REGISTRY", &bases.host()),
                ("BUILDER_IMAGE", &builder),
                ("CACHE_REPO", &cache_repo),
            ],
            &[
                WorkspaceBinding::dir("source", source.path()),
                WorkspaceBinding::secret("dockerconfig", dockerconfig.path()),
                WorkspaceBinding::dir("cache", cache.path()),
            ],
        ),
        |outcome| &outcome.steps,
    );

    let digest = &outcome.results["IMAGE_DIGEST"];
    let url = &outcome.results["IMAGE_URL"];
    assert!(is_digest(digest), "IMAGE_DIGEST is {digest:?}");
    assert_eq!(*url, format!("{}/functions/six@{digest}", registry.host()));
    assert_eq!(manifest_digest(&registry, "functions/six", "v1"), *digest);
    assert_eq!(manifest_digest(&registry, "functions/six", digest), *digest);
    // The deps layer was recorded in the cache workspace and the cache repository, for the
    // next build; the image's SBOM is listed at its referrers tag.
    assert_eq!(fs::read_dir(cache.path().join("deps")).unwrap().count(), 1);
    let cached = registry.tags("fnbuild/cache");
    assert!(
        cached.len() == 1 && cached[0].starts_with("deps-"),
        "{cached:?}"
    );
    assert!(registry
        .tags("functions/six")
        .contains(&digest.replace(':', "-")));

    let service = source.path().join("service.yaml");
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
        url.as_str()
    );

    let served = serve(url, &registry);
    assert_eq!(served.get(), (200, "six 1.16.0".to_string()));

    // Without `privileged: true` the install cannot chroot in a mount namespace of its own:
    // the step fails saying so, and nothing is pushed.
    let mut task = load_yaml(&template("tekton/task.yaml"));
    task["spec"]["steps"][0]["securityContext"]["privileged"] = json!(false);
    let unprivileged = source.path().join("unprivileged-task.json");
    fs::write(&unprivileged, serde_json::to_vec(&task).unwrap()).unwrap();
    let image = format!("{}/functions/six:unprivileged", registry.host());
    let outcome = run_task(
        &unprivileged,
        &[
            ("IMAGE", &image),
            ("RUNTIME", PYTHON),
            ("HANDLER", "fn.handler"),
            ("BASE_REGISTRY", &bases.host()),
            ("BUILDER_IMAGE", &builder),
        ],
        &[
            WorkspaceBinding::dir("source", source.path()),
            WorkspaceBinding::secret("dockerconfig", dockerconfig.path()),
        ],
    );
    match outcome {
        Err(RunError::StepFailed(step)) => {
            let last = step.stderr.lines().last().unwrap_or_default();
            eprintln!("the unprivileged step failed, as it should: {last}");
            assert!(step.stderr.contains("mount namespace"), "{}", step.stderr);
        }
        other => panic!("expected the unprivileged step to fail, got {other:?}"),
    }
    assert_eq!(registry.image_tags("functions/six"), ["v1"]);
    eprintln!(
        "[timing] Task with dependencies, in all: {:.1?}",
        started.elapsed()
    );
}

/// The Task with SOURCE an S3 prefix (moto), its credentials only in the `aws` workspace
/// and no source workspace: a Node.js function is built from the prefix's files and serves.
#[test]
fn the_task_builds_from_an_s3_prefix_with_credentials_from_the_aws_workspace() {
    let started = Instant::now();
    let bases = timed("registry with the base image", || {
        registry_with_bases(&[NODEJS])
    });
    let builder = push_builder_image(&bases);
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
    let outcome = succeeded(
        run_task(
            &template("tekton/task.yaml"),
            &params,
            &[WorkspaceBinding::secret("aws", aws.path())],
        ),
        |outcome| &outcome.steps,
    );

    let digest = &outcome.results["IMAGE_DIGEST"];
    assert!(is_digest(digest), "IMAGE_DIGEST is {digest:?}");
    assert_eq!(
        outcome.results["IMAGE_URL"],
        format!("{}/functions/hello-node@{digest}", bases.host())
    );
    assert_eq!(
        manifest_digest(&bases, "functions/hello-node", "v1"),
        *digest
    );
    let served = serve(&outcome.results["IMAGE_URL"], &bases);
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
    let params = name_values(&taskrun["spec"]["params"]);
    let bound: Vec<(&str, bool)> = taskrun["spec"]["workspaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| (w["name"].as_str().unwrap(), w.get("secret").is_some()))
        .collect();
    let resolved = resolve_task(task, &as_refs(&params), &bound)
        .unwrap_or_else(|e| panic!("taskrun.yaml: {e}"));
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
    assert_eq!(
        sorted(build_template_problems(&build_template)),
        [
            "/spec/steps/0/args/15: ${S3_REGION} is not a declared parameter",
            "parameter LABELS is declared but never used",
        ]
    );

    let mut task = load_yaml(&template("tekton/task.yaml"));
    task["spec"]["steps"][0]["workingDir"] = json!("$(workspaces.src.path)");
    let image_ref_arg = task["spec"]["steps"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .position(|a| {
            a.as_str()
                .is_some_and(|a| a.starts_with("--image-ref-file="))
        })
        .unwrap();
    task["spec"]["steps"][0]["args"][image_ref_arg] =
        json!("--image-ref-file=$(results.IMAGE_REF.path)");
    let undeclared_result =
        format!("/spec/steps/0/args/{image_ref_arg}: $(results.IMAGE_REF.path) is not declared");
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
