//! The Knative Service that serves a function image: `serving.knative.dev/v1`, the image by
//! digest, the function's env, the Kubeless timeout as `timeoutSeconds`, resource limits and
//! autoscaling annotations when given (what `ko resolve` does for Go, done for a function),
//! and env from secrets and config maps, volumes and mounts ([`pod`]).

mod pod;

use serde_json::{json, Map, Value};

pub(crate) use pod::other_keys;
pub use pod::{add_kubeless_secret, PodAdditions, ReadPod};

use crate::error::{Error, Result};

/// Knative's default maximum for `timeoutSeconds`.
const MAX_TIMEOUT_SECONDS: u32 = 600;

/// What the Service says besides the image.
#[derive(Debug, Clone, Default)]
pub struct ServiceOptions {
    /// The Service's name [default: from the image repository].
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub env: Vec<(String, String)>,
    pub labels: Vec<(String, String)>,
    pub timeout_seconds: u32,
    pub port: u16,
    /// Kubernetes quantities, e.g. `128Mi`, `100m`.
    pub memory: Option<String>,
    pub cpu: Option<String>,
    pub min_scale: Option<u32>,
    pub max_scale: Option<u32>,
    /// `autoscaling.knative.dev/target`: concurrent requests per instance.
    pub scale_target: Option<u32>,
    /// Env from secrets and config maps, volumes and their mounts.
    pub pod: PodAdditions,
}

/// Checks the options before anything is built, so a bad name never follows a push.
pub fn validate(options: &ServiceOptions) -> Result<()> {
    for name in options.name.iter().chain(&options.namespace) {
        check_name(name)?;
    }
    if let Some(name) = options
        .pod
        .env_names()
        .find(|name| options.env.iter().any(|(k, _)| k == name))
    {
        return Err(Error::Usage(format!(
            "env {name} is given a value and also taken from a secret or config map: give it once"
        )));
    }
    if let Some(cpu) = &options.cpu {
        let number = cpu.strip_suffix('m').unwrap_or(cpu);
        if number.parse::<f64>().map_or(true, |n| n <= 0.0) {
            return Err(Error::Usage(format!(
                "--cpu '{cpu}': expected a Kubernetes CPU quantity such as 100m or 0.5"
            )));
        }
    }
    Ok(())
}

/// The Service for an image given by digest (`REGISTRY/REPO@sha256:...`).
pub fn service(image_by_digest: &str, options: &ServiceOptions) -> Result<Value> {
    let name = match &options.name {
        Some(name) => check_name(name)?,
        None => name_from_image(image_by_digest),
    };
    let mut metadata = Map::new();
    metadata.insert("name".into(), json!(name));
    if let Some(namespace) = &options.namespace {
        metadata.insert("namespace".into(), json!(check_name(namespace)?));
    }
    if !options.labels.is_empty() {
        metadata.insert("labels".into(), Value::Object(pairs(&options.labels)));
    }
    let mut annotations = Map::new();
    for (key, value) in [
        ("autoscaling.knative.dev/min-scale", options.min_scale),
        ("autoscaling.knative.dev/max-scale", options.max_scale),
        ("autoscaling.knative.dev/target", options.scale_target),
    ] {
        if let Some(value) = value {
            annotations.insert(key.into(), json!(value.to_string()));
        }
    }
    let mut container = Map::new();
    container.insert("image".into(), json!(image_by_digest));
    container.insert("ports".into(), json!([{ "containerPort": options.port }]));
    if !options.env.is_empty() {
        let env: Vec<Value> = options
            .env
            .iter()
            .map(|(k, v)| json!({ "name": k, "value": v }))
            .collect();
        container.insert("env".into(), Value::Array(env));
    }
    let mut limits = Map::new();
    if let Some(memory) = &options.memory {
        limits.insert("memory".into(), json!(memory));
    }
    if let Some(cpu) = &options.cpu {
        limits.insert("cpu".into(), json!(cpu));
    }
    if !limits.is_empty() {
        container.insert("resources".into(), json!({ "limits": limits }));
    }
    let timeout = options.timeout_seconds.min(MAX_TIMEOUT_SECONDS);
    if timeout < options.timeout_seconds {
        tracing::warn!(
            "the function's timeout of {}s is above Knative's default maximum; the Service uses {timeout}s \
             (raise max-revision-timeout-seconds in the cluster's config-defaults to allow more)",
            options.timeout_seconds
        );
    }
    let mut spec = Map::new();
    spec.insert("timeoutSeconds".into(), json!(timeout));
    options.pod.apply(&mut container, &mut spec);
    spec.insert("containers".into(), json!([container]));
    let mut template = Map::new();
    if !annotations.is_empty() {
        template.insert("metadata".into(), json!({ "annotations": annotations }));
    }
    template.insert("spec".into(), Value::Object(spec));
    Ok(json!({
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": metadata,
        "spec": { "template": template },
    }))
}

fn pairs(pairs: &[(String, String)]) -> Map<String, Value> {
    pairs.iter().map(|(k, v)| (k.clone(), json!(v))).collect()
}

/// A DNS-1123 label: what Kubernetes accepts as a Service name, namespace or volume name.
fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// The name if it is a DNS-1123 label, else an error saying what is accepted.
fn check_name(name: &str) -> Result<String> {
    if is_dns_label(name) {
        Ok(name.to_string())
    } else {
        Err(Error::Usage(format!(
            "'{name}' is not a Kubernetes name: lowercase letters, digits and '-', at most 63, \
             starting and ending with a letter or digit"
        )))
    }
}

/// The last path component of the image's repository, made a DNS-1123 label.
fn name_from_image(image: &str) -> String {
    let repository = image.split('@').next().unwrap_or(image);
    let last = repository.rsplit('/').next().unwrap_or(repository);
    let last = last.split(':').next().unwrap_or(last);
    let mut name: String = last
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    name.truncate(63);
    let name = name.trim_matches('-').to_string();
    if name.is_empty() {
        "function".to_string()
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_pins_the_image_and_carries_the_function_settings() {
        let options = ServiceOptions {
            env: vec![("GREETING".into(), "hi".into())],
            timeout_seconds: 180,
            port: 8080,
            memory: Some("128Mi".into()),
            min_scale: Some(0),
            max_scale: Some(5),
            ..ServiceOptions::default()
        };
        let service = service("registry.local/functions/hello_world@sha256:abc", &options).unwrap();
        assert_eq!(service["metadata"]["name"], "hello-world");
        let spec = &service["spec"]["template"]["spec"];
        assert_eq!(spec["timeoutSeconds"], 180);
        assert_eq!(
            spec["containers"][0]["image"],
            "registry.local/functions/hello_world@sha256:abc"
        );
        assert_eq!(spec["containers"][0]["env"][0]["value"], "hi");
        assert_eq!(
            spec["containers"][0]["resources"]["limits"]["memory"],
            "128Mi"
        );
        let annotations = &service["spec"]["template"]["metadata"]["annotations"];
        assert_eq!(annotations["autoscaling.knative.dev/min-scale"], "0");
        assert_eq!(annotations["autoscaling.knative.dev/max-scale"], "5");
    }

    #[test]
    fn long_timeouts_are_capped_and_bad_names_refused() {
        let options = ServiceOptions {
            timeout_seconds: 3600,
            port: 8080,
            ..ServiceOptions::default()
        };
        assert_eq!(
            service("r/f@sha256:a", &options).unwrap()["spec"]["template"]["spec"]
                ["timeoutSeconds"],
            600
        );
        let options = ServiceOptions {
            name: Some("Bad_Name".into()),
            ..options
        };
        assert!(service("r/f@sha256:a", &options)
            .unwrap_err()
            .to_string()
            .contains("not a Kubernetes name"));
    }
}
