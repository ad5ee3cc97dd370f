//! Building Node.js functions end to end: real npm inside the base image, the image run under
//! runc, the Kubeless Node.js interface (return values, promises, streaming through
//! event.extensions.response, timeouts) checked over HTTP.

mod common;

use common::functions::*;

const HANDLER: &str = r#"
const leftPad = require('left-pad');
const { Readable } = require('stream');

module.exports = {
  pad(event, context) {
    return { padded: leftPad(String(event.data), 8, '*'), fn: context['function-name'], timeout: context.timeout };
  },
  later(event) {
    return new Promise((resolve) => setTimeout(() => resolve('resolved ' + event['event-id']), 10));
  },
  stream(event) {
    return new Promise((resolve) => {
      const res = event.extensions.response;
      res.writeHead(200, { 'content-type': 'text/plain' });
      Readable.from(['a', 'b', 'c']).pipe(res).on('finish', resolve);
    });
  },
  slow() {
    return new Promise((resolve) => setTimeout(() => resolve('too late'), 5000));
  },
  fail() {
    throw new Error('boom');
  },
};
"#;

#[test]
fn npm_dependency_promises_streaming_and_timeouts_work_in_the_image() {
    let registry = registry_with_bases(&[NODEJS]);
    let src = function_dir(&[
        ("fn.js", HANDLER),
        (
            "package.json",
            r#"{"name":"fn","version":"1.0.0","dependencies":{"left-pad":"1.3.0"}}"#,
        ),
    ]);
    let cache = tempfile::tempdir().unwrap();
    let build = |handler: &str, tag: &str| {
        success(&mut build_cmd(
            &registry,
            cache.path(),
            &[
                "--source",
                src.path().to_str().unwrap(),
                "--runtime",
                "node",
                "--handler",
                handler,
                "--timeout",
                "1",
                "--image",
                &format!("{}/functions/node:{tag}", registry.host()),
            ],
        ))
    };
    let pad = build("fn.pad", "pad");
    assert!(String::from_utf8_lossy(&pad.stderr).contains("deps layer cache miss"));
    let function = RunningFunction::start(&printed_ref(&pad), cache.path(), &[]);
    let (status, content_type, body) = call(
        "POST",
        &function.url("/"),
        &[("content-type", "text/plain")],
        b"ab",
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(content_type.starts_with("application/json"));
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"padded": "******ab", "fn": "pad", "timeout": 1})
    );
    drop(function);

    // Other handlers of the same code: the deps layer comes from the cache.
    for (handler, check) in [
        (
            "later",
            Box::new(|s: u16, b: &str| s == 200 && b == "resolved e-1")
                as Box<dyn Fn(u16, &str) -> bool>,
        ),
        ("stream", Box::new(|s, b| s == 200 && b == "abc")),
        (
            "slow",
            Box::new(|s, b| s == 408 && b == "Request timeout exceeded"),
        ),
        ("fail", Box::new(|s, _| s == 500)),
    ] {
        let out = build(&format!("fn.{handler}"), handler);
        assert!(String::from_utf8_lossy(&out.stderr).contains("deps layer cache hit"));
        let function = RunningFunction::start(&printed_ref(&out), cache.path(), &[]);
        let (status, _, body) = call("GET", &function.url("/"), &[("event-id", "e-1")], b"");
        let body = String::from_utf8_lossy(&body).into_owned();
        assert!(check(status, &body), "{handler}: got {status} {body:?}");
        let log = function.stop();
        if handler == "fail" {
            assert!(
                log.contains("boom"),
                "the error's stack must be in the log:\n{log}"
            );
        }
    }
}

#[test]
fn a_handler_the_module_does_not_export_stops_the_function_at_start_with_a_clear_message() {
    let src = function_dir(&[("fn.js", "module.exports = { hello() { return 'hi'; } };\n")]);
    let cache = tempfile::tempdir().unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let layout = format!("oci:{}:fn", out_dir.path().display());
    // Exports are only known by running the module: the build accepts it...
    success(&mut layout_build_cmd(
        NODEJS,
        src.path().to_str().unwrap(),
        "fn.missing",
        &layout,
        cache.path(),
    ));
    // ...and `fnbuild run` reports it when the runtime starts.
    let out = common::fnbuild()
        .args([
            "run",
            &layout,
            "--port",
            &common::free_port().to_string(),
            "--cache-dir",
        ])
        .arg(cache.path())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("has no function 'missing'") && text.contains("hello"),
        "{text}"
    );
}
