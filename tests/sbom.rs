//! The SBOM every function image gets: an SPDX 2.3 document listing the runtime and the
//! packages pip or npm installed, attached to the image in the registry as an OCI referrer
//! (through the referrers tag schema on a registry without the referrers API), read back with
//! skopeo and checked by the SPDX project's own validator; also written to a file on request,
//! and known from a deps cache hit without the layer.

mod common;

use std::path::Path;
use std::process::Command;

use common::functions::*;
use common::Registry;

const SIX: &str = "import six\n\ndef handler(event, context):\n    return six.__version__\n";
const LEFT_PAD: &str =
    "const leftPad = require('left-pad');\nmodule.exports = { handler: () => leftPad('x', 3) };\n";

/// Builds `src` into `repo:v1`, returning the image digest.
fn build(
    registry: &Registry,
    cache: &Path,
    src: &Path,
    runtime: &str,
    handler: &str,
    repo: &str,
    extra: &[&str],
) -> String {
    let out = success(
        build_cmd(
            registry,
            cache,
            &[
                "--source",
                src.to_str().unwrap(),
                "--runtime",
                runtime,
                "--handler",
                handler,
                "--image",
                &format!("{}/{repo}:v1", registry.host()),
            ],
        )
        .args(extra),
    );
    printed_ref(&out).rsplit_once('@').unwrap().1.to_string()
}

/// The SPDX documents attached to `digest` in `repo`: the referrers index read with skopeo,
/// each SBOM manifest and its document read from the registry.
fn attached_sboms(registry: &Registry, repo: &str, digest: &str) -> Vec<serde_json::Value> {
    let tag = digest.replace(':', "-");
    let out = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{}/{repo}:{tag}", registry.host()))
        .output()
        .unwrap();
    if !out.status.success() {
        return Vec::new();
    }
    let index: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        index["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["artifactType"] == "application/spdx+json")
        .map(|m| {
            let manifest = registry
                .get(
                    &format!("/v2/{repo}/manifests/{}", m["digest"].as_str().unwrap()),
                    Some("application/vnd.oci.image.manifest.v1+json"),
                )
                .json();
            assert_eq!(manifest["subject"]["digest"], digest, "{manifest}");
            let layer = &manifest["layers"][0];
            assert_eq!(layer["mediaType"], "application/spdx+json");
            registry
                .get(
                    &format!("/v2/{repo}/blobs/{}", layer["digest"].as_str().unwrap()),
                    None,
                )
                .json()
        })
        .collect()
}

/// `name@version` of every package in the document, image and runtime included.
fn packages(document: &serde_json::Value) -> Vec<String> {
    document["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            format!(
                "{}@{}",
                p["name"].as_str().unwrap(),
                p["versionInfo"].as_str().unwrap()
            )
        })
        .collect()
}

/// Validates a document with the SPDX project's tools (`pyspdxtools`).
fn assert_valid_spdx(document: &serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sbom.spdx.json");
    std::fs::write(&file, document.to_string()).unwrap();
    let out = Command::new("pyspdxtools")
        .arg("-i")
        .arg(&file)
        .output()
        .expect("pyspdxtools runs (tests/setup.sh installs spdx-tools)");
    assert!(
        out.status.success(),
        "not valid SPDX:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn python_and_nodejs_images_carry_an_spdx_sbom_of_their_packages() {
    let registry = registry_with_bases(&[PYTHON, NODEJS]);
    let cache = tempfile::tempdir().unwrap();

    let python = function_dir(&[("fn.py", SIX), ("requirements.txt", "six==1.16.0\n")]);
    let digest = build(
        &registry,
        cache.path(),
        python.path(),
        PYTHON,
        "fn.handler",
        "fn/six",
        &[],
    );
    let sboms = attached_sboms(&registry, "fn/six", &digest);
    assert_eq!(sboms.len(), 1, "one SBOM attached");
    let document = &sboms[0];
    assert_eq!(document["spdxVersion"], "SPDX-2.3");
    let listed = packages(document);
    assert!(listed.contains(&"six@1.16.0".to_string()), "{listed:?}");
    assert!(listed.contains(&"python@3.13".to_string()), "{listed:?}");
    assert!(
        document.to_string().contains("pkg:pypi/six@1.16.0"),
        "{document}"
    );
    assert_valid_spdx(document);

    let node = function_dir(&[
        ("fn.js", LEFT_PAD),
        (
            "package.json",
            r#"{"name":"fn","version":"1.0.0","dependencies":{"left-pad":"1.3.0"}}"#,
        ),
    ]);
    let digest = build(
        &registry,
        cache.path(),
        node.path(),
        NODEJS,
        "fn.handler",
        "fn/pad",
        &[],
    );
    let sboms = attached_sboms(&registry, "fn/pad", &digest);
    assert_eq!(sboms.len(), 1, "one SBOM attached");
    let listed = packages(&sboms[0]);
    assert!(listed.contains(&"left-pad@1.3.0".to_string()), "{listed:?}");
    assert!(listed.contains(&"nodejs@20".to_string()), "{listed:?}");
    assert_valid_spdx(&sboms[0]);
}

#[test]
fn a_deps_cache_hit_through_the_registry_still_lists_the_packages() {
    let registry = registry_with_bases(&[PYTHON]);
    let python = function_dir(&[("fn.py", SIX), ("requirements.txt", "six==1.16.0\n")]);
    let cache_repo = format!("{}/fnbuild/cache", registry.host());
    let first = tempfile::tempdir().unwrap();
    build(
        &registry,
        first.path(),
        python.path(),
        PYTHON,
        "fn.handler",
        "a/six",
        &["--cache-repo", &cache_repo],
    );

    let second = tempfile::tempdir().unwrap();
    let sbom_file = second.path().join("sbom.spdx.json");
    let digest = build(
        &registry,
        second.path(),
        python.path(),
        PYTHON,
        "fn.handler",
        "b/six",
        &[
            "--cache-repo",
            &cache_repo,
            "--sbom-file",
            sbom_file.to_str().unwrap(),
        ],
    );
    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&sbom_file).unwrap()).unwrap();
    assert!(packages(&written).contains(&"six@1.16.0".to_string()));
    let attached = attached_sboms(&registry, "b/six", &digest);
    assert_eq!(
        attached,
        vec![written],
        "the file holds the attached document"
    );
}

#[test]
fn no_sbom_attaches_nothing_and_layout_builds_write_the_file() {
    let registry = registry_with_bases(&[PYTHON]);
    let cache = tempfile::tempdir().unwrap();
    let src = function_dir(&[("fn.py", "def handler(event, context):\n    return 'hi'\n")]);
    let digest = build(
        &registry,
        cache.path(),
        src.path(),
        PYTHON,
        "fn.handler",
        "fn/plain",
        &["--no-sbom"],
    );
    assert!(attached_sboms(&registry, "fn/plain", &digest).is_empty());

    let out = tempfile::tempdir().unwrap();
    let sbom_file = out.path().join("sbom.json");
    success(
        layout_build_cmd(
            PYTHON,
            src.path().to_str().unwrap(),
            "fn.handler",
            &format!("oci:{}", out.path().join("layout").display()),
            cache.path(),
        )
        .arg("--sbom-file")
        .arg(&sbom_file),
    );
    let document: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&sbom_file).unwrap()).unwrap();
    assert_eq!(
        packages(&document).len(),
        2,
        "the image and the runtime: {document}"
    );
    assert_valid_spdx(&document);
}
