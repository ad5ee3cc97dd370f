//! Running a command inside an unpacked root filesystem, as a container runtime would:
//! dependency installs with the base image's own interpreter and package manager, the
//! handler's compile check, and `fnbuild run` where runc is missing. What runs there is
//! code fnbuild did not write (a package's build script, a function), so it gets:
//! - its own mount namespace: the root read-only, only the directories bound in writable, a
//!   `/dev` holding just null, zero, full, random, urandom and tty, no host `/sys`;
//! - its own PID namespace with its own `/proc`: no process of the machine is visible, and
//!   when the command ends every process it left behind is killed with it;
//! - no capabilities and no new privileges (setuid files do not elevate), an environment
//!   holding only what the spec lists, and death with fnbuild.
//!
//! Run by root (with CAP_SYS_ADMIN: a plain host or a privileged container), the command runs
//! as an unprivileged user, never root, and the writable directories are handed to that user.
//! Run by an ordinary user, as rootless podman and buildah do, the namespaces are made inside
//! a new user namespace mapping just that user to uid 0, so no root is needed: the command
//! runs as the user themselves (uid 0 inside, which is the user outside and nobody else; no
//! other uid exists there, so the spec's user cannot be taken), with no privileges outside
//! and none left inside. Where the kernel refuses user namespaces, [`SandboxSpec::command`]
//! fails with what it found and how to allow them.
//!
//! Three processes make it, each keeping namespace calls out of the multi-threaded parent:
//! [`SandboxSpec::command`] starts this binary's hidden `__sandbox` subcommand
//! ([`helper_main`]: new namespaces and mounts), which starts `__sandbox-init`
//! ([`init_main`]: process 1 of the new PID namespace: `/proc`, chroot, capabilities and
//! user), which runs the command and passes signals on to it. The spec travels in an
//! environment variable, never on a command line that every user of the machine can read.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, ExitStatus};
use std::sync::OnceLock;

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};

/// The hidden subcommand that sets up the namespaces.
pub const SUBCOMMAND: &str = "__sandbox";
/// The hidden subcommand that runs as process 1 inside them.
pub const INIT_SUBCOMMAND: &str = "__sandbox-init";
/// The environment variable carrying the spec to the helper.
const SPEC_ENV: &str = "FNBUILD_SANDBOX_SPEC";
/// The environment variable carrying the helper's [`InitSpec`] to process 1.
const INIT_ENV: &str = "FNBUILD_SANDBOX_INIT";
/// The environment variable asking the helper only to try the namespaces of an unprivileged
/// sandbox ([`PROBE_NAMESPACES`]), which then asks its process 1 to try mounting /proc
/// ([`PROBE_PROC`]).
const PROBE_ENV: &str = "FNBUILD_SANDBOX_PROBE";
const PROBE_NAMESPACES: &str = "namespaces";
const PROBE_PROC: &str = "proc";
/// Added to the error number of a probe's /proc mount, apart from those of `unshare`.
const PROBE_PROC_FAILED: i32 = 128;
/// The exit code of a sandbox that could not be set up (its error is on stderr), as container
/// runtimes use it: apart from every exit code of the command itself.
pub const SETUP_FAILED: u8 = 125;
/// The user commands run as when the spec names none: `nobody`.
pub const UNPRIVILEGED: (u32, u32) = (65534, 65534);
/// Device nodes bound into the sandbox's `/dev`.
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];
/// The namespaces of a sandbox made by an ordinary user.
const USER_NAMESPACES: CloneFlags = CloneFlags::CLONE_NEWUSER
    .union(CloneFlags::CLONE_NEWNS)
    .union(CloneFlags::CLONE_NEWPID);

/// A host path made visible inside the root.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Bind {
    pub source: PathBuf,
    /// The absolute path inside the root.
    pub target: String,
    pub read_only: bool,
}

impl Bind {
    /// A writable host directory at `target`.
    pub fn writable(source: &Path, target: &str) -> Self {
        Self {
            source: source.to_path_buf(),
            target: target.to_string(),
            read_only: false,
        }
    }

    /// The host's DNS settings, read-only, so the command resolves names as the host does.
    pub fn resolv_conf() -> Self {
        Self {
            source: "/etc/resolv.conf".into(),
            target: "/etc/resolv.conf".into(),
            read_only: true,
        }
    }
}

/// What to run and how.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxSpec {
    pub root: PathBuf,
    pub binds: Vec<Bind>,
    pub workdir: String,
    pub env: Vec<(String, String)>,
    pub args: Vec<String>,
    /// The user and group to run as when fnbuild is root; never root (uid 0 becomes
    /// [`UNPRIVILEGED`]). Run by an ordinary user, the command runs as that user.
    pub user: (u32, u32),
}

impl SandboxSpec {
    /// Creates the mount points in the root, hands the writable directories to the user the
    /// command runs as, and returns the command that runs the spec.
    pub fn command(&self) -> Result<Command> {
        let mode = mode().map_err(Error::Usage)?;
        for bind in &self.binds {
            let inside = self.root.join(bind.target.trim_start_matches('/'));
            if bind.source.is_dir() {
                fs::create_dir_all(&inside).io_context("create mount point", &inside)?;
                if mode == Mode::Privileged && !bind.read_only {
                    give_to(&bind.source, self.run_as())?;
                }
            } else if !inside.exists() {
                if let Some(parent) = inside.parent() {
                    fs::create_dir_all(parent).io_context("create mount point", parent)?;
                }
                fs::write(&inside, b"").io_context("create mount point", &inside)?;
            }
        }
        for dir in ["dev", "proc"] {
            let inside = self.root.join(dir);
            fs::create_dir_all(&inside).io_context("create mount point", &inside)?;
        }
        if mode == Mode::UserNamespace {
            tracing::debug!(
                "the sandbox runs its command in a user namespace, as uid 0 there: this user"
            );
        }
        let mut command = Command::new(current_exe()?);
        command.arg(SUBCOMMAND).env_clear().env(
            SPEC_ENV,
            serde_json::to_string(self).expect("a sandbox spec serializes"),
        );
        Ok(command)
    }

    /// The user a privileged sandbox runs the command as.
    fn run_as(&self) -> (u32, u32) {
        match self.user {
            (0, _) => UNPRIVILEGED,
            user => user,
        }
    }
}

/// How this process makes a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// As root with CAP_SYS_ADMIN: namespaces of its own, the command as another user.
    Privileged,
    /// As an ordinary user: inside a user namespace mapping that user to uid 0.
    UserNamespace,
}

/// Whether this process can make a sandbox: see [`mode`].
pub fn available() -> bool {
    mode().is_ok()
}

/// How this process makes a sandbox, or why it cannot (what the kernel refused, and how to
/// allow it). User namespaces are tried once, in a child process, and the answer is kept.
pub fn mode() -> std::result::Result<Mode, String> {
    static MODE: OnceLock<std::result::Result<Mode, String>> = OnceLock::new();
    MODE.get_or_init(|| {
        if privileged() {
            return Ok(Mode::Privileged);
        }
        probe_user_namespace().map(|()| Mode::UserNamespace)
    })
    .clone()
}

/// Whether this process is root with CAP_SYS_ADMIN (a privileged container or a plain host).
fn privileged() -> bool {
    const CAP_SYS_ADMIN: u32 = 21;
    nix::unistd::geteuid().is_root()
        && fs::read_to_string("/proc/self/status").is_ok_and(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
                .is_some_and(|caps| caps & (1 << CAP_SYS_ADMIN) != 0)
        })
}

/// Tries the namespaces of an unprivileged sandbox, and a /proc in them, in child processes
/// (this one has threads, which may not make a user namespace): what the kernel refused, if
/// anything.
fn probe_user_namespace() -> std::result::Result<(), String> {
    let status = Command::new(current_exe().map_err(|e| e.to_string())?)
        .arg(SUBCOMMAND)
        .env_clear()
        .env(PROBE_ENV, PROBE_NAMESPACES)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map_err(|e| format!("cannot start fnbuild to try a user namespace: {e}"))?;
    match status.code() {
        Some(0) => Ok(()),
        Some(code) if code >= PROBE_PROC_FAILED => Err(user_namespaces_refused(Refused::Proc(
            Errno::from_raw(code - PROBE_PROC_FAILED),
        ))),
        Some(code) => Err(user_namespaces_refused(Refused::UserNamespace(
            Errno::from_raw(code),
        ))),
        None => Err(user_namespaces_refused(Refused::UserNamespace(
            Errno::UnknownErrno,
        ))),
    }
}

/// The probe's two steps, in the helper: the namespaces, then process 1 mounting /proc.
fn probe(step: &str) -> ExitCode {
    let code = match step {
        PROBE_NAMESPACES => match enter_user_namespace() {
            Err(errno) => errno as i32,
            Ok(()) => Command::new("/proc/self/exe")
                .arg(SUBCOMMAND)
                .env_clear()
                .env(PROBE_ENV, PROBE_PROC)
                .status()
                .ok()
                .and_then(|status| status.code())
                .unwrap_or(PROBE_PROC_FAILED),
        },
        _ => match mount_proc(Path::new("/proc")) {
            Ok(()) => 0,
            Err(errno) => PROBE_PROC_FAILED + errno as i32,
        },
    };
    ExitCode::from(code.clamp(0, 255) as u8)
}

/// What the kernel refused an unprivileged sandbox.
#[derive(Debug, Clone, Copy)]
enum Refused {
    /// A user namespace with mount and PID namespaces.
    UserNamespace(Errno),
    /// A /proc of its own in them.
    Proc(Errno),
}

/// The message for an unprivileged sandbox the kernel refused: what this machine's settings
/// say, and how to allow it.
fn user_namespaces_refused(refused: Refused) -> String {
    let setting = |path: &str| {
        fs::read_to_string(Path::new("/proc/sys").join(path))
            .ok()
            .map(|v| v.trim().to_string())
    };
    let (found, fix) = match refused {
        Refused::Proc(errno) => (
            format!("a user namespace can be made, but no /proc in it: {errno}"),
            "this container's /proc is partly hidden, as an unprivileged Docker or Kubernetes \
             container's is",
        ),
        Refused::UserNamespace(_)
            if setting("user/max_user_namespaces").as_deref() == Some("0") =>
        {
            (
                "sysctl user.max_user_namespaces is 0".to_string(),
                "allow them with `sysctl -w user.max_user_namespaces=15000` (and in \
                 /etc/sysctl.d to keep it)",
            )
        }
        Refused::UserNamespace(_)
            if setting("kernel/unprivileged_userns_clone").as_deref() == Some("0") =>
        {
            (
                "sysctl kernel.unprivileged_userns_clone is 0".to_string(),
                "allow them with `sysctl -w kernel.unprivileged_userns_clone=1` (and in \
                 /etc/sysctl.d to keep it)",
            )
        }
        Refused::UserNamespace(_)
            if setting("kernel/apparmor_restrict_unprivileged_userns").as_deref() == Some("1") =>
        {
            (
                "sysctl kernel.apparmor_restrict_unprivileged_userns is 1".to_string(),
                "allow them with `sysctl -w kernel.apparmor_restrict_unprivileged_userns=0`, \
                 or an AppArmor profile for fnbuild that grants `userns,`",
            )
        }
        Refused::UserNamespace(errno) => (
            format!("unshare(CLONE_NEWUSER) failed: {errno}"),
            "the kernel may be built without them, or a seccomp profile forbids them (in a \
             container: allow unshare)",
        ),
    };
    format!(
        "running a command inside an image's root filesystem (dependency installs, the \
         handler's compile check, `fnbuild run` without runc) needs a mount namespace and a PID \
         namespace of its own: made as root with CAP_SYS_ADMIN, or else in a user namespace, \
         and this machine refuses that ({found}): {fix}; or run fnbuild as root with \
         CAP_SYS_ADMIN (a Kubernetes step with securityContext.privileged: true), or, for \
         dependency installs, use --deps-installer host (this machine's pip or npm)"
    )
}

/// Hands `dir` and everything in it to `user` (uid, gid).
fn give_to(dir: &Path, (uid, gid): (u32, u32)) -> Result<()> {
    std::os::unix::fs::lchown(dir, Some(uid), Some(gid)).io_context("change the owner of", dir)?;
    for entry in fs::read_dir(dir).io_context("read directory", dir)? {
        let path = entry.io_context("read directory", dir)?.path();
        if fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
            give_to(&path, (uid, gid))?;
        } else {
            std::os::unix::fs::lchown(&path, Some(uid), Some(gid))
                .io_context("change the owner of", &path)?;
        }
    }
    Ok(())
}

fn current_exe() -> Result<PathBuf> {
    std::env::current_exe().io_context("find", "the fnbuild executable")
}

/// What the helper passes to process 1: the spec, and the user to become (none in a user
/// namespace, where the caller's own uid is the only one).
#[derive(Serialize, Deserialize)]
struct InitSpec {
    spec: SandboxSpec,
    user: Option<(u32, u32)>,
}

/// `__sandbox`: makes the namespaces, prepares the root, starts process 1 in them and exits
/// as it does. With [`PROBE_ENV`] set, only takes a step of the probe (see [`probe`]): exits
/// with 0, or with the error number the kernel refused it with.
pub fn helper_main() -> ExitCode {
    if let Ok(step) = std::env::var(PROBE_ENV) {
        return probe(&step);
    }
    exit_code(helper().map_err(|e| report(&e)))
}

fn helper() -> Result<ExitStatus> {
    let spec: SandboxSpec = read_env(SUBCOMMAND, SPEC_ENV)?;
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(|e| fail("follow fnbuild", e))?;
    let user = if privileged() {
        nix::sched::unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWPID).map_err(|e| {
            Error::Run(format!(
                "cannot create a mount namespace and a PID namespace ({e}): this needs \
                 CAP_SYS_ADMIN; in a \
                 Kubernetes step set securityContext.privileged: true, or build with \
                 --deps-installer host"
            ))
        })?;
        Some(spec.run_as())
    } else {
        enter_user_namespace()
            .map_err(|e| Error::Run(user_namespaces_refused(Refused::UserNamespace(e))))?;
        None
    };
    prepare_root(&spec)?;
    // This binary again, by the kernel's own link to it: its path may not be nameable now.
    let mut init = Command::new("/proc/self/exe");
    init.arg(INIT_SUBCOMMAND).env_clear().env(
        INIT_ENV,
        serde_json::to_string(&InitSpec { spec, user }).expect("a sandbox spec serializes"),
    );
    run_forwarding_signals(init)
}

/// Makes a user namespace mapping this process's user and group to 0 (the only ones there),
/// with mount and PID namespaces of its own.
fn enter_user_namespace() -> nix::Result<()> {
    let (uid, gid) = (nix::unistd::geteuid(), nix::unistd::getegid());
    nix::sched::unshare(USER_NAMESPACES)?;
    // Groups cannot be set in the namespace: a group the user is in but not mapped stays.
    for (file, map) in [
        ("setgroups", "deny".to_string()),
        ("uid_map", format!("0 {uid} 1")),
        ("gid_map", format!("0 {gid} 1")),
    ] {
        fs::write(Path::new("/proc/self").join(file), map)
            .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(0)))?;
    }
    Ok(())
}

/// `__sandbox-init`: process 1 of the new PID namespace. Mounts its `/proc`, enters the root
/// as the sandbox's user without capabilities, runs the command and exits as it does; the
/// kernel then ends whatever the command left running.
pub fn init_main() -> ExitCode {
    exit_code(init().map_err(|e| report(&e)))
}

fn init() -> Result<ExitStatus> {
    let InitSpec { spec, user } = read_env(INIT_SUBCOMMAND, INIT_ENV)?;
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(|e| fail("follow fnbuild", e))?;
    mount_proc(&spec.root.join("proc")).map_err(|e| fail("mount /proc", e))?;
    nix::unistd::chroot(&spec.root).map_err(|e| fail("chroot into the image", e))?;
    std::env::set_current_dir(&spec.workdir).io_context("enter", &spec.workdir)?;
    drop_capabilities().map_err(|e| fail("drop capabilities", e))?;
    if let Some((uid, gid)) = user {
        let gid = nix::unistd::Gid::from_raw(gid);
        nix::unistd::setgroups(&[gid]).map_err(|e| fail("drop supplementary groups", e))?;
        nix::unistd::setgid(gid).map_err(|e| fail("switch group", e))?;
        nix::unistd::setuid(nix::unistd::Uid::from_raw(uid)).map_err(|e| fail("switch user", e))?;
    }
    nix::sys::prctl::set_no_new_privs().map_err(|e| fail("refuse new privileges", e))?;
    let program = spec
        .args
        .first()
        .ok_or_else(|| Error::Run("the sandbox was given no command".into()))?;
    let mut command = Command::new(program);
    command
        .args(&spec.args[1..])
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)));
    run_forwarding_signals(command)
}

/// Mounts a /proc of this process's PID namespace at `target`.
fn mount_proc(target: &Path) -> nix::Result<()> {
    let quiet = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(Some("proc"), target, Some("proc"), quiet, None::<&str>)
}

/// Empties the capability bounding and ambient sets, so that what this process runs gets no
/// capability, even as uid 0 of a user namespace (where it could otherwise remount the root
/// writable or leave the chroot).
#[allow(unsafe_code)] // prctl(2) options that nix does not wrap; they take integers only.
fn drop_capabilities() -> nix::Result<()> {
    use nix::libc::{prctl, PR_CAPBSET_DROP, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL};
    // SAFETY: no pointer is passed; the kernel reads the integer arguments only.
    Errno::result(unsafe { prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) })?;
    for capability in 0.. {
        // SAFETY: as above. EINVAL marks the first capability this kernel does not have.
        match Errno::result(unsafe { prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) }) {
            Ok(_) => {}
            Err(Errno::EINVAL) if capability > 0 => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The mounts of the new mount namespace: the root bound onto itself, a small `/dev`, the
/// spec's binds, and the root made read-only.
fn prepare_root(spec: &SandboxSpec) -> Result<()> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| fail("make mounts private", e))?;
    let root = &spec.root;
    bind(root, root, false).map_err(|e| fail("bind the root filesystem", e))?;
    let dev = root.join("dev");
    mount(
        Some("tmpfs"),
        &dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=0755,size=64k"),
    )
    .map_err(|e| fail("mount /dev", e))?;
    for device in DEVICES {
        let (host, inside) = (Path::new("/dev").join(device), dev.join(device));
        if !host.exists() {
            continue;
        }
        fs::write(&inside, b"").io_context("create mount point", &inside)?;
        bind(&host, &inside, false).map_err(|e| fail(&format!("bind /dev/{device}"), e))?;
    }
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(target, dev.join(name)).io_context("create", dev.join(name))?;
    }
    let shm = dev.join("shm");
    fs::create_dir(&shm).io_context("create", &shm)?;
    mount(
        Some("tmpfs"),
        &shm,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777,size=64m"),
    )
    .map_err(|e| fail("mount /dev/shm", e))?;
    for extra in &spec.binds {
        let inside = root.join(extra.target.trim_start_matches('/'));
        bind(&extra.source, &inside, extra.read_only).map_err(|e| {
            fail(
                &format!("bind {} at {}", extra.source.display(), extra.target),
                e,
            )
        })?;
    }
    remount_read_only(root).map_err(|e| fail("make the root read-only", e))
}

/// Runs `command`, passing SIGTERM and SIGINT on to it, and returns how it ended.
fn run_forwarding_signals(command: Command) -> Result<ExitStatus> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .io_context("start", "the sandbox's event loop")?;
    runtime.block_on(async move {
        let program = format!("{:?}", command.get_program());
        let mut child = tokio::process::Command::from(command)
            .spawn()
            .map_err(|e| Error::Run(format!("cannot run {program} in the sandbox: {e}")))?;
        let pid = child.id().map(|id| nix::unistd::Pid::from_raw(id as i32));
        wait_stopping_on_signals(&mut child, &program, |signal| async move {
            if let Some(pid) = pid {
                let _ = nix::sys::signal::kill(pid, signal);
            }
        })
        .await
    })
}

/// Waits for `child` (`what`, in errors) to end; each SIGINT or SIGTERM this process gets
/// meanwhile runs `stop` with that signal, which asks the child to end.
pub async fn wait_stopping_on_signals<F, Fut>(
    child: &mut tokio::process::Child,
    what: &str,
    stop: F,
) -> Result<ExitStatus>
where
    F: Fn(Signal) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt()).io_context("listen for", "SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).io_context("listen for", "SIGTERM")?;
    loop {
        let signal = tokio::select! {
            status = child.wait() => return status.io_context("wait for", what),
            _ = interrupt.recv() => Signal::SIGINT,
            _ = terminate.recv() => Signal::SIGTERM,
        };
        stop(signal).await;
    }
}

/// The spec a hidden subcommand of fnbuild (`subcommand`, in errors) was given in the
/// environment variable `name`.
pub(crate) fn read_env<T: DeserializeOwned>(subcommand: &str, name: &str) -> Result<T> {
    let json = std::env::var(name)
        .map_err(|_| Error::Usage(format!("{subcommand} is internal to fnbuild")))?;
    serde_json::from_str(&json)
        .map_err(|e| Error::Usage(format!("{subcommand} is internal to fnbuild: {e}")))
}

fn fail(what: &str, e: nix::Error) -> Error {
    Error::Run(format!(
        "cannot {what} inside the image's root filesystem: {e}"
    ))
}

fn report(e: &Error) {
    eprintln!("error: {e}");
}

/// The exit code of a sandbox process: the command's, 128 + the signal that ended it, or
/// [`SETUP_FAILED`] when the sandbox itself failed (its error is on stderr).
fn exit_code(status: std::result::Result<ExitStatus, ()>) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => ExitCode::from(code as u8),
            (None, Some(signal)) => ExitCode::from(128 + signal as u8),
            _ => ExitCode::from(1),
        },
        Err(()) => ExitCode::from(SETUP_FAILED),
    }
}

fn bind(source: &Path, target: &Path, read_only: bool) -> nix::Result<()> {
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )?;
    if read_only {
        remount_read_only(target)?;
    }
    Ok(())
}

/// Remounts the mount at `target` read-only, keeping its other flags: in a user namespace,
/// those of a mount made outside it are locked, and a remount that leaves one out is refused.
fn remount_read_only(target: &Path) -> nix::Result<()> {
    use nix::sys::statvfs::FsFlags;
    let flags = nix::sys::statvfs::statvfs(target)?.flags();
    let mut kept = MsFlags::empty();
    for (has, keep) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if flags.contains(has) {
            kept |= keep;
        }
    }
    if !flags.intersects(FsFlags::ST_NOATIME | FsFlags::ST_RELATIME) {
        kept |= MsFlags::MS_STRICTATIME;
    }
    mount(
        None::<&str>,
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | kept,
        None::<&str>,
    )
}
