//! Runs fnbuild's build templates (`build-templates/`) for real, as Knative Build and Tekton
//! run them, as their documentation describes: parameters are applied with each
//! system's substitution rules, then every step runs, one after the other, as a runc container
//! of its image, pulled from a registry and unpacked, with the pod's shared directories bound
//! in.
//!
//! - Knative Build (`BuildTemplate`, `ClusterBuildTemplate`): `${NAME}`, defaults first, then
//!   the Build's arguments; a parameter with neither is refused as the webhook refuses the
//!   Build. `/workspace` (the default working directory) and `/builder/home` (`HOME`) are
//!   shared by the steps; see [`BuildPod`], which also emulates the source step and creds-init.
//! - Tekton (`Task`): `$(params.X)`, then `$(workspaces.X.path)` and `$(workspaces.X.bound)`,
//!   then `$(results.X.path)`; results are read back from `/tekton/results`; `HOME` is
//!   `/tekton/home`; see [`run_task`].
//!
//! A step's container shares the host's network (so registries and servers on 127.0.0.1 are
//! reachable) and runs as root (or `securityContext.runAsUser`); the image's root filesystem
//! is unpacked for that step alone and is writable, like a container's top layer. A
//! `privileged` step gets every capability, no masked paths and all devices, as Kubernetes
//! gives it; others get Docker's default capability set and masked paths (no seccomp
//! profile). Volumes may only be `emptyDir`; what the runner does not support (a `script`,
//! `valueFrom`, array parameters) is a panic, never silently ignored.
//!
//! It must not touch anything of the host but the directories it is given or makes: each run
//! works in temporary directories, and containers are deleted when their process ends.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fnbuild::cache::Cache;
use fnbuild::image::config::ContainerConfig;
use fnbuild::registry::{Registries, TransportOptions};
use fnbuild::rootfs;
use fnbuild::transport::{Location, SourceImage};
use serde::Deserialize;
use serde_json::{json, Value};
use tempfile::TempDir;

/// How long a step may run: Knative Build's default Build timeout.
const STEP_TIMEOUT: Duration = Duration::from_secs(600);

/// Where Tekton puts results, its home and its workspaces.
const TEKTON_RESULTS: &str = "/tekton/results";
const TEKTON_HOME: &str = "/tekton/home";
const TEKTON_WORKSPACE: &str = "/workspace";

/// Knative Build's shared directories.
const BUILD_WORKSPACE: &str = "/workspace";
const BUILD_HOME: &str = "/builder/home";

/// Docker's default capabilities: what a container gets unless it is privileged.
const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every capability Linux defines, in the order of their numbers (bits).
const ALL_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

// === Outcomes ===

/// What one step did.
#[derive(Debug, Clone)]
pub struct StepOutput {
    pub name: String,
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

/// Why a run did not succeed, as its user would learn it.
#[derive(Debug)]
pub enum RunError {
    /// Refused before anything ran, as the system's admission webhook refuses the object.
    Invalid(String),
    /// A step's image could not be pulled (Kubernetes' ErrImagePull); the step did not run.
    ImagePull {
        step: String,
        image: String,
        message: String,
    },
    /// A step exited with a non-zero code; the steps after it did not run.
    StepFailed(StepOutput),
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::Invalid(message) => write!(f, "refused: {message}"),
            RunError::ImagePull {
                step,
                image,
                message,
            } => write!(f, "step {step}: cannot pull {image}: {message}"),
            RunError::StepFailed(out) => write!(
                f,
                "step {} exited with {} after {:?}\n--- stdout\n{}--- stderr\n{}",
                out.name, out.exit_code, out.elapsed, out.stdout, out.stderr
            ),
        }
    }
}

// === The objects, as far as the runner honours them ===

/// A template's step: a container.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Step {
    #[serde(default)]
    pub name: String,
    pub image: String,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<EnvVar>,
    #[serde(default)]
    pub working_dir: String,
    #[serde(default)]
    pub volume_mounts: Vec<VolumeMount>,
    #[serde(default)]
    pub security_context: SecurityContext,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvVar {
    pub name: String,
    #[serde(default)]
    pub value: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VolumeMount {
    pub name: String,
    pub mount_path: String,
    #[serde(default)]
    pub sub_path: String,
    #[serde(default)]
    pub read_only: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecurityContext {
    #[serde(default)]
    pub privileged: bool,
    pub run_as_user: Option<u32>,
}

/// A pod volume; only `emptyDir` is supported.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Volume {
    pub name: String,
    pub empty_dir: Value,
}

impl Step {
    /// Replaces the text of every field both systems substitute in, but the step's name:
    /// image, command, args, env values, workingDir, and volumeMount name, mountPath and
    /// subPath.
    fn substitute(&mut self, f: &dyn Fn(&str) -> String) {
        self.image = f(&self.image);
        for text in self.command.iter_mut().chain(self.args.iter_mut()) {
            *text = f(text);
        }
        for var in &mut self.env {
            var.value = f(&var.value);
        }
        self.working_dir = f(&self.working_dir);
        for mount in &mut self.volume_mounts {
            mount.name = f(&mount.name);
            mount.mount_path = f(&mount.mount_path);
            mount.sub_path = f(&mount.sub_path);
        }
    }
}

/// Reads one YAML document as JSON values.
pub fn load_yaml(path: &Path) -> Value {
    let text =
        fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// Parses part of an object into the runner's model; what it does not know is a panic.
fn parse<T: serde::de::DeserializeOwned>(value: &Value, what: &str) -> T {
    serde_json::from_value(value.clone())
        .unwrap_or_else(|e| panic!("{what}: {e} (the template runner does not support it)"))
}

/// The list at `value[key]`, each item parsed; absent is empty.
fn parse_list<T: serde::de::DeserializeOwned>(value: &Value, key: &str) -> Vec<T> {
    match value.get(key) {
        None | Some(Value::Null) => Vec::new(),
        Some(list) => parse(list, key),
    }
}

/// Replaces each `OPEN key CLOSE` in `text` whose key `lookup` knows, in one pass (what is
/// put in is not scanned again); unknown ones stay as written.
fn substitute(
    text: &str,
    open: &str,
    close: char,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(open) {
        let after = &rest[start + open.len()..];
        let Some(end) = after.find(close) else { break };
        out.push_str(&rest[..start]);
        match lookup(&after[..end]) {
            Some(value) => out.push_str(&value),
            None => out.push_str(&rest[start..start + open.len() + end + 1]),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

// === Knative Build ===

/// A Knative Build template applied to a Build's arguments: what the Build's pod runs.
#[derive(Debug, Clone)]
pub struct AppliedTemplate {
    pub steps: Vec<Step>,
    pub volumes: Vec<Volume>,
}

#[derive(Debug, Deserialize)]
struct TemplateParameter {
    name: String,
    #[serde(default)]
    description: String,
    default: Option<String>,
}

/// Applies a `BuildTemplate` or `ClusterBuildTemplate` to a Build's arguments as Knative
/// Build does: the webhook refuses duplicate arguments and required parameters left
/// unsatisfied; then `${NAME}` is replaced (defaults, overridden by the arguments) in the steps'
/// names and fields and in the volumes' names.
pub fn apply_build_template(
    template: &Value,
    arguments: &[(&str, &str)],
) -> Result<AppliedTemplate, RunError> {
    let kind = template["kind"].as_str().unwrap_or_default();
    assert!(
        template["apiVersion"] == "build.knative.dev/v1alpha1"
            && matches!(kind, "BuildTemplate" | "ClusterBuildTemplate"),
        "not a Knative Build template: {} {kind}",
        template["apiVersion"]
    );
    let spec = &template["spec"];
    let parameters: Vec<TemplateParameter> = parse_list(spec, "parameters");
    for (i, (name, _)) in arguments.iter().enumerate() {
        if arguments[..i].iter().any(|(other, _)| other == name) {
            return Err(RunError::Invalid(format!(
                "DuplicateArgName: duplicate argument name {name:?}"
            )));
        }
    }
    let unsatisfied: Vec<String> = parameters
        .iter()
        .filter(|p| p.default.is_none() && !arguments.iter().any(|(name, _)| *name == p.name))
        .map(|p| format!("{{{} {}}}", p.name, p.description))
        .collect();
    if !unsatisfied.is_empty() {
        return Err(RunError::Invalid(format!(
            "UnsatisfiedParameter: build does not specify these required parameters: [{}]",
            unsatisfied.join(" ")
        )));
    }
    let mut values: HashMap<String, String> = parameters
        .into_iter()
        .filter_map(|p| Some((p.name, p.default?)))
        .collect();
    values.extend(
        arguments
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let replace = |text: &str| substitute(text, "${", '}', &|name| values.get(name).cloned());

    let mut steps: Vec<Step> = parse_list(spec, "steps");
    for step in &mut steps {
        step.name = replace(&step.name);
        step.substitute(&replace);
    }
    let mut volumes: Vec<Volume> = parse_list(spec, "volumes");
    for volume in &mut volumes {
        volume.name = replace(&volume.name);
    }
    Ok(AppliedTemplate { steps, volumes })
}

/// The pod of one Knative Build: host directories for `/workspace` and `/builder/home`,
/// shared by its steps, and a scratch area for the steps' root filesystems and volumes.
pub struct BuildPod {
    dir: TempDir,
}

impl Default for BuildPod {
    fn default() -> Self {
        Self::new()
    }
}

impl BuildPod {
    pub fn new() -> BuildPod {
        let dir = tempfile::Builder::new()
            .prefix("fnbuild-build-pod-")
            .tempdir()
            .expect("creating the pod's directory");
        for sub in ["workspace", "home", "scratch"] {
            fs::create_dir(dir.path().join(sub)).expect("creating the pod's directories");
        }
        BuildPod { dir }
    }

    /// The host directory that is `/workspace` in the steps.
    pub fn workspace(&self) -> PathBuf {
        self.dir.path().join("workspace")
    }

    /// The host directory that is `/builder/home` (`$HOME`) in the steps.
    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    /// The source step of a Build with `source.git {url, revision}`, as Knative Build's
    /// git-init does it: `git init`, `git remote add origin URL`, `git fetch --depth=1
    /// --recurse-submodules=yes origin REVISION`, `git reset --hard FETCH_HEAD`, in
    /// `/workspace`, with `/builder/home` as `HOME` (where creds-init put Git credentials).
    pub fn fetch_git_source(&self, url: &str, revision: &str) {
        let steps: [&[&str]; 4] = [
            &["init", "-q"],
            &["remote", "add", "origin", url],
            &[
                "fetch",
                "-q",
                "--depth=1",
                "--recurse-submodules=yes",
                "origin",
                revision,
            ],
            &["reset", "-q", "--hard", "FETCH_HEAD"],
        ];
        for args in steps {
            let out = Command::new("git")
                .args(args)
                .current_dir(self.workspace())
                .env("HOME", self.home())
                .env("GIT_CONFIG_NOSYSTEM", "1")
                .stdin(Stdio::null())
                .output()
                .expect("running git");
            assert!(
                out.status.success(),
                "the source step failed: git {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// creds-init for a `kubernetes.io/basic-auth` secret annotated
    /// `build.knative.dev/docker-0: REGISTRY_URL`: an entry of `$HOME/.docker/config.json`
    /// keyed by the annotation's URL as written, with the user, password and
    /// `auth` = base64(`user:password`).
    pub fn creds_init_docker(&self, registry_url: &str, user: &str, password: &str) {
        let dir = self.home().join(".docker");
        fs::create_dir_all(&dir).expect("creating $HOME/.docker");
        let path = dir.join("config.json");
        let mut config: Value = fs::read(&path)
            .map(|bytes| serde_json::from_slice(&bytes).expect("config.json is JSON"))
            .unwrap_or_else(|_| json!({ "auths": {} }));
        config["auths"][registry_url] = json!({
            "username": user,
            "password": password,
            "auth": super::base64_encode(format!("{user}:{password}").as_bytes()),
        });
        fs::write(&path, serde_json::to_vec_pretty(&config).unwrap())
            .expect("writing $HOME/.docker/config.json");
    }

    /// Applies the template at `template` to `arguments` and runs its steps in this pod.
    pub fn run_template(
        &self,
        template: &Path,
        arguments: &[(&str, &str)],
    ) -> Result<Vec<StepOutput>, RunError> {
        let applied = apply_build_template(&load_yaml(template), arguments)?;
        let pod = Pod {
            scratch: self.dir.path().join("scratch"),
            mounts: vec![
                Mount::writable(&self.workspace(), BUILD_WORKSPACE),
                Mount::writable(&self.home(), BUILD_HOME),
            ],
            env: vec![("HOME".into(), BUILD_HOME.into())],
            working_dir: Some(BUILD_WORKSPACE.into()),
        };
        pod.run(&applied.steps, &applied.volumes)
    }
}

// === Tekton ===

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TaskParam {
    name: String,
    #[serde(rename = "type")]
    kind: Option<String>,
    default: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TaskWorkspace {
    name: String,
    mount_path: Option<String>,
    #[serde(default)]
    optional: bool,
    #[serde(default)]
    read_only: bool,
}

#[derive(Debug, Deserialize)]
struct TaskResult {
    name: String,
}

/// A TaskRun's workspace binding: a host directory standing for the volume (a PVC, an
/// emptyDir, a secret's files).
#[derive(Debug, Clone)]
pub struct WorkspaceBinding {
    pub name: String,
    pub host: PathBuf,
    pub read_only: bool,
}

impl WorkspaceBinding {
    /// A writable volume (a PVC, an emptyDir).
    pub fn dir(name: &str, host: &Path) -> Self {
        Self {
            name: name.into(),
            host: host.into(),
            read_only: false,
        }
    }

    /// A secret: Tekton mounts secret workspaces read-only.
    pub fn secret(name: &str, host: &Path) -> Self {
        Self {
            read_only: true,
            ..Self::dir(name, host)
        }
    }
}

/// A Task resolved for one TaskRun: its steps with every variable replaced, its volumes,
/// where the bound workspaces are mounted, and the names of its results.
#[derive(Debug, Clone)]
pub struct ResolvedTask {
    pub steps: Vec<Step>,
    pub volumes: Vec<Volume>,
    /// (workspace name, mount path, read-only) of each bound workspace.
    pub workspace_mounts: Vec<(String, String, bool)>,
    pub results: Vec<String>,
}

/// Resolves a `Task` for a TaskRun giving `params` and binding the workspaces in `bound`
/// (name, read-only), as Tekton does: missing parameters, unknown or missing workspaces are refused; then the
/// steps get `$(params.X)` (defaults, overridden by `params`), then `$(workspaces.X.path)`
/// (the mount path; empty for an unbound optional workspace) and `$(workspaces.X.bound)`,
/// then `$(results.X.path)`. Each pass sees what the one before put in.
pub fn resolve_task(
    task: &Value,
    params: &[(&str, &str)],
    bound: &[(&str, bool)],
) -> Result<ResolvedTask, RunError> {
    assert!(
        task["apiVersion"] == "tekton.dev/v1" && task["kind"] == "Task",
        "not a Tekton v1 Task: {} {}",
        task["apiVersion"],
        task["kind"]
    );
    let spec = &task["spec"];
    let declared: Vec<TaskParam> = parse_list(spec, "params");
    let mut values: HashMap<String, String> = HashMap::new();
    for param in &declared {
        assert!(
            matches!(param.kind.as_deref(), None | Some("string")),
            "parameter {}: only string parameters are supported by the template runner",
            param.name
        );
        if let Some(default) = &param.default {
            let text = default.as_str().unwrap_or_else(|| {
                panic!(
                    "parameter {}: a string parameter's default is a string",
                    param.name
                )
            });
            values.insert(param.name.clone(), text.to_string());
        }
    }
    values.extend(params.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let missing: Vec<&str> = declared
        .iter()
        .filter(|p| !values.contains_key(&p.name))
        .map(|p| p.name.as_str())
        .collect();
    if !missing.is_empty() {
        return Err(RunError::Invalid(format!(
            "invalid input params for task {}: missing parameters: [{}]",
            task["metadata"]["name"].as_str().unwrap_or_default(),
            missing.join(" ")
        )));
    }

    let workspaces: Vec<TaskWorkspace> = parse_list(spec, "workspaces");
    if let Some((name, _)) = bound
        .iter()
        .find(|(name, _)| !workspaces.iter().any(|w| w.name == *name))
    {
        return Err(RunError::Invalid(format!(
            "workspace binding {name:?} does not match any declared workspace"
        )));
    }
    if let Some(w) = workspaces
        .iter()
        .find(|w| !w.optional && !bound.iter().any(|(name, _)| *name == w.name))
    {
        return Err(RunError::Invalid(format!(
            "declared workspace {:?} is required but has not been bound",
            w.name
        )));
    }
    let workspace_mounts: Vec<(String, String, bool)> = workspaces
        .iter()
        .filter_map(|w| {
            let (_, read_only) = bound.iter().find(|(name, _)| *name == w.name)?;
            let path = w
                .mount_path
                .clone()
                .unwrap_or_else(|| format!("{TEKTON_WORKSPACE}/{}", w.name));
            Some((w.name.clone(), path, *read_only || w.read_only))
        })
        .collect();
    let workspace_variable = |key: &str| {
        let (name, field) = key.strip_prefix("workspaces.")?.rsplit_once('.')?;
        workspaces.iter().find(|w| w.name == name)?;
        let mount = workspace_mounts.iter().find(|(n, _, _)| n == name);
        match field {
            "path" => Some(mount.map(|(_, path, _)| path.clone()).unwrap_or_default()),
            "bound" => Some(mount.is_some().to_string()),
            _ => None,
        }
    };
    let results: Vec<String> = parse_list::<TaskResult>(spec, "results")
        .into_iter()
        .map(|r| r.name)
        .collect();
    let result_variable = |key: &str| {
        let name = key.strip_prefix("results.")?.strip_suffix(".path")?;
        results
            .iter()
            .any(|r| r == name)
            .then(|| format!("{TEKTON_RESULTS}/{name}"))
    };
    let param_variable = |key: &str| values.get(key.strip_prefix("params.")?).cloned();

    let mut steps: Vec<Step> = parse_list(spec, "steps");
    for lookup in [
        &param_variable as &dyn Fn(&str) -> Option<String>,
        &workspace_variable,
        &result_variable,
    ] {
        for step in &mut steps {
            step.substitute(&|text| substitute(text, "$(", ')', lookup));
        }
    }
    Ok(ResolvedTask {
        steps,
        volumes: parse_list(spec, "volumes"),
        workspace_mounts,
        results,
    })
}

/// What a TaskRun produced: its results (`status.results`) and its steps' output.
#[derive(Debug)]
pub struct TaskRunOutcome {
    pub results: BTreeMap<String, String>,
    pub steps: Vec<StepOutput>,
}

/// Runs the `Task` at `task` as a TaskRun with `params` and `workspaces`: `/workspace`,
/// `/tekton/home` (`HOME`) and `/tekton/results` are fresh directories of the pod, the bound
/// workspaces are mounted at their paths, and the results are read back once every step
/// succeeded.
pub fn run_task(
    task: &Path,
    params: &[(&str, &str)],
    workspaces: &[WorkspaceBinding],
) -> Result<TaskRunOutcome, RunError> {
    let bound: Vec<(&str, bool)> = workspaces
        .iter()
        .map(|w| (w.name.as_str(), w.read_only))
        .collect();
    let resolved = resolve_task(&load_yaml(task), params, &bound)?;
    let dir = tempfile::Builder::new()
        .prefix("fnbuild-task-pod-")
        .tempdir()
        .expect("creating the pod's directory");
    let [workspace, home, results, scratch] =
        ["workspace", "home", "results", "scratch"].map(|sub| dir.path().join(sub));
    for sub in [&workspace, &home, &results, &scratch] {
        fs::create_dir(sub).expect("creating the pod's directories");
    }
    let mut mounts = vec![
        Mount::writable(&workspace, TEKTON_WORKSPACE),
        Mount::writable(&home, TEKTON_HOME),
        Mount::writable(&results, TEKTON_RESULTS),
    ];
    for (name, path, read_only) in &resolved.workspace_mounts {
        let binding = workspaces.iter().find(|w| &w.name == name).unwrap();
        mounts.push(Mount {
            host: binding.host.clone(),
            target: path.clone(),
            read_only: *read_only,
        });
    }
    let pod = Pod {
        scratch,
        mounts,
        env: vec![("HOME".into(), TEKTON_HOME.into())],
        working_dir: None,
    };
    let steps = pod.run(&resolved.steps, &resolved.volumes)?;
    let results = resolved
        .results
        .iter()
        .filter_map(|name| {
            let value = fs::read_to_string(results.join(name)).ok()?;
            Some((name.clone(), value))
        })
        .collect();
    Ok(TaskRunOutcome { results, steps })
}

// === Pods and containers ===

/// A host directory bound into a container.
#[derive(Debug, Clone)]
struct Mount {
    host: PathBuf,
    target: String,
    read_only: bool,
}

impl Mount {
    fn writable(host: &Path, target: &str) -> Mount {
        Mount {
            host: host.into(),
            target: target.into(),
            read_only: false,
        }
    }
}

/// What the steps of one pod share.
struct Pod {
    /// Where the steps' root filesystems, bundles and emptyDir volumes go.
    scratch: PathBuf,
    /// Bound into every step.
    mounts: Vec<Mount>,
    /// Set in every step, over the image's and under the step's own.
    env: Vec<(String, String)>,
    /// A step's working directory when it names none (else the image's).
    working_dir: Option<String>,
}

impl Pod {
    /// Runs the steps one after the other; the first that fails ends the run.
    fn run(&self, steps: &[Step], volumes: &[Volume]) -> Result<Vec<StepOutput>, RunError> {
        let volume_dirs = self.volume_dirs(volumes);
        let mut outputs = Vec::new();
        for (i, step) in steps.iter().enumerate() {
            let name = if step.name.is_empty() {
                format!("unnamed-{i}")
            } else {
                step.name.clone()
            };
            let scratch = self.scratch.join(format!("step-{i}"));
            fs::create_dir(&scratch).expect("creating a step's scratch directory");
            let pulling = Instant::now();
            let image = pull(&step.image, &scratch).map_err(|message| RunError::ImagePull {
                step: name.clone(),
                image: step.image.clone(),
                message,
            })?;
            eprintln!(
                "[timing] step {name}: pulled and unpacked {} in {:.1?}",
                step.image,
                pulling.elapsed()
            );
            let container = Container {
                name,
                root: image.root.clone(),
                args: process_args(&image.config, step),
                env: self.step_env(&image.config, step),
                cwd: self.working_dir_of(&image.config, step),
                uid: step.security_context.run_as_user.unwrap_or(0),
                mounts: self.step_mounts(step, &volume_dirs)?,
                privileged: step.security_context.privileged,
            };
            let output = container.run(&scratch);
            if output.exit_code != 0 {
                return Err(RunError::StepFailed(output));
            }
            outputs.push(output);
        }
        Ok(outputs)
    }

    /// A fresh host directory for each emptyDir volume.
    fn volume_dirs(&self, volumes: &[Volume]) -> HashMap<String, PathBuf> {
        volumes
            .iter()
            .map(|volume| {
                assert!(
                    volume.empty_dir.is_object(),
                    "volume {}: only emptyDir volumes are supported",
                    volume.name
                );
                let dir = self.scratch.join("volumes").join(&volume.name);
                fs::create_dir_all(&dir).expect("creating an emptyDir volume");
                (volume.name.clone(), dir)
            })
            .collect()
    }

    /// The pod's mounts, then the step's volumeMounts (a volume the pod lacks is refused, as
    /// the API server refuses such a pod).
    fn step_mounts(
        &self,
        step: &Step,
        volume_dirs: &HashMap<String, PathBuf>,
    ) -> Result<Vec<Mount>, RunError> {
        let mut mounts = self.mounts.clone();
        for mount in &step.volume_mounts {
            let dir = volume_dirs.get(&mount.name).ok_or_else(|| {
                RunError::Invalid(format!(
                    "step {}: volumeMounts[{}]: volume not found",
                    step.name, mount.name
                ))
            })?;
            let host = dir.join(&mount.sub_path);
            fs::create_dir_all(&host).expect("creating a volume's subPath");
            mounts.push(Mount {
                host,
                target: mount.mount_path.clone(),
                read_only: mount.read_only,
            });
        }
        Ok(mounts)
    }

    /// The image's env, then the pod's, then the step's; a later name replaces an earlier.
    fn step_env(&self, image: &ContainerConfig, step: &Step) -> Vec<String> {
        let mut env: Vec<(String, String)> = Vec::new();
        let image_env = image.env.iter().flatten().map(|e| match e.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (e.clone(), String::new()),
        });
        let step_env = step.env.iter().map(|e| (e.name.clone(), e.value.clone()));
        for (name, value) in image_env.chain(self.env.iter().cloned()).chain(step_env) {
            env.retain(|(k, _)| *k != name);
            env.push((name, value));
        }
        env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
    }

    /// The step's workingDir, else the pod's default, else the image's, else `/`.
    fn working_dir_of(&self, image: &ContainerConfig, step: &Step) -> String {
        [
            Some(step.working_dir.clone()),
            self.working_dir.clone(),
            image.working_dir.clone(),
        ]
        .into_iter()
        .flatten()
        .find(|dir| !dir.is_empty())
        .unwrap_or_else(|| "/".into())
    }
}

/// The process a container runs, with Kubernetes' rules: `command` replaces the image's
/// entrypoint (and drops its cmd), `args` replace the image's cmd.
fn process_args(image: &ContainerConfig, step: &Step) -> Vec<String> {
    let entrypoint = if step.command.is_empty() {
        image.entrypoint.clone().unwrap_or_default()
    } else {
        step.command.clone()
    };
    let args = match (step.command.is_empty(), step.args.is_empty()) {
        (_, false) => step.args.clone(),
        (true, true) => image.cmd.clone().unwrap_or_default(),
        (false, true) => Vec::new(),
    };
    entrypoint.into_iter().chain(args).collect()
}

/// An image unpacked for one step.
struct UnpackedImage {
    root: PathBuf,
    config: ContainerConfig,
}

/// Pulls `image` from its registry (without credentials; plain HTTP for 127.0.0.1) into a
/// cache under `scratch` and unpacks it there: the step's own writable root filesystem.
fn pull(image: &str, scratch: &Path) -> Result<UnpackedImage, String> {
    let location: Location = image.parse().map_err(|e| format!("{e}"))?;
    let cache = Cache::open(&scratch.join("cache")).map_err(|e| format!("{e}"))?;
    let registries = Registries::new(&TransportOptions::default()).map_err(|e| format!("{e}"))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("starting a Tokio runtime");
    let (config, layers) = runtime
        .block_on(async {
            let store = cache.blobs();
            let image = SourceImage::load(&location, &registries, &store).await?;
            let layers = image.layer_files(&store).await?;
            Ok::<_, fnbuild::Error>((image.config.config, layers))
        })
        .map_err(|e| format!("{e}"))?;
    let root = rootfs::ensure_unpacked(&cache, &layers).map_err(|e| format!("{e}"))?;
    Ok(UnpackedImage { root, config })
}

/// One step's container, ready to run.
struct Container {
    name: String,
    root: PathBuf,
    args: Vec<String>,
    env: Vec<String>,
    cwd: String,
    uid: u32,
    mounts: Vec<Mount>,
    privileged: bool,
}

impl Container {
    /// Runs the container with runc to its end (killed after [`STEP_TIMEOUT`]); its bundle
    /// and output go to `scratch`.
    fn run(&self, scratch: &Path) -> StepOutput {
        static NEXT_ID: AtomicUsize = AtomicUsize::new(0);
        let id = format!(
            "fnbuild-template-{}-{}",
            std::process::id(),
            NEXT_ID.fetch_add(1, Ordering::Relaxed)
        );
        let bundle = scratch.join("bundle");
        fs::create_dir(&bundle).expect("creating the bundle directory");
        fs::write(
            bundle.join("config.json"),
            serde_json::to_vec_pretty(&self.runtime_spec()).unwrap(),
        )
        .expect("writing the runtime spec");
        let (stdout, stderr) = (scratch.join("stdout"), scratch.join("stderr"));
        let started = Instant::now();
        let mut child = Command::new("runc")
            .args(["run", "--bundle"])
            .arg(&bundle)
            .arg(&id)
            .stdin(Stdio::null())
            .stdout(fs::File::create(&stdout).unwrap())
            .stderr(fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("starting runc: {e} (run `bash tests/setup.sh`)"));
        let mut timed_out = false;
        let status = loop {
            if let Some(status) = child.try_wait().expect("waiting for runc") {
                break status;
            }
            if !timed_out && started.elapsed() > STEP_TIMEOUT {
                timed_out = true;
                let _ = Command::new("runc").args(["kill", &id, "KILL"]).status();
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut stderr_text = fs::read_to_string(&stderr).unwrap_or_default();
        if timed_out {
            stderr_text.push_str(&format!("(killed: the step ran over {STEP_TIMEOUT:?})\n"));
        }
        StepOutput {
            name: self.name.clone(),
            exit_code: status.code().unwrap_or(-1),
            stdout: fs::read_to_string(&stdout).unwrap_or_default(),
            stderr: stderr_text,
            elapsed: started.elapsed(),
        }
    }

    /// The OCI runtime spec: the host's network, private pid/ipc/uts/mount namespaces, the
    /// usual /proc, /dev, /sys, a tmpfs /tmp, the host's resolv.conf and the pod's mounts
    /// (parents before what is mounted inside them).
    fn runtime_spec(&self) -> Value {
        let held = bounding_set();
        let capabilities: Vec<&str> = if self.privileged {
            held
        } else {
            held.into_iter()
                .filter(|cap| DEFAULT_CAPABILITIES.contains(cap))
                .collect()
        };
        let sys_mode = if self.privileged { "rw" } else { "ro" };
        let mut mounts = vec![
            json!({ "destination": "/proc", "type": "proc", "source": "proc" }),
            json!({ "destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] }),
            json!({ "destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"] }),
            json!({ "destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"] }),
            json!({ "destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"] }),
            json!({ "destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", sys_mode] }),
            json!({ "destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"] }),
            json!({ "destination": "/etc/resolv.conf", "type": "bind", "source": "/etc/resolv.conf", "options": ["rbind", "ro"] }),
        ];
        let mut binds = self.mounts.clone();
        binds.sort_by_key(|m| m.target.trim_end_matches('/').matches('/').count());
        for bind in &binds {
            let mode = if bind.read_only { "ro" } else { "rw" };
            mounts.push(json!({
                "destination": bind.target, "type": "bind", "source": bind.host,
                "options": ["rbind", mode],
            }));
        }
        let mut linux = json!({
            "namespaces": [{ "type": "pid" }, { "type": "ipc" }, { "type": "uts" }, { "type": "mount" }],
        });
        if self.privileged {
            linux["resources"] = json!({ "devices": [{ "allow": true, "access": "rwm" }] });
        } else {
            linux["maskedPaths"] = json!([
                "/proc/acpi",
                "/proc/kcore",
                "/proc/keys",
                "/proc/latency_stats",
                "/proc/timer_list",
                "/proc/timer_stats",
                "/proc/sched_debug",
                "/proc/scsi",
                "/sys/firmware"
            ]);
            linux["readonlyPaths"] = json!([
                "/proc/asound",
                "/proc/bus",
                "/proc/fs",
                "/proc/irq",
                "/proc/sys",
                "/proc/sysrq-trigger"
            ]);
        }
        json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": false,
                "user": { "uid": self.uid, "gid": 0 },
                "args": self.args,
                "env": self.env,
                "cwd": self.cwd,
                "capabilities": {
                    "bounding": capabilities,
                    "effective": capabilities,
                    "permitted": capabilities,
                },
            },
            "root": { "path": self.root, "readonly": false },
            "hostname": self.name,
            "mounts": mounts,
            "linux": linux,
        })
    }
}

/// The capabilities this process may hand on (its bounding set): every one on a plain host,
/// what this process was given when the tests themselves run in a container.
fn bounding_set() -> Vec<&'static str> {
    let status = fs::read_to_string("/proc/self/status").expect("reading /proc/self/status");
    let mask = status
        .lines()
        .find_map(|line| line.strip_prefix("CapBnd:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .expect("CapBnd in /proc/self/status");
    ALL_CAPABILITIES
        .iter()
        .enumerate()
        .filter(|(bit, _)| mask & (1 << bit) != 0)
        .map(|(_, name)| *name)
        .collect()
}
