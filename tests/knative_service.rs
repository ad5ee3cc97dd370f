//! `fnbuild build --knative-service FILE` writes a Knative Service that runs the image by
//! digest with the function's settings, valid against Knative Serving's own CRD schema
//! (tests/data/knative-crds, validated with jsonschema).

mod common;

use std::path::Path;

use common::functions::*;

/// Runs the schema validator; returns (valid, its report).
fn validate(crd_file: &Path, object: &Path) -> (bool, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/validate_crd.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(crd_file)
        .arg(object)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn the_service_runs_the_image_by_digest_and_is_valid_against_the_knative_crd() {
    let registry = registry_with_bases(&[PYTHON]);
    let src = function_dir(&[(
        "hello.py",
        "def handler(event, context):\n    return 'hi'\n",
    )]);
    let cache = tempfile::tempdir().unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let service_file = out_dir.path().join("service.yaml");
    let image = format!("{}/functions/hello:v1", registry.host());
    let out = success(&mut build_cmd(
        &registry,
        cache.path(),
        &[
            "--source",
            src.path().to_str().unwrap(),
            "--runtime",
            PYTHON,
            "--handler",
            "hello.handler",
            "--image",
            &image,
            "--env",
            "GREETING=hi",
            "--label",
            "team=payments",
            "--timeout",
            "60",
            "--memory",
            "128Mi",
            "--cpu",
            "100m",
            "--min-scale",
            "0",
            "--max-scale",
            "3",
            "--scale-target",
            "10",
            "--namespace",
            "functions",
            "--secrets",
            "api,db",
            "--knative-service",
            service_file.to_str().unwrap(),
        ],
    ));
    let pinned = printed_ref(&out);
    let (valid, report) = validate(&common::knative_crd("serving-service.yaml"), &service_file);
    assert!(
        valid,
        "the Service is not valid against the Knative CRD:\n{report}"
    );

    let text = std::fs::read_to_string(&service_file).unwrap();
    let service: serde_json::Value =
        serde_json::from_str(&python_yaml_to_json(&service_file)).unwrap();
    assert_eq!(service["apiVersion"], "serving.knative.dev/v1", "{text}");
    assert_eq!(service["metadata"]["name"], "hello");
    assert_eq!(service["metadata"]["namespace"], "functions");
    assert_eq!(service["metadata"]["labels"]["team"], "payments");
    let template = &service["spec"]["template"];
    assert_eq!(
        template["metadata"]["annotations"]["autoscaling.knative.dev/min-scale"],
        "0"
    );
    assert_eq!(
        template["metadata"]["annotations"]["autoscaling.knative.dev/max-scale"],
        "3"
    );
    assert_eq!(
        template["metadata"]["annotations"]["autoscaling.knative.dev/target"],
        "10"
    );
    assert_eq!(template["spec"]["timeoutSeconds"], 60);
    let container = &template["spec"]["containers"][0];
    assert_eq!(
        container["image"],
        pinned.as_str(),
        "the Service must run the image by digest"
    );
    assert_eq!(
        container["env"][0],
        serde_json::json!({"name": "GREETING", "value": "hi"})
    );
    assert_eq!(
        container["resources"]["limits"],
        serde_json::json!({"memory": "128Mi", "cpu": "100m"})
    );
    assert_eq!(container["ports"][0]["containerPort"], 8080);
    // Kubeless's --secrets: each secret at /NAME, read-only.
    assert_eq!(
        container["volumeMounts"],
        serde_json::json!([
            {"name": "api-vol", "mountPath": "/api", "readOnly": true},
            {"name": "db-vol", "mountPath": "/db", "readOnly": true},
        ])
    );
    assert_eq!(
        template["spec"]["volumes"],
        serde_json::json!([
            {"name": "api-vol", "secret": {"secretName": "api"}},
            {"name": "db-vol", "secret": {"secretName": "db"}},
        ])
    );
}

/// The validator really checks: a Service with a wrong type is refused.
#[test]
fn the_validator_refuses_an_invalid_service() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: x\nspec:\n  template:\n    spec:\n      containers: \"not a list\"\n      timeoutSeconds: \"soon\"\n",
    )
    .unwrap();
    let (valid, report) = validate(&common::knative_crd("serving-service.yaml"), &bad);
    assert!(!valid);
    assert!(
        report.contains("containers") && report.contains("timeoutSeconds"),
        "{report}"
    );
}

#[test]
fn a_service_needs_a_registry_image_a_valid_name_and_safe_mounts_before_anything_is_built() {
    let src = function_dir(&[(
        "hello.py",
        "def handler(event, context):\n    return 'hi'\n",
    )]);
    let cache = tempfile::tempdir().unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let base = format!("oci:{}", base_layout(PYTHON).display());
    let layout = format!("oci:{}", out_dir.path().join("layout").display());
    let service = out_dir.path().join("service.yaml");
    let common_args = [
        "build",
        "--source",
        src.path().to_str().unwrap(),
        "--runtime",
        PYTHON,
        "--handler",
        "hello.handler",
        "--base-image",
        &base,
    ];
    let (code, stderr) = failure(
        common::fnbuild()
            .args(common_args)
            .args([
                "--output",
                &layout,
                "--knative-service",
                service.to_str().unwrap(),
                "--cache-dir",
            ])
            .arg(cache.path()),
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("--knative-service needs an --image"),
        "{stderr}"
    );
    for (flags, expected) in [
        (["--service-name", "Not_Valid"], "not a Kubernetes name"),
        (
            ["--secrets", "kubeless"],
            "--secrets: volumeMounts[0] has mountPath '/kubeless', which would cover or sit inside /kubeless",
        ),
    ] {
        let (code, stderr) = failure(
            common::fnbuild()
                .args(common_args)
                .args([
                    "--image",
                    "127.0.0.1:1/functions/x:1",
                    "--knative-service",
                    service.to_str().unwrap(),
                ])
                .args(flags)
                .arg("--cache-dir")
                .arg(cache.path()),
        );
        assert_eq!(code, 2, "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
    }
    assert!(!service.exists() && !out_dir.path().join("layout").exists());
}

/// The Service file read back with a real YAML parser (PyYAML), as JSON.
fn python_yaml_to_json(file: &Path) -> String {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        ])
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
