//! The Kubeless objects as users wrote them: Function (handler, runtime, the code inline or by
//! URL in one of its content types, deps, checksum, timeout, the Deployment's env, resources
//! and labels, the HPA's replica bounds) and its triggers: CronJobTrigger and HTTPTrigger here,
//! KafkaTrigger and NATSTrigger in [`super::pubsub`].

use std::collections::BTreeMap;

use base64::Engine as _;
use serde_json::Value;

use super::pubsub::{self, PubSubKind, PubSubTrigger};
use crate::error::{Error, Result};
use crate::knative::{other_keys, PodAdditions};

/// The fields of the function's container that reach the image or the Service.
const CARRIED_CONTAINER_FIELDS: [&str; 6] = [
    "name",
    "image",
    "env",
    "envFrom",
    "volumeMounts",
    "resources",
];

/// How a function's code is held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// The code itself (text or decoded base64), a single file.
    File(Vec<u8>),
    /// A zip or compressed tar archive (decoded), with its file extension.
    Archive {
        bytes: Vec<u8>,
        extension: &'static str,
    },
    /// A URL of the code or of an archive.
    Url(String),
}

/// One Kubeless function with what its triggers add.
#[derive(Debug, Clone)]
pub struct Function {
    pub name: String,
    pub namespace: Option<String>,
    /// The labels of the Service: the Function's and its Deployment's.
    pub labels: BTreeMap<String, String>,
    /// The Function object's own labels, which Kafka and NATS trigger selectors match.
    pub object_labels: BTreeMap<String, String>,
    pub runtime: String,
    pub handler: String,
    pub content: Content,
    /// `sha256:HEX` of the content.
    pub checksum: Option<String>,
    pub deps: Option<String>,
    pub timeout_seconds: Option<u32>,
    pub env: Vec<(String, String)>,
    /// Env from secrets and config maps, volumes and mounts (Kubeless's `--secrets` too).
    pub pod: PodAdditions,
    pub memory: Option<String>,
    pub cpu: Option<String>,
    pub min_scale: Option<u32>,
    pub max_scale: Option<u32>,
    pub port: Option<u16>,
    /// From a CronJobTrigger: the schedule and the payload sent.
    pub schedule: Option<(String, Option<String>)>,
    /// The KafkaTrigger and NATSTrigger objects selecting the function.
    pub pubsub_triggers: Vec<PubSubTrigger>,
    /// What Knative or fnbuild cannot carry over, in words for the user.
    pub not_carried: Vec<String>,
}

/// Reads every Function from a YAML stream (several documents, or `kind: List`), attaching the
/// CronJobTrigger, HTTPTrigger, KafkaTrigger and NATSTrigger objects found beside them.
pub fn read_objects(text: &str, origin: &str) -> Result<Vec<Function>> {
    let mut objects = Vec::new();
    for document in serde_norway::Deserializer::from_str(text) {
        let value: Value = serde::Deserialize::deserialize(document)
            .map_err(|e| Error::Usage(format!("{origin} is not valid YAML: {e}")))?;
        match value.get("kind").and_then(Value::as_str) {
            Some("List") => objects.extend(
                value
                    .get("items")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default(),
            ),
            _ if value.is_null() => {}
            _ => objects.push(value),
        }
    }
    let mut functions = Vec::new();
    for object in objects.iter().filter(|o| kind(o) == "Function") {
        functions.push(function(object, origin)?);
    }
    for object in &objects {
        match kind(object) {
            "Function" => {}
            "CronJobTrigger" => attach_cron(object, &mut functions, origin)?,
            "HTTPTrigger" => attach_http(object, &mut functions),
            other => match PubSubKind::of(other) {
                Some(kind) => pubsub::attach(object, kind, &mut functions, origin)?,
                None => {
                    return Err(Error::Usage(format!(
                        "{origin}: object of kind '{other}' ({}) is not a Kubeless Function, CronJobTrigger, HTTPTrigger, KafkaTrigger or NATSTrigger",
                        name(object)
                    )))
                }
            },
        }
    }
    if functions.is_empty() {
        return Err(Error::Usage(format!(
            "{origin} holds no Kubeless Function (apiVersion kubeless.io/v1beta1, kind Function)"
        )));
    }
    Ok(functions)
}

fn kind(object: &Value) -> &str {
    object.get("kind").and_then(Value::as_str).unwrap_or("")
}

pub(super) fn name(object: &Value) -> String {
    object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("(unnamed)")
        .to_string()
}

pub(super) fn text_at<'a>(object: &'a Value, pointer: &str) -> Option<&'a str> {
    object
        .pointer(pointer)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

fn function(object: &Value, origin: &str) -> Result<Function> {
    let name = name(object);
    let field = |pointer: &str| text_at(object, pointer).map(str::to_string);
    let required = |pointer: &str| {
        field(pointer).ok_or_else(|| {
            Error::Usage(format!(
                "{origin}: Function '{name}' has no {}",
                pointer.trim_start_matches("/spec/")
            ))
        })
    };
    let content_type = field("/spec/function-content-type").unwrap_or_else(|| "text".to_string());
    let code = field("/spec/function").unwrap_or_default();
    let mut not_carried = Vec::new();
    let pod_spec = object
        .pointer("/spec/deployment/spec/template/spec")
        .cloned()
        .unwrap_or(Value::Null);
    let container = pod_spec
        .pointer("/containers/0")
        .cloned()
        .unwrap_or(Value::Null);
    let pod = PodAdditions::read(
        &container,
        &pod_spec,
        &format!("{origin}: Function '{name}'"),
    )?;
    not_carried.extend(pod.not_carried);
    not_carried.extend(unplaced_pod_fields(&pod_spec));
    let labels_at = |pointer: &str| -> BTreeMap<String, String> {
        object
            .pointer(pointer)
            .and_then(Value::as_object)
            .map(|map| {
                map.iter()
                    .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                    .collect()
            })
            .unwrap_or_default()
    };
    let object_labels = labels_at("/metadata/labels");
    let mut labels = object_labels.clone();
    labels.extend(labels_at("/spec/deployment/metadata/labels"));
    let replicas = |key: &str| {
        object
            .pointer(&format!("/spec/horizontalPodAutoscaler/spec/{key}"))
            .and_then(Value::as_u64)
            .map(|n| n as u32)
    };
    if object
        .pointer("/spec/horizontalPodAutoscaler/spec/metrics")
        .is_some()
    {
        not_carried.push("the autoscaler's metrics (cpu, qps): Knative scales on concurrency; set --scale-target".into());
    }
    let timeout_seconds = match object.pointer("/spec/timeout") {
        Some(Value::String(s)) if !s.is_empty() => Some(s.parse().map_err(|_| {
            Error::Usage(format!(
                "{origin}: Function '{name}' has timeout '{s}', expected whole seconds"
            ))
        })?),
        Some(Value::Number(n)) => n.as_u64().map(|n| n as u32),
        _ => None,
    };
    Ok(Function {
        runtime: required("/spec/runtime")?,
        handler: required("/spec/handler")?,
        content: content(&content_type, &code, &name, origin)?,
        checksum: field("/spec/checksum"),
        deps: field("/spec/deps"),
        timeout_seconds,
        env: pod.env,
        pod: pod.additions,
        memory: text_at(&container, "/resources/limits/memory").map(str::to_string),
        cpu: text_at(&container, "/resources/limits/cpu").map(str::to_string),
        min_scale: replicas("minReplicas"),
        max_scale: replicas("maxReplicas"),
        port: object
            .pointer("/spec/service/ports/0/targetPort")
            .and_then(Value::as_u64)
            .and_then(|p| u16::try_from(p).ok()),
        schedule: None,
        pubsub_triggers: Vec::new(),
        namespace: field("/metadata/namespace"),
        labels,
        object_labels,
        not_carried,
        name,
    })
}

/// What the Deployment's pod template holds that neither the image nor the Service gets:
/// containers beyond the function's, init containers, and other container and pod fields.
fn unplaced_pod_fields(pod_spec: &Value) -> Vec<String> {
    let mut notes = Vec::new();
    let Some(pod) = pod_spec.as_object() else {
        return notes;
    };
    let containers = pod
        .get("containers")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    if let Some(container) = containers.first().and_then(Value::as_object) {
        let other = other_keys(container, &CARRIED_CONTAINER_FIELDS);
        if !other.is_empty() {
            notes.push(format!(
                "the function container's {}: set them on the Knative Service by hand where Knative admits them",
                other.join(", ")
            ));
        }
    }
    if containers.len() > 1 {
        let names: Vec<&str> = containers[1..]
            .iter()
            .map(|c| c.get("name").and_then(Value::as_str).unwrap_or("(unnamed)"))
            .collect();
        notes.push(format!(
            "containers beyond the function's ({}): Knative runs them as sidecars only beside one serving container; add them to the Service by hand",
            names.join(", ")
        ));
    }
    if pod.get("initContainers").is_some_and(|v| !v.is_null()) {
        notes.push(
            "initContainers: Knative admits them only with the feature flag kubernetes.podspec-init-containers enabled (config-features)"
                .into(),
        );
    }
    let other = other_keys(pod, &["containers", "volumes", "initContainers"]);
    if !other.is_empty() {
        notes.push(format!(
            "the pod's {}: set them on the Knative Service by hand where Knative admits them",
            other.join(", ")
        ));
    }
    notes
}

/// Decodes the code by its content type: `text`, `base64` or `url`, each optionally
/// `+zip` or `+compressedtar` (`+deps` is accepted: the deps file is then in the archive).
fn content(content_type: &str, code: &str, name: &str, origin: &str) -> Result<Content> {
    let mut parts = content_type.split('+');
    let encoding = parts.next().unwrap_or("text");
    let mut archive = None;
    for part in parts {
        match part {
            "zip" => archive = Some("zip"),
            "compressedtar" => archive = Some("tar.gz"),
            "deps" => {}
            other => {
                return Err(Error::Usage(format!(
                    "{origin}: Function '{name}' has function-content-type '{content_type}' with unknown part '+{other}' (accepted: text, base64, url, with +zip or +compressedtar)"
                )))
            }
        }
    }
    let bytes = match encoding {
        "text" => code.as_bytes().to_vec(),
        "base64" => base64::engine::general_purpose::STANDARD
            .decode(code.split_whitespace().collect::<String>())
            .map_err(|e| Error::Usage(format!("{origin}: Function '{name}' is not valid base64: {e}")))?,
        "url" => return Ok(Content::Url(code.trim().to_string())),
        other => {
            return Err(Error::Usage(format!(
                "{origin}: Function '{name}' has function-content-type '{other}' (accepted: text, base64, url, with +zip or +compressedtar)"
            )))
        }
    };
    Ok(match archive {
        Some(extension) => Content::Archive { bytes, extension },
        None => Content::File(bytes),
    })
}

fn attach_cron(object: &Value, functions: &mut [Function], origin: &str) -> Result<()> {
    let target = text_at(object, "/spec/function-name").unwrap_or_default();
    let Some(function) = functions.iter_mut().find(|f| f.name == target) else {
        return Err(Error::Usage(format!(
            "{origin}: CronJobTrigger '{}' names function '{target}', which is not in the file",
            name(object)
        )));
    };
    let schedule = text_at(object, "/spec/schedule").ok_or_else(|| {
        Error::Usage(format!(
            "{origin}: CronJobTrigger '{}' has no schedule",
            name(object)
        ))
    })?;
    let payload = match object.pointer("/spec/payload") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => Some(other.to_string()),
    };
    function.schedule = Some((schedule.to_string(), payload));
    Ok(())
}

fn attach_http(object: &Value, functions: &mut [Function]) {
    let target = text_at(object, "/spec/function-name").unwrap_or_default();
    if let Some(function) = functions.iter_mut().find(|f| f.name == target) {
        let mut parts = Vec::new();
        for (field, what) in [
            ("host-name", "host name"),
            ("path", "path"),
            ("tls", "TLS"),
            ("basic-auth-secret", "basic auth"),
            ("cors-enable", "CORS"),
        ] {
            if object
                .pointer(&format!("/spec/{field}"))
                .is_some_and(|v| !v.is_null() && v != &Value::Bool(false))
            {
                parts.push(what);
            }
        }
        if !parts.is_empty() {
            function.not_carried.push(format!(
                "the HTTP trigger's {}: Knative routes every Service at its own URL; use a DomainMapping or your ingress for these",
                parts.join(", ")
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FUNCTIONS: &str = r#"
apiVersion: kubeless.io/v1beta1
kind: Function
metadata:
  name: hello
  namespace: default
  labels: {created-by: kubeless}
spec:
  handler: hello.foo
  runtime: python3.7
  function: "def foo(event, context):\n    return 'hi'\n"
  function-content-type: text
  deps: "six==1.16.0"
  timeout: "30"
  deployment:
    spec:
      template:
        spec:
          containers:
          - env:
            - {name: GREETING, value: hi}
            - name: TOKEN
              valueFrom: {secretKeyRef: {name: s, key: k}}
            resources: {limits: {memory: 128Mi, cpu: 100m}}
  horizontalPodAutoscaler:
    spec: {minReplicas: 1, maxReplicas: 4}
---
apiVersion: kubeless.io/v1beta1
kind: CronJobTrigger
metadata: {name: hello-cron}
spec: {function-name: hello, schedule: "*/5 * * * *", payload: {a: 1}}
---
apiVersion: kubeless.io/v1beta1
kind: HTTPTrigger
metadata: {name: hello-http}
spec: {function-name: hello, host-name: hello.example.com, tls: true}
"#;

    #[test]
    fn functions_and_triggers_are_read() {
        let functions = read_objects(FUNCTIONS, "functions.yaml").unwrap();
        let f = &functions[0];
        assert_eq!(
            (f.name.as_str(), f.runtime.as_str(), f.handler.as_str()),
            ("hello", "python3.7", "hello.foo")
        );
        assert_eq!(
            f.content,
            Content::File(b"def foo(event, context):\n    return 'hi'\n".to_vec())
        );
        assert_eq!(f.timeout_seconds, Some(30));
        assert_eq!(f.env, vec![("GREETING".to_string(), "hi".to_string())]);
        assert_eq!(
            (f.memory.as_deref(), f.cpu.as_deref()),
            (Some("128Mi"), Some("100m"))
        );
        assert_eq!((f.min_scale, f.max_scale), (Some(1), Some(4)));
        assert_eq!(
            f.schedule,
            Some(("*/5 * * * *".to_string(), Some(r#"{"a":1}"#.to_string())))
        );
        assert_eq!(
            f.pod.to_value(),
            serde_json::json!({"env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]})
        );
        assert!(
            f.not_carried.iter().any(|n| n.contains("host name, TLS")),
            "{:?}",
            f.not_carried
        );
    }

    #[test]
    fn kafka_and_nats_triggers_attach_to_the_functions_their_selectors_match() {
        let trigger = |kind: &str, name: &str, namespace: &str, labels: &str| {
            format!(
                "---\napiVersion: kubeless.io/v1beta1\nkind: {kind}\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec: {{functionSelector: {{matchLabels: {labels}}}, topic: {name}-topic}}\n"
            )
        };
        let yaml = format!(
            "{FUNCTIONS}{}{}",
            trigger(
                "KafkaTrigger",
                "orders",
                "default",
                "{created-by: kubeless}"
            ),
            trigger("NATSTrigger", "audit", "default", "{created-by: kubeless}")
        );
        let functions = read_objects(&yaml, "f.yaml").unwrap();
        let topics: Vec<(PubSubKind, &str)> = functions[0]
            .pubsub_triggers
            .iter()
            .map(|t| (t.kind, t.topic.as_str()))
            .collect();
        assert_eq!(
            topics,
            [
                (PubSubKind::Kafka, "orders-topic"),
                (PubSubKind::Nats, "audit-topic")
            ]
        );

        // Another namespace's trigger, or a label of the Deployment only, selects nothing.
        let deployment_labelled = FUNCTIONS.replace(
            "horizontalPodAutoscaler:",
            "  metadata: {labels: {team: a}}\n  horizontalPodAutoscaler:",
        );
        let function = &read_objects(&deployment_labelled, "f.yaml").unwrap()[0];
        assert_eq!(function.labels.get("team").map(String::as_str), Some("a"));
        for (namespace, labels) in [("prod", "{created-by: kubeless}"), ("default", "{team: a}")] {
            let yaml = format!(
                "{deployment_labelled}{}",
                trigger("KafkaTrigger", "orders", namespace, labels)
            );
            let err = read_objects(&yaml, "f.yaml").unwrap_err().to_string();
            assert!(
                err.contains("KafkaTrigger 'orders' selects functions by")
                    && err.contains("which matches no Function"),
                "{err}"
            );
        }
    }

    #[test]
    fn content_types_decode() {
        let b64 = base64::engine::general_purpose::STANDARD.encode(b"PK\x03\x04zip");
        assert_eq!(
            content("base64+zip", &b64, "f", "o").unwrap(),
            Content::Archive {
                bytes: b"PK\x03\x04zip".to_vec(),
                extension: "zip"
            }
        );
        assert_eq!(
            content("url+compressedtar", " https://x/f.tgz ", "f", "o").unwrap(),
            Content::Url("https://x/f.tgz".into())
        );
        assert!(content("gzip", "", "f", "o")
            .unwrap_err()
            .to_string()
            .contains("accepted: text, base64, url"));
    }

    #[test]
    fn other_objects_are_refused_with_their_kind() {
        let err = read_objects(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
            "f.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("kind 'ConfigMap'"), "{err}");
    }
}
