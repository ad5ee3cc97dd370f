//! Running a function image locally for testing: its layers are unpacked once per image
//! digest into the cache, and the runtime server is started with the image's entrypoint, env,
//! user and working directory, sharing the host's network so it answers on `localhost:PORT`:
//! under runc when it is installed, else in a chroot (`sandbox`) as the image's user. It runs
//! until interrupted; Ctrl-C or SIGTERM stop the function: SIGTERM to it, then, after the
//! grace period (`--stop-timeout`) or at a second Ctrl-C, SIGKILL, whatever the function does
//! (a blocked event loop ignores SIGTERM). Under runc as root the container gets the memory
//! limit (`--memory`, else the image's `FUNC_MEMORY_LIMIT`, as Kubeless applied the function's
//! memory), and an out-of-memory kill is reported.
//!
//! `--platform` picks one platform's image of a multi-platform one; an image of another
//! architecture than this machine's runs under emulation (qemu-user through binfmt_misc, see
//! `emulation`), or fails before anything is unpacked, naming what the machine lacks.
//!
//! Run by an ordinary user, runc runs rootless (its state under `$XDG_RUNTIME_DIR`), in a user
//! namespace mapping just that user, as rootless podman does; the chroot is the sandbox's user
//! namespace. Either way the only user there is uid 0, which is the user outside: the image's
//! own user does not exist there, and the function runs as uid 0 instead.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::json;

use crate::blocking;
use crate::cache::{BlobStore, Cache};
use crate::emulation::{self, Emulation};
use crate::error::{Error, IoContext, Result};
use crate::function_image;
use crate::image::{ImageConfig, Platform};
use crate::registry::Registries;
use crate::rootfs;
use crate::sandbox::{wait_stopping_on_signals, Bind, SandboxSpec};
use crate::transport::{Location, SourceImage, Wanted};

pub struct RunRequest {
    pub image: Location,
    pub port: u16,
    pub env: Vec<(String, String)>,
    /// The container's memory limit; `None` takes the image's `FUNC_MEMORY_LIMIT`.
    pub memory_limit_bytes: Option<u64>,
    /// How long the function has to stop after SIGTERM before it is killed.
    pub stop_timeout: Duration,
    /// Whose image to run: that platform's entry of an index (a single-platform image must be
    /// for it); `None` takes this machine's.
    pub platform: Option<Platform>,
}

/// The function's process as the image config describes it.
struct Process {
    args: Vec<String>,
    env: Vec<(String, String)>,
    cwd: String,
    uid: u32,
    gid: u32,
}

/// Runs the image until it exits or is interrupted; returns its exit code.
pub async fn run(request: &RunRequest, registries: &Registries, cache: &Cache) -> Result<i32> {
    let store = cache.blobs();
    let image = load_image(request, registries, &store).await?;
    let layers = image.layer_files(&store).await?;
    let unpacking = cache.clone();
    let root = blocking::run(move || rootfs::ensure_unpacked(&unpacking, &layers)).await?;
    let mut process = process_of(&image.config, &root, request)?;
    let rootless = !nix::unistd::geteuid().is_root();
    if rootless {
        if process.uid != 0 {
            tracing::info!(
                image_user = process.uid,
                "fnbuild is not root: the function runs in a user namespace that maps only this \
                 user, as uid 0 there (this user outside), not as the image's user"
            );
        }
        (process.uid, process.gid) = (0, 0);
    }
    let memory_limit = request.memory_limit_bytes.or_else(|| {
        image
            .config
            .env_var(function_image::env::MEMORY_LIMIT)
            .and_then(|v| v.parse().ok())
    });
    let runc = find_runc();
    if let Some(bytes) = memory_limit {
        if rootless || runc.is_none() {
            tracing::warn!(
                limit_bytes = bytes,
                "the memory limit is not applied: it needs runc and root (a cgroup of the \
                 function's own)"
            );
        }
    }
    let stop = Stop {
        grace: request.stop_timeout,
    };
    let status = match runc {
        Some(runc) => {
            tracing::info!(image = %request.image, digest = %image.digest, port = request.port, rootless, memory_limit_bytes = ?memory_limit, "starting the function under runc; Ctrl-C stops it");
            let container = Container {
                runc: &runc,
                id: format!(
                    "fnbuild-{}-{}",
                    &image.digest.hex()[..12],
                    std::process::id()
                ),
                rootless,
                memory_limit: memory_limit.filter(|_| !rootless),
            };
            container.run(&process, &root, cache, &stop).await?
        }
        None => {
            tracing::warn!("runc is not installed: running the function in a chroot (fnbuild's sandbox), without the isolation of a container");
            tracing::info!(image = %request.image, digest = %image.digest, port = request.port, "starting the function; Ctrl-C stops it");
            run_in_chroot(&process, &root, cache, &stop).await?
        }
    };
    Ok(status.code().unwrap_or(0))
}

/// The image to run, checked to be runnable here before anything is unpacked: an image of
/// another architecture than this machine's needs an emulator (see [`emulation`]). One that
/// was not asked for by `--platform` (a single-platform image of that architecture) runs under
/// emulation too, as `docker run` does, with a warning.
async fn load_image(
    request: &RunRequest,
    registries: &Registries,
    store: &BlobStore,
) -> Result<SourceImage> {
    let wanted = match &request.platform {
        Some(platform) => Wanted::These(std::slice::from_ref(platform)),
        None => Wanted::ThisMachine,
    };
    let image = SourceImage::load_all(&request.image, wanted, registries, store)
        .await?
        .remove(0);
    match emulation::for_platform(&image.platform)? {
        Emulation::Native => {}
        Emulation::Emulated {
            registration,
            interpreter,
        } => {
            if request.platform.is_none() {
                tracing::warn!(
                    image = %request.image,
                    platform = %image.platform,
                    this_machine = %Platform::this_machine(),
                    "the image is for another platform than this machine's: running it under \
                     emulation (--platform {} asks for it and silences this warning)",
                    image.platform
                );
            }
            tracing::info!(
                platform = %image.platform,
                binfmt_misc = %registration,
                emulator = %interpreter.display(),
                "running under emulation: slower than on a {} machine",
                image.platform
            );
        }
    }
    Ok(image)
}

/// How a running function is stopped: SIGTERM, then SIGKILL after `grace` or at a second
/// signal.
struct Stop {
    grace: Duration,
}

impl Stop {
    /// Waits for `child` to end, stopping the function on SIGINT and SIGTERM: `signal` is
    /// called with SIGTERM at the first, and with SIGKILL after the grace period or at the
    /// next.
    async fn wait<F, Fut>(&self, child: &mut tokio::process::Child, signal: F) -> Result<ExitStatus>
    where
        F: Fn(Signal) -> Fut + Clone + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let asked = Arc::new(AtomicBool::new(false));
        let grace = self.grace;
        wait_stopping_on_signals(child, "the function", |_| {
            let (asked, signal) = (asked.clone(), signal.clone());
            async move {
                if asked.swap(true, Ordering::SeqCst) {
                    tracing::info!("killing the function");
                    signal(Signal::SIGKILL).await;
                    return;
                }
                tracing::info!(grace = ?grace, "stopping the function (Ctrl-C again kills it)");
                signal(Signal::SIGTERM).await;
                tokio::spawn(async move {
                    tokio::time::sleep(grace).await;
                    tracing::warn!(grace = ?grace, "the function did not stop in its grace period: killing it");
                    signal(Signal::SIGKILL).await;
                });
            }
        })
        .await
    }
}

/// The function's runc container.
struct Container<'a> {
    runc: &'a Path,
    id: String,
    rootless: bool,
    memory_limit: Option<u64>,
}

impl Container<'_> {
    /// Runs the container to its end; reports an out-of-memory kill.
    async fn run(
        &self,
        process: &Process,
        root: &Path,
        cache: &Cache,
        stop: &Stop,
    ) -> Result<ExitStatus> {
        let bundle = cache.temp_dir("run-")?;
        let spec_path = bundle.path().join("config.json");
        let mut spec = runtime_spec(process, root);
        // runc's own state: root's default place, or one this user may write to.
        let mut state: Vec<std::ffi::OsString> = Vec::new();
        if self.rootless {
            make_rootless(&mut spec);
            let dir = match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| Path::new(d).is_dir()) {
                Some(runtime_dir) => Path::new(&runtime_dir).join("fnbuild-runc"),
                None => bundle.path().join("state"),
            };
            state = vec!["--root".into(), dir.into_os_string()];
        }
        if let Some(bytes) = self.memory_limit {
            // No swap either: the limit is the function's memory, as in Kubernetes.
            spec["linux"]["resources"] = json!({ "memory": { "limit": bytes, "swap": bytes } });
        }
        std::fs::write(
            &spec_path,
            serde_json::to_vec_pretty(&spec).expect("a runtime spec serializes"),
        )
        .io_context("write", &spec_path)?;
        let mut child = tokio::process::Command::new(self.runc)
            .args(&state)
            .args(["run", "--bundle"])
            .arg(bundle.path())
            .arg(&self.id)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Error::Run(format!("cannot start {}: {e}", self.runc.display())))?;
        let runc_command = {
            let (runc, state, id) = (self.runc.to_path_buf(), state.clone(), self.id.clone());
            move |args: &[&str]| {
                let mut command = tokio::process::Command::new(&runc);
                command
                    .args(&state)
                    .args(args)
                    .arg(&id)
                    .stderr(Stdio::null());
                command
            }
        };
        // Out-of-memory notices matter only under a memory limit.
        let oom_watch = self.memory_limit.map(|_| self.watch_oom(&state));
        // Signals go to the container's init process: the runtime server.
        let kill = runc_command.clone();
        let status = stop
            .wait(&mut child, move |signal| {
                let mut command = kill(&["kill"]);
                command.arg(signal.as_str().trim_start_matches("SIG"));
                async move {
                    let _ = command.status().await;
                }
            })
            .await?;
        let out_of_memory = match oom_watch {
            Some(watch) => oom_seen(watch).await,
            None => false,
        };
        let _ = runc_command(&["delete", "--force"]).status().await;
        if let (true, Some(bytes)) = (out_of_memory, self.memory_limit) {
            tracing::error!(
                limit_bytes = bytes,
                "the function was killed: out of memory (its limit is {} MiB)",
                bytes / (1024 * 1024)
            );
        }
        Ok(status)
    }

    /// Watches the container's events (`runc events`) for the kernel's out-of-memory notice,
    /// from when the container exists until it ends; true once one came.
    fn watch_oom(&self, state: &[std::ffi::OsString]) -> tokio::task::JoinHandle<bool> {
        use tokio::io::AsyncBufReadExt;
        let (runc, state, id) = (self.runc.to_path_buf(), state.to_vec(), self.id.clone());
        tokio::spawn(async move {
            loop {
                let Ok(mut events) = tokio::process::Command::new(&runc)
                    .args(&state)
                    .args(["events", "--interval", "1h"])
                    .arg(&id)
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .kill_on_drop(true)
                    .spawn()
                else {
                    return false;
                };
                let stdout = events.stdout.take().expect("piped");
                let mut lines = tokio::io::BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let event: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                    if event["type"] == "oom" {
                        return true;
                    }
                }
                // Not created yet (or gone): ask again until the caller stops waiting.
                let _ = events.wait().await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    }
}

/// Whether the watch saw an out-of-memory kill, once the container has ended (its events
/// end with it; the watch gets a moment to read the last).
async fn oom_seen(watch: tokio::task::JoinHandle<bool>) -> bool {
    let abort = watch.abort_handle();
    match tokio::time::timeout(Duration::from_secs(2), watch).await {
        Ok(Ok(seen)) => seen,
        _ => {
            abort.abort();
            false
        }
    }
}

async fn run_in_chroot(
    process: &Process,
    root: &Path,
    cache: &Cache,
    stop: &Stop,
) -> Result<ExitStatus> {
    let scratch = cache.temp_dir("run-tmp-")?;
    std::fs::set_permissions(
        scratch.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .io_context("set mode of", scratch.path())?;
    let spec = SandboxSpec {
        root: root.to_path_buf(),
        binds: vec![Bind::writable(scratch.path(), "/tmp"), Bind::resolv_conf()],
        workdir: process.cwd.clone(),
        env: process.env.clone(),
        args: process.args.clone(),
        user: (process.uid, process.gid),
    };
    let mut child = tokio::process::Command::from(spec.command()?)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Error::Run(format!("cannot start the function: {e}")))?;
    // The sandbox passes SIGTERM on to the function; its death (SIGKILL) ends everything in it.
    let pid = child.id().map(|id| nix::unistd::Pid::from_raw(id as i32));
    stop.wait(&mut child, move |signal| async move {
        if let Some(pid) = pid {
            let _ = nix::sys::signal::kill(pid, signal);
        }
    })
    .await
}

fn find_runc() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("runc"))
        .find(|p| p.is_file())
}

fn process_of(config: &ImageConfig, root: &Path, request: &RunRequest) -> Result<Process> {
    let c = &config.config;
    let args: Vec<String> = c
        .entrypoint
        .iter()
        .flatten()
        .chain(c.cmd.iter().flatten())
        .cloned()
        .collect();
    if args.is_empty() {
        return Err(Error::Run(
            "the image has neither an entrypoint nor a command".into(),
        ));
    }
    let mut env: Vec<(String, String)> = c
        .env
        .iter()
        .flatten()
        .map(|e| {
            e.split_once('=')
                .map_or((e.clone(), String::new()), |(k, v)| {
                    (k.to_string(), v.to_string())
                })
        })
        .collect();
    let port = request.port.to_string();
    for (key, value) in std::iter::once(("PORT", port.as_str()))
        .chain(request.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    {
        env.retain(|(k, _)| k != key);
        env.push((key.to_string(), value.to_string()));
    }
    let (uid, gid) = resolve_user(root, c.user.as_deref().unwrap_or(""))?;
    let cwd = c
        .working_dir
        .clone()
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "/".into());
    Ok(Process {
        args,
        env,
        cwd,
        uid,
        gid,
    })
}

/// The OCI runtime spec for the function's container.
fn runtime_spec(process: &Process, root: &Path) -> serde_json::Value {
    let env: Vec<String> = process
        .env
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": { "uid": process.uid, "gid": process.gid },
            "args": process.args,
            "env": env,
            "cwd": process.cwd,
            "noNewPrivileges": true,
            "capabilities": { "bounding": [], "effective": [], "permitted": [] }
        },
        "root": { "path": root, "readonly": true },
        "hostname": "function",
        "mounts": [
            { "destination": "/proc", "type": "proc", "source": "proc" },
            { "destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] },
            { "destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"] },
            { "destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"] },
            { "destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"] },
            { "destination": "/etc/resolv.conf", "type": "bind", "source": "/etc/resolv.conf", "options": ["rbind", "ro"] }
        ],
        "linux": {
            "namespaces": [{ "type": "pid" }, { "type": "ipc" }, { "type": "uts" }, { "type": "mount" }],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
        }
    })
}

/// Makes a runtime spec rootless: a user namespace mapping this user and group, the only ones
/// there, to 0. runc then sets up no cgroup it may not (the spec asks for no limits).
fn make_rootless(spec: &mut serde_json::Value) {
    let map = |id: u32| json!([{ "containerID": 0, "hostID": id, "size": 1 }]);
    let linux = &mut spec["linux"];
    linux["namespaces"]
        .as_array_mut()
        .expect("the spec lists namespaces")
        .push(json!({ "type": "user" }));
    linux["uidMappings"] = map(nix::unistd::geteuid().as_raw());
    linux["gidMappings"] = map(nix::unistd::getegid().as_raw());
}

/// `UID[:GID]` or a user name from the image's /etc/passwd; empty means root.
fn resolve_user(root: &Path, user: &str) -> Result<(u32, u32)> {
    if user.is_empty() {
        return Ok((0, 0));
    }
    let (name, group) = user
        .split_once(':')
        .map_or((user, None), |(u, g)| (u, Some(g)));
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap_or_default();
    let entry = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() > 3 && (f[0] == name || f[2] == name));
    let uid = match name.parse::<u32>() {
        Ok(uid) => uid,
        Err(_) => entry
            .as_ref()
            .and_then(|f| f[2].parse().ok())
            .ok_or_else(|| {
                Error::Run(format!(
                    "the image's user '{name}' is not in its /etc/passwd"
                ))
            })?,
    };
    let gid = match group {
        Some(g) => g.parse::<u32>().or_else(|_| {
            let groups = std::fs::read_to_string(root.join("etc/group")).unwrap_or_default();
            groups
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.len() > 2 && f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| {
                    Error::Run(format!("the image's group '{g}' is not in its /etc/group"))
                })
        })?,
        None => entry.and_then(|f| f[3].parse().ok()).unwrap_or(uid),
    };
    Ok((uid, gid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_resolve_by_number_and_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\napp:x:1001:1002::/app:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        assert_eq!(resolve_user(dir.path(), "").unwrap(), (0, 0));
        assert_eq!(resolve_user(dir.path(), "1000:1000").unwrap(), (1000, 1000));
        assert_eq!(resolve_user(dir.path(), "app").unwrap(), (1001, 1002));
        assert_eq!(resolve_user(dir.path(), "app:staff").unwrap(), (1001, 50));
        assert!(resolve_user(dir.path(), "nobody-here").is_err());
    }
}
