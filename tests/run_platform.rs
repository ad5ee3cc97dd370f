//! `fnbuild run` of another architecture's image: an arm64 function image runs on this
//! machine under qemu-user (registered in binfmt_misc by `tests/setup.sh`) and answers, its
//! Python reporting an aarch64 machine; an architecture with no emulator here fails before
//! anything is unpacked, naming what is missing and how to add it. Waits follow `fnbuild
//! run`'s progress, not a clock: under emulation the function starts slowly.

mod common;

use std::path::Path;

use common::functions::{call, failure, function_dir, success, RunningFunction, PYTHON};
use common::multiarch::write_layout;
use common::{fnbuild, rootfs};

/// Architectures that may lack an emulator; setup.sh registers only the other of amd64 and
/// arm64.
const UNEMULATED_CANDIDATES: &[&str] = &["s390x", "riscv64", "ppc64le"];

/// An architecture this machine cannot emulate, as fnbuild's own check finds it (by the
/// registrations' ELF magic, whatever their names).
fn unemulated_architecture() -> &'static str {
    UNEMULATED_CANDIDATES
        .iter()
        .find(|arch| {
            let platform = format!("linux/{arch}").parse().unwrap();
            fnbuild::emulation::for_platform(&platform).is_err()
        })
        .unwrap_or_else(|| {
            panic!("this machine emulates each of {UNEMULATED_CANDIDATES:?}: no architecture is left to fail")
        })
}

/// `fnbuild run IMAGE [--platform PLATFORM]`.
fn run_cmd(image: &str, cache: &Path, platform: Option<&str>) -> std::process::Command {
    let mut cmd = fnbuild();
    cmd.args(["run", image, "--cache-dir"])
        .arg(cache)
        .args(platform.map(|p| ["--platform", p]).into_iter().flatten())
        .stdin(std::process::Stdio::null());
    cmd
}

#[test]
fn the_arm64_image_answers_under_emulation() {
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let layout = work.path().join("images");
    let base = format!("oci:{}:base-arm64", layout.display());
    success(
        fnbuild()
            .args(["base", "--runtime", PYTHON, "--from"])
            .arg(format!("rootfs:{}", rootfs("python-arm64").display()))
            .args(["--image", &base, "--cache-dir"])
            .arg(&cache),
    );
    let source = function_dir(&[(
        "machine.py",
        "import platform\n\ndef handler(event, context):\n    return 'machine=' + platform.machine()\n",
    )]);
    // The handler check runs the base's own (arm64) python3.13, under emulation too.
    success(
        fnbuild()
            .args(["build", "--runtime", PYTHON, "--handler", "machine.handler"])
            .arg("--source")
            .arg(source.path())
            .args(["--base-image", &base])
            .args(["--output", &format!("oci:{}:fn", layout.display())])
            .arg("--cache-dir")
            .arg(&cache),
    );
    let image = format!("oci:{}:fn", layout.display());

    // A single-platform image must be for the platform asked for.
    let (code, stderr) = failure(&mut run_cmd(&image, &cache, Some("linux/amd64")));
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("is a linux/arm64 image, not a multi-platform one"),
        "{stderr}"
    );

    // Without --platform, it runs all the same, under emulation, with a warning (as `docker
    // run` does); `--platform linux/arm64` of an index is run by tests/multiarch.rs.
    let running = RunningFunction::start_with_flags(fnbuild(), &image, &cache, &[]);
    let (status, _, body) = call("POST", &running.url("/"), &[], b"");
    let log = running.log();
    assert_eq!(
        (status, String::from_utf8_lossy(&body).as_ref()),
        (200, "machine=aarch64"),
        "{log}"
    );
    assert!(
        log.contains("the image is for another platform than this machine's"),
        "{log}"
    );
    assert!(log.contains("running under emulation"), "{log}");
    running.stop();
}

#[test]
fn an_architecture_without_an_emulator_fails_before_unpacking() {
    let arch = unemulated_architecture();
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let layout = work.path().join("layout");
    write_layout(&layout, "multi", &["amd64", arch]);
    let image = format!("oci:{}:multi", layout.display());

    let (code, stderr) = failure(&mut run_cmd(&image, &cache, Some(&format!("linux/{arch}"))));
    assert_eq!(code, 1, "{stderr}");
    for expected in [
        format!("cannot run the linux/{arch} image"),
        format!("no emulator is registered for {arch}"),
        "qemu-user-static".to_string(),
        format!(":qemu-{arch}:M::"),
        "/proc/sys/fs/binfmt_misc/register".to_string(),
    ] {
        assert!(stderr.contains(&expected), "{expected}: {stderr}");
    }
    let unpacked = std::fs::read_dir(cache.join("rootfs"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(unpacked, 0, "nothing is unpacked before the check");

    // A platform the index lacks, and platforms that are no platform, are named as such.
    let (code, stderr) = failure(&mut run_cmd(&image, &cache, Some("linux/arm")));
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "no linux/arm image (platforms: linux/amd64, linux/{arch})"
        )),
        "{stderr}"
    );
    for (bad, expected) in [
        ("linux/x86_64", "unknown architecture 'x86_64'"),
        ("linux/amd64,linux/arm64", "runs one platform's image"),
    ] {
        let (code, stderr) = failure(&mut run_cmd(&image, &cache, Some(bad)));
        assert_eq!(code, 2, "{bad}: {stderr}");
        assert!(stderr.contains(expected), "{bad}: {stderr}");
    }
}
