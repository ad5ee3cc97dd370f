//! Memory use of a big build: a function with 1 GiB of incompressible data is built and pushed
//! to a registry by `fnbuild build` running inside a memory cgroup of 128 MiB with no swap
//! (cgroup v2, or v1 where the memory controller is still there). The build must succeed, the
//! registry must hold the image with its 1 GiB layer, the cgroup must have killed nothing, and
//! fnbuild's own peak RSS (GNU time's `%M`, from its own wait4) must stay under 100 MiB: layers
//! are streamed, never held in memory. Page cache counts toward the cgroup's usage but is
//! reclaimed, so the limit alone cannot tell streaming from buffering; the RSS can.
//!
//! A missing cgroup controller or tool is a failure, not a skip. Everything of 1 GiB (the
//! source, fnbuild's cache, the registry's storage) is deleted at the end.

mod common;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::functions::{build_cmd, registry_with_bases, PYTHON};

const LIMIT: u64 = 128 << 20;
const MAX_RSS: u64 = 100 << 20;
const DATA_SIZE: u64 = 1 << 30;
const GNU_TIME: &str = "/usr/bin/time";
/// How long the build may take before it is killed (it takes well under a minute).
const BUILD_TIMEOUT: Duration = Duration::from_secs(600);

// === the cgroup ===

/// A memory cgroup made for this test, removed on drop.
struct MemoryCgroup {
    dir: PathBuf,
    v2: bool,
}

impl MemoryCgroup {
    /// A new cgroup limited to `limit` bytes of memory and no swap, under the first cgroup
    /// hierarchy with a usable memory controller (v2 first, then v1). Panics, saying what was
    /// tried, when there is none.
    fn create(limit: u64) -> Self {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").expect("reading mountinfo");
        let mut v2_mounts = Vec::new();
        let mut v1_mounts = Vec::new();
        for line in mountinfo.lines() {
            // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTIONS
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let mount_point = PathBuf::from(left.split(' ').nth(4).unwrap_or_default());
            let right: Vec<&str> = right.split(' ').collect();
            match right.first() {
                Some(&"cgroup2") => v2_mounts.push(mount_point),
                Some(&"cgroup")
                    if right
                        .get(2)
                        .is_some_and(|o| o.split(',').any(|o| o == "memory")) =>
                {
                    v1_mounts.push(mount_point)
                }
                _ => {}
            }
        }
        let name = format!("fnbuild-test-memory-{}", std::process::id());
        let mut tried = Vec::new();
        for mount in &v2_mounts {
            match Self::create_v2(mount, &name, limit) {
                Ok(cgroup) => return cgroup,
                Err(e) => tried.push(format!("cgroup v2 at {}: {e}", mount.display())),
            }
        }
        for mount in &v1_mounts {
            match Self::create_v1(mount, &name, limit) {
                Ok(cgroup) => return cgroup,
                Err(e) => tried.push(format!("cgroup v1 at {}: {e}", mount.display())),
            }
        }
        if tried.is_empty() {
            tried.push("no cgroup v2 nor v1 memory hierarchy is mounted".into());
        }
        panic!(
            "no memory cgroup could be made for the test (it needs root and a cgroup v2 \
             hierarchy with the memory controller, or cgroup v1's memory hierarchy):\n  {}",
            tried.join("\n  ")
        );
    }

    fn create_v2(mount: &Path, name: &str, limit: u64) -> Result<Self, String> {
        let controllers = read(&mount.join("cgroup.controllers"))?;
        if !controllers.split_whitespace().any(|c| c == "memory") {
            return Err(format!(
                "the memory controller is not available (cgroup.controllers: {controllers:?})"
            ));
        }
        let subtree = mount.join("cgroup.subtree_control");
        if !read(&subtree)?.split_whitespace().any(|c| c == "memory") {
            write(&subtree, "+memory")?;
        }
        let cgroup = Self::make_dir(mount, name, true)?;
        write(&cgroup.dir.join("memory.max"), &limit.to_string())?;
        let swap_max = cgroup.dir.join("memory.swap.max");
        if swap_max.exists() {
            write(&swap_max, "0")?;
        } else if swap_in_use() {
            return Err(
                "swap is on and memory.swap.max is missing: swap cannot be kept out".into(),
            );
        }
        Ok(cgroup)
    }

    fn create_v1(mount: &Path, name: &str, limit: u64) -> Result<Self, String> {
        let cgroup = Self::make_dir(mount, name, false)?;
        write(
            &cgroup.dir.join("memory.limit_in_bytes"),
            &limit.to_string(),
        )?;
        // memory+swap no higher than memory: no swap. Without swap accounting, swappiness 0
        // keeps this cgroup's pages out of swap.
        let memsw = cgroup.dir.join("memory.memsw.limit_in_bytes");
        if memsw.exists() {
            write(&memsw, &limit.to_string())?;
        } else if swap_in_use() {
            write(&cgroup.dir.join("memory.swappiness"), "0")?;
        }
        let set: u64 = read(&cgroup.dir.join("memory.limit_in_bytes"))?
            .trim()
            .parse()
            .map_err(|e| format!("memory.limit_in_bytes: {e}"))?;
        if set > limit {
            return Err(format!("the limit did not take: {set} bytes"));
        }
        Ok(cgroup)
    }

    fn make_dir(parent: &Path, name: &str, v2: bool) -> Result<Self, String> {
        let dir = parent.join(name);
        fs::create_dir(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        Ok(Self { dir, v2 })
    }

    /// What a process writes its pid into to join.
    fn procs_file(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    /// How many times the cgroup's OOM killer killed a process.
    fn oom_kills(&self) -> u64 {
        let file = if self.v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        let text = read(&self.dir.join(file)).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .unwrap_or_else(|| panic!("no oom_kill count in {file}:\n{text}"))
            .trim()
            .parse()
            .unwrap()
    }

    /// The highest memory use recorded (page cache included), when the kernel records it.
    fn peak(&self) -> Option<u64> {
        let file = if self.v2 {
            "memory.peak"
        } else {
            "memory.max_usage_in_bytes"
        };
        read(&self.dir.join(file)).ok()?.trim().parse().ok()
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        // Empty by now (the build was waited for); removal may lag the last exit a little.
        for _ in 0..50 {
            if fs::remove_dir(&self.dir).is_ok() || !self.dir.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("could not remove the cgroup {}", self.dir.display());
    }
}

fn read(path: &Path) -> Result<String, String> {
    fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))
}

fn write(path: &Path, value: &str) -> Result<(), String> {
    fs::write(path, value).map_err(|e| format!("writing {value:?} to {}: {e}", path.display()))
}

/// Whether any swap area is active.
fn swap_in_use() -> bool {
    fs::read_to_string("/proc/swaps").is_ok_and(|s| s.lines().count() > 1)
}

// === the build ===

/// `size` bytes of xorshift64 output: incompressible, and fast to make.
fn write_random(path: &Path, size: u64) {
    let mut file = fs::File::create(path).unwrap();
    let mut state: u64 = 0x2545_F491_4F6C_DD1D;
    let mut chunk = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for word in chunk.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        let n = left.min(chunk.len() as u64) as usize;
        file.write_all(&chunk[..n]).unwrap();
        left -= n as u64;
    }
    file.sync_all().unwrap();
}

#[test]
fn a_one_gib_layer_builds_and_pushes_in_128_mib() {
    assert!(
        Path::new(GNU_TIME).is_file(),
        "{GNU_TIME} (GNU time) is missing: run `bash tests/setup.sh`"
    );
    let registry = registry_with_bases(&[PYTHON]);
    let cgroup = MemoryCgroup::create(LIMIT);

    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("source");
    fs::create_dir(&source).unwrap();
    fs::write(
        source.join("hello.py"),
        "def handler(event, context):\n    return 'hello'\n",
    )
    .unwrap();
    let started = Instant::now();
    write_random(&source.join("data.bin"), DATA_SIZE);
    eprintln!("wrote 1 GiB of random data in {:?}", started.elapsed());

    let image = format!("{}/functions/big:v1", registry.host());
    let cache = work.path().join("cache");
    let build = build_cmd(
        &registry,
        &cache,
        &[
            "--source",
            source.to_str().unwrap(),
            "--runtime",
            PYTHON,
            "--handler",
            "hello.handler",
            "--image",
            &image,
        ],
    );
    // sh joins the cgroup, then becomes GNU time, which runs fnbuild (inside the cgroup) and
    // writes its peak RSS in KiB.
    let rss_file = work.path().join("rss");
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"echo $$ > "$1" && shift && exec "$@""#)
        .arg("sh")
        .arg(cgroup.procs_file())
        .args([GNU_TIME, "-f", "%M", "-o"])
        .arg(&rss_file)
        .arg(build.get_program())
        .args(build.get_args());
    for (key, value) in build.get_envs() {
        match value {
            Some(value) => cmd.env(key, value),
            None => cmd.env_remove(key),
        };
    }
    let stdout_file = work.path().join("stdout");
    let stderr_file = work.path().join("stderr");
    cmd.stdin(Stdio::null())
        .stdout(fs::File::create(&stdout_file).unwrap())
        .stderr(fs::File::create(&stderr_file).unwrap());

    let started = Instant::now();
    let mut child = cmd.spawn().expect("starting sh");
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > BUILD_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the build took over {BUILD_TIMEOUT:?}:\n{}",
                fs::read_to_string(&stderr_file).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let elapsed = started.elapsed();
    let stdout = fs::read_to_string(&stdout_file).unwrap_or_default();
    let stderr = fs::read_to_string(&stderr_file).unwrap_or_default();
    let oom_kills = cgroup.oom_kills();
    let peak = cgroup.peak();
    eprintln!(
        "build and push in {elapsed:?}; cgroup peak (page cache included): {} MiB",
        peak.map_or("unknown".into(), |p| (p >> 20).to_string())
    );
    assert_eq!(
        oom_kills, 0,
        "the cgroup's OOM killer killed fnbuild:\n{stderr}"
    );
    assert!(status.success(), "the build failed ({status}):\n{stderr}");
    if let Some(peak) = peak {
        // The build ran in the cgroup: it charged it (the page cache of 1 GiB written) up to
        // about its limit.
        assert!(
            peak > 16 << 20,
            "the cgroup saw {peak} bytes: did fnbuild run in it?"
        );
    }

    // fnbuild's own peak RSS: the last line GNU time wrote.
    let rss_text = fs::read_to_string(&rss_file).unwrap();
    let rss_kib: u64 = rss_text
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("no RSS from GNU time: {rss_text:?}"));
    eprintln!("fnbuild peak RSS: {} MiB", rss_kib >> 10);
    assert!(
        rss_kib << 10 < MAX_RSS,
        "fnbuild's peak RSS was {} MiB (limit {} MiB)",
        rss_kib >> 10,
        MAX_RSS >> 20
    );

    // The registry has the image, with a layer of at least 1 GiB (random data does not
    // shrink), stored whole.
    let digest = stdout
        .lines()
        .last()
        .and_then(|l| l.split_once('@'))
        .map(|(_, d)| d.to_string())
        .unwrap_or_else(|| panic!("no REF@sha256:... on stdout: {stdout:?}"));
    let manifest = registry.get(
        &format!("/v2/functions/big/manifests/{digest}"),
        Some(
            "application/vnd.oci.image.manifest.v1+json, \
             application/vnd.docker.distribution.manifest.v2+json",
        ),
    );
    assert_eq!(manifest.status, 200, "{}", manifest.text());
    let layers = manifest.json()["layers"].as_array().unwrap().clone();
    let big = layers
        .iter()
        .find(|l| l["size"].as_u64().unwrap_or(0) >= DATA_SIZE)
        .unwrap_or_else(|| panic!("no layer of 1 GiB in {layers:?}"));
    let big_digest = big["digest"].as_str().unwrap();
    let hex = big_digest.trim_start_matches("sha256:");
    let stored = registry
        .storage_dir()
        .join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data");
    assert_eq!(
        fs::metadata(&stored).map(|m| m.len()).ok(),
        big["size"].as_u64(),
        "the registry does not hold {big_digest} whole at {}",
        stored.display()
    );
    let tags = registry.get("/v2/functions/big/tags/list", None);
    assert!(tags.text().contains("\"v1\""), "{}", tags.text());

    // The gigabytes go now, not when the test binary exits.
    drop(work);
    drop(registry);
}
