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
//! - Tekton (`Task`): `$(params.X)` (string and array parameters: `$(params.X[*])` as a whole
//!   element of `command` or `args` splices the array in), then `$(workspaces.X.path)` and
//!   `$(workspaces.X.bound)`, then `$(results.X.path)`; results are read back from
//!   `/tekton/results`; `/tekton/home` is mounted but `HOME` is not set (Tekton v1 leaves it
//!   to the image); see [`TaskRun`].
//!
//! Steps run as Kubernetes and containerd run them, from the container's `securityContext`
//! and the pod's (Tekton: the TaskRun's `podTemplate.securityContext`):
//!
//! - the user is `runAsUser` (else the image's `USER`, names looked up in the image's
//!   /etc/passwd), the group `runAsGroup` (else the image's, else the user's), and `fsGroup`
//!   a supplementary group; `runAsNonRoot: true` with a root user is refused as kubelet
//!   refuses it ([`RunError::CreateContainerConfig`]);
//! - capabilities are containerd's default set with `capabilities.add`/`drop` applied
//!   (`drop: [ALL]` leaves none); `allowPrivilegeEscalation: false` sets no_new_privileges;
//! - `seccompProfile: RuntimeDefault` loads a profile refusing what containerd's and Docker's
//!   default profile refuses a container without the matching capability (unshare, mount,
//!   umount2, chroot, pivot_root, setns, clone with a namespace flag, keyctl, bpf, ... with
//!   EPERM; clone3 with ENOSYS), written as a deny-list over a default of allow;
//! - `privileged: true` gets every capability, every device, a writable /sys, no masked paths
//!   and no seccomp profile;
//! - emptyDirs (the pod's own directories and `emptyDir` volumes) are mode 0777; with
//!   `fsGroup`, they and the bound workspaces get that group, group read/write and setgid
//!   directories, as kubelet's volume ownership does; a secret workspace is a copy of its
//!   files with mode 0644.
//!
//! [`restricted_pss_violations`] checks a pod spec against the `restricted` Pod Security
//! Standard, as the PodSecurity admission controller would; the runner itself does not
//! enforce it.
//!
//! Not emulated: the network (a step's container shares the host's, so registries and
//! servers on 127.0.0.1 are reachable), cgroups and resource limits, AppArmor and SELinux,
//! user namespaces, `Localhost` seccomp profiles, `readOnlyRootFilesystem`,
//! `supplementalGroups`, groups from the image's /etc/group, Tekton's own containers
//! (entrypoint, creds-init per step) and Knative Build's init containers (the harness does
//! their work on the host, as root). The image's root filesystem is unpacked for each step
//! alone and is writable, like a container's top layer. What the runner does not support (a
//! `script`, `valueFrom`, object parameters, volumes other than `emptyDir`, unknown
//! securityContext fields) is a panic, never silently ignored.
//!
//! It must not touch anything of the host but the directories it is given or makes: each run
//! works in temporary directories (a bound workspace's directory gets the pod's `fsGroup`),
//! and containers are deleted when their process ends.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
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
    /// Kubelet would not create a step's container (CreateContainerConfigError), e.g.
    /// `runAsNonRoot` with an image that runs as root; the step did not run.
    CreateContainerConfig { step: String, message: String },
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
            RunError::CreateContainerConfig { step, message } => {
                write!(f, "step {step}: CreateContainerConfigError: {message}")
            }
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

/// A container's `securityContext`, as far as the runner honours it (what else is written is a
/// panic).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecurityContext {
    pub privileged: Option<bool>,
    pub run_as_user: Option<u32>,
    pub run_as_group: Option<u32>,
    pub run_as_non_root: Option<bool>,
    pub allow_privilege_escalation: Option<bool>,
    pub capabilities: Option<Capabilities>,
    pub seccomp_profile: Option<SeccompProfile>,
}

/// A pod's `securityContext` (Tekton: the TaskRun's `podTemplate.securityContext`): the
/// defaults of its containers, and `fsGroup`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodSecurityContext {
    pub run_as_user: Option<u32>,
    pub run_as_group: Option<u32>,
    pub run_as_non_root: Option<bool>,
    /// The group that owns the pod's volumes, and a supplementary group of its processes.
    pub fs_group: Option<u32>,
    pub seccomp_profile: Option<SeccompProfile>,
}

/// Capabilities added to and dropped from the container runtime's default set, Kubernetes'
/// names (`NET_BIND_SERVICE`, or `ALL`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    #[serde(default)]
    pub add: Vec<String>,
    #[serde(default)]
    pub drop: Vec<String>,
}

/// `RuntimeDefault` or `Unconfined`; `Localhost` profiles are not supported (a panic).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeccompProfile {
    #[serde(rename = "type")]
    pub kind: String,
}

/// A pod volume; only `emptyDir` is supported.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Volume {
    pub name: String,
    pub empty_dir: Value,
}

impl Step {
    /// Every field both systems substitute in, but the step's name: image, command, args, env
    /// values, workingDir, and volumeMount name, mountPath and subPath.
    fn texts_mut(&mut self) -> Vec<&mut String> {
        let mut texts = vec![&mut self.image, &mut self.working_dir];
        texts.extend(self.command.iter_mut().chain(self.args.iter_mut()));
        texts.extend(self.env.iter_mut().map(|var| &mut var.value));
        for mount in &mut self.volume_mounts {
            texts.extend([&mut mount.name, &mut mount.mount_path, &mut mount.sub_path]);
        }
        texts
    }

    /// Replaces the text of every field of [`Step::texts_mut`].
    fn substitute(&mut self, f: &dyn Fn(&str) -> String) {
        for text in self.texts_mut() {
            *text = f(text);
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

/// Each `OPEN key CLOSE` in `text`: where it is (from OPEN to CLOSE) and its key.
fn placeholders<'a>(
    text: &'a str,
    open: &str,
    close: char,
) -> Vec<(std::ops::Range<usize>, &'a str)> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(start) = text[from..].find(open).map(|i| from + i) {
        let key_start = start + open.len();
        let Some(end) = text[key_start..].find(close).map(|i| key_start + i) else {
            break;
        };
        found.push((start..end + 1, &text[key_start..end]));
        from = end + 1;
    }
    found
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
    let mut copied = 0;
    for (range, key) in placeholders(text, open, close) {
        if let Some(value) = lookup(key) {
            out.push_str(&text[copied..range.start]);
            out.push_str(&value);
            copied = range.end;
        }
    }
    out.push_str(&text[copied..]);
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
        for sub in ["workspace", "home"] {
            empty_dir(&dir.path().join(sub), None);
        }
        fs::create_dir(dir.path().join("scratch")).expect("creating the pod's scratch directory");
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
    /// `auth` = base64(`user:password`). creds-init runs as root and writes the file with
    /// mode 0600, as this does: a step running as another user cannot read it.
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
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
            .expect("chmod of $HOME/.docker/config.json");
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
            security: PodSecurityContext::default(),
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
    /// A secret: its files are copied into the pod, as kubelet projects a secret volume.
    pub secret: bool,
}

impl WorkspaceBinding {
    /// A writable volume (a PVC, an emptyDir).
    pub fn dir(name: &str, host: &Path) -> Self {
        Self {
            name: name.into(),
            host: host.into(),
            read_only: false,
            secret: false,
        }
    }

    /// A secret, its keys the files of `host`: Tekton mounts secret workspaces read-only,
    /// and kubelet gives the files the secret volume's default mode, 0644.
    pub fn secret(name: &str, host: &Path) -> Self {
        Self {
            read_only: true,
            secret: true,
            ..Self::dir(name, host)
        }
    }
}

/// A Tekton parameter's value: a string, or the strings of an array parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamValue {
    String(String),
    Array(Vec<String>),
}

impl ParamValue {
    pub fn array(items: &[&str]) -> ParamValue {
        ParamValue::Array(items.iter().map(|item| item.to_string()).collect())
    }

    /// A value as written in YAML (a string, or a list of strings); `None` for anything else.
    pub fn from_json(value: &Value) -> Option<ParamValue> {
        match value {
            Value::String(text) => Some(ParamValue::String(text.clone())),
            Value::Array(items) => items
                .iter()
                .map(|item| item.as_str().map(String::from))
                .collect::<Option<Vec<_>>>()
                .map(ParamValue::Array),
            _ => None,
        }
    }

    fn type_name(&self) -> &'static str {
        match self {
            ParamValue::String(_) => "string",
            ParamValue::Array(_) => "array",
        }
    }
}

impl From<&str> for ParamValue {
    fn from(text: &str) -> Self {
        ParamValue::String(text.into())
    }
}

/// A declared parameter's type: its `type`, else its default's, else string (Tekton's
/// defaulting); object parameters are not supported (a panic).
fn declared_type(param: &TaskParam) -> &'static str {
    let kind = match (param.kind.as_deref(), &param.default) {
        (Some(kind), _) => kind,
        (None, Some(Value::Array(_))) => "array",
        (None, _) => "string",
    };
    match kind {
        "string" => "string",
        "array" => "array",
        other => panic!(
            "parameter {}: {other} parameters are not supported by the template runner",
            param.name
        ),
    }
}

/// Splices each array parameter written as a whole element of `list` (`$(params.X[*])`, as
/// Tekton allows in `command` and `args`) into it, one element per item.
fn expand_arrays(list: &mut Vec<String>, arrays: &HashMap<String, Vec<String>>) {
    *list = list
        .iter()
        .flat_map(|item| {
            let name = item
                .strip_prefix("$(params.")
                .and_then(|rest| rest.strip_suffix("[*])"));
            match name.and_then(|name| arrays.get(name)) {
                Some(items) => items.clone(),
                None => vec![item.clone()],
            }
        })
        .collect();
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
/// (name, read-only), as Tekton does: missing parameters, parameters of the wrong type,
/// unknown or missing workspaces are refused; array parameters are spliced into `command`
/// and `args` where written as a whole element (`$(params.X[*])`), and refused anywhere
/// else; then the steps get `$(params.X)` (defaults, overridden by `params`), then
/// `$(workspaces.X.path)` (the mount path; empty for an unbound optional workspace) and
/// `$(workspaces.X.bound)`, then `$(results.X.path)`. Each pass sees what the one before put
/// in.
pub fn resolve_task(
    task: &Value,
    params: &[(String, ParamValue)],
    bound: &[(&str, bool)],
) -> Result<ResolvedTask, RunError> {
    assert!(
        task["apiVersion"] == "tekton.dev/v1" && task["kind"] == "Task",
        "not a Tekton v1 Task: {} {}",
        task["apiVersion"],
        task["kind"]
    );
    let spec = &task["spec"];
    let task_name = task["metadata"]["name"].as_str().unwrap_or_default();
    let declared: Vec<TaskParam> = parse_list(spec, "params");
    let mut values: HashMap<String, ParamValue> = HashMap::new();
    for param in &declared {
        if let Some(default) = &param.default {
            let value = ParamValue::from_json(default)
                .filter(|value| value.type_name() == declared_type(param))
                .unwrap_or_else(|| {
                    panic!(
                        "parameter {}: its default is not a {}",
                        param.name,
                        declared_type(param)
                    )
                });
            values.insert(param.name.clone(), value);
        }
    }
    let mistyped: Vec<&str> = params
        .iter()
        .filter(|(name, value)| {
            declared
                .iter()
                .any(|p| p.name == *name && declared_type(p) != value.type_name())
        })
        .map(|(name, _)| name.as_str())
        .collect();
    if !mistyped.is_empty() {
        return Err(RunError::Invalid(format!(
            "invalid input params for task {task_name}: param types don't match the \
             user-specified type: [{}]",
            mistyped.join(" ")
        )));
    }
    values.extend(params.iter().cloned());
    let missing: Vec<&str> = declared
        .iter()
        .filter(|p| !values.contains_key(&p.name))
        .map(|p| p.name.as_str())
        .collect();
    if !missing.is_empty() {
        return Err(RunError::Invalid(format!(
            "invalid input params for task {task_name}: missing parameters: [{}]",
            missing.join(" ")
        )));
    }
    let (mut strings, mut arrays) = (HashMap::new(), HashMap::new());
    for (name, value) in values {
        match value {
            ParamValue::String(text) => {
                strings.insert(name, text);
            }
            ParamValue::Array(items) => {
                arrays.insert(name, items);
            }
        }
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
    let param_variable = |key: &str| strings.get(key.strip_prefix("params.")?).cloned();

    let mut steps: Vec<Step> = parse_list(spec, "steps");
    for step in &mut steps {
        expand_arrays(&mut step.command, &arrays);
        expand_arrays(&mut step.args, &arrays);
        let name = step.name.clone();
        for text in step.texts_mut() {
            for (_, key) in placeholders(text, "$(", ')') {
                let param = key.strip_prefix("params.").unwrap_or_default();
                let param = param.split('[').next().unwrap_or_default();
                if arrays.contains_key(param) {
                    return Err(RunError::Invalid(format!(
                        "step {name}: $({key}): an array parameter is only replaced as a \
                         whole element of command or args, $(params.{param}[*])"
                    )));
                }
            }
        }
    }
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

/// A TaskRun: its params, its workspace bindings, and its `podTemplate.securityContext`.
#[derive(Debug, Clone, Default)]
pub struct TaskRun {
    pub params: Vec<(String, ParamValue)>,
    pub workspaces: Vec<WorkspaceBinding>,
    pub pod_security_context: PodSecurityContext,
}

impl TaskRun {
    /// A TaskRun giving string `params`, binding `workspaces`.
    pub fn new(params: &[(&str, &str)], workspaces: &[WorkspaceBinding]) -> TaskRun {
        TaskRun {
            params: params
                .iter()
                .map(|(name, value)| (name.to_string(), ParamValue::from(*value)))
                .collect(),
            workspaces: workspaces.to_vec(),
            ..TaskRun::default()
        }
    }

    /// The same TaskRun giving `name` the value `value` (in place of what it gave it).
    pub fn param(mut self, name: &str, value: ParamValue) -> TaskRun {
        self.params.retain(|(other, _)| other != name);
        self.params.push((name.into(), value));
        self
    }

    /// Runs the `Task` at `task` as this TaskRun: `/workspace`, `/tekton/home` and
    /// `/tekton/results` are emptyDirs of the pod, the bound workspaces are mounted at their
    /// paths (a secret's files copied in), `fsGroup` owns them all, and the results are read
    /// back once every step succeeded. `HOME` is not set: Tekton v1 leaves it to the image
    /// and the step (runc makes it the user's home in the image's /etc/passwd, else `/`).
    pub fn run(&self, task: &Path) -> Result<TaskRunOutcome, RunError> {
        let bound: Vec<(&str, bool)> = self
            .workspaces
            .iter()
            .map(|w| (w.name.as_str(), w.read_only))
            .collect();
        let resolved = resolve_task(&load_yaml(task), &self.params, &bound)?;
        let dir = tempfile::Builder::new()
            .prefix("fnbuild-task-pod-")
            .tempdir()
            .expect("creating the pod's directory");
        let fs_group = self.pod_security_context.fs_group;
        let [workspace, home, results] =
            ["workspace", "home", "results"].map(|sub| empty_dir(&dir.path().join(sub), fs_group));
        let scratch = dir.path().join("scratch");
        fs::create_dir(&scratch).expect("creating the pod's scratch directory");
        let mut mounts = vec![
            Mount::writable(&workspace, TEKTON_WORKSPACE),
            Mount::writable(&home, TEKTON_HOME),
            Mount::writable(&results, TEKTON_RESULTS),
        ];
        for (name, path, read_only) in &resolved.workspace_mounts {
            let binding = self.workspaces.iter().find(|w| &w.name == name).unwrap();
            let host = if binding.secret {
                secret_volume(
                    &binding.host,
                    &dir.path().join("secrets").join(name),
                    fs_group,
                )
            } else {
                if let Some(group) = fs_group {
                    set_volume_ownership(&binding.host, group, *read_only);
                }
                binding.host.clone()
            };
            mounts.push(Mount {
                host,
                target: path.clone(),
                read_only: *read_only,
            });
        }
        let pod = Pod {
            scratch,
            mounts,
            env: Vec::new(),
            working_dir: None,
            security: self.pod_security_context.clone(),
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
}

/// Runs the `Task` at `task` as a TaskRun with string `params` and `workspaces`, no pod
/// securityContext: see [`TaskRun::run`].
pub fn run_task(
    task: &Path,
    params: &[(&str, &str)],
    workspaces: &[WorkspaceBinding],
) -> Result<TaskRunOutcome, RunError> {
    TaskRun::new(params, workspaces).run(task)
}

// === Volumes ===

/// Makes `path` an emptyDir as kubelet does: mode 0777, then owned by `fs_group` if given.
fn empty_dir(path: &Path, fs_group: Option<u32>) -> PathBuf {
    fs::create_dir_all(path).expect("creating an emptyDir");
    fs::set_permissions(path, fs::Permissions::from_mode(0o777)).expect("chmod of an emptyDir");
    if let Some(group) = fs_group {
        set_volume_ownership(path, group, false);
    }
    path.to_path_buf()
}

/// A secret volume at `target`, as kubelet projects one: a copy of each file of `keys` with
/// the default mode 0644, owned by `fs_group` if given. Secrets hold files only.
fn secret_volume(keys: &Path, target: &Path, fs_group: Option<u32>) -> PathBuf {
    fs::create_dir_all(target).expect("creating a secret volume");
    for entry in fs::read_dir(keys).expect("reading a secret's files") {
        let entry = entry.unwrap();
        assert!(
            entry.file_type().unwrap().is_file(),
            "{}: a secret's keys are files",
            entry.path().display()
        );
        let copy = target.join(entry.file_name());
        fs::copy(entry.path(), &copy).expect("copying a secret's file");
        fs::set_permissions(&copy, fs::Permissions::from_mode(0o644)).unwrap();
    }
    if let Some(group) = fs_group {
        set_volume_ownership(target, group, true);
    }
    target.to_path_buf()
}

/// What kubelet does to a volume for a pod's `fsGroup` (SetVolumeOwnership): everything in
/// it gets the group, read (and write unless read-only) for the group, and directories also
/// the group's search bit and setgid, so what is made in them gets the group too.
fn set_volume_ownership(root: &Path, group: u32, read_only: bool) {
    let mask = if read_only { 0o440 } else { 0o660 };
    let below = super::walk(root).into_iter().map(|path| root.join(path));
    for path in std::iter::once(root.to_path_buf()).chain(below) {
        std::os::unix::fs::lchown(&path, None, Some(group)).expect("chgrp to the fsGroup");
        let meta = fs::symlink_metadata(&path).unwrap();
        if meta.file_type().is_symlink() {
            continue;
        }
        let extra = if meta.is_dir() { mask | 0o2110 } else { mask };
        fs::set_permissions(&path, fs::Permissions::from_mode(meta.mode() | extra))
            .expect("chmod for the fsGroup");
    }
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
    /// The pod's securityContext.
    security: PodSecurityContext,
}

impl Pod {
    /// Runs the steps one after the other; the first that fails ends the run.
    fn run(&self, steps: &[Step], volumes: &[Volume]) -> Result<Vec<StepOutput>, RunError> {
        for step in steps {
            validate_security_context(step)?;
        }
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
            let security = ContainerSecurity::new(&step.security_context, &self.security, &image)
                .map_err(|message| RunError::CreateContainerConfig {
                step: name.clone(),
                message: format!("{message} (container: {name})"),
            })?;
            let container = Container {
                name,
                root: image.root.clone(),
                args: process_args(&image.config, step),
                env: self.step_env(&image.config, step),
                cwd: self.working_dir_of(&image.config, step),
                mounts: self.step_mounts(step, &volume_dirs)?,
                security,
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
                let dir = empty_dir(&dir, self.security.fs_group);
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
    mounts: Vec<Mount>,
    security: ContainerSecurity,
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
    /// (parents before what is mounted inside them); the user, capabilities,
    /// no_new_privileges and seccomp profile of [`ContainerSecurity`]. A privileged container
    /// also gets every device, a writable /sys and no masked paths.
    fn runtime_spec(&self) -> Value {
        let security = &self.security;
        let sys_mode = if security.privileged { "rw" } else { "ro" };
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
        if security.privileged {
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
        if let Some(profile) = &security.seccomp {
            linux["seccomp"] = profile.clone();
        }
        let capabilities = &security.capabilities;
        json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": false,
                "user": {
                    "uid": security.uid,
                    "gid": security.gid,
                    "additionalGids": security.additional_gids,
                },
                "args": self.args,
                "env": self.env,
                "cwd": self.cwd,
                "noNewPrivileges": security.no_new_privileges,
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

// === Security ===

/// What the API server refuses in a container's securityContext before a pod exists.
fn validate_security_context(step: &Step) -> Result<(), RunError> {
    let context = &step.security_context;
    if context.allow_privilege_escalation != Some(false) {
        return Ok(());
    }
    let adds_sys_admin = context.capabilities.as_ref().is_some_and(|caps| {
        caps.add
            .iter()
            .any(|cap| cap == "SYS_ADMIN" || cap == "CAP_SYS_ADMIN")
    });
    let refusal = if context.privileged == Some(true) {
        "cannot set `allowPrivilegeEscalation` to false and `privileged` to true"
    } else if adds_sys_admin {
        "cannot set `allowPrivilegeEscalation` to false and `capabilities.Add` CAP_SYS_ADMIN"
    } else {
        return Ok(());
    };
    Err(RunError::Invalid(format!(
        "step {}: securityContext: {refusal}",
        step.name
    )))
}

/// How a step's process runs, as kubelet and containerd set it up from the container's and
/// the pod's securityContext (the container's fields win).
#[derive(Debug, Clone)]
struct ContainerSecurity {
    uid: u32,
    gid: u32,
    /// `fsGroup`.
    additional_gids: Vec<u32>,
    capabilities: Vec<&'static str>,
    /// `allowPrivilegeEscalation: false`.
    no_new_privileges: bool,
    privileged: bool,
    /// The OCI seccomp section of `seccompProfile: RuntimeDefault`; containerd runs
    /// privileged containers unconfined.
    seccomp: Option<Value>,
}

impl ContainerSecurity {
    /// The user is `runAsUser`, else the image's `USER` (a name looked up in its
    /// /etc/passwd); the group `runAsGroup`, else the image's, else the user's in the image's
    /// /etc/passwd, else 0. `runAsNonRoot: true` is checked as kubelet checks it: an error is
    /// its CreateContainerConfigError message.
    fn new(
        container: &SecurityContext,
        pod: &PodSecurityContext,
        image: &UnpackedImage,
    ) -> Result<ContainerSecurity, String> {
        let run_as_user = container.run_as_user.or(pod.run_as_user);
        let image_user = image.config.user.clone().unwrap_or_default();
        if container.run_as_non_root.or(pod.run_as_non_root) == Some(true) {
            verify_run_as_non_root(run_as_user, &image_user)?;
        }
        let (uid, gid) = match run_as_user {
            Some(uid) => (uid, passwd_group(&image.root, uid)),
            None => image_user_ids(&image.root, &image_user)?,
        };
        let privileged = container.privileged == Some(true);
        let capabilities = container_capabilities(container, privileged);
        let seccomp_profile = container
            .seccomp_profile
            .as_ref()
            .or(pod.seccomp_profile.as_ref());
        let seccomp = match seccomp_profile.map(|p| p.kind.as_str()) {
            _ if privileged => None,
            None | Some("Unconfined") => None,
            Some("RuntimeDefault") => Some(runtime_default_seccomp(&capabilities)),
            Some(other) => panic!("seccompProfile {other}: not supported by the template runner"),
        };
        Ok(ContainerSecurity {
            uid,
            gid: container.run_as_group.or(pod.run_as_group).unwrap_or(gid),
            additional_gids: pod.fs_group.into_iter().collect(),
            capabilities,
            no_new_privileges: container.allow_privilege_escalation == Some(false),
            privileged,
            seccomp,
        })
    }
}

/// Kubelet's check of `runAsNonRoot: true` (verifyRunAsNonRoot), with its messages.
fn verify_run_as_non_root(run_as_user: Option<u32>, image_user: &str) -> Result<(), String> {
    let user = match run_as_user {
        Some(0) => return Err("container's runAsUser breaks non-root policy".into()),
        Some(_) => return Ok(()),
        None => image_user.split(':').next().unwrap_or_default(),
    };
    match user.parse::<u32>() {
        _ if user.is_empty() => Err("container has runAsNonRoot and image will run as root".into()),
        Ok(0) => Err("container has runAsNonRoot and image will run as root".into()),
        Ok(_) => Ok(()),
        Err(_) => Err(format!(
            "container has runAsNonRoot and image has non-numeric user ({user}), cannot verify \
             user is non-root"
        )),
    }
}

/// The image's `USER` (`user[:group]`, numbers or names) as ids, as containerd resolves it in
/// the image's /etc/passwd and /etc/group; empty is root.
fn image_user_ids(root: &Path, user: &str) -> Result<(u32, u32), String> {
    let (user, group) = match user.split_once(':') {
        Some((user, group)) => (user, Some(group)),
        None => (user, None),
    };
    let uid = match user {
        "" => 0,
        _ => user
            .parse()
            .ok()
            .or_else(|| lookup_id(&root.join("etc/passwd"), user))
            .ok_or_else(|| format!("no users found matching {user} in the image"))?,
    };
    let gid = match group {
        None => passwd_group(root, uid),
        Some(group) => group
            .parse()
            .ok()
            .or_else(|| lookup_id(&root.join("etc/group"), group))
            .ok_or_else(|| format!("no groups found matching {group} in the image"))?,
    };
    Ok((uid, gid))
}

/// The id (third field) of `name` in an /etc/passwd or /etc/group file.
fn lookup_id(file: &Path, name: &str) -> Option<u32> {
    fs::read_to_string(file).ok()?.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.first() == Some(&name))
            .then(|| fields.get(2)?.parse().ok())
            .flatten()
    })
}

/// The primary group of `uid` in the image's /etc/passwd, else 0.
fn passwd_group(root: &Path, uid: u32) -> u32 {
    let passwd = fs::read_to_string(root.join("etc/passwd")).unwrap_or_default();
    passwd
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.get(2)?.parse::<u32>().ok()? == uid).then(|| fields.get(3)?.parse().ok())?
        })
        .unwrap_or(0)
}

/// containerd's capability set: every one for a privileged container; else the default set,
/// all of them if `add` has `ALL`, none if `drop` has `ALL`, then `add`, minus `drop`; each
/// limited to what this process can hand on.
fn container_capabilities(context: &SecurityContext, privileged: bool) -> Vec<&'static str> {
    let held = bounding_set();
    if privileged {
        return held;
    }
    let caps = context.capabilities.clone().unwrap_or_default();
    let names = |list: &[String]| -> Vec<String> {
        list.iter()
            .map(|cap| match cap.as_str() {
                "ALL" => cap.clone(),
                _ if cap.starts_with("CAP_") => cap.clone(),
                _ => format!("CAP_{cap}"),
            })
            .collect()
    };
    let (add, drop) = (names(&caps.add), names(&caps.drop));
    let has = |list: &[String], cap: &str| list.iter().any(|c| c == cap);
    let mut set: Vec<&str> = if has(&add, "ALL") {
        ALL_CAPABILITIES.to_vec()
    } else {
        DEFAULT_CAPABILITIES.to_vec()
    };
    if has(&drop, "ALL") {
        set.clear();
    }
    set.extend(ALL_CAPABILITIES.iter().filter(|cap| has(&add, cap)));
    set.retain(|cap| !has(&drop, cap));
    held.into_iter().filter(|cap| set.contains(cap)).collect()
}

/// Syscalls the container runtime's default seccomp profile (containerd's, Docker's) refuses
/// with EPERM unless the container holds one of the capabilities listed with them.
const CAPABILITY_SYSCALLS: &[(&str, &[&str])] = &[
    (
        "CAP_SYS_ADMIN",
        &[
            "bpf",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "name_to_handle_at",
            "open_tree",
            "perf_event_open",
            "pivot_root",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "swapoff",
            "swapon",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    ("CAP_BPF", &["bpf"]),
    ("CAP_PERFMON", &["perf_event_open"]),
    ("CAP_SYSLOG", &["syslog"]),
    ("CAP_SYS_BOOT", &["reboot", "kexec_load", "kexec_file_load"]),
    ("CAP_SYS_CHROOT", &["chroot"]),
    (
        "CAP_SYS_MODULE",
        &["init_module", "finit_module", "delete_module"],
    ),
    ("CAP_SYS_PACCT", &["acct"]),
    ("CAP_SYS_RAWIO", &["iopl", "ioperm"]),
    (
        "CAP_SYS_TIME",
        &["settimeofday", "stime", "clock_settime", "clock_settime64"],
    ),
    ("CAP_SYS_TTY_CONFIG", &["vhangup"]),
    ("CAP_SYS_NICE", &["get_mempolicy", "mbind", "set_mempolicy"]),
    ("CAP_DAC_READ_SEARCH", &["open_by_handle_at"]),
];

/// Syscalls the default profile refuses to every container: the kernel keyring (not
/// namespaced), userfaultfd, and obsolete calls.
const REFUSED_SYSCALLS: &[&str] = &[
    "add_key",
    "keyctl",
    "request_key",
    "userfaultfd",
    "create_module",
    "get_kernel_syms",
    "query_module",
    "nfsservctl",
    "uselib",
    "ustat",
    "sysfs",
    "_sysctl",
    "vm86",
    "vm86old",
];

/// The namespace flags of clone(2): CLONE_NEWTIME, NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER,
/// NEWPID, NEWNET.
const CLONE_NEW_FLAGS: &[u64] = &[
    0x80,
    0x20000,
    0x0200_0000,
    0x0400_0000,
    0x0800_0000,
    0x1000_0000,
    0x2000_0000,
    0x4000_0000,
];

/// The default seccomp profile of the container runtime, for a container holding
/// `capabilities`, in the OCI runtime spec's form. Its refusals are those of containerd's and
/// Docker's profile (an allow-list there, a deny-list here: what neither lists is allowed
/// here, e.g. Landlock's syscalls, as they allow them): [`REFUSED_SYSCALLS`],
/// [`CAPABILITY_SYSCALLS`] without their capability, and, without CAP_SYS_ADMIN, clone(2)
/// with a namespace flag (EPERM) and clone3(2) (ENOSYS, so the C library falls back to
/// clone).
fn runtime_default_seccomp(capabilities: &[&str]) -> Value {
    const EPERM: u32 = 1;
    const ENOSYS: u32 = 38;
    let mut refused: Vec<&str> = REFUSED_SYSCALLS.to_vec();
    for syscall in CAPABILITY_SYSCALLS
        .iter()
        .flat_map(|(_, calls)| calls.iter())
    {
        let granted = CAPABILITY_SYSCALLS
            .iter()
            .any(|(cap, calls)| calls.contains(syscall) && capabilities.contains(cap));
        if !granted && !refused.contains(syscall) {
            refused.push(syscall);
        }
    }
    let mut rules =
        vec![json!({ "names": refused, "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM })];
    if !capabilities.contains(&"CAP_SYS_ADMIN") {
        rules.extend(CLONE_NEW_FLAGS.iter().map(|flag| {
            json!({
                "names": ["clone"], "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM,
                "args": [{ "index": 0, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ" }],
            })
        }));
        rules.push(json!({ "names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS }));
    }
    let architectures = match std::env::consts::ARCH {
        "x86_64" => vec!["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "aarch64" => vec!["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
        other => panic!("no seccomp architectures known for {other}"),
    };
    json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": architectures,
        "syscalls": rules,
    })
}

// === The restricted Pod Security Standard ===

/// The volume types the restricted standard allows.
const RESTRICTED_VOLUME_TYPES: &[&str] = &[
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

/// What the `restricted` Pod Security Standard (its rules since Kubernetes 1.25) finds wrong in
/// `pod`, a pod spec (`securityContext`, `hostNetwork`, `hostPID`, `hostIPC`, `volumes`,
/// `containers`, `initContainers`), one line per rule broken, in the words of the
/// PodSecurity admission controller: empty means the pod is admitted. The rules:
/// no host namespaces, no privileged container, capabilities.add only NET_BIND_SERVICE, no
/// hostPath (only the restricted volume types), no hostPort, no non-default /proc mount,
/// allowPrivilegeEscalation false, runAsNonRoot true and runAsUser not 0 (the pod's or each
/// container's), seccompProfile RuntimeDefault or Localhost (the pod's or each container's,
/// never Unconfined), capabilities.drop ALL.
pub fn restricted_pss_violations(pod: &Value) -> Vec<String> {
    let pod_context = &pod["securityContext"];
    let containers: Vec<&Value> = ["initContainers", "containers"]
        .iter()
        .flat_map(|key| pod[*key].as_array().into_iter().flatten())
        .collect();
    let name = |c: &Value| c["name"].as_str().unwrap_or_default().to_string();
    let offending = |test: &dyn Fn(&Value) -> bool| -> Vec<String> {
        containers
            .iter()
            .filter(|c| test(c))
            .map(|c| format!("{:?}", name(c)))
            .collect()
    };
    let mut violations = Vec::new();
    /// Reports `rule` broken by the containers `names` (none: not broken).
    fn report(violations: &mut Vec<String>, rule: &str, names: Vec<String>, what: &str) {
        if !names.is_empty() {
            violations.push(format!(
                "{rule} (container{} {} {what})",
                if names.len() > 1 { "s" } else { "" },
                names.join(", ")
            ));
        }
    }

    let host: Vec<&str> = ["hostNetwork", "hostPID", "hostIPC"]
        .into_iter()
        .filter(|key| pod[*key] == true)
        .collect();
    if !host.is_empty() {
        violations.push(format!(
            "host namespaces ({})",
            host.iter()
                .map(|key| format!("{key}=true"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    report(
        &mut violations,
        "privileged",
        offending(&|c| c["securityContext"]["privileged"] == true),
        "must not set securityContext.privileged=true",
    );
    let added = |c: &Value| -> Vec<String> {
        c["securityContext"]["capabilities"]["add"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|cap| cap.as_str())
            .filter(|cap| *cap != "NET_BIND_SERVICE")
            .map(String::from)
            .collect()
    };
    report(
        &mut violations,
        "unrestricted capabilities",
        offending(&|c| !added(c).is_empty()),
        "must not include capabilities other than NET_BIND_SERVICE in securityContext.capabilities.add",
    );
    let drops_all = |c: &Value| {
        c["securityContext"]["capabilities"]["drop"]
            .as_array()
            .is_some_and(|drop| drop.iter().any(|cap| cap == "ALL"))
    };
    report(
        &mut violations,
        "unrestricted capabilities",
        offending(&|c| !drops_all(c)),
        "must set securityContext.capabilities.drop=[\"ALL\"]",
    );
    let volumes: Vec<String> = pod["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|volume| {
            let kind = volume
                .as_object()?
                .keys()
                .find(|key| *key != "name")?
                .clone();
            (!RESTRICTED_VOLUME_TYPES.contains(&kind.as_str()))
                .then(|| format!("{:?} uses {kind}", volume["name"].as_str().unwrap_or("")))
        })
        .collect();
    if !volumes.is_empty() {
        violations.push(format!("restricted volume types ({})", volumes.join(", ")));
    }
    report(
        &mut violations,
        "hostPort",
        offending(&|c| {
            c["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|port| port["hostPort"].as_u64().is_some_and(|p| p != 0))
        }),
        "uses hostPort",
    );
    report(
        &mut violations,
        "procMount",
        offending(&|c| {
            c["securityContext"]["procMount"]
                .as_str()
                .is_some_and(|mount| mount != "Default")
        }),
        "must not set securityContext.procMount",
    );
    report(
        &mut violations,
        "allowPrivilegeEscalation != false",
        offending(&|c| c["securityContext"]["allowPrivilegeEscalation"] != false),
        "must set securityContext.allowPrivilegeEscalation=false",
    );
    let pod_non_root = pod_context["runAsNonRoot"] == true;
    report(
        &mut violations,
        "runAsNonRoot != true",
        offending(&|c| match &c["securityContext"]["runAsNonRoot"] {
            Value::Bool(value) => !value,
            _ => !pod_non_root,
        }),
        "must set securityContext.runAsNonRoot=true",
    );
    if pod_context["runAsUser"] == 0 {
        violations.push("runAsUser=0 (pod must not set runAsUser=0)".into());
    }
    report(
        &mut violations,
        "runAsUser=0",
        offending(&|c| c["securityContext"]["runAsUser"] == 0),
        "must not set runAsUser=0",
    );
    let allowed_seccomp = |profile: &Value| {
        matches!(
            profile["type"].as_str(),
            Some("RuntimeDefault" | "Localhost")
        )
    };
    if pod_context["seccompProfile"]["type"] == "Unconfined" {
        violations.push("seccompProfile (pod must not set securityContext.seccompProfile.type to \"Unconfined\")".into());
    }
    report(
        &mut violations,
        "seccompProfile",
        offending(&|c| match &c["securityContext"]["seccompProfile"] {
            Value::Null => !allowed_seccomp(&pod_context["seccompProfile"]),
            profile => !allowed_seccomp(profile),
        }),
        "must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\"",
    );
    violations
}
