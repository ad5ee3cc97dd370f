//! Running a command inside an unpacked root filesystem (chroot in a private mount namespace,
//! as Kaniko runs RUN steps): dependency installs with the base image's own interpreter and
//! package manager, and `fnbuild run` where runc is missing. The root is mounted read-only,
//! so the cached rootfs stays clean; only the directories bound in (an output, a scratch /tmp)
//! are writable.
//!
//! The parent builds the command with [`SandboxSpec::command`]; it re-executes this binary's
//! hidden `__sandbox` subcommand, which calls [`enter_and_exec`] to set up the mounts, chroot
//! and exec. This keeps every namespace call out of the multi-threaded parent.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::mount::{mount, MsFlags};
use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};

/// The name of the hidden subcommand.
pub const SUBCOMMAND: &str = "__sandbox";

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
    /// The user and group to run as (root when `None`).
    pub user: Option<(u32, u32)>,
}

impl SandboxSpec {
    /// Creates the mount points in the root and returns the command that runs the spec.
    pub fn command(&self) -> Result<Command> {
        if !nix::unistd::geteuid().is_root() {
            return Err(Error::Usage(
                "running a command inside an image's root filesystem needs root (to chroot, as \
                 Kaniko does): run fnbuild as root (for dependency installs, --deps-installer \
                 host uses this machine's pip/npm instead)"
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
        let exe = std::env::current_exe().io_context("find", "the fnbuild executable")?;
        let mut command = Command::new(exe);
        command
            .arg(SUBCOMMAND)
            .arg(serde_json::to_string(self).expect("a sandbox spec serializes"));
        Ok(command)
    }
}

/// Sets up the mounts, enters the root and replaces this process with the command. Returns
/// only on failure.
pub fn enter_and_exec(spec_json: &str) -> Error {
    match try_enter(spec_json) {
        Ok(mut command) => {
            let err = command.exec();
            Error::Run(format!(
                "cannot run {:?} inside the image's root filesystem: {err}",
                command.get_program()
            ))
        }
        Err(e) => e,
    }
}

fn try_enter(spec_json: &str) -> Result<Command> {
    let spec: SandboxSpec = serde_json::from_str(spec_json)
        .map_err(|e| Error::Usage(format!("{SUBCOMMAND} is internal to fnbuild: {e}")))?;
    let fail = |what: &str, e: nix::Error| {
        Error::Run(format!(
            "cannot {what} inside the image's root filesystem: {e}"
        ))
    };
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).map_err(|e| {
        Error::Run(format!(
            "cannot create a mount namespace ({e}): this needs CAP_SYS_ADMIN; in a Kubernetes \
             step set securityContext.privileged: true, or build with --deps-installer host"
        ))
    })?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| fail("make mounts private", e))?;
    bind(&spec.root, &spec.root, false).map_err(|e| fail("bind the root filesystem", e))?;
    // The host's /dev and /proc: installers need /dev/null, /dev/urandom and /proc/self.
    let kernel = ["/dev", "/proc"].map(|dir| Bind::writable(Path::new(dir), dir));
    for dir in &kernel {
        fs::create_dir_all(spec.root.join(dir.target.trim_start_matches('/'))).ok();
    }
    for extra in kernel.iter().chain(&spec.binds) {
        let inside = spec.root.join(extra.target.trim_start_matches('/'));
        bind(&extra.source, &inside, extra.read_only).map_err(|e| {
            fail(
                &format!("bind {} at {}", extra.source.display(), extra.target),
                e,
            )
        })?;
    }
    remount_read_only(&spec.root).map_err(|e| fail("make the root read-only", e))?;
    nix::unistd::chroot(&spec.root).map_err(|e| fail("chroot into the base image", e))?;
    std::env::set_current_dir(&spec.workdir).io_context("enter", &spec.workdir)?;
    if let Some((uid, gid)) = spec.user {
        let gid = nix::unistd::Gid::from_raw(gid);
        nix::unistd::setgroups(&[gid]).map_err(|e| fail("drop supplementary groups", e))?;
        nix::unistd::setgid(gid).map_err(|e| fail("switch group", e))?;
        nix::unistd::setuid(nix::unistd::Uid::from_raw(uid)).map_err(|e| fail("switch user", e))?;
    }
    let mut command = Command::new(&spec.args[0]);
    command
        .args(&spec.args[1..])
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)));
    Ok(command)
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
