//! CloudEvents end to end: a function written for Kubeless, built by fnbuild onto the runtime's
//! base image and run with `fnbuild run`, gets CloudEvents sent by the CloudEvents Python SDK
//! (binary and structured mode, specversion 1.0 and 0.3) with every attribute reachable under
//! the Kubeless keys and its `ce-` name, publishes an event to its sink (`K_SINK`, as a
//! SinkBinding sets it) carrying the request's trace context, and replies with an event. The
//! SDK parses what the function publishes and replies (`tests/support/cloudevents_exchange.py`).

mod common;

use common::functions::*;
use serde_json::{json, Value};

const PYTHON_FUNCTION: &str = r#"import base64


def handler(event, context):
    seen = {key: value for key, value in event.items() if key != 'extensions'}
    if isinstance(event['data'], bytes):
        seen['data'] = {'base64': base64.b64encode(event['data']).decode()}
    if event['event-type'] == 'com.example.publish':
        seen['published'] = event.emit_cloud_event(
            'com.example.published', '/functions/orders', {'order': event['data']['order']},
            {'correlation': event['event-id']})
    elif event['event-type'] == 'com.example.ask':
        return event.cloud_event('com.example.answer', data={'answer': event['data']['question'] * 7},
                                 attributes={'inreplyto': event['event-id']})
    return seen
"#;

const NODEJS_FUNCTION: &str = r#"module.exports = {
  async handler(event, context) {
    const seen = {};
    for (const [key, value] of Object.entries(event)) if (key !== 'extensions') seen[key] = value;
    if (Buffer.isBuffer(event.data)) seen.data = { base64: event.data.toString('base64') };
    if (event['event-type'] === 'com.example.publish') {
      seen.published = await event.emitCloudEvent('com.example.published', '/functions/orders',
        { order: event.data.order }, { correlation: event['event-id'] });
    } else if (event['event-type'] === 'com.example.ask') {
      return event.cloudEvent('com.example.answer', undefined,
        { answer: event.data.question * 7 }, { inreplyto: event['event-id'] });
    }
    return seen;
  },
};
"#;

/// Builds `file` (handler `orders.handler`) for `runtime`, runs it with a sink and has the
/// exchange script talk to it; the script's report.
fn exchange(runtime: &str, file: &str, text: &str) -> Value {
    let src = function_dir(&[(file, text)]);
    let cache = tempfile::tempdir().unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let layout = format!("oci:{}:orders", out_dir.path().display());
    success(&mut layout_build_cmd(
        runtime,
        src.path().to_str().unwrap(),
        "orders.handler",
        &layout,
        cache.path(),
    ));
    let sink_port = common::free_port();
    let sink = format!("K_SINK=http://127.0.0.1:{sink_port}/events");
    let function = RunningFunction::start(&layout, cache.path(), &[&sink]);
    let out = success(
        std::process::Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/support/cloudevents_exchange.py"
            ))
            .arg(function.url("/"))
            .arg(sink_port.to_string()),
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "the exchange printed no report ({e}); the function's log:\n{}",
            function.log()
        )
    })
}

/// What the function saw of each event it echoed: the Kubeless keys and every attribute.
fn check_echoes(report: &Value) {
    let echoes = report["echo"].as_array().unwrap();
    assert_eq!(echoes.len(), 6, "{report:#}");
    for echo in echoes {
        let (sent, seen) = (&echo["sent"], &echo["seen"]);
        assert_eq!(echo["status"], 200, "{echo:#}");
        let version = sent["specversion"].as_str().unwrap();
        let expected = [
            ("event-id", &sent["id"]),
            ("ce-id", &sent["id"]),
            ("event-type", &json!("com.example.echo")),
            ("ce-type", &json!("com.example.echo")),
            ("event-namespace", &sent["source"]),
            ("ce-source", &sent["source"]),
            ("ce-specversion", &json!(version)),
            ("ce-subject", &json!("orders/7 \"ü\"")),
            ("ce-eventtypeversion", &json!("v1")),
            ("ce-tenant", &json!("blue")),
            (
                if version == "0.3" {
                    "ce-schemaurl"
                } else {
                    "ce-dataschema"
                },
                &json!("https://example.com/s"),
            ),
            ("data", &echo["sent_data"]),
        ];
        for (key, value) in expected {
            assert_eq!(&seen[key], value, "{key} in {echo:#}");
        }
        for key in ["event-time", "ce-time"] {
            let time = seen[key].as_str().unwrap_or_default();
            assert!(
                time.starts_with("2026-11-30T12:34:56.789"),
                "{key} in {echo:#}"
            );
        }
        let content_type = if echo["sent_data"].get("base64").is_some() {
            Value::Null
        } else {
            json!("application/json")
        };
        assert_eq!(seen["ce-datacontenttype"], content_type, "{echo:#}");
    }
    let modes: Vec<(&str, &str)> = echoes
        .iter()
        .map(|e| {
            (
                e["mode"].as_str().unwrap(),
                e["sent"]["specversion"].as_str().unwrap(),
            )
        })
        .collect();
    for wanted in [
        ("binary", "1.0"),
        ("structured", "1.0"),
        ("binary", "0.3"),
        ("structured", "0.3"),
    ] {
        assert!(modes.contains(&wanted), "{wanted:?} not sent: {modes:?}");
    }
}

/// The event the function published: at the sink, with the request's trace context.
fn check_published(report: &Value) {
    let publish = &report["publish"];
    assert_eq!(publish["status"], 200, "{publish:#}");
    let answer: Value = serde_json::from_str(publish["answer"].as_str().unwrap()).unwrap();
    let sink = publish["sink"].as_array().unwrap();
    assert_eq!(sink.len(), 1, "{publish:#}");
    let (event, trace) = (&sink[0]["event"], &sink[0]["trace"]);
    let attributes = &event["attributes"];
    assert_eq!(attributes["id"], answer["published"], "{publish:#}");
    assert_eq!(attributes["specversion"], "1.0");
    assert_eq!(attributes["type"], "com.example.published");
    assert_eq!(attributes["source"], "/functions/orders");
    assert_eq!(attributes["correlation"], publish["sent"]["id"]);
    assert_eq!(attributes["datacontenttype"], "application/json");
    assert!(attributes["time"].as_str().is_some(), "{publish:#}");
    assert_eq!(event["data"], json!({"order": 7}));
    assert_eq!(
        trace, &publish["trace"],
        "trace context not carried: {publish:#}"
    );
}

/// The event the function answered with, as the SDK parsed the reply.
fn check_reply(report: &Value, default_source: &str) {
    let reply = &report["reply"];
    assert_eq!(reply["status"], 200, "{reply:#}");
    let attributes = &reply["event"]["attributes"];
    assert_eq!(attributes["type"], "com.example.answer", "{reply:#}");
    assert_eq!(attributes["specversion"], "1.0");
    assert_eq!(attributes["source"], default_source);
    assert_eq!(attributes["inreplyto"], reply["sent"]["id"]);
    assert_eq!(reply["event"]["data"], json!({"answer": 42}));
}

#[test]
fn python_function_receives_publishes_and_replies_with_cloudevents() {
    let report = exchange(PYTHON, "orders.py", PYTHON_FUNCTION);
    check_echoes(&report);
    check_published(&report);
    check_reply(&report, "orders.handler");
}

#[test]
fn nodejs_function_receives_publishes_and_replies_with_cloudevents() {
    let report = exchange(NODEJS, "orders.js", NODEJS_FUNCTION);
    check_echoes(&report);
    check_published(&report);
    check_reply(&report, "orders.handler");
}
