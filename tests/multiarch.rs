//! Multi-platform images (issue 15): a Python base image for linux/amd64 and linux/arm64 made
//! with `fnbuild base` from one root filesystem each (the arm64 one runs under qemu-user,
//! registered with binfmt_misc by tests/setup.sh), and a function with a native dependency
//! (MarkupSafe's `_speedups` module) built for both into one index: each platform's deps
//! layer installed by its own interpreter, the code layer shared, the index and each
//! platform's image checked with skopeo, both images run (the arm64 one under emulation, with
//! `fnbuild run --platform linux/arm64`); each platform's deps layer is cached (locally and in
//! the cache repository) and gets its own SBOM. The arm64 install runs under emulation and
//! takes a minute or more: it is done once, in one test.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use serde_json::Value;

use common::functions::*;
use common::{fnbuild, rootfs, Registry, RegistryOptions};

const MARKUPSAFE_PY: &str = "import markupsafe\nfrom markupsafe import _speedups\n\n\
                             def handler(event, context):\n    \
                             return str(markupsafe.escape('<b>')) + ' ' + _speedups.__name__\n";

/// The native module MarkupSafe's wheel holds, under the deps layer's site-packages.
const SPEEDUPS: &str = "markupsafe/_speedups.cpython-313-";

/// The two-platform Python base image, made once per test binary with `fnbuild base` from
/// the amd64 and the arm64 root filesystems, as an OCI layout.
fn two_platform_base() -> &'static Path {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    BASE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        let cache = tempfile::tempdir().unwrap();
        let started = Instant::now();
        success(
            fnbuild()
                .args(["base", "--runtime", PYTHON])
                .arg(format!("--from=rootfs:{}", rootfs("python").display()))
                .arg(format!(
                    "--from=rootfs:{}",
                    rootfs("python-arm64").display()
                ))
                .arg(format!("--image=oci:{}", dir.join("base").display()))
                .arg("--cache-dir")
                .arg(cache.path()),
        );
        eprintln!("[timing] two-platform base: {:.1?}", started.elapsed());
        dir.join("base")
    })
}

fn skopeo_json(registry: &Registry, args: &[&str], image: &str) -> Value {
    let out = success(
        registry
            .skopeo("inspect")
            .args(args)
            .arg(format!("docker://{image}")),
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The platforms an index lists, as `os/architecture`.
fn index_platforms(index: &Value) -> Vec<String> {
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let platform = &m["platform"];
            format!(
                "{}/{}",
                platform["os"].as_str().unwrap(),
                platform["architecture"].as_str().unwrap()
            )
        })
        .collect()
}

/// The layer digests of one platform's image, as skopeo picks it out of the index.
fn layers_for(registry: &Registry, image: &str, arch: &str) -> Vec<String> {
    let inspected = skopeo_json(
        registry,
        &["--override-os", "linux", "--override-arch", arch],
        image,
    );
    assert_eq!(inspected["Architecture"], arch, "{inspected}");
    inspected["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_string())
        .collect()
}

/// The ELF machine (`e_machine`) of the file under the gzipped layer whose path holds `part`.
fn elf_machine_in_layer(registry: &Registry, repository: &str, digest: &str, part: &str) -> u16 {
    let blob = registry.get(&format!("/v2/{repository}/blobs/{digest}"), None);
    assert_eq!(blob.status, 200, "blob {digest}");
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&blob.body[..]));
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        if path.contains(part) && path.ends_with(".so") {
            let mut header = [0u8; 20];
            entry.read_exact(&mut header).unwrap();
            assert_eq!(&header[..4], b"\x7fELF", "{path}");
            return u16::from_le_bytes([header[18], header[19]]);
        }
    }
    panic!("no {part}*.so in layer {digest}");
}

/// A function with a native dependency, built for linux/amd64 and linux/arm64 into one
/// index; then again with only its code changed, and for one platform.
#[test]
fn a_function_with_a_native_dependency_builds_for_both_platforms() {
    let registry = Registry::start(RegistryOptions::default());
    let base = base_ref(&registry, PYTHON);
    success(
        fnbuild()
            .arg("push")
            .arg(format!("oci:{}", two_platform_base().display()))
            .arg(&base)
            .arg("--cache-dir")
            .arg(tempfile::tempdir().unwrap().path()),
    );
    let base_index = skopeo_json(&registry, &["--raw"], &base);
    assert_eq!(index_platforms(&base_index), ["linux/amd64", "linux/arm64"]);
    // The runtime server layer is the same bytes on both platforms.
    let (base_amd64, base_arm64) = (
        layers_for(&registry, &base, "amd64"),
        layers_for(&registry, &base, "arm64"),
    );
    assert_eq!(base_amd64.last(), base_arm64.last());
    assert_ne!(base_amd64[0], base_arm64[0]);

    let src = function_dir(&[
        ("fn.py", MARKUPSAFE_PY),
        ("requirements.txt", "markupsafe==3.0.2\n"),
    ]);
    let cache = tempfile::tempdir().unwrap();
    let results = tempfile::tempdir().unwrap();
    let repository = "functions/markupsafe";
    let image = |tag: &str| format!("{}/{repository}:{tag}", registry.host());
    let build = |tag: &str, extra: &[&str]| {
        let started = Instant::now();
        let out = success(
            source_build_cmd(
                &registry,
                cache.path(),
                src.path(),
                PYTHON,
                "fn.handler",
                &image(tag),
            )
            .args(extra),
        );
        (out, started.elapsed())
    };
    let digest_file = results.path().join("digest");
    let service_file = results.path().join("service.yaml");
    let (first, took) = build(
        "v1",
        &[
            "--platform",
            "linux/amd64,linux/arm64",
            "--digest-file",
            digest_file.to_str().unwrap(),
            "--knative-service",
            service_file.to_str().unwrap(),
            "--cache-repo",
            &format!("{}/fnbuild/cache", registry.host()),
        ],
    );
    eprintln!("[timing] two-platform build with a native dependency: {took:.1?}");
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert_eq!(
        stderr.matches("deps layer cache miss").count(),
        2,
        "{stderr}"
    );

    // The index, by the digest every result names.
    let raw = success(
        registry
            .skopeo("inspect")
            .arg("--raw")
            .arg(format!("docker://{}", image("v1"))),
    )
    .stdout;
    let index: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(
        index["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    assert_eq!(index_platforms(&index), ["linux/amd64", "linux/arm64"]);
    let index_digest = common::sha256_digest(&raw);
    let pinned = printed_ref(&first);
    assert_eq!(
        pinned,
        format!("{}@{index_digest}", image("v1").rsplit_once(':').unwrap().0)
    );
    assert_eq!(std::fs::read_to_string(&digest_file).unwrap(), index_digest);
    let service = std::fs::read_to_string(&service_file).unwrap();
    assert!(
        service.contains(&format!(
            "image: {}/{repository}@{index_digest}",
            registry.host()
        )),
        "{service}"
    );

    // Each platform's deps layer is cached under its own key in the cache repository, and
    // each platform's image has its own SBOM (listed at its referrers tag).
    let cached = registry.tags("fnbuild/cache");
    assert_eq!(
        cached.iter().filter(|t| t.starts_with("deps-")).count(),
        2,
        "{cached:?}"
    );
    let tags = registry.tags(repository);
    for entry in index["manifests"].as_array().unwrap() {
        let referrers = entry["digest"].as_str().unwrap().replace(':', "-");
        assert!(tags.contains(&referrers), "{referrers} not in {tags:?}");
    }

    // Each platform's config; the code layer shared, the deps layers each platform's own.
    let arm64_config = skopeo_json(
        &registry,
        &[
            "--config",
            "--override-os",
            "linux",
            "--override-arch",
            "arm64",
        ],
        &image("v1"),
    );
    assert_eq!(
        (&arm64_config["architecture"], &arm64_config["os"]),
        (&Value::from("arm64"), &Value::from("linux"))
    );
    let amd64 = layers_for(&registry, &image("v1"), "amd64");
    let arm64 = layers_for(&registry, &image("v1"), "arm64");
    assert_eq!(amd64.len(), base_amd64.len() + 2);
    assert_eq!(amd64.last(), arm64.last(), "the code layer is shared");
    let deps = |layers: &[String]| layers[layers.len() - 2].clone();
    assert_ne!(
        deps(&amd64),
        deps(&arm64),
        "each platform has its own deps layer"
    );
    const EM_X86_64: u16 = 62;
    const EM_AARCH64: u16 = 183;
    assert_eq!(
        elf_machine_in_layer(&registry, repository, &deps(&amd64), SPEEDUPS),
        EM_X86_64
    );
    assert_eq!(
        elf_machine_in_layer(&registry, repository, &deps(&arm64), SPEEDUPS),
        EM_AARCH64
    );

    // This machine's image of the index runs and answers with the native module.
    let function = RunningFunction::start(&pinned, cache.path(), &[]);
    let (status, _, body) = call("GET", &function.url("/"), &[], b"");
    assert_eq!(
        (status, String::from_utf8_lossy(&body).into_owned()),
        (200, "&lt;b&gt; markupsafe._speedups".to_string())
    );
    drop(function);
    // And the arm64 one, under emulation, with its own aarch64 build of the native module.
    let function = RunningFunction::start_with_flags(
        fnbuild(),
        &pinned,
        cache.path(),
        &["--platform", "linux/arm64"],
    );
    let (status, _, body) = call("GET", &function.url("/"), &[], b"");
    let log = function.log();
    assert_eq!(
        (status, String::from_utf8_lossy(&body).into_owned()),
        (200, "&lt;b&gt; markupsafe._speedups".to_string()),
        "{log}"
    );
    assert!(log.contains("running under emulation"), "{log}");
    drop(function);

    // A code-only rebuild (every platform of the base, by default): both deps layers are
    // cache hits and are reused; only the code layer and the manifests are new.
    std::fs::write(src.path().join("fn.py"), format!("{MARKUPSAFE_PY}# v2\n")).unwrap();
    let (second, took) = build("v2", &[]);
    eprintln!("[timing] two-platform code-only rebuild: {took:.1?}");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(
        stderr.matches("deps layer cache hit").count(),
        2,
        "{stderr}"
    );
    assert!(!stderr.contains("installing dependencies"), "{stderr}");
    let (amd64_v2, arm64_v2) = (
        layers_for(&registry, &image("v2"), "amd64"),
        layers_for(&registry, &image("v2"), "arm64"),
    );
    assert_eq!(deps(&amd64_v2), deps(&amd64));
    assert_eq!(deps(&arm64_v2), deps(&arm64));
    assert_eq!(amd64_v2.last(), arm64_v2.last());
    assert_ne!(amd64_v2.last(), amd64.last());

    // One platform makes a plain image: the index's entry for it, the same inputs giving the
    // same manifest.
    let (one, took) = build("amd64", &["--platform", "linux/amd64"]);
    eprintln!("[timing] one-platform rebuild (deps cached): {took:.1?}");
    let plain = skopeo_json(&registry, &["--raw"], &image("amd64"));
    assert_eq!(
        plain["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    let v2_index = skopeo_json(&registry, &["--raw"], &image("v2"));
    let amd64_entry = v2_index["manifests"][0]["digest"].as_str().unwrap();
    assert!(
        printed_ref(&one).ends_with(amd64_entry),
        "{}",
        printed_ref(&one)
    );
}

/// What cannot be made is refused, saying why: two root filesystems of one platform, a
/// platform no upstream has, a build for a platform the base lacks, and this machine's pip
/// installing for another platform.
#[test]
fn platforms_that_cannot_be_made_are_refused() {
    let out = tempfile::tempdir().unwrap();
    let base = |froms: &[&str], platform: Option<&str>| {
        let mut cmd = fnbuild();
        cmd.args(["base", "--runtime", PYTHON]);
        for from in froms {
            cmd.arg(format!("--from=rootfs:{}", rootfs(from).display()));
        }
        if let Some(platform) = platform {
            cmd.args(["--platform", platform]);
        }
        cmd.arg(format!("--image=oci:{}", out.path().join("base").display()))
            .arg("--cache-dir")
            .arg(out.path().join("cache"));
        failure(&mut cmd)
    };
    let (code, stderr) = base(&["python", "python"], None);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("are both linux/amd64"), "{stderr}");
    let (code, stderr) = base(&["python", "python-arm64"], Some("linux/amd64"));
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("is linux/arm64, not one of --platform linux/amd64"),
        "{stderr}"
    );
    let (code, stderr) = base(&["python"], Some("linux/amd64,linux/arm64"));
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains(
            "--platform linux/arm64: no upstream given is linux/arm64 (they have linux/amd64)"
        ),
        "{stderr}"
    );

    let src = function_dir(&[
        ("fn.py", MARKUPSAFE_PY),
        ("requirements.txt", "markupsafe==3.0.2\n"),
    ]);
    let cache = tempfile::tempdir().unwrap();
    let build = |base: &Path, extra: &[&str]| {
        let mut cmd = fnbuild();
        cmd.args(["build", "--runtime", PYTHON, "--handler", "fn.handler"])
            .arg("--source")
            .arg(src.path())
            .arg(format!("--base-image=oci:{}", base.display()))
            .arg(format!("--output=oci:{}", out.path().join("fn").display()))
            .arg("--cache-dir")
            .arg(cache.path())
            .args(extra);
        failure(&mut cmd)
    };
    let (code, stderr) = build(&base_layout(PYTHON), &["--platform", "linux/arm64"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("is a linux/amd64 image, not a multi-platform one: it has no linux/arm64"),
        "{stderr}"
    );
    let (code, stderr) = build(
        two_platform_base(),
        &["--platform", "linux/amd64,linux/s390x"],
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("no linux/s390x image (platforms: linux/amd64, linux/arm64)"),
        "{stderr}"
    );
    let (code, stderr) = build(two_platform_base(), &["--deps-installer", "host"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("cannot install them for linux/arm64; use --deps-installer image"),
        "{stderr}"
    );
}
