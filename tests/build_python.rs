//! Building Python functions end to end: real registry, real base image made from a Debian
//! root filesystem, real pip inside it, the image run under runc and called over HTTP.

mod common;

use std::io::Write;
use std::process::Stdio;

use common::functions::*;

const ECHO: &str = r#"
import json

calls = 0

def handler(event, context):
    global calls
    calls += 1
    print("echo called", calls)
    req = event["extensions"]["request"]
    return {
        "data": event["data"],
        "event-id": event["event-id"],
        "event-type": event["event-type"],
        "event-time": event["event-time"],
        "event-namespace": event["event-namespace"],
        "method": req.method,
        "path": req.path,
        "context": {k: context[k] for k in ("function-name", "timeout", "runtime", "memory-limit")},
        "greeting": __import__("os").environ.get("GREETING"),
        "calls": calls,
    }
"#;

fn manifest_of(registry: &common::Registry, repo: &str, reference: &str) -> serde_json::Value {
    registry
        .get(
            &format!("/v2/{repo}/manifests/{reference}"),
            Some("application/vnd.oci.image.manifest.v1+json"),
        )
        .json()
}

fn layer_digests(manifest: &serde_json::Value) -> Vec<String> {
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn echo_function_is_built_pushed_and_serves_the_kubeless_interface() {
    let registry = registry_with_bases(&[PYTHON]);
    let src = function_dir(&[("echo.py", ECHO)]);
    let cache = tempfile::tempdir().unwrap();
    let results = tempfile::tempdir().unwrap();
    let image = format!("{}/functions/echo:v1", registry.host());
    let out = success(&mut build_cmd(
        &registry,
        cache.path(),
        &[
            "--source",
            src.path().to_str().unwrap(),
            // The language's name: built as the default version, python3.13.
            "--runtime",
            "python",
            "--handler",
            "echo.handler",
            "--env",
            "GREETING=hello",
            "--label",
            "team=payments",
            "--timeout",
            "30",
            "--memory",
            "128Mi",
            "--image",
            &image,
            "--digest-file",
            results.path().join("digest").to_str().unwrap(),
            "--image-ref-file",
            results.path().join("ref").to_str().unwrap(),
        ],
    ));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("runtime 'python' is built as 'python3.13', the default Python version"),
        "{stderr}"
    );
    let pinned = printed_ref(&out);
    let digest = std::fs::read_to_string(results.path().join("digest")).unwrap();
    assert_eq!(
        pinned,
        format!("{}/functions/echo@{digest}", registry.host())
    );
    assert_eq!(
        std::fs::read_to_string(results.path().join("ref")).unwrap(),
        pinned
    );

    // What skopeo sees: the Kubeless env, the label, a non-root user, the digest.
    let inspect = registry
        .skopeo("inspect")
        .arg(format!("docker://{image}"))
        .output()
        .unwrap();
    assert!(
        inspect.status.success(),
        "{}",
        String::from_utf8_lossy(&inspect.stderr)
    );
    let info: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(info["Digest"], digest);
    let env: Vec<&str> = info["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for expected in [
        "FUNC_HANDLER=handler",
        "MOD_NAME=echo",
        "FUNC_RUNTIME=python3.13",
        "FUNC_TIMEOUT=30",
        "FUNC_PORT=8080",
        "GREETING=hello",
    ] {
        assert!(env.contains(&expected), "{expected} missing from {env:?}");
    }
    assert_eq!(info["Labels"]["team"], "payments");
    let config = registry
        .skopeo("inspect")
        .args(["--config", &format!("docker://{image}")])
        .output()
        .unwrap();
    let config: serde_json::Value = serde_json::from_slice(&config.stdout).unwrap();
    assert_eq!(config["config"]["User"], "1000:1000");

    let function = RunningFunction::start(&pinned, cache.path(), &[]);
    let (status, content_type, body) = call(
        "POST",
        &function.url("/some/path?x=1"),
        &[
            ("content-type", "application/json"),
            ("event-id", "id-42"),
            ("event-namespace", "cli.kubeless.io"),
        ],
        br#"{"order": 7}"#,
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let echoed: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(echoed["data"], serde_json::json!({"order": 7}));
    assert_eq!(echoed["event-id"], "id-42");
    assert_eq!(echoed["event-namespace"], "cli.kubeless.io");
    assert_eq!(echoed["event-type"], "application/json");
    assert!(
        echoed["event-time"].as_str().unwrap().ends_with('Z'),
        "{echoed}"
    );
    assert_eq!(echoed["method"], "POST");
    assert_eq!(echoed["path"], "/some/path");
    assert_eq!(echoed["context"]["function-name"], "handler");
    assert_eq!(echoed["context"]["timeout"], 30.0);
    assert_eq!(echoed["context"]["runtime"], "python3.13");
    assert_eq!(echoed["context"]["memory-limit"], "134217728");
    assert_eq!(echoed["greeting"], "hello");

    // Plain text stays raw; module state is kept between calls.
    let (status, _, body) = call(
        "PUT",
        &function.url("/"),
        &[("content-type", "text/plain")],
        b"just text",
    );
    assert_eq!(status, 200);
    let echoed: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(echoed["data"], "just text");
    assert_eq!(echoed["calls"], 2);
    let (_, _, metrics) = call("GET", &function.url("/metrics"), &[], b"");
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains(r#"function_calls_total{method="POST"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"function_calls_total{method="PUT"} 1"#),
        "{metrics}"
    );
    let log = function.stop();
    assert!(
        log.contains("echo called 2"),
        "print output missing from the function's log:\n{log}"
    );
}

#[test]
fn pypi_dependency_lives_in_a_cached_layer_that_code_only_rebuilds_reuse() {
    let registry = registry_with_bases(&[PYTHON]);
    let code = |version: &str| {
        format!("import six\n\ndef handler(event, context):\n    return 'v{version} six ' + six.__version__\n")
    };
    let src = function_dir(&[("fn.py", &code("1")), ("requirements.txt", "six==1.16.0\n")]);
    let cache = tempfile::tempdir().unwrap();
    let build = |tag: &str| {
        success(&mut build_cmd(
            &registry,
            cache.path(),
            &[
                "--source",
                src.path().to_str().unwrap(),
                "--runtime",
                PYTHON,
                "--handler",
                "fn.handler",
                "--image",
                &format!("{}/functions/six:{tag}", registry.host()),
            ],
        ))
    };
    let first = build("v1");
    assert!(String::from_utf8_lossy(&first.stderr).contains("deps layer cache miss"));
    std::fs::write(src.path().join("fn.py"), code("2")).unwrap();
    let second = build("v2");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("deps layer cache hit"), "{stderr}");
    assert!(!stderr.contains("installing dependencies"), "{stderr}");

    let v1 = layer_digests(&manifest_of(&registry, "functions/six", "v1"));
    let v2 = layer_digests(&manifest_of(&registry, "functions/six", "v2"));
    assert_eq!(v1.len(), v2.len());
    assert_eq!(
        v1[..v1.len() - 1],
        v2[..v2.len() - 1],
        "base and deps layers must be shared"
    );
    assert_ne!(v1.last(), v2.last(), "the code layer must change");

    let function = RunningFunction::start(&printed_ref(&second), cache.path(), &[]);
    let (status, _, body) = call("GET", &function.url("/"), &[], b"");
    assert_eq!(
        (status, String::from_utf8_lossy(&body).into_owned()),
        (200, "v2 six 1.16.0".to_string())
    );
}

#[test]
fn same_inputs_give_the_same_digest_and_source_date_epoch_is_honoured() {
    let src = function_dir(&[
        (
            "hello.py",
            "def handler(event, context):\n    return 'hi'\n",
        ),
        ("lib/util.py", "X = 1\n"),
    ]);
    let build = |epoch: Option<&str>| {
        let cache = tempfile::tempdir().unwrap();
        let out_dir = tempfile::tempdir().unwrap();
        let output = format!("oci:{}", out_dir.path().display());
        let mut cmd = layout_build_cmd(
            PYTHON,
            src.path().to_str().unwrap(),
            "hello.handler",
            &output,
            cache.path(),
        );
        if let Some(epoch) = epoch {
            cmd.env("SOURCE_DATE_EPOCH", epoch);
        }
        let out = success(&mut cmd);
        printed_ref(&out).rsplit('@').next().unwrap().to_string()
    };
    let first = build(None);
    // Different times and permissions on disk do not matter.
    std::fs::set_permissions(
        src.path().join("hello.py"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    assert_eq!(build(None), first);
    assert_ne!(build(Some("1700000000")), first);
}

/// Packs a directory's files in every archive kind fnbuild accepts.
fn archives(files: &[(&str, &str)], dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let tar_bytes = {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, text) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(text.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder
                .append_data(&mut header, name, text.as_bytes())
                .unwrap();
        }
        builder.into_inner().unwrap()
    };
    let mut paths = Vec::new();
    let mut write = |name: &str, bytes: Vec<u8>| {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        paths.push(path);
    };
    write("fn.tar", tar_bytes.clone());
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar_bytes).unwrap();
    write("fn.tgz", gz.finish().unwrap());
    let mut bz = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::default());
    bz.write_all(&tar_bytes).unwrap();
    write("fn.tar.bz2", bz.finish().unwrap());
    let mut xz = liblzma::write::XzEncoder::new(Vec::new(), 6);
    xz.write_all(&tar_bytes).unwrap();
    write("fn.tar.xz", xz.finish().unwrap());
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, text) in files {
        zip.start_file(*name, zip::write::SimpleFileOptions::default())
            .unwrap();
        zip.write_all(text.as_bytes()).unwrap();
    }
    write("fn.zip", zip.finish().unwrap().into_inner());
    paths
}

/// A one-shot HTTP server on localhost serving `body`; returns its URL for `name`.
fn serve_once(name: &str, body: Vec<u8>) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "http://{}/downloads/{name}?token=secret-token",
        listener.local_addr().unwrap()
    );
    std::thread::spawn(move || {
        if let Ok((mut stream, _)) = listener.accept() {
            let mut request = [0u8; 4096];
            let _ = std::io::Read::read(&mut stream, &mut request);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        }
    });
    url
}

#[test]
fn every_source_kind_gives_the_same_code_layer() {
    let files = [
        (
            "hello.py",
            "def handler(event, context):\n    return 'hi from an archive'\n",
        ),
        ("data/info.txt", "x\n"),
    ];
    let src = function_dir(&files);
    let work = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let code_layer = |source: &str, extra: &[&str], stdin: Option<Vec<u8>>| -> String {
        let out_dir = tempfile::tempdir().unwrap();
        let output = format!("oci:{}:fn", out_dir.path().display());
        let mut cmd = layout_build_cmd(PYTHON, source, "hello.handler", &output, cache.path());
        cmd.args(extra);
        let out = match stdin {
            Some(bytes) => {
                let mut child = cmd
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap();
                child.stdin.take().unwrap().write_all(&bytes).unwrap();
                child.wait_with_output().unwrap()
            }
            None => cmd.output().unwrap(),
        };
        assert!(
            out.status.success(),
            "{source}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !String::from_utf8_lossy(&out.stderr).contains("secret-token"),
            "a URL query leaked into the log"
        );
        let inspect = std::process::Command::new("skopeo")
            .args(["inspect", &format!("oci:{}:fn", out_dir.path().display())])
            .output()
            .unwrap();
        assert!(
            inspect.status.success(),
            "{}",
            String::from_utf8_lossy(&inspect.stderr)
        );
        let info: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
        info["Layers"]
            .as_array()
            .unwrap()
            .last()
            .unwrap()
            .as_str()
            .unwrap()
            .to_string()
    };
    let expected = code_layer(src.path().to_str().unwrap(), &[], None);
    for archive in archives(&files, work.path()) {
        let checksum = format!(
            "sha256:{}",
            common::sha256_digest(&std::fs::read(&archive).unwrap()).trim_start_matches("sha256:")
        );
        assert_eq!(
            code_layer(archive.to_str().unwrap(), &["--checksum", &checksum], None),
            expected,
            "{}",
            archive.display()
        );
    }
    let tgz = std::fs::read(work.path().join("fn.tgz")).unwrap();
    assert_eq!(
        code_layer(&serve_once("fn.tgz", tgz.clone()), &[], None),
        expected,
        "http source"
    );
    assert_eq!(code_layer("-", &[], Some(tgz)), expected, "stdin source");
}

#[test]
fn layout_and_tarball_outputs_are_read_by_skopeo_and_base_layers_are_mounted() {
    let registry = registry_with_bases(&[PYTHON]);
    let src = function_dir(&[(
        "hello.py",
        "def handler(event, context):\n    return 'hello'\n",
    )]);
    let cache = tempfile::tempdir().unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let layout = format!("oci:{}:v1", out_dir.path().join("layout").display());
    let tarball = out_dir.path().join("fn.tar");
    let image = format!("{}/functions/hello:v1", registry.host());
    // A registry-only build: the base layers are mounted inside the registry.
    let registry_build = || {
        success(&mut build_cmd(
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
            ],
        ))
    };
    let registry_only = registry_build();
    let stderr = String::from_utf8_lossy(&registry_only.stderr);
    assert!(stderr.contains("mounted blob"), "{stderr}");
    // The push mounts the base layers inside the registry. The handler is compiled by the
    // runtime's own Python: this machine's python3 when it is 3.13, else the base image's,
    // whose layers are fetched and unpacked once for it.
    let host_python = std::process::Command::new("python3")
        .args(["-c", "import sys; print('%d.%d' % sys.version_info[:2])"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let unpacks = |stderr: &str| stderr.contains("to compile the handler with its Python");
    assert_eq!(unpacks(&stderr), host_python != "3.13", "{stderr}");
    assert!(
        stderr.contains("the handler compiles with the runtime's python3.13"),
        "{stderr}"
    );
    // A code-only rebuild fetches no base layer: nothing is downloaded or unpacked again.
    let base_layers = layer_digests(&manifest_of(&registry, "fnbuild/runtime-python", "3.13"));
    let cached = |digest: &str| {
        cache
            .path()
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
            .exists()
    };
    let cached_before: Vec<bool> = base_layers.iter().map(|d| cached(d)).collect();
    std::fs::write(
        src.path().join("hello.py"),
        "def handler(event, context):\n    return 'hello again'\n",
    )
    .unwrap();
    let rebuild = registry_build();
    let stderr = String::from_utf8_lossy(&rebuild.stderr);
    assert!(
        !unpacks(&stderr) && !stderr.contains("unpacked image root filesystem"),
        "{stderr}"
    );
    let cached_after: Vec<bool> = base_layers.iter().map(|d| cached(d)).collect();
    assert_eq!(
        cached_before, cached_after,
        "a code-only rebuild fetched base layers"
    );
    std::fs::write(
        src.path().join("hello.py"),
        "def handler(event, context):\n    return 'hello'\n",
    )
    .unwrap();

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
            "--output",
            &layout,
            "--output",
            &format!("tar:{}", tarball.display()),
        ],
    ));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let digests: Vec<&str> = stdout
        .lines()
        .map(|l| l.rsplit('@').next().unwrap())
        .collect();
    assert_eq!(digests.len(), 3, "{stdout}");
    assert!(
        digests.iter().all(|d| *d == digests[0]),
        "every output holds the same image: {stdout}"
    );
    assert_eq!(
        printed_ref(&registry_only).rsplit('@').next().unwrap(),
        digests[0]
    );

    for transport in [
        layout.clone(),
        format!("oci-archive:{}", tarball.display()),
        format!("docker-archive:{}", tarball.display()),
    ] {
        let inspect = std::process::Command::new("skopeo")
            .args(["inspect", &transport])
            .output()
            .unwrap();
        assert!(
            inspect.status.success(),
            "{transport}: {}",
            String::from_utf8_lossy(&inspect.stderr)
        );
    }
    let inspect = std::process::Command::new("skopeo")
        .args(["inspect", &layout])
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(info["Digest"], digests[0]);
    // skopeo can copy what fnbuild wrote into a registry, and the copy runs.
    let copied = format!("{}/copies/hello:v1", registry.host());
    let copy = std::process::Command::new("skopeo")
        .args([
            "copy",
            "--dest-tls-verify=false",
            &layout,
            &format!("docker://{copied}"),
        ])
        .output()
        .unwrap();
    assert!(
        copy.status.success(),
        "{}",
        String::from_utf8_lossy(&copy.stderr)
    );
    let function = RunningFunction::start(&copied, cache.path(), &[]);
    let (status, _, body) = call("GET", &function.url("/"), &[], b"");
    assert_eq!((status, body.as_slice()), (200, &b"hello"[..]));
}

#[test]
fn without_runc_the_function_runs_in_a_chroot_as_the_images_user() {
    let src = function_dir(&[(
        "who.py",
        "import os\n\ndef handler(event, context):\n    return {'uid': os.getuid(), 'gid': os.getgid(), 'cwd': os.getcwd()}\n",
    )]);
    let cache = tempfile::tempdir().unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let layout = format!("oci:{}:who", out_dir.path().display());
    success(&mut layout_build_cmd(
        PYTHON,
        src.path().to_str().unwrap(),
        "who.handler",
        &layout,
        cache.path(),
    ));
    // A PATH without runc on it.
    let bin = tempfile::tempdir().unwrap();
    let mut cmd = common::fnbuild();
    cmd.env("PATH", bin.path());
    let function = RunningFunction::start_with(cmd, &layout, cache.path(), &[]);
    let (status, _, body) = call("GET", &function.url("/"), &[], b"");
    assert_eq!(status, 200);
    let who: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        who,
        serde_json::json!({"uid": 1000, "gid": 1000, "cwd": "/kubeless"})
    );
    let log = function.stop();
    assert!(log.contains("runc is not installed"), "{log}");
}

#[test]
fn json_logs_are_one_object_a_line_and_stdout_holds_only_the_result() {
    let src = function_dir(&[(
        "hello.py",
        "def handler(event, context):\n    return 'hi'\n",
    )]);
    let cache = tempfile::tempdir().unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let build = |handler: &str| {
        let output = format!("oci:{}", out_dir.path().display());
        layout_build_cmd(
            PYTHON,
            src.path().to_str().unwrap(),
            handler,
            &output,
            cache.path(),
        )
        .args(["--log-format", "json"])
        .output()
        .unwrap()
    };
    let parse_lines = |stderr: &[u8]| -> Vec<serde_json::Value> {
        String::from_utf8_lossy(stderr)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
            .collect()
    };
    let ok = build("hello.handler");
    assert!(ok.status.success());
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(
        stdout.starts_with("oci:") && stdout.contains("@sha256:"),
        "{stdout}"
    );
    let events = parse_lines(&ok.stderr);
    assert!(
        events
            .iter()
            .any(|e| e["fields"]["message"] == "build finished"),
        "{events:?}"
    );

    let failed = build("hello.nope");
    assert_eq!(failed.status.code(), Some(1));
    let events = parse_lines(&failed.stderr);
    let error = events
        .iter()
        .find(|e| e["level"] == "ERROR")
        .expect("an ERROR event");
    assert!(
        error["fields"]["error"]
            .as_str()
            .unwrap()
            .contains("no function 'nope'"),
        "{error}"
    );
}
