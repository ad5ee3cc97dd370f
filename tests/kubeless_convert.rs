//! `fnbuild convert -f FUNCTIONS.yaml`: Kubeless Function objects of every content type become
//! builds, Knative Services pinned to the images' digests (valid against Knative's CRDs),
//! PingSources for schedules, KafkaSources for Kafka triggers and Broker Triggers for NATS
//! triggers; what Knative has no place for, and what the cluster needs, is reported.

mod common;

use std::io::Write;
use std::path::Path;

use base64::Engine as _;
use common::functions::*;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn zip_of(files: &[(&str, &str)]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, text) in files {
        zip.start_file(*name, zip::write::SimpleFileOptions::default())
            .unwrap();
        zip.write_all(text.as_bytes()).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

fn tgz_of(files: &[(&str, &str)]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&common::tar_of(
        &files
            .iter()
            .map(|(n, t)| (*n, t.as_bytes()))
            .collect::<Vec<_>>(),
    ))
    .unwrap();
    gz.finish().unwrap()
}

/// Serves `body` at every request on a local port, for `url` content.
fn serve(body: Vec<u8>) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut stream = stream;
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
    format!("http://{address}")
}

fn assert_valid(crd_file: &str, object: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/validate_crd.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(common::knative_crd(crd_file))
        .arg(object)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} is not valid against {crd_file}:\n{}{}",
        object.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn yaml_field(file: &Path, pointer: &str) -> serde_json::Value {
    let value: serde_json::Value =
        serde_norway::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    value
        .pointer(pointer)
        .cloned()
        .unwrap_or(serde_json::Value::Null)
}

fn functions_yaml(url_code: &str, url_zip: &str, zip_checksum: &str) -> String {
    let node =
        "module.exports = { hello: (event, context) => `node says ${event.data} on ${context.runtime}` };\n";
    let zipped = zip_of(&[(
        "zipped.py",
        "def handler(event, context):\n    return 'from a zip'\n",
    )]);
    let tarred = tgz_of(&[(
        "tarred.js",
        "module.exports = { handler: () => 'from a tar' };\n",
    )]);
    format!(
        r#"apiVersion: v1
kind: List
items:
- apiVersion: kubeless.io/v1beta1
  kind: Function
  metadata: {{name: withdeps, namespace: default, labels: {{created-by: kubeless}}}}
  spec:
    runtime: python3.7
    handler: withdeps.handler
    function-content-type: text
    function: |
      import six
      def handler(event, context):
          return "six %s on %s" % (six.__version__, context["runtime"])
    deps: "six==1.16.0"
    timeout: "45"
    deployment:
      spec:
        template:
          spec:
            containers:
            - env:
              - {{name: STAGE, value: prod}}
              - name: TOKEN
                valueFrom: {{secretKeyRef: {{name: api, key: token}}}}
              - name: POD_IP
                valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}
              resources: {{limits: {{memory: 128Mi, cpu: 200m}}}}
              volumeMounts:
              - {{name: api-vol, mountPath: /api}}
            volumes:
            - {{name: api-vol, secret: {{secretName: api}}}}
    horizontalPodAutoscaler: {{spec: {{minReplicas: 1, maxReplicas: 3}}}}
- apiVersion: kubeless.io/v1beta1
  kind: Function
  metadata: {{name: node64}}
  spec: {{runtime: nodejs14, handler: node64.hello, function-content-type: base64, function: "{node64}"}}
- apiVersion: kubeless.io/v1beta1
  kind: Function
  metadata: {{name: zipped}}
  spec: {{runtime: python3.8, handler: zipped.handler, function-content-type: base64+zip, function: "{zipped}", checksum: "{zip_checksum}"}}
- apiVersion: kubeless.io/v1beta1
  kind: Function
  metadata: {{name: tarred}}
  spec: {{runtime: nodejs12, handler: tarred.handler, function-content-type: base64+compressedtar, function: "{tarred}"}}
- apiVersion: kubeless.io/v1beta1
  kind: Function
  metadata: {{name: fromurl}}
  spec: {{runtime: python3.9, handler: fromurl.handler, function-content-type: url, function: "{url_code}"}}
- apiVersion: kubeless.io/v1beta1
  kind: Function
  metadata: {{name: urlzip}}
  spec: {{runtime: python3.9, handler: zipped.handler, function-content-type: url+zip, function: "{url_zip}"}}
- apiVersion: kubeless.io/v1beta1
  kind: CronJobTrigger
  metadata: {{name: withdeps-every-5}}
  spec: {{function-name: withdeps, schedule: "*/5 * * * *", payload: {{job: report}}}}
- apiVersion: kubeless.io/v1beta1
  kind: HTTPTrigger
  metadata: {{name: node64-http}}
  spec: {{function-name: node64, host-name: node.example.com, path: api}}
"#,
        node64 = b64(node.as_bytes()),
        zipped = b64(&zipped),
        tarred = b64(&tarred),
    )
}

#[test]
fn every_content_type_converts_builds_and_runs_as_a_knative_service() {
    // The Functions name old Kubeless runtimes, built as the nearest supported versions.
    let registry = registry_with_bases(&[PYTHON_3_9, NODEJS_18]);
    let code = "def handler(event, context):\n    return 'from a url'\n";
    let url_code = format!("{}/fromurl.py", serve(code.as_bytes().to_vec()));
    let zipped = zip_of(&[(
        "zipped.py",
        "def handler(event, context):\n    return 'from a zip'\n",
    )]);
    let url_zip = format!("{}/function.zip", serve(zipped.clone()));
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("functions.yaml");
    std::fs::write(
        &file,
        functions_yaml(&url_code, &url_zip, &common::sha256_digest(&zipped)),
    )
    .unwrap();
    let out_dir = work.path().join("out");
    let cache = tempfile::tempdir().unwrap();
    let out = success(
        common::fnbuild()
            .args(["convert", "-f"])
            .arg(&file)
            .arg("--out")
            .arg(&out_dir)
            .args([
                "--image-prefix",
                &format!("{}/functions", registry.host()),
                "--cache-dir",
            ])
            .arg(cache.path())
            .env("FNBUILD_BASE_REGISTRY", registry.host()),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // What cannot be carried over is reported, with the feature flag that would admit it.
    assert!(
        stderr.contains("env POD_IP comes from the pod's fieldRef")
            && stderr.contains("kubernetes.podspec-fieldref"),
        "{stderr}"
    );
    assert!(!stderr.contains("TOKEN"), "{stderr}");
    assert!(stderr.contains("host name, path"), "{stderr}");
    for (old, new) in [
        ("python3.7", PYTHON_3_9),
        ("nodejs14", NODEJS_18),
        ("python3.8", PYTHON_3_9),
        ("nodejs12", NODEJS_18),
    ] {
        assert!(
            stderr.contains(&format!("runtime '{old}' is built as '{new}'")),
            "{old}: {stderr}"
        );
    }
    assert!(!stderr.contains("'python3.9' is built as"), "{stderr}");

    let images: std::collections::BTreeMap<String, String> = stdout
        .lines()
        .map(|l| {
            let fields: Vec<&str> = l.split('\t').collect();
            (fields[0].to_string(), fields[2].to_string())
        })
        .collect();
    assert_eq!(images.len(), 6, "{stdout}");
    for (name, image) in &images {
        assert!(
            image.starts_with(&format!("{}/functions/{name}@sha256:", registry.host())),
            "{image}"
        );
        let service = out_dir.join(name).join("service.yaml");
        assert_valid("serving-service.yaml", &service);
        assert_eq!(
            yaml_field(&service, "/spec/template/spec/containers/0/image"),
            serde_json::json!(image)
        );
        assert!(out_dir.join(name).join("build.sh").is_file());
    }
    let service = out_dir.join("withdeps/service.yaml");
    assert_eq!(yaml_field(&service, "/metadata/namespace"), "default");
    assert_eq!(
        yaml_field(&service, "/spec/template/spec/timeoutSeconds"),
        45
    );
    assert_eq!(
        yaml_field(
            &service,
            "/spec/template/spec/containers/0/resources/limits/memory"
        ),
        "128Mi"
    );
    assert_eq!(
        yaml_field(
            &service,
            "/spec/template/metadata/annotations/autoscaling.knative.dev~1max-scale"
        ),
        "3"
    );
    // Env from a secret, and the secret `kubeless function deploy --secrets api` mounted.
    assert_eq!(
        yaml_field(&service, "/spec/template/spec/containers/0/env"),
        serde_json::json!([
            {"name": "STAGE", "value": "prod"},
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "api", "key": "token"}}},
        ])
    );
    assert_eq!(
        yaml_field(&service, "/spec/template/spec/containers/0/volumeMounts"),
        serde_json::json!([{"name": "api-vol", "mountPath": "/api", "readOnly": true}])
    );
    assert_eq!(
        yaml_field(&service, "/spec/template/spec/volumes"),
        serde_json::json!([{"name": "api-vol", "secret": {"secretName": "api"}}])
    );
    let ping = out_dir.join("withdeps/pingsource.yaml");
    assert_valid("eventing-pingsource.yaml", &ping);
    assert_eq!(yaml_field(&ping, "/spec/schedule"), "*/5 * * * *");
    assert_eq!(yaml_field(&ping, "/spec/sink/ref/name"), "withdeps");
    assert_eq!(yaml_field(&ping, "/spec/data"), r#"{"job":"report"}"#);

    for (name, data, expected) in [
        ("withdeps", "", "six 1.16.0 on python3.9"),
        ("node64", "hi", "node says hi on nodejs18"),
        ("zipped", "", "from a zip"),
        ("tarred", "", "from a tar"),
        ("fromurl", "", "from a url"),
        ("urlzip", "", "from a zip"),
    ] {
        let function = RunningFunction::start(&images[name], cache.path(), &[]);
        let (status, _, body) = call(
            "POST",
            &function.url("/"),
            &[("content-type", "text/plain")],
            data.as_bytes(),
        );
        assert_eq!(
            (status, String::from_utf8_lossy(&body).into_owned()),
            (200, expected.to_string()),
            "{name}"
        );
    }
}

/// A Function whose pod takes env from secrets and config maps and mounts volumes, some of
/// which have no place in Knative.
const HELLO_WITH_POD: &str = r#"apiVersion: kubeless.io/v1beta1
kind: Function
metadata: {name: hello}
spec:
  runtime: python3.7
  handler: hello.foo
  function: "def foo(event, context):\n    return 'hello world'\n"
  deployment:
    spec:
      template:
        spec:
          serviceAccountName: reader
          containers:
          - env:
            - {name: STAGE, value: prod}
            - name: LEVEL
              valueFrom: {configMapKeyRef: {name: settings, key: level}}
            envFrom:
            - secretRef: {name: db}
            - {configMapRef: {name: common}, prefix: COMMON_}
            livenessProbe: {httpGet: {path: /healthz}}
            volumeMounts:
            - {name: api-vol, mountPath: /api}
            - {name: settings, mountPath: /etc/settings}
            - {name: bundle, mountPath: /var/run/bundle}
            - {name: host, mountPath: /host}
          - {name: proxy, image: envoy}
          volumes:
          - {name: api-vol, secret: {secretName: api}}
          - name: settings
            configMap: {name: settings, items: [{key: app.json, path: app.json}]}
          - name: bundle
            projected: {sources: [{secret: {name: tls}}, {configMap: {name: ca}}]}
          - {name: host, hostPath: {path: /var/lib}}
"#;

#[test]
fn without_a_registry_the_inputs_and_a_build_script_are_written() {
    // HELLO_WITH_POD's python3.7 is built as python3.9.
    let registry = registry_with_bases(&[PYTHON_3_9]);
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("functions.yaml");
    std::fs::write(&file, HELLO_WITH_POD).unwrap();
    let out_dir = work.path().join("out");
    let out = success(
        common::fnbuild()
            .args(["convert", "-f"])
            .arg(&file)
            .arg("--out")
            .arg(&out_dir),
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("hello\t"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "volume 'host' (hostPath) at /host: Knative admits hostPath volumes only with the feature flag kubernetes.podspec-volumes-hostpath enabled",
        "the function container's livenessProbe",
        "containers beyond the function's (proxy)",
        "the pod's serviceAccountName",
    ] {
        assert!(stderr.contains(expected), "{expected}: {stderr}");
    }
    assert_eq!(
        std::fs::read_to_string(out_dir.join("hello/code/hello.py")).unwrap(),
        "def foo(event, context):\n    return 'hello world'\n"
    );
    assert!(
        !out_dir.join("hello/service.yaml").exists(),
        "no Service without an image digest"
    );

    // build.sh is what a user runs next: it builds and writes the Service.
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_fnbuild")).parent().unwrap();
    let cache = tempfile::tempdir().unwrap();
    success(
        std::process::Command::new("sh")
            .arg(out_dir.join("hello/build.sh"))
            .env(
                "PATH",
                format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap()),
            )
            .env("IMAGE", format!("{}/functions/hello:v1", registry.host()))
            .env("FNBUILD_BASE_REGISTRY", registry.host())
            .env("FNBUILD_CACHE_DIR", cache.path()),
    );
    let service = out_dir.join("hello/service.yaml");
    assert_valid("serving-service.yaml", &service);
    let mut spec = yaml_field(&service, "/spec/template/spec");
    spec["containers"][0]
        .as_object_mut()
        .unwrap()
        .remove("image");
    assert_eq!(
        spec,
        serde_json::json!({
            "timeoutSeconds": 180,
            "containers": [{
                "ports": [{"containerPort": 8080}],
                "env": [
                    {"name": "STAGE", "value": "prod"},
                    {"name": "LEVEL", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "level"}}},
                ],
                "envFrom": [
                    {"secretRef": {"name": "db"}},
                    {"configMapRef": {"name": "common"}, "prefix": "COMMON_"},
                ],
                "volumeMounts": [
                    {"name": "api-vol", "mountPath": "/api", "readOnly": true},
                    {"name": "settings", "mountPath": "/etc/settings", "readOnly": true},
                    {"name": "bundle", "mountPath": "/var/run/bundle", "readOnly": true},
                ],
            }],
            "volumes": [
                {"name": "api-vol", "secret": {"secretName": "api"}},
                {"name": "settings", "configMap": {"name": "settings", "items": [{"key": "app.json", "path": "app.json"}]}},
                {"name": "bundle", "projected": {"sources": [{"secret": {"name": "tls"}}, {"configMap": {"name": "ca"}}]}},
            ],
        })
    );
}

/// Two functions as `kubeless function deploy` labels them, a third no trigger selects, and the
/// triggers `kubeless trigger kafka create NAME --function-selector
/// created-by=kubeless,function=FUNCTION --trigger-topic TOPIC` (and `trigger nats create`) make.
const PUBSUB: &str = r#"apiVersion: v1
kind: List
items:
- apiVersion: kubeless.io/v1beta1
  kind: Function
  metadata:
    name: pubsub-python
    namespace: default
    labels: {created-by: kubeless, function: pubsub-python}
  spec: {runtime: python3.7, handler: pubsub.handler, function: "def handler(event, context):\n    return event['data']\n"}
- apiVersion: kubeless.io/v1beta1
  kind: Function
  metadata:
    name: pubsub-nodejs
    namespace: default
    labels: {created-by: kubeless, function: pubsub-nodejs}
  spec: {runtime: nodejs14, handler: pubsub.handler, function: "module.exports = { handler: (event) => event.data };\n"}
- apiVersion: kubeless.io/v1beta1
  kind: Function
  metadata:
    name: hello
    namespace: default
    labels: {created-by: kubeless, function: hello}
  spec: {runtime: python3.7, handler: hello.handler, function: "def handler(event, context):\n    return 'hello'\n"}
- apiVersion: kubeless.io/v1beta1
  kind: KafkaTrigger
  metadata: {name: s3-python, namespace: default, labels: {created-by: kubeless}}
  spec:
    functionSelector:
      matchLabels: {created-by: kubeless, function: pubsub-python}
    topic: s3-python
- apiVersion: kubeless.io/v1beta1
  kind: KafkaTrigger
  metadata: {name: s3-nodejs, namespace: default, labels: {created-by: kubeless}}
  spec:
    functionSelector:
      matchLabels: {created-by: kubeless, function: pubsub-nodejs}
    topic: s3-nodejs
- apiVersion: kubeless.io/v1beta1
  kind: NATSTrigger
  metadata: {name: pubsub-python-nats, namespace: default, labels: {created-by: kubeless}}
  spec:
    functionSelector:
      matchLabels: {created-by: kubeless, function: pubsub-python}
    topic: test
"#;

fn read_yaml(file: &Path) -> serde_json::Value {
    serde_norway::from_str(&std::fs::read_to_string(file).unwrap()).unwrap()
}

#[test]
fn kafka_and_nats_triggers_become_kafka_sources_and_broker_triggers() {
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("functions.yaml");
    std::fs::write(&file, PUBSUB).unwrap();
    let out_dir = work.path().join("out");
    let out = success(
        common::fnbuild()
            .args(["convert", "-f"])
            .arg(&file)
            .arg("--out")
            .arg(&out_dir)
            .args([
                "--kafka-bootstrap-servers",
                "my-cluster-kafka-bootstrap.kafka:9092,kafka-1.kafka:9093",
            ]),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 3, "{stdout}");

    for (function, trigger, topic) in [
        ("pubsub-python", "s3-python", "s3-python"),
        ("pubsub-nodejs", "s3-nodejs", "s3-nodejs"),
    ] {
        let source_file = out_dir
            .join(function)
            .join(format!("kafkasource-{trigger}.yaml"));
        assert_valid("kafka-source.yaml", &source_file);
        let source = read_yaml(&source_file);
        assert_eq!(source["apiVersion"], "sources.knative.dev/v1beta1");
        assert_eq!(source["kind"], "KafkaSource");
        assert_eq!(
            source["metadata"],
            serde_json::json!({"name": format!("{function}-{trigger}"), "namespace": "default"})
        );
        // The schema types only spec.ordering: what the KafkaSource webhook requires is
        // checked here.
        assert_eq!(
            source["spec"]["bootstrapServers"],
            serde_json::json!([
                "my-cluster-kafka-bootstrap.kafka:9092",
                "kafka-1.kafka:9093"
            ])
        );
        assert_eq!(source["spec"]["topics"], serde_json::json!([topic]));
        // The group Kubeless's Kafka controller consumed in: the offsets it committed carry over.
        assert_eq!(
            source["spec"]["consumerGroup"],
            format!("default_{trigger}_{function}_{topic}")
        );
        assert_eq!(
            source["spec"]["sink"],
            serde_json::json!({"ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": function}})
        );
        assert_eq!(source["spec"].as_object().unwrap().len(), 4, "{source}");
    }

    let trigger_file = out_dir.join("pubsub-python/trigger-pubsub-python-nats.yaml");
    assert_valid("eventing-trigger.yaml", &trigger_file);
    assert_eq!(
        read_yaml(&trigger_file),
        serde_json::json!({
            "apiVersion": "eventing.knative.dev/v1",
            "kind": "Trigger",
            "metadata": {"name": "pubsub-python-pubsub-python-nats", "namespace": "default"},
            "spec": {
                "broker": "default",
                "filter": {"attributes": {"type": "test"}},
                "subscriber": {"ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": "pubsub-python"}},
            },
        })
    );
    let written = |function: &str| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(out_dir.join(function))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("kafkasource-") || n.starts_with("trigger-"))
            .collect();
        names.sort();
        names
    };
    assert_eq!(
        written("pubsub-python"),
        [
            "kafkasource-s3-python.yaml",
            "trigger-pubsub-python-nats.yaml"
        ]
    );
    assert_eq!(written("pubsub-nodejs"), ["kafkasource-s3-nodejs.yaml"]);
    assert!(written("hello").is_empty());

    // What the cluster needs is said once, however many sources there are.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.matches("KafkaTriggers became KafkaSources").count(),
        1,
        "{stderr}"
    );
    for expected in [
        "the cluster needs Knative Eventing and the KafkaSource of knative-extensions/eventing-kafka-broker",
        "reaching Kafka at my-cluster-kafka-bootstrap.kafka:9092,kafka-1.kafka:9093",
        "stop Kubeless's Kafka trigger controller first",
        "CloudEvents (type dev.knative.kafka.event, the Kafka message value as data), which fnbuild's runtimes map to the Kubeless event keys",
        "needs Knative Eventing and a Broker named default in namespace default",
        "NATS is not a Knative source: what published to the NATS topics (test) must now send CloudEvents whose type is the topic to that Broker",
    ] {
        assert!(stderr.contains(expected), "{expected}: {stderr}");
    }
    assert_eq!(
        stderr
            .matches("NATSTriggers became Knative Triggers")
            .count(),
        1,
        "{stderr}"
    );

    // Without the flag, the KafkaSources read from where Kubeless's controller did.
    let default_out = work.path().join("default");
    let out = success(
        common::fnbuild()
            .args(["convert", "-f"])
            .arg(&file)
            .arg("--out")
            .arg(&default_out),
    );
    assert_eq!(
        yaml_field(
            &default_out.join("pubsub-python/kafkasource-s3-python.yaml"),
            "/spec/bootstrapServers"
        ),
        serde_json::json!(["kafka.kubeless:9092"])
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("reaching Kafka at kafka.kubeless:9092"));

    // Without Kafka or NATS triggers, nothing is said about them.
    std::fs::write(&file, HELLO_WITH_POD).unwrap();
    let out = success(
        common::fnbuild()
            .args(["convert", "-f"])
            .arg(&file)
            .arg("--out")
            .arg(work.path().join("plain")),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("KafkaSource") && !stderr.contains("Broker"),
        "{stderr}"
    );
}

#[test]
fn kafka_bootstrap_servers_must_be_host_port_pairs() {
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("functions.yaml");
    std::fs::write(&file, PUBSUB).unwrap();
    for (value, expected) in [
        ("kafka.kubeless", "'kafka.kubeless' is not HOST:PORT"),
        (
            "kafka:9092,kafka://b:9092",
            "'kafka://b:9092' is not HOST:PORT",
        ),
        (",", "no HOST:PORT given"),
    ] {
        let (code, stderr) = failure(
            common::fnbuild()
                .args(["convert", "-f"])
                .arg(&file)
                .arg("--out")
                .arg(work.path().join("out"))
                .args(["--kafka-bootstrap-servers", value]),
        );
        assert_eq!(code, 2, "{stderr}");
        assert!(
            stderr.contains(&format!("--kafka-bootstrap-servers: {expected}")),
            "{expected}: {stderr}"
        );
    }
    assert!(!work.path().join("out").exists(), "nothing is written");
}

/// A Function as `kubeless function deploy f` labels it.
const FUNCTION_F: &str = "apiVersion: kubeless.io/v1beta1\nkind: Function\nmetadata: {name: f, namespace: default, labels: {created-by: kubeless, function: f}}\nspec: {runtime: python3.7, handler: f.h, function: \"def h(event, context):\\n    return 1\\n\"}\n";

#[test]
fn bad_objects_say_what_is_wrong() {
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("functions.yaml");
    for (yaml, expected) in [
        (
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
            "object of kind 'ConfigMap' (x) is not a Kubeless Function, CronJobTrigger, HTTPTrigger, KafkaTrigger or NATSTrigger",
        ),
        ("apiVersion: kubeless.io/v1beta1\nkind: Function\nmetadata: {name: f}\nspec: {handler: f.h}\n", "has no runtime"),
        (
            "apiVersion: kubeless.io/v1beta1\nkind: Function\nmetadata: {name: f}\nspec: {runtime: python3.7, handler: f.h, function-content-type: gzip}\n",
            "accepted: text, base64, url",
        ),
        ("[unclosed", "not valid YAML"),
        (
            "apiVersion: kubeless.io/v1beta1\nkind: Function\nmetadata: {name: f}\nspec:\n  runtime: python3.7\n  handler: f.h\n  deployment: {spec: {template: {spec: {containers: [{volumeMounts: [{name: code, mountPath: /kubeless}]}], volumes: [{name: code, secret: {secretName: code}}]}}}}\n",
            "Function 'f': volumeMounts[0] has mountPath '/kubeless', which would cover or sit inside /kubeless",
        ),
        (
            "apiVersion: kubeless.io/v1beta1\nkind: Function\nmetadata: {name: f}\nspec:\n  runtime: python3.7\n  handler: f.h\n  deployment: {spec: {template: {spec: {containers: [{volumeMounts: [{name: s, mountPath: ../etc}]}], volumes: [{name: s, secret: {secretName: s}}]}}}}\n",
            "expected an absolute path",
        ),
        (
            &format!("{FUNCTION_F}---\napiVersion: kubeless.io/v1beta1\nkind: KafkaTrigger\nmetadata: {{name: t, namespace: default}}\nspec: {{functionSelector: {{matchLabels: {{created-by: kubeless, function: g}}}}, topic: orders}}\n"),
            "KafkaTrigger 't' selects functions by 'created-by=kubeless,function=g' (spec.functionSelector), which matches no Function of namespace 'default' in the file",
        ),
        (
            &format!("{FUNCTION_F}---\napiVersion: kubeless.io/v1beta1\nkind: NATSTrigger\nmetadata: {{name: t}}\nspec: {{functionSelector: {{matchLabels: {{function: f}}}}}}\n"),
            "NATSTrigger 't' has no topic",
        ),
        (
            &format!("{FUNCTION_F}---\napiVersion: kubeless.io/v1beta1\nkind: KafkaTrigger\nmetadata: {{name: t}}\nspec: {{topic: orders}}\n"),
            "KafkaTrigger 't' has no spec.functionSelector",
        ),
    ] {
        std::fs::write(&file, yaml).unwrap();
        let (code, stderr) = failure(common::fnbuild().args(["convert", "-f"]).arg(&file).arg("--out").arg(work.path().join("out")));
        assert_eq!(code, 2, "{stderr}");
        assert!(stderr.contains(expected), "{expected}: {stderr}");
    }
}
