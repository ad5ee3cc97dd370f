//! The functions of `examples/`, written the way Kubeless's own examples are (helloget,
//! hellowithdata, hellowithdeps), built with the flags a Kubeless user types
//! (`--from-file`/`-f`, `-d`, `-e K:V`, `-l k`, Kubeless runtime names) and called the way
//! `kubeless function call` calls them (POST with `event-id`, `event-time` and
//! `event-namespace: cli.kubeless.io`).

mod common;

use std::path::PathBuf;

use common::functions::*;

fn example(path: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(path)
        .display()
        .to_string()
}

/// What `kubeless function call NAME [--data D]` sends: GET without data, POST with it.
fn kubeless_call(function: &RunningFunction, data: Option<&str>) -> (u16, String) {
    let headers = [
        ("event-id", "kubeless-call-1"),
        ("event-time", "2026-11-27T10:00:00Z"),
        ("event-namespace", "cli.kubeless.io"),
    ];
    let (status, _, body) = match data {
        Some(d) => {
            let content_type = if d.starts_with('{') {
                "application/json"
            } else {
                "text/plain"
            };
            let mut with_type = headers.to_vec();
            with_type.push(("content-type", content_type));
            call("POST", &function.url("/"), &with_type, d.as_bytes())
        }
        None => call("GET", &function.url("/"), &headers, b""),
    };
    (status, String::from_utf8_lossy(&body).into_owned())
}

struct Example {
    runtime: &'static str,
    from_file: &'static str,
    handler: &'static str,
    deps: Option<&'static str>,
    data: Option<&'static str>,
    expect: &'static dyn Fn(&str) -> bool,
}

#[test]
fn kubeless_examples_build_and_answer_as_they_did_on_kubeless() {
    let registry = registry_with_bases(&[PYTHON, NODEJS]);
    let cache = tempfile::tempdir().unwrap();
    let examples = [
        Example {
            runtime: "python3.7",
            from_file: "python/helloget.py",
            handler: "helloget.foo",
            deps: None,
            data: None,
            expect: &|b| b == "hello world",
        },
        Example {
            runtime: "python3.8",
            from_file: "python/hellowithdata.py",
            handler: "hellowithdata.handler",
            deps: None,
            data: Some(r#"{"it's": "alive"}"#),
            expect: &|b| {
                serde_json::from_str::<serde_json::Value>(b).ok()
                    == Some(serde_json::json!({"it's": "alive"}))
            },
        },
        Example {
            runtime: "python3.12",
            from_file: "python/hellowithdeps.py",
            handler: "hellowithdeps.handler",
            deps: Some("python/requirements.txt"),
            data: Some("deps"),
            expect: &|b| b.contains(r#""requests": "2.32.3""#) && b.contains(r#""data": "deps""#),
        },
        Example {
            runtime: "nodejs10",
            from_file: "nodejs/helloget.js",
            handler: "helloget.foo",
            deps: None,
            data: None,
            expect: &|b| b == "hello world",
        },
        Example {
            runtime: "nodejs12",
            from_file: "nodejs/hellowithdata.js",
            handler: "hellowithdata.handler",
            deps: None,
            data: Some("some text"),
            expect: &|b| b == "some text",
        },
        Example {
            runtime: "nodejs18",
            from_file: "nodejs/hellowithdeps.js",
            handler: "hellowithdeps.handler",
            deps: Some("nodejs/package.json"),
            data: Some("b a b"),
            expect: &|b| b == r#"{"words":["a","b"],"runtime":"nodejs20"}"#,
        },
    ];
    for ex in examples {
        let name = ex.handler.split('.').next().unwrap();
        let image = format!(
            "{}/functions/{}-{name}:latest",
            registry.host(),
            &ex.runtime[..4]
        );
        let file = example(ex.from_file);
        // Kubeless users type both spellings of the source flag.
        let source_flag = if ex.runtime.starts_with("node") {
            "-f"
        } else {
            "--from-file"
        };
        let mut args = vec![
            source_flag,
            &file,
            "--handler",
            ex.handler,
            "--runtime",
            ex.runtime,
            "-e",
            "STAGE:dev",
            "-l",
            "kubeless",
            "--destination",
            &image,
        ];
        let deps = ex.deps.map(example);
        if let Some(deps) = &deps {
            args.extend(["-d", deps]);
        }
        let out = success(&mut build_cmd(&registry, cache.path(), &args));
        let function = RunningFunction::start(&printed_ref(&out), cache.path(), &[]);
        let (status, body) = kubeless_call(&function, ex.data);
        assert_eq!(status, 200, "{}: {body}\n{}", ex.from_file, function.log());
        assert!(
            (ex.expect)(&body),
            "{}: unexpected answer {body:?}",
            ex.from_file
        );
        let log = function.stop();
        if ex.from_file.contains("hellowithdata") {
            // The handlers print the event: the Kubeless event keys are in the function's log.
            assert!(
                log.contains("cli.kubeless.io") && log.contains("kubeless-call-1"),
                "{log}"
            );
        }
    }
}
