//! Running a command inside an unpacked root filesystem, as a container runtime would:
//! dependency installs with the base image's own interpreter and package manager, the
//! handler's compile check, and `fnbuild run` where runc is missing. What runs there is
//! code fnbuild did not write (a package's build script, a function), so it gets:
//! - its own mount namespace: the root read-only, only the directories bound in writable, a
//!   `/dev` holding just null, zero, full, random, urandom and tty, no host `/sys`;
//! - its own PID namespace with its own `/proc`: no process of the machine is visible, and
//!   when the command ends every process it left behind is killed with it;
//! - an unprivileged user (never root), no new privileges (setuid files do not elevate), an
//!   environment holding only what the spec lists, and death with fnbuild.
//!
//! Three processes make it, each keeping namespace calls out of the multi-threaded parent:
//! [`SandboxSpec::command`] starts this binary's hidden `__sandbox` subcommand
//! ([`helper_main`]: new namespaces and mounts), which starts `__sandbox-init`
//! ([`init_main`]: process 1 of the new PID namespace: `/proc`, chroot, user), which runs
//! the command and passes signals on to it. The spec travels in an environment variable,
//! never on a command line that every user of the machine can read.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, ExitStatus};

use nix::mount::{mount, MsFlags};
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};

/// The hidden subcommand that sets up the namespaces.
pub const SUBCOMMAND: &str = "__sandbox";
/// The hidden subcommand that runs as process 1 inside them.
pub const INIT_SUBCOMMAND: &str = "__sandbox-init";
/// The environment variable carrying the spec to both.
const SPEC_ENV: &str = "FNBUILD_SANDBOX_SPEC";
/// The exit code of a sandbox that could not be set up (its error is on stderr), as container
/// runtimes use it: apart from every exit code of the command itself.
pub const SETUP_FAILED: u8 = 125;
/// The user commands run as when the spec names none: `nobody`.
pub const UNPRIVILEGED: (u32, u32) = (65534, 65534);
/// Device nodes bound into the sandbox's `/dev`.
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

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
    /// The user and group to run as; never root (uid 0 becomes [`UNPRIVILEGED`]).
    pub user: (u32, u32),
}

impl SandboxSpec {
    /// Creates the mount points in the root and returns the command that runs the spec.
    pub fn command(&self) -> Result<Command> {
        if !nix::unistd::geteuid().is_root() {
            return Err(Error::Usage(
                "running a command inside an image's root filesystem needs root (for its \
                 namespaces and chroot, as Kaniko runs RUN steps): run fnbuild as root (for \
                 dependency installs, --deps-installer host uses this machine's pip/npm instead)"
                    .into(),
            ));
        }
        for bind in &self.binds {
            let inside = self.root.join(bind.target.trim_start_matches('/'));
            if bind.source.is_dir() {
                fs::create_dir_all(&inside).io_context("create mount point", &inside)?;
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
        let mut command = Command::new(current_exe()?);
        command.arg(SUBCOMMAND).env_clear().env(
            SPEC_ENV,
            serde_json::to_string(self).expect("a sandbox spec serializes"),
        );
        Ok(command)
    }
}

/// Whether this process can make a sandbox: it is root with CAP_SYS_ADMIN (a privileged
/// container or a plain host), as the namespaces and mounts need.
pub fn available() -> bool {
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

fn current_exe() -> Result<PathBuf> {
    std::env::current_exe().io_context("find", "the fnbuild executable")
}

/// `__sandbox`: makes the mount and PID namespaces, prepares the root, starts process 1 in
/// them and exits as it does.
pub fn helper_main() -> ExitCode {
    exit_code(helper().map_err(|e| report(&e)))
}

fn helper() -> Result<ExitStatus> {
    let (spec, json) = read_spec()?;
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(|e| fail("follow fnbuild", e))?;
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS | nix::sched::CloneFlags::CLONE_NEWPID)
        .map_err(|e| {
            Error::Run(format!(
                "cannot create a mount namespace and a PID namespace ({e}): this needs \
                 CAP_SYS_ADMIN; in a \
                 Kubernetes step set securityContext.privileged: true, or build with \
                 --deps-installer host"
            ))
        })?;
    prepare_root(&spec)?;
    // This binary again, by the kernel's own link to it: its path may not be nameable now.
    let mut init = Command::new("/proc/self/exe");
    init.arg(INIT_SUBCOMMAND).env_clear().env(SPEC_ENV, json);
    run_forwarding_signals(init)
}

/// `__sandbox-init`: process 1 of the new PID namespace. Mounts its `/proc`, enters the root
/// as the unprivileged user, runs the command and exits as it does; the kernel then ends
/// whatever the command left running.
pub fn init_main() -> ExitCode {
    exit_code(init().map_err(|e| report(&e)))
}

fn init() -> Result<ExitStatus> {
    let (spec, _) = read_spec()?;
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(|e| fail("follow fnbuild", e))?;
    let quiet = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(
        Some("proc"),
        &spec.root.join("proc"),
        Some("proc"),
        quiet,
        None::<&str>,
    )
    .map_err(|e| fail("mount /proc", e))?;
    nix::unistd::chroot(&spec.root).map_err(|e| fail("chroot into the image", e))?;
    std::env::set_current_dir(&spec.workdir).io_context("enter", &spec.workdir)?;
    let (uid, gid) = match spec.user {
        (0, _) => UNPRIVILEGED,
        user => user,
    };
    let gid = nix::unistd::Gid::from_raw(gid);
    nix::unistd::setgroups(&[gid]).map_err(|e| fail("drop supplementary groups", e))?;
    nix::unistd::setgid(gid).map_err(|e| fail("switch group", e))?;
    nix::unistd::setuid(nix::unistd::Uid::from_raw(uid)).map_err(|e| fail("switch user", e))?;
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

fn read_spec() -> Result<(SandboxSpec, String)> {
    let json = std::env::var(SPEC_ENV)
        .map_err(|_| Error::Usage(format!("{SUBCOMMAND} is internal to fnbuild")))?;
    let spec = serde_json::from_str(&json)
        .map_err(|e| Error::Usage(format!("{SUBCOMMAND} is internal to fnbuild: {e}")))?;
    Ok((spec, json))
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

fn remount_read_only(target: &Path) -> nix::Result<()> {
    mount(
        None::<&str>,
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    )
}
