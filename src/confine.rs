//! Running a package manager's install where the build step itself runs in the runtime's
//! environment (a builder image made with `fnbuild builder-image --runtime`), without root,
//! namespaces or chroot: the restricted Pod Security Standard allows none of them. The
//! install runs the image's own pip or npm at their own paths, confined with Landlock, which
//! any process may apply to itself:
//! - it may read and run the system's directories ([`SYSTEM_DIRS`]), use the devices in
//!   `/dev`, and write only the directories the spec names (the deps layer's output and a
//!   scratch `/tmp`): the build step's own files (registry credentials, the source workspace,
//!   the cache, the service account's token) are out of its reach;
//! - it may not signal or trace processes outside its domain (fnbuild), nor reach their
//!   abstract Unix sockets;
//! - it runs with no new privileges, an environment holding only what the spec lists, and dies
//!   with fnbuild.
//!
//! As with the sandbox, a hidden subcommand ([`main`], `__confined`) restricts itself and then
//! becomes the command, so the multi-threaded parent never restricts itself; the spec travels
//! in an environment variable.

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::sync::OnceLock;

use landlock::{
    Access, AccessFs, CompatLevel, Compatible, Ruleset, RulesetAttr, RulesetCreatedAttr,
    RulesetStatus, Scope, ABI,
};
use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};

/// The hidden subcommand that confines itself and runs the command.
pub const SUBCOMMAND: &str = "__confined";
/// The environment variable carrying the spec.
const SPEC_ENV: &str = "FNBUILD_CONFINED_SPEC";
/// The newest Landlock ABI asked for; older kernels enforce what they know.
const ABI_WANTED: ABI = ABI::V6;

/// What the install may read and run: the directories of a root filesystem that hold
/// programs, libraries and system settings. `/proc` and `/sys` are read-only views the
/// interpreters consult (CPU count, memory limits); processes outside the domain stay out of
/// reach there too, as Landlock forbids tracing them.
pub const SYSTEM_DIRS: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/proc", "/sys",
];
/// Where the device nodes are: read and written as files (`/dev/null`, `/dev/urandom`).
const DEVICES_DIR: &str = "/dev";

/// A command to run confined.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConfinedSpec {
    /// Directories it may read and run files from.
    pub readable: Vec<PathBuf>,
    /// Directories it may read and write.
    pub writable: Vec<PathBuf>,
    pub workdir: PathBuf,
    pub env: Vec<(String, String)>,
    pub args: Vec<String>,
}

impl ConfinedSpec {
    /// The command that runs the spec confined.
    pub fn command(&self) -> Result<Command> {
        let exe = std::env::current_exe().io_context("find", "the fnbuild executable")?;
        let mut command = Command::new(exe);
        command.arg(SUBCOMMAND).env_clear().env(
            SPEC_ENV,
            serde_json::to_string(self).expect("a confined spec serializes"),
        );
        Ok(command)
    }
}

/// Whether this kernel lets a process confine itself with Landlock (Linux 5.13 and later,
/// with Landlock enabled, and a seccomp profile that allows its system calls, as the
/// container runtimes' defaults do). Probed once, without restricting this process.
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        Ruleset::default()
            .set_compatibility(CompatLevel::HardRequirement)
            .handle_access(AccessFs::from_all(ABI::V1))
            .and_then(|ruleset| ruleset.create())
            .is_ok()
    })
}

/// `__confined`: restricts itself as the spec says, then becomes the command.
pub fn main() -> ExitCode {
    match confine_and_exec() {
        Ok(never) => match never {},
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(crate::sandbox::SETUP_FAILED)
        }
    }
}

fn confine_and_exec() -> Result<std::convert::Infallible> {
    use std::os::unix::process::CommandExt;
    let spec: ConfinedSpec = crate::sandbox::read_env(SUBCOMMAND, SPEC_ENV)?;
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .map_err(|e| Error::Run(format!("cannot follow fnbuild: {e}")))?;
    restrict_self(&spec)?;
    let program = spec
        .args
        .first()
        .ok_or_else(|| Error::Run("the confined command is empty".into()))?;
    let error = Command::new(program)
        .args(&spec.args[1..])
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&spec.workdir)
        .exec();
    Err(Error::Run(format!("cannot run {program}: {error}")))
}

/// Applies the spec's Landlock rules (and no new privileges) to this process.
fn restrict_self(spec: &ConfinedSpec) -> Result<()> {
    let fail = |e: landlock::RulesetError| Error::Run(format!("cannot confine the install: {e}"));
    let existing = |paths: &[PathBuf]| -> Vec<PathBuf> {
        paths.iter().filter(|p| p.exists()).cloned().collect()
    };
    let readable = existing(&spec.readable);
    let writable = existing(&spec.writable);
    let devices = existing(&[PathBuf::from(DEVICES_DIR)]);
    let status = Ruleset::default()
        .handle_access(AccessFs::from_all(ABI_WANTED))
        .and_then(|r| r.scope(Scope::from_all(ABI_WANTED)))
        .and_then(|r| r.create())
        .and_then(|r| {
            r.add_rules(landlock::path_beneath_rules(
                &readable,
                AccessFs::from_read(ABI_WANTED),
            ))
        })
        .and_then(|r| {
            r.add_rules(landlock::path_beneath_rules(
                &devices,
                AccessFs::from_file(ABI_WANTED),
            ))
        })
        .and_then(|r| {
            r.add_rules(landlock::path_beneath_rules(
                &writable,
                AccessFs::from_all(ABI_WANTED),
            ))
        })
        .and_then(|r| r.restrict_self())
        .map_err(fail)?;
    if status.ruleset == RulesetStatus::NotEnforced {
        // The parent checked `available()` and warned; say it where the output is kept too.
        eprintln!("fnbuild: Landlock is not enforced: the install is not confined");
    }
    if !status.no_new_privs {
        nix::sys::prctl::set_no_new_privs()
            .map_err(|e| Error::Run(format!("cannot refuse new privileges: {e}")))?;
    }
    Ok(())
}
