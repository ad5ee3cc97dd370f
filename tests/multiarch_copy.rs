//! `fnbuild push` and `fnbuild mirror` of a multi-platform image (an OCI index of a linux/amd64
//! and a linux/arm64 image plus a BuildKit-style attestation manifest, written by hand into a
//! layout): the index and every entry arrive byte for byte, so digests do not change, unless
//! `--platform` asks for fewer platforms; bad `--platform` values fail, naming what is
//! accepted or what the index has, and leave no tag behind.

mod common;

use std::path::Path;
use std::process::Command;

use common::functions::{failure, success};
use common::multiarch::{write_layout, MultiPlatform, ACCEPT_ANY};
use common::{sha256_digest, Registry, RegistryOptions};

const NAME: &str = "multi";

/// A layout holding the two-platform index as `NAME`.
fn two_platforms() -> (tempfile::TempDir, MultiPlatform) {
    let dir = tempfile::tempdir().unwrap();
    let image = write_layout(&dir.path().join("layout"), NAME, &["amd64", "arm64"]);
    (dir, image)
}

fn layout_ref(dir: &tempfile::TempDir) -> String {
    format!("oci:{}:{NAME}", dir.path().join("layout").display())
}

/// `fnbuild VERB ARGS --cache-dir CACHE`.
fn fnbuild(verb: &str, args: &[&str], cache: &Path) -> Command {
    let mut cmd = common::fnbuild();
    cmd.arg(verb)
        .args(args)
        .arg("--cache-dir")
        .arg(cache)
        .stdin(std::process::Stdio::null());
    cmd
}

/// A manifest or index of the registry as stored: its digest (the registry's) and bytes.
fn stored(registry: &Registry, repository: &str, reference: &str) -> (String, Vec<u8>) {
    let resp = registry.get(
        &format!("/v2/{repository}/manifests/{reference}"),
        Some(ACCEPT_ANY),
    );
    assert_eq!(
        resp.status,
        200,
        "{repository}:{reference}: {}",
        resp.text()
    );
    let digest = resp.header("docker-content-digest").unwrap().to_string();
    assert_eq!(sha256_digest(&resp.body), digest);
    (digest, resp.body)
}

/// Asserts the registry holds the whole index at `repository:tag`: the index byte for byte,
/// every entry by digest, every blob.
fn assert_whole_index(registry: &Registry, repository: &str, tag: &str, image: &MultiPlatform) {
    let (digest, bytes) = stored(registry, repository, tag);
    assert_eq!(digest, image.index_digest);
    assert_eq!(bytes, image.index_bytes);
    for entry in &image.entries {
        let (digest, _) = stored(registry, repository, &entry.digest);
        assert_eq!(digest, entry.digest, "{}", entry.platform);
    }
    for blob in &image.blobs {
        let resp = registry.get(&format!("/v2/{repository}/blobs/{blob}"), None);
        assert_eq!(resp.status, 200, "blob {blob} of {repository}");
    }
}

/// What `skopeo inspect --override-arch ARCH` says the image's architecture is.
fn inspected_architecture(registry: &Registry, image: &str, arch: &str) -> String {
    let out = success(
        registry
            .skopeo("inspect")
            .args(["--override-arch", arch])
            .arg(format!("docker://{image}")),
    );
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    info["Architecture"].as_str().unwrap().to_string()
}

#[test]
fn push_keeps_the_index_and_every_entry_byte_for_byte() {
    let registry = Registry::start(RegistryOptions::default());
    let cache = tempfile::tempdir().unwrap();
    let (layout, image) = two_platforms();
    let to = format!("{}/multi/app:v1", registry.host());
    let out = success(&mut fnbuild(
        "push",
        &[&layout_ref(&layout), &to],
        cache.path(),
    ));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{}/multi/app@{}", registry.host(), image.index_digest)
    );
    assert_whole_index(&registry, "multi/app", "v1", &image);

    // skopeo sees the same index, and each platform's image in it.
    let raw = success(
        registry
            .skopeo("inspect")
            .arg("--raw")
            .arg(format!("docker://{to}")),
    );
    assert_eq!(sha256_digest(&raw.stdout), image.index_digest);
    assert_eq!(inspected_architecture(&registry, &to, "arm64"), "arm64");
    assert_eq!(inspected_architecture(&registry, &to, "amd64"), "amd64");
}

#[test]
fn push_with_a_platform_makes_an_index_of_that_entry_alone() {
    let registry = Registry::start(RegistryOptions::default());
    let cache = tempfile::tempdir().unwrap();
    let (layout, image) = two_platforms();
    let to = format!("{}/multi/app:arm", registry.host());
    success(&mut fnbuild(
        "push",
        &[&layout_ref(&layout), &to, "--platform", "linux/arm64"],
        cache.path(),
    ));
    let (digest, bytes) = stored(&registry, "multi/app", "arm");
    assert_ne!(digest, image.index_digest, "a cut-down index is a new one");
    let index: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let manifests = index["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 1, "{index}");
    assert_eq!(manifests[0]["digest"], image.entry("linux/arm64"));
    assert_eq!(manifests[0]["platform"]["architecture"], "arm64");
    let (entry, _) = stored(&registry, "multi/app", image.entry("linux/arm64"));
    assert_eq!(entry, image.entry("linux/arm64"));
    assert_eq!(inspected_architecture(&registry, &to, "arm64"), "arm64");
    // The amd64 image was not copied.
    let resp = registry.get(
        &format!("/v2/multi/app/manifests/{}", image.entry("linux/amd64")),
        Some(ACCEPT_ANY),
    );
    assert_eq!(resp.status, 404);
}

#[test]
fn bad_platforms_fail_naming_what_is_accepted_and_leave_no_tag() {
    let registry = Registry::start(RegistryOptions::default());
    let cache = tempfile::tempdir().unwrap();
    let (layout, _) = two_platforms();
    let to = format!("{}/multi/bad:v1", registry.host());
    for (platform, code, expected) in [
        ("linux/x86_64", 2, "unknown architecture 'x86_64'"),
        ("windows/amd64", 2, "run on linux, not 'windows'"),
        ("linux/s390x", 1, "no linux/s390x image"),
        ("linux/arm64,linux/riscv64", 1, "no linux/riscv64 image"),
    ] {
        let (status, stderr) = failure(&mut fnbuild(
            "push",
            &[&layout_ref(&layout), &to, "--platform", platform],
            cache.path(),
        ));
        assert_eq!(status, code, "{platform}: {stderr}");
        assert!(stderr.contains(expected), "{platform}: {stderr}");
        let names = if code == 2 {
            "ARCH one of amd64, arm64"
        } else {
            "platforms: linux/amd64, linux/arm64"
        };
        assert!(stderr.contains(names), "{platform}: {stderr}");
    }
    let (_, stderr) = failure(&mut fnbuild(
        "mirror",
        &[
            "--from",
            &registry.host(),
            "--image",
            &format!("{}/multi/bad:v1", registry.host()),
            "--to",
            &format!("oci:{}", cache.path().join("mirror").display()),
            "--platform",
            "linux/x86_64",
        ],
        cache.path(),
    ));
    assert!(stderr.contains("unknown architecture 'x86_64'"), "{stderr}");
    assert_eq!(registry.tags("multi/bad"), Vec::<String>::new());
}

#[test]
fn mirror_keeps_the_index_into_a_layout_a_tarball_and_another_registry() {
    let source = Registry::start(RegistryOptions::default());
    let target = Registry::start(RegistryOptions::default());
    let cache = tempfile::tempdir().unwrap();
    let (layout, image) = two_platforms();
    let from = format!("{}/multi/app:v1", source.host());
    success(&mut fnbuild(
        "push",
        &[&layout_ref(&layout), &from],
        cache.path(),
    ));

    let out_dir = tempfile::tempdir().unwrap();
    let mirror_dir = out_dir.path().join("mirror");
    let tarball = out_dir.path().join("mirror.tar");
    for to in [
        format!("oci:{}", mirror_dir.display()),
        format!("tar:{}", tarball.display()),
        target.host(),
    ] {
        let out = success(&mut fnbuild(
            "mirror",
            &["--from", &source.host(), "--image", &from, "--to", &to],
            cache.path(),
        ));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("multi/app:v1\t") && stdout.contains(&image.index_digest),
            "{to}: {stdout}"
        );
    }

    // The layout names the index; skopeo reads it there and in the tarball, byte for byte.
    for place in [
        format!("oci:{}:multi/app:v1", mirror_dir.display()),
        format!("oci-archive:{}:multi/app:v1", tarball.display()),
    ] {
        let raw = success(Command::new("skopeo").args(["inspect", "--raw", &place]));
        assert_eq!(raw.stdout, image.index_bytes, "{place}");
        let out =
            success(Command::new("skopeo").args(["inspect", "--override-arch", "arm64", &place]));
        let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(info["Architecture"], "arm64", "{place}");
    }
    assert_whole_index(&target, "multi/app", "v1", &image);
    let mirrored = format!("{}/multi/app:v1", target.host());
    assert_eq!(inspected_architecture(&target, &mirrored, "arm64"), "arm64");

    // From the layout on, into a third registry: still the same index.
    let third = Registry::start(RegistryOptions::default());
    success(&mut fnbuild(
        "mirror",
        &[
            "--from",
            &format!("oci:{}", mirror_dir.display()),
            "--to",
            &third.host(),
        ],
        cache.path(),
    ));
    assert_whole_index(&third, "multi/app", "v1", &image);
}
