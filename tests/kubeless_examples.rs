//! Every Python and Node.js target of Kubeless's examples Makefile, built by fnbuild with the
//! flags its `kubeless function deploy` line gives (`--runtime`, `--handler`, `--from-file`,
//! `--dependencies`, `--env`, `--label`, `--memory`, `--port`, `--timeout`, `--secrets`) and
//! checked as its `-verify` target checks it: the answer of `kubeless function call` (GET
//! without data, POST with it, and the headers the CLI sends), the function's log, the
//! service's port and secret mounts, the installed packages. The functions are those of `examples/`, written for Python 3.
//!
//! Functions that Kafka or NATS triggers call are called here as the trigger calls them (a
//! POST of the message with the trigger's `event-namespace`), and as Knative delivers the
//! message after `fnbuild convert` (a binary-mode CloudEvent from a KafkaSource, or from the
//! Broker's Trigger for a NATS topic): the triggers are the platform's, the function's answer
//! and log are fnbuild's. Left out, with why:
//! `scheduled-get-python` (a cron trigger calling get-python's function, which is here),
//! `custom-get-python` (an image built elsewhere: nothing to build), `pubsub-nodejs-update`
//! and the `*-func2-*` targets (the same functions under other trigger topics or names).

mod common;

use std::path::{Path, PathBuf};

use common::functions::*;
use common::Registry;

fn example(path: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(path)
        .display()
        .to_string()
}

/// How a `-verify` target reaches the function.
enum Call {
    /// `kubeless function call NAME`.
    Get,
    /// `kubeless function call NAME --data DATA`.
    Post(String),
    /// What a Kafka or NATS trigger sends for a message published to its topic.
    Message {
        namespace: &'static str,
        data: String,
    },
    /// What Knative sends for such a message: a binary-mode CloudEvent.
    CloudEvent {
        ce_type: &'static str,
        source: &'static str,
        content_type: Option<&'static str>,
        data: String,
    },
}

/// What a `-verify` target checks. Patterns are `egrep`'s, as the Makefile writes them:
/// `.` is any character, `.*` anything; a log is searched whole (`echo $logs | grep`).
enum Check {
    /// The call answers 200 with a body matching.
    Answer(String),
    /// The call answers with this status and a body matching.
    Status(u16, &'static str),
    /// The function's log matches.
    Log(String),
    /// The service sends traffic to this port (`kubectl get svc ... targetPort`): the Knative
    /// Service's `containerPort`.
    TargetPort(u16),
    /// The image holds this installed package (`pip freeze | grep NAME==`): in its SBOM.
    Package(&'static str),
    /// The secret is mounted read-only at `/NAME` (`kubectl exec ... cat /NAME/key`): in the
    /// Knative Service's pod, as Kubeless mounted it.
    SecretMounted(&'static str),
}

/// One Makefile target: its deploy flags and its checks.
struct Target {
    name: &'static str,
    flags: Vec<String>,
    /// `fnbuild run --env` values (where the test stands in for a web site).
    run_env: Vec<String>,
    calls: Vec<Call>,
    checks: Vec<Check>,
}

/// `--runtime R --handler H --from-file F` and more flags.
fn deploy(runtime: &str, handler: &str, from_file: &str, more: &[&str]) -> Vec<String> {
    [
        "--runtime",
        runtime,
        "--handler",
        handler,
        "--from-file",
        from_file,
    ]
    .iter()
    .chain(more)
    .map(|s| s.to_string())
    .collect()
}

fn target(name: &'static str, flags: Vec<String>, call: Call, checks: Vec<Check>) -> Target {
    Target {
        name,
        flags,
        run_env: Vec::new(),
        calls: vec![call],
        checks,
    }
}

fn answer(pattern: &str) -> Check {
    Check::Answer(pattern.to_string())
}

fn log(pattern: &str) -> Check {
    Check::Log(pattern.to_string())
}

/// What post-python's and post-nodejs's `-verify` find in the log: the event's context.
fn event_context_logged(namespace: &str) -> Vec<Check> {
    vec![
        log("event-time.*UTC"),
        log("event-type.*application/json"),
        log(&format!("event-namespace.*{namespace}")),
        log("event-id.*"),
    ]
}

/// post-python's and post-nodejs's `-verify`: the data comes back and is in the log, with
/// the event's context.
fn posted_alive_checks() -> Vec<Check> {
    let mut checks = vec![answer("it.*alive"), log("it.*alive")];
    checks.extend(event_context_logged("cli.kubeless.io"));
    checks
}

/// A message `{"KEY":"UNIQUE"}` (the Makefile makes UNIQUE with `mktemp -u`), and the check
/// that the function logged it.
fn published(namespace: &'static str, key: &str, checks: &mut Vec<Check>) -> Call {
    Call::Message {
        namespace,
        data: unique_message(key, checks),
    }
}

/// A message on the topic as Knative delivers it after `fnbuild convert`: from a KafkaSource
/// (type `dev.knative.kafka.event`, no content type unless the record had one), or, for a NATS
/// topic, from the Broker's Trigger (the topic is the type); its data is looked for in the log.
fn delivered_by_knative(namespace: &str, key: &str, checks: &mut Vec<Check>) -> Call {
    let data = unique_message(key, checks);
    if namespace == "kafkatriggers.kubeless.io" {
        Call::CloudEvent {
            ce_type: "dev.knative.kafka.event",
            source: "/apis/v1/namespaces/default/kafkasources/pubsub-topic#topic",
            content_type: None,
            data,
        }
    } else {
        Call::CloudEvent {
            ce_type: "topic",
            source: "/apis/v1/namespaces/default/pingsources/publisher",
            content_type: Some("application/json"),
            data,
        }
    }
}

/// A JSON message `{"KEY":"UNIQUE"}` whose unique value the function's log must show.
fn unique_message(key: &str, checks: &mut Vec<Check>) -> String {
    static SENT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = SENT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let unique = format!("msg{n}x{}", std::process::id());
    checks.push(log(&unique));
    format!(r#"{{"{key}":"{unique}"}}"#)
}

/// `egrep PATTERN` over `text`, for the patterns the Makefile uses: `.` any character, `.*`
/// anything in between.
fn egrep(text: &str, pattern: &str) -> bool {
    let text: Vec<char> = text.chars().collect();
    let mut from = 0;
    for piece in pattern.split(".*") {
        let piece: Vec<char> = piece.chars().collect();
        let found = (from..=text.len().saturating_sub(piece.len())).find(|&at| {
            at + piece.len() <= text.len()
                && piece
                    .iter()
                    .zip(&text[at..])
                    .all(|(p, t)| *p == '.' || p == t)
        });
        match found {
            Some(at) => from = at + piece.len(),
            None => return false,
        }
    }
    true
}

/// The headers `kubeless function call` sends: an event id, the time as Go prints a UTC
/// time, the CLI's namespace, and the content type of JSON data.
fn call(function: &RunningFunction, call: &Call) -> (u16, String) {
    let time = "2026-11-27 10:00:00.123456789 +0000 UTC";
    let (namespace, data) = match call {
        Call::Get => ("cli.kubeless.io", None),
        Call::Post(data) => ("cli.kubeless.io", Some(data)),
        Call::Message { namespace, data } => (*namespace, Some(data)),
        Call::CloudEvent {
            ce_type,
            source,
            content_type,
            data,
        } => {
            let mut headers = vec![
                ("ce-specversion", "1.0"),
                ("ce-id", "partition:0/offset:7"),
                ("ce-type", *ce_type),
                ("ce-source", *source),
                ("ce-subject", "partition:0#7"),
                ("ce-time", "2026-11-27T10:00:00.123Z"),
            ];
            headers.extend(content_type.map(|t| ("content-type", t)));
            let (status, _, body) =
                common::functions::call("POST", &function.url("/"), &headers, data.as_bytes());
            return (status, String::from_utf8_lossy(&body).into_owned());
        }
    };
    let mut headers = vec![
        ("event-id", "kubeless-example-1"),
        ("event-time", time),
        ("event-namespace", namespace),
    ];
    let (status, _, body) = match data {
        Some(data) => {
            headers.push(("content-type", "application/json"));
            headers.push(("event-type", "application/json"));
            common::functions::call("POST", &function.url("/"), &headers, data.as_bytes())
        }
        None => common::functions::call("GET", &function.url("/"), &headers, b""),
    };
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A web page titled Google on this machine, standing in for google.com, which
/// get-python-deps's function fetches; its URL.
fn google_page() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut head = [0u8; 4096];
            let _ = std::io::Read::read(&mut stream, &mut head);
            let page = "<!doctype html><html><head><title>Google</title></head></html>";
            let _ = std::io::Write::write_all(
                &mut stream,
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\n\
                     connection: close\r\n\r\n{page}",
                    page.len()
                )
                .as_bytes(),
            );
        }
    });
    url
}

/// `zip helloFunctions.zip *js` in examples/nodejs.
fn node_functions_zip(dir: &Path) -> String {
    let path = dir.join("helloFunctions.zip");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    let mut names: Vec<PathBuf> = std::fs::read_dir(example("nodejs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "js"))
        .collect();
    names.sort();
    for file in names {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        zip.start_file(name, zip::write::SimpleFileOptions::default())
            .unwrap();
        std::io::Write::write_all(&mut zip, &std::fs::read(&file).unwrap()).unwrap();
    }
    zip.finish().unwrap();
    path.display().to_string()
}

fn python_targets(dir: &Path, page: &str) -> Vec<Target> {
    let helloget = example("python/helloget.py");
    let hellowithdata = example("python/hellowithdata.py");
    let deps = example("python/requirements.txt");
    // get-python-update and get-python-deps-update write their new files with printf.
    let updated = dir.join("hello-updated.py");
    std::fs::write(
        &updated,
        "def foo(event, context):\n    return \"hello world updated\"\n",
    )
    .unwrap();
    let updated_deps = dir.join("requirements.txt");
    std::fs::write(&updated_deps, "bs4\ntwitter\n").unwrap();
    let (updated, updated_deps) = (
        updated.display().to_string(),
        updated_deps.display().to_string(),
    );
    let alive = || Call::Post(r#"{"it-s": "alive"}"#.to_string());

    let mut targets = vec![
        target(
            "get-python",
            deploy("python2.7", "helloget.foo", &helloget, &[]),
            Call::Get,
            vec![answer("hello.world")],
        ),
        target(
            "get-python-update",
            deploy("python2.7", "helloget.foo", &updated, &[]),
            Call::Get,
            vec![answer("hello.world.updated")],
        ),
        target(
            "get-python-custom-port",
            deploy("python2.7", "helloget.foo", &helloget, &["--port", "8081"]),
            Call::Get,
            vec![Check::TargetPort(8081), answer("hello.world")],
        ),
        target(
            "get-python-34",
            deploy("python3.4", "helloget.foo", &helloget, &[]),
            Call::Get,
            vec![answer("hello.world")],
        ),
        target(
            "get-python-36",
            deploy("python3.6", "helloget.foo", &helloget, &[]),
            Call::Get,
            vec![answer("hello.world")],
        ),
        target(
            "timeout-python",
            deploy(
                "python2.7",
                "helloget.foo",
                &example("python/hello-loop.py"),
                &["--timeout", "3"],
            ),
            Call::Get,
            vec![Check::Status(408, "Request.timeout.exceeded")],
        ),
        target(
            "get-python-secrets",
            deploy(
                "python2.7",
                "helloget.foo",
                &helloget,
                &["--secrets", "test-secret"],
            ),
            Call::Get,
            vec![Check::SecretMounted("test-secret"), answer("hello.world")],
        ),
        target(
            "get-python-metadata",
            deploy(
                "python2.7",
                "helloget.foo",
                &helloget,
                &[
                    "--env",
                    "foo:bar,bar=foo,foo",
                    "--memory",
                    "128Mi",
                    "--label",
                    "foo:bar,bar=foo,foobar",
                ],
            ),
            Call::Get,
            vec![answer("hello.world")],
        ),
        target(
            "post-python",
            deploy("python2.7", "hellowithdata.handler", &hellowithdata, &[]),
            alive(),
            posted_alive_checks(),
        ),
        target(
            "post-python-custom-port",
            deploy(
                "python2.7",
                "hellowithdata.handler",
                &hellowithdata,
                &["--port", "8081"],
            ),
            alive(),
            vec![Check::TargetPort(8081), answer("it.*alive")],
        ),
    ];
    for (name, deps_file, checks) in [
        ("get-python-deps", &deps, vec![answer("Google")]),
        // Only the deps change; the function still answers.
        (
            "get-python-deps-update",
            &updated_deps,
            vec![Check::Package("twitter"), answer("Google")],
        ),
    ] {
        let flags = deploy(
            "python2.7",
            "helloget.foo",
            &example("python/hellowithdeps.py"),
            &["--dependencies", deps_file],
        );
        let mut deps_target = target(name, flags, Call::Get, checks);
        deps_target.run_env = vec![format!("PAGE_URL={page}")];
        targets.push(deps_target);
    }
    // Functions called by Kafka and NATS triggers; some `-verify` targets check the event's
    // context in the log too.
    let (kafka, nats) = ("kafkatriggers.kubeless.io", "natstriggers.kubeless.io");
    for (name, runtime, handler, file, namespace, label, context) in [
        (
            "pubsub-python",
            "python2.7",
            "pubsub.handler",
            &hellowithdata,
            kafka,
            None,
            true,
        ),
        (
            "python-nats",
            "python2.7",
            "pubsub.handler",
            &hellowithdata,
            nats,
            None,
            true,
        ),
        (
            "nats-python-func1-topic-test",
            "python2.7",
            "pubsub.handler",
            &hellowithdata,
            nats,
            Some("topic=nats-topic-test"),
            true,
        ),
        (
            "kafka-python-func1-topic-s3-python",
            "python2.7",
            "pubsub.handler",
            &hellowithdata,
            kafka,
            Some("topic=s3-python"),
            false,
        ),
        (
            "pubsub-python34",
            "python3.4",
            "pubsub-python.handler",
            &example("python/hellowithdata34.py"),
            kafka,
            None,
            false,
        ),
        (
            "pubsub-python36",
            "python3.6",
            "pubsub-python.handler",
            &example("python/pubsub.py"),
            kafka,
            None,
            false,
        ),
    ] {
        let more: Vec<&str> = label.iter().flat_map(|l| ["--label", *l]).collect();
        let mut checks = Vec::new();
        let calls = vec![
            published(namespace, "payload", &mut checks),
            delivered_by_knative(namespace, "payload", &mut checks),
        ];
        if context {
            checks.extend(event_context_logged(namespace));
        }
        targets.push(Target {
            name,
            flags: deploy(runtime, handler, file, &more),
            run_env: Vec::new(),
            calls,
            checks,
        });
    }
    // One function for two topics: a message on each.
    let mut checks = Vec::new();
    let calls = (0..2)
        .map(|_| published(nats, "payload", &mut checks))
        .collect();
    checks.extend(event_context_logged(nats));
    targets.push(Target {
        name: "nats-python-func-multi-topic",
        flags: deploy(
            "python2.7",
            "pubsub.handler",
            &hellowithdata,
            &["--label", "func=nats-python-func-multi-topic"],
        ),
        run_env: Vec::new(),
        calls,
        checks,
    });
    targets
}

fn nodejs_targets(dir: &Path) -> Vec<Target> {
    let helloget = example("nodejs/helloget.js");
    let hellowithdata = example("nodejs/hellowithdata.js");
    let mut pubsub_checks = Vec::new();
    let pubsub_calls = vec![
        published("kafkatriggers.kubeless.io", "test", &mut pubsub_checks),
        delivered_by_knative("kafkatriggers.kubeless.io", "test", &mut pubsub_checks),
    ];
    vec![
        target(
            "get-nodejs",
            deploy("nodejs6", "helloget.foo", &helloget, &[]),
            Call::Get,
            vec![answer("hello.world")],
        ),
        target(
            "get-nodejs-custom-port",
            deploy("nodejs6", "helloget.foo", &helloget, &["--port", "8083"]),
            Call::Get,
            vec![Check::TargetPort(8083), answer("hello.world")],
        ),
        target(
            "timeout-nodejs",
            deploy(
                "nodejs6",
                "helloget.foo",
                &example("nodejs/hello-loop.js"),
                &["--timeout", "4"],
            ),
            Call::Get,
            vec![
                Check::Status(408, "Request.timeout.exceeded"),
                Check::Log("stopped JavaScript that blocked the event loop for 4s".to_string()),
            ],
        ),
        target(
            "get-nodejs-deps",
            deploy(
                "nodejs6",
                "helloget.handler",
                &example("nodejs/hellowithdeps.js"),
                &["--dependencies", &example("nodejs/package.json")],
            ),
            Call::Post(r#"{"hello": "world"}"#.to_string()),
            vec![answer("hello.*world.*date.*UTC")],
        ),
        target(
            "get-nodejs-multi",
            deploy("nodejs6", "index.helloGet", &node_functions_zip(dir), &[]),
            Call::Get,
            vec![answer("hello.world")],
        ),
        target(
            "post-nodejs",
            deploy("nodejs6", "hellowithdata.handler", &hellowithdata, &[]),
            Call::Post(r#"{"it-s": "alive"}"#.to_string()),
            posted_alive_checks(),
        ),
        Target {
            name: "pubsub-nodejs",
            flags: deploy("nodejs6", "pubsub-nodejs.handler", &hellowithdata, &[]),
            run_env: Vec::new(),
            calls: pubsub_calls,
            checks: pubsub_checks,
        },
    ]
}

/// Builds `target` with its flags (into the registry, with a Knative Service and an SBOM
/// beside), runs it, makes its calls and asserts its checks.
fn build_and_verify(target: &Target, registry: &Registry, cache: &Path) {
    let name = target.name;
    let out_dir = tempfile::tempdir().unwrap();
    let (service, sbom) = (
        out_dir.path().join("service.yaml"),
        out_dir.path().join("sbom.json"),
    );
    let image = format!("{}/functions/{name}:latest", registry.host());
    let mut cmd = build_cmd(registry, cache, &[]);
    cmd.args(&target.flags)
        .args(["--image", &image, "--knative-service"])
        .arg(&service)
        .arg("--sbom-file")
        .arg(&sbom);
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{name}: the build failed:\n{stderr}");
    let run_env: Vec<&str> = target.run_env.iter().map(String::as_str).collect();
    let function = RunningFunction::start(&printed_ref(&out), cache, &run_env);
    let answers: Vec<(u16, String)> = target.calls.iter().map(|c| call(&function, c)).collect();
    let log = function.stop();
    let read = |path: &Path| std::fs::read_to_string(path).unwrap();
    for check in &target.checks {
        let ok = match check {
            Check::Answer(pattern) => answers.iter().all(|(s, b)| *s == 200 && egrep(b, pattern)),
            Check::Status(status, pattern) => answers
                .iter()
                .all(|(s, b)| s == status && egrep(b, pattern)),
            Check::Log(pattern) => egrep(&log, pattern),
            Check::TargetPort(port) => read(&service).contains(&format!("containerPort: {port}\n")),
            Check::SecretMounted(secret) => secret_mounted(&read(&service), secret),
            Check::Package(package) => {
                let sbom: serde_json::Value = serde_json::from_str(&read(&sbom)).unwrap();
                sbom["packages"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| p["name"] == *package)
            }
        };
        assert!(
            ok,
            "{name}: {} failed; answers {answers:?}\nbuild log:\n{stderr}\nfunction log:\n{log}",
            describe(check)
        );
    }
}

fn describe(check: &Check) -> String {
    match check {
        Check::Answer(p) => format!("the answer should match {p:?}"),
        Check::Status(s, p) => format!("the answer should be {s} matching {p:?}"),
        Check::Log(p) => format!("the log should match {p:?}"),
        Check::TargetPort(p) => format!("the service should target port {p}"),
        Check::Package(p) => format!("the image should hold the package {p}"),
        Check::SecretMounted(s) => format!("the service should mount the secret {s} at /{s}"),
    }
}

/// Whether the Knative Service mounts the secret read-only at `/NAME`, from a volume of it.
fn secret_mounted(service: &str, secret: &str) -> bool {
    let service: serde_json::Value = serde_norway::from_str(service).unwrap();
    let pod = &service["spec"]["template"]["spec"];
    let Some(mount) = pod["containers"][0]["volumeMounts"]
        .as_array()
        .and_then(|mounts| {
            mounts
                .iter()
                .find(|m| m["mountPath"] == format!("/{secret}"))
        })
    else {
        return false;
    };
    mount["readOnly"] == true
        && pod["volumes"].as_array().is_some_and(|volumes| {
            volumes
                .iter()
                .any(|v| v["name"] == mount["name"] && v["secret"]["secretName"] == secret)
        })
}

#[test]
fn makefile_targets_build_with_their_flags_and_answer_as_on_kubeless() {
    // The Makefile's runtime names (python2.7, python3.4, python3.6, nodejs6) are built on
    // the nearest supported versions, as the catalog maps them: Python 3.9 and Node.js 18.
    let registry = registry_with_bases(&[PYTHON_3_9, NODEJS_18]);
    let cache = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let page = google_page();
    let targets = python_targets(dir.path(), &page)
        .into_iter()
        .chain(nodejs_targets(dir.path()));
    for target in targets {
        build_and_verify(&target, &registry, cache.path());
    }
}

#[test]
fn egrep_reads_the_makefile_patterns_as_grep_does() {
    assert!(egrep("hello world updated", "hello.world.updated"));
    assert!(egrep(r#"{"it-s": "alive"}"#, "it.*alive"));
    assert!(egrep(
        "'event-time': '2026-11-27 10:00 +0000 UTC'",
        "event-time.*UTC"
    ));
    assert!(!egrep("hello world", "hello.world.updated"));
    assert!(!egrep("alive it", "it.*alive"));
}
