//! Runtime versions: a function built for a runtime version runs on that version's
//! interpreter, with its dependencies installed by that version's pip or npm, for the versions
//! Debian's releases provide (bullseye: Python 3.9; bookworm: Python 3.11, Node.js 18; trixie:
//! Python 3.13, Node.js 20). An old Kubeless runtime name is built for the nearest supported
//! version, and the build says so.

mod common;

use common::functions::*;
use common::packages::{PackageServer, NPM_PACKAGE, PY_PACKAGE};

/// Answers the interpreter's version, the runtime the server reports, and a dependency's help.
const PYTHON_HANDLER: &str = "import sys\nimport fnbuildgreet\n\n\
def handler(event, context):\n    \
return {'version': '%d.%d' % sys.version_info[:2], 'runtime': context['runtime'], \
'greeting': fnbuildgreet.greet('versions')}\n";

const NODEJS_HANDLER: &str = "const greet = require('fnbuild-greet');\n\
module.exports = { handler(event, context) {\n  \
return { version: process.version, runtime: context.runtime, greeting: greet('versions') };\n} };\n";

/// A built function: the stderr of its build and the JSON its handler answered.
struct Answer {
    build_log: String,
    body: serde_json::Value,
}

/// Builds `files` (handler `fn.handler`) with `--runtime runtime`, installing dependencies
/// from `packages`, runs the image under `fnbuild run` and calls it once.
fn build_and_call(
    registry: &common::Registry,
    packages: &PackageServer,
    runtime: &str,
    files: &[(&str, String)],
) -> Answer {
    let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let src = function_dir(&files);
    let cache = tempfile::tempdir().unwrap();
    let image = format!("{}/functions/versions:{runtime}", registry.host());
    let out = success(
        source_build_cmd(
            registry,
            cache.path(),
            src.path(),
            runtime,
            "fn.handler",
            &image,
        )
        .env("PIP_INDEX_URL", packages.index_url())
        .env("NPM_CONFIG_REGISTRY", packages.npm_registry()),
    );
    let function = RunningFunction::start(&printed_ref(&out), cache.path(), &[]);
    let (status, _, body) = call("GET", &function.url("/"), &[], b"");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    Answer {
        build_log: String::from_utf8_lossy(&out.stderr).into_owned(),
        body: serde_json::from_slice(&body).expect("the handler answers JSON"),
    }
}

fn python_files() -> Vec<(&'static str, String)> {
    vec![
        ("fn.py", PYTHON_HANDLER.to_string()),
        ("requirements.txt", format!("{PY_PACKAGE}==1.0\n")),
    ]
}

fn nodejs_files() -> Vec<(&'static str, String)> {
    vec![
        ("fn.js", NODEJS_HANDLER.to_string()),
        (
            "package.json",
            format!(
                r#"{{"name":"fn","version":"1.0.0","dependencies":{{"{NPM_PACKAGE}":"1.0.0"}}}}"#
            ),
        ),
    ]
}

#[test]
fn python_functions_run_on_the_python_version_they_are_built_for() {
    let registry = registry_with_bases(&[PYTHON, PYTHON_3_11]);
    let packages = PackageServer::start();
    let files = python_files();
    for (runtime, version) in [(PYTHON_3_11, "3.11"), (PYTHON, "3.13")] {
        let answer = build_and_call(&registry, &packages, runtime, &files);
        assert_eq!(
            answer.body,
            serde_json::json!({
                "version": version,
                "runtime": runtime,
                "greeting": "hello versions from the local index",
            }),
            "{runtime}"
        );
        assert!(
            answer.build_log.contains(&format!(
                "the handler compiles with the runtime's python{version}"
            )),
            "{}",
            answer.build_log
        );
    }
}

#[test]
fn nodejs_functions_run_on_the_nodejs_version_they_are_built_for() {
    let registry = registry_with_bases(&[NODEJS, NODEJS_18]);
    let packages = PackageServer::start();
    let files = nodejs_files();
    for (runtime, major) in [(NODEJS_18, "v18."), (NODEJS, "v20.")] {
        let answer = build_and_call(&registry, &packages, runtime, &files);
        let version = answer.body["version"].as_str().unwrap_or_default();
        assert!(version.starts_with(major), "{runtime}: {}", answer.body);
        assert_eq!(answer.body["runtime"], runtime);
        assert_eq!(
            answer.body["greeting"],
            "hello versions from the local registry"
        );
    }
}

/// `nodejs14` is built as nodejs18 and runs on Node.js 18; `python3.7` is built as python3.9
/// and runs on Python 3.9 (Debian bullseye's), its dependencies installed by that pip.
#[test]
fn old_kubeless_names_are_built_for_the_nearest_supported_version() {
    let registry = registry_with_bases(&[NODEJS_18, PYTHON_3_9]);
    let packages = PackageServer::start();

    let answer = build_and_call(&registry, &packages, "nodejs14", &nodejs_files());
    assert!(
        answer.build_log.contains(
            "runtime 'nodejs14' is built as 'nodejs18': Node.js 14 is not supported, and 18 is \
             the nearest supported version"
        ),
        "{}",
        answer.build_log
    );
    let version = answer.body["version"].as_str().unwrap_or_default();
    assert!(version.starts_with("v18."), "{}", answer.body);
    assert_eq!(answer.body["runtime"], NODEJS_18);

    let answer = build_and_call(&registry, &packages, "python3.7", &python_files());
    assert!(
        answer.build_log.contains(
            "runtime 'python3.7' is built as 'python3.9': Python 3.7 is not supported, and 3.9 \
             is the nearest supported version"
        ),
        "{}",
        answer.build_log
    );
    assert!(
        answer
            .build_log
            .contains("the handler compiles with the runtime's python3.9"),
        "{}",
        answer.build_log
    );
    assert_eq!(
        answer.body,
        serde_json::json!({
            "version": "3.9",
            "runtime": PYTHON_3_9,
            "greeting": "hello versions from the local index",
        })
    );
}

/// A base image must hold its runtime's interpreter: `fnbuild base` refuses a root filesystem
/// without it, and a Python build refuses a base image whose python3 is another version (its
/// dependencies would go where that interpreter never looks).
#[test]
fn a_base_image_of_another_version_is_refused() {
    let python_3_13 = common::rootfs("python");
    let out_dir = tempfile::tempdir().unwrap();
    let (code, stderr) = failure(
        common::fnbuild()
            .args(["base", "--runtime", PYTHON_3_11, "--from"])
            .arg(format!("rootfs:{}", python_3_13.display()))
            .arg("--image")
            .arg(format!("oci:{}", out_dir.path().join("base").display())),
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "--from rootfs:{}: no python3.11 in /usr/bin or /usr/local/bin; a base image of \
             runtime python3.11 must hold Python 3.11",
            python_3_13.display()
        )),
        "{stderr}"
    );

    // The handler is compiled by this machine's python3 when it is the runtime's version:
    // build for the version it is not, on the base image of the other one.
    let host = std::process::Command::new("python3")
        .args(["-c", "import sys; print('%d.%d' % sys.version_info[:2])"])
        .output()
        .unwrap();
    let (runtime, base, held) = match String::from_utf8_lossy(&host.stdout).trim() {
        "3.13" => (PYTHON_3_11, PYTHON, "3.13"),
        _ => (PYTHON, PYTHON_3_11, "3.11"),
    };
    let wanted = runtime.trim_start_matches("python");
    let src = function_dir(&[("fn.py", PYTHON_HANDLER)]);
    let cache = tempfile::tempdir().unwrap();
    let output = format!("oci:{}", out_dir.path().join("fn").display());
    let (code, stderr) = failure(common::fnbuild().args([
        "build",
        "--source",
        src.path().to_str().unwrap(),
        "--runtime",
        runtime,
        "--handler",
        "fn.handler",
        "--base-image",
        &format!("oci:{}", base_layout(base).display()),
        "--output",
        &output,
        "--cache-dir",
        cache.path().to_str().unwrap(),
    ]));
    assert!(
        stderr.contains(&format!(
            "the base image's python3 is Python {held}, not the runtime's Python {wanted}: a \
             base image of runtime {runtime} must hold Python {wanted}"
        )),
        "{stderr}"
    );
    assert_eq!(code, 1, "{stderr}");
}
