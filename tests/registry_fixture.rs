//! Tests of the test support itself (`tests/common`): the registry fixture in its three
//! flavours (plain, basic auth, TLS), seen by reqwest and by skopeo, and the rootfs lookup.

mod common;

use std::process::Output;
use std::time::Duration;

use common::{Registry, RegistryOptions};

fn auth_options() -> RegistryOptions {
    RegistryOptions {
        basic_auth: Some(("fnbuild".to_string(), "s3cret-pass".to_string())),
        tls: false,
    }
}

/// A client without the test CA and without credentials.
fn bare_client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn output_text(out: &Output) -> String {
    format!(
        "status: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn plain_registry_answers_v2_and_starts_empty() {
    let registry = Registry::start(RegistryOptions::default());
    assert!(
        registry.host().starts_with("127.0.0.1:"),
        "{}",
        registry.host()
    );
    assert_eq!(registry.url(), format!("http://{}", registry.host()));
    assert!(registry.ca_cert().is_none());

    let resp = registry.get("/v2/", None);
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        resp.header("docker-distribution-api-version"),
        Some("registry/2.0")
    );
    assert_eq!(registry.catalog(), Vec::<String>::new());
    assert_eq!(registry.tags("nope"), Vec::<String>::new());
}

#[test]
fn two_registries_get_different_ports() {
    let a = Registry::start(RegistryOptions::default());
    let b = Registry::start(RegistryOptions::default());
    assert_ne!(a.port(), b.port());
}

#[test]
fn registry_process_is_gone_after_drop() {
    let registry = Registry::start(RegistryOptions::default());
    let url = format!("{}/v2/", registry.url());
    assert!(common::wait_http_ok(&url, Duration::from_secs(1)));
    let proc_dir = std::path::PathBuf::from(format!("/proc/{}", registry.pid()));
    assert!(proc_dir.exists());
    let storage = registry.storage_dir().to_path_buf();
    assert!(storage.is_dir());
    drop(registry);
    assert!(
        !proc_dir.exists(),
        "the registry process outlived its Registry"
    );
    assert!(
        !storage.exists(),
        "the registry storage outlived its Registry"
    );
}

#[test]
fn basic_auth_registry_requires_credentials() {
    let registry = Registry::start(auth_options());
    let url = format!("{}/v2/", registry.url());

    let anonymous = bare_client().get(&url).send().unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
    let challenge = anonymous
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(challenge.starts_with("Basic "), "challenge: {challenge:?}");

    let wrong = bare_client()
        .get(&url)
        .basic_auth("fnbuild", Some("wrong"))
        .send()
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 401);

    let right = bare_client()
        .get(&url)
        .basic_auth("fnbuild", Some("s3cret-pass"))
        .send()
        .unwrap();
    assert_eq!(right.status().as_u16(), 200);

    // The helpers log in by themselves.
    assert_eq!(registry.get("/v2/", None).status, 200);
    assert_eq!(registry.catalog(), Vec::<String>::new());
    assert_eq!(registry.creds().as_deref(), Some("fnbuild:s3cret-pass"));
}

#[test]
fn tls_registry_answers_https_with_its_ca_only() {
    let registry = Registry::start(RegistryOptions {
        basic_auth: None,
        tls: true,
    });
    assert!(
        registry.url().starts_with("https://127.0.0.1:"),
        "{}",
        registry.url()
    );
    let ca = registry
        .ca_cert()
        .expect("a TLS registry has a CA certificate");
    let pem = std::fs::read(ca).unwrap();

    for host in [registry.host(), format!("localhost:{}", registry.port())] {
        let client = reqwest::blocking::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let resp = client.get(format!("https://{host}/v2/")).send().unwrap();
        assert_eq!(resp.status().as_u16(), 200, "https://{host}/v2/");
    }

    // Without the test CA, the certificate is not trusted.
    let untrusted = bare_client()
        .get(format!("https://{}/v2/", registry.host()))
        .send();
    assert!(untrusted.is_err(), "trusted without the CA: {untrusted:?}");

    // Plain HTTP gets no registry answer (Go answers 400 to HTTP on a TLS port).
    if let Ok(resp) = bare_client()
        .get(format!("http://{}/v2/", registry.host()))
        .send()
    {
        assert_eq!(resp.status().as_u16(), 400, "plain HTTP answered");
    }

    assert_eq!(registry.catalog(), Vec::<String>::new());
    let cert_dir = registry.cert_dir().unwrap();
    assert!(cert_dir.join("ca.crt").is_file());
}

#[test]
fn skopeo_reaches_a_plain_registry() {
    let registry = Registry::start(RegistryOptions::default());
    let out = registry
        .skopeo("inspect")
        .arg(format!("docker://{}/nope:tag", registry.host()))
        .output()
        .expect("running skopeo (run `bash tests/setup.sh`)");
    let text = output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("manifest unknown"), "{text}");
    assert!(text.contains(&registry.host()), "{text}");
}

#[test]
fn skopeo_reaches_a_tls_registry_with_auth() {
    let registry = Registry::start(RegistryOptions {
        tls: true,
        ..auth_options()
    });
    let reference = format!("docker://{}/nope:tag", registry.host());

    // Trusting the CA and logged in: the registry itself answers "manifest unknown".
    let out = registry.skopeo("inspect").arg(&reference).output().unwrap();
    let text = output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("manifest unknown"), "{text}");

    // Without credentials: refused.
    let cert_dir = registry.cert_dir().unwrap();
    let out = std::process::Command::new("skopeo")
        .arg("inspect")
        .arg(format!("--cert-dir={}", cert_dir.display()))
        .arg(&reference)
        .output()
        .unwrap();
    let text = output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("authentication required") || text.contains("unauthorized"),
        "{text}"
    );

    // Without the CA: a certificate error.
    let out = std::process::Command::new("skopeo")
        .arg("inspect")
        .arg(format!("--creds={}", registry.creds().unwrap()))
        .arg(&reference)
        .output()
        .unwrap();
    let text = output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("certificate"), "{text}");
}

#[test]
fn pushed_image_shows_in_catalog_and_tags_and_can_be_deleted() {
    let registry = Registry::start(RegistryOptions {
        tls: true,
        ..auth_options()
    });
    let layout = tempfile::tempdir().unwrap();
    let layer = common::tar_of(&[("hello.txt", b"hello from the fixture test\n")]);
    let digest = common::write_oci_layout(
        layout.path(),
        "v1",
        serde_json::json!({ "config": { "Cmd": ["/bin/true"] } }),
        &[layer],
    );

    let out = std::process::Command::new("skopeo")
        .arg("copy")
        .args(registry.skopeo_args("dest-"))
        .arg(format!("oci:{}:v1", layout.path().display()))
        .arg(format!("docker://{}/fixture/hello:v1", registry.host()))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));

    assert_eq!(registry.catalog(), vec!["fixture/hello".to_string()]);
    assert_eq!(registry.tags("fixture/hello"), vec!["v1".to_string()]);
    assert_eq!(registry.tags("fixture/other"), Vec::<String>::new());

    // skopeo kept the OCI manifest as it was: same digest.
    let manifest = registry.get(
        "/v2/fixture/hello/manifests/v1",
        Some("application/vnd.oci.image.manifest.v1+json"),
    );
    assert_eq!(manifest.status, 200, "{}", manifest.text());
    assert_eq!(
        manifest.header("docker-content-digest"),
        Some(digest.as_str())
    );
    assert_eq!(manifest.json()["layers"].as_array().unwrap().len(), 1);

    // Deletes are enabled.
    let out = registry
        .skopeo("delete")
        .arg(format!(
            "docker://{}/fixture/hello@{digest}",
            registry.host()
        ))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(registry.tags("fixture/hello"), Vec::<String>::new());
}

#[test]
fn docker_config_holds_the_registry_credentials() {
    let registry = Registry::start(auth_options());
    let dir = tempfile::tempdir().unwrap();
    let path = registry.write_docker_config(dir.path());
    let config: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let auth = config["auths"][registry.host()]["auth"].as_str().unwrap();
    assert_eq!(auth, common::base64_encode(b"fnbuild:s3cret-pass"));
    assert_eq!(common::base64_encode(b"ab"), "YWI=");
    assert_eq!(common::base64_encode(b"abc"), "YWJj");
    assert_eq!(common::base64_encode(b"a"), "YQ==");
}

#[test]
fn runtime_rootfs_are_ready() {
    for lang in ["python", "nodejs"] {
        let dir = common::rootfs(lang);
        assert!(
            dir.join("etc/debian_version").is_file(),
            "{}",
            dir.display()
        );
    }
    assert!(common::rootfs("python").join("usr/bin/python3").exists());
    assert!(common::rootfs("nodejs").join("usr/bin/npm").exists());
}

#[test]
#[should_panic(expected = "bash tests/setup.sh")]
fn missing_rootfs_panics_with_a_hint() {
    common::rootfs("no-such-runtime");
}
