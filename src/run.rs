//! Running a function image locally for testing: its layers are unpacked once per image
//! digest into the cache, and the runtime server is started under runc with the image's
//! entrypoint, env, user and working directory, sharing the host's network so it answers on
//! `localhost:PORT`. It runs until interrupted; Ctrl-C or SIGTERM stop the container.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::json;

use crate::cache::Cache;
use crate::error::{Error, IoContext, Result};
use crate::image::ImageConfig;
use crate::registry::Registries;
use crate::rootfs;
use crate::transport::{Location, SourceImage};

pub struct RunRequest {
    pub image: Location,
    pub port: u16,
    pub env: Vec<(String, String)>,
}

/// Runs the image until it exits or is interrupted; returns its exit code.
pub async fn run(request: &RunRequest, registries: &Registries, cache: &Cache) -> Result<i32> {
    let runc = find_runc()?;
    let store = cache.blobs();
    let image = SourceImage::load(&request.image, registries, &store).await?;
    let layers = image.layer_paths(&store).await?;
    let root = rootfs::ensure_unpacked(cache, &image.digest, &layers)?;
    let bundle = cache.temp_dir("run-")?;
    let spec = runtime_spec(&image.config, &root, request)?;
    let spec_path = bundle.path().join("config.json");
    std::fs::write(
        &spec_path,
        serde_json::to_vec_pretty(&spec).expect("a runtime spec serializes"),
    )
    .io_context("write", &spec_path)?;
    let id = format!(
        "fnbuild-{}-{}",
        &image.digest.hex()[..12],
        std::process::id()
    );
    tracing::info!(image = %request.image, digest = %image.digest, port = request.port, "starting the function under runc; Ctrl-C stops it");

    let mut child = tokio::process::Command::new(&runc)
        .args(["run", "--bundle"])
        .arg(bundle.path())
        .arg(&id)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Error::Run(format!("cannot start {}: {e}", runc.display())))?;
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .io_context("listen for", "SIGINT")?;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .io_context("listen for", "SIGTERM")?;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status.io_context("wait for", &runc)?,
            _ = interrupt.recv() => stop(&runc, &id).await,
            _ = terminate.recv() => stop(&runc, &id).await,
        }
    };
    let _ = tokio::process::Command::new(&runc)
        .args(["delete", "--force", &id])
        .stderr(Stdio::null())
        .status()
        .await;
    Ok(status.code().unwrap_or(0))
}

/// Asks the container to stop (SIGTERM to its init process: the runtime server).
async fn stop(runc: &Path, id: &str) {
    tracing::info!("stopping the function");
    let _ = tokio::process::Command::new(runc)
        .args(["kill", id, "TERM"])
        .stderr(Stdio::null())
        .status()
        .await;
}

fn find_runc() -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("runc"))
        .find(|p| p.is_file())
        .ok_or_else(|| Error::Run("runc was not found on PATH; install it (e.g. apt-get install runc) to run function images locally".into()))
}

/// The OCI runtime spec for the function's container.
fn runtime_spec(
    config: &ImageConfig,
    root: &Path,
    request: &RunRequest,
) -> Result<serde_json::Value> {
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
    let mut env: Vec<String> = c.env.clone().unwrap_or_default();
    let mut set = |key: &str, value: &str| {
        env.retain(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) != key);
        env.push(format!("{key}={value}"));
    };
    set("PORT", &request.port.to_string());
    for (key, value) in &request.env {
        set(key, value);
    }
    let (uid, gid) = resolve_user(root, c.user.as_deref().unwrap_or(""))?;
    Ok(json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": { "uid": uid, "gid": gid },
            "args": args,
            "env": env,
            "cwd": c.working_dir.clone().filter(|w| !w.is_empty()).unwrap_or_else(|| "/".into()),
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
    }))
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
