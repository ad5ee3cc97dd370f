//! The Knative Eventing objects written beside a function's Service, each sending events to
//! it: for a CronJobTrigger a PingSource (`pingsource.yaml`), for a KafkaTrigger a KafkaSource
//! of knative-extensions/eventing-kafka-broker (`kafkasource-TRIGGER.yaml`), for a NATSTrigger
//! a Trigger on the namespace's Broker `default` passing the events whose type is the topic
//! (`trigger-TRIGGER.yaml`). What the cluster then needs is said once per conversion
//! ([`cluster_needs`]).

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::{json, Value};

use super::function::Function;
use super::pubsub::{PubSubKind, PubSubTrigger};
use crate::error::{Error, IoContext, Result};

/// Where Kubeless's Kafka trigger controller found Kafka when `KAFKA_BROKERS` was not set.
pub const DEFAULT_KAFKA_BOOTSTRAP_SERVERS: &str = "kafka.kubeless:9092";

/// The Broker a NATSTrigger's Trigger subscribes to, in the function's namespace.
const BROKER: &str = "default";

/// `--kafka-bootstrap-servers`: `HOST:PORT[,HOST:PORT...]`.
pub fn bootstrap_servers(list: &str) -> Result<Vec<String>> {
    let servers: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if servers.is_empty() {
        return Err(Error::Usage(
            "--kafka-bootstrap-servers: no HOST:PORT given".into(),
        ));
    }
    for server in &servers {
        let valid = server.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-_[]:".contains(c))
                && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !valid {
            return Err(Error::Usage(format!(
                "--kafka-bootstrap-servers: '{server}' is not HOST:PORT"
            )));
        }
    }
    Ok(servers)
}

/// Writes the function's PingSource, KafkaSources and Triggers into `dir`.
pub(super) fn write_objects(
    function: &Function,
    dir: &Path,
    bootstrap_servers: &[String],
) -> Result<()> {
    let mut objects = Vec::new();
    if let Some((schedule, payload)) = &function.schedule {
        objects.push((
            "pingsource.yaml".to_string(),
            ping_source(function, schedule, payload.as_deref()),
        ));
    }
    for trigger in &function.pubsub_triggers {
        objects.push(match trigger.kind {
            PubSubKind::Kafka => (
                format!("kafkasource-{}.yaml", trigger.name),
                kafka_source(function, trigger, bootstrap_servers),
            ),
            PubSubKind::Nats => (
                format!("trigger-{}.yaml", trigger.name),
                broker_trigger(function, trigger),
            ),
        });
    }
    for (file, object) in objects {
        let file = dir.join(file);
        std::fs::write(
            &file,
            serde_norway::to_string(&object).expect("an object serializes"),
        )
        .io_context("write", &file)?;
    }
    Ok(())
}

/// What the cluster needs for the KafkaSources and Triggers written, once for all functions.
pub(super) fn cluster_needs(functions: &[Function], bootstrap_servers: &[String]) -> Vec<String> {
    let of_kind = |kind| {
        functions.iter().flat_map(move |f| {
            f.pubsub_triggers
                .iter()
                .filter(move |t| t.kind == kind)
                .map(move |t| (f, t))
        })
    };
    let mut needs = Vec::new();
    if of_kind(PubSubKind::Kafka).next().is_some() {
        needs.push(format!(
            "KafkaTriggers became KafkaSources (kafkasource-TRIGGER.yaml): the cluster needs Knative Eventing \
             and the KafkaSource of knative-extensions/eventing-kafka-broker (eventing-kafka-controller.yaml, \
             eventing-kafka-source.yaml), reaching Kafka at {} (--kafka-bootstrap-servers; set spec.net if \
             Kubeless's Kafka controller used TLS or SASL). Each source consumes in the group Kubeless's \
             controller used (NAMESPACE_TRIGGER_FUNCTION_TOPIC), resuming from its committed offsets: stop \
             Kubeless's Kafka trigger controller first, or the two share the topic's partitions. The events \
             now arrive as CloudEvents (type dev.knative.kafka.event, the Kafka message value as data), which \
             fnbuild's runtimes map to the Kubeless event keys",
            bootstrap_servers.join(",")
        ));
    }
    if of_kind(PubSubKind::Nats).next().is_some() {
        let namespaces: BTreeSet<&str> = of_kind(PubSubKind::Nats)
            .map(|(f, _)| {
                f.namespace
                    .as_deref()
                    .unwrap_or("(the one the Services are applied in)")
            })
            .collect();
        let topics: BTreeSet<&str> = of_kind(PubSubKind::Nats)
            .map(|(_, t)| t.topic.as_str())
            .collect();
        needs.push(format!(
            "NATSTriggers became Knative Triggers (trigger-TRIGGER.yaml) on the Broker '{BROKER}': the cluster \
             needs Knative Eventing and a Broker named {BROKER} in namespace {}. NATS is not a Knative source: \
             what published to the NATS topics ({}) must now send CloudEvents whose type is the topic to that \
             Broker (a Broker on NATS JetStream channels, from knative-extensions/eventing-natss, keeps the \
             events in NATS, but is published to through the Broker too). The functions receive them as \
             CloudEvents, which fnbuild's runtimes map to the Kubeless event keys",
            namespaces.into_iter().collect::<Vec<_>>().join(", "),
            topics.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    needs
}

/// The function's Knative Service as an event sink or subscriber.
fn service_ref(function: &Function) -> Value {
    json!({ "ref": { "apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": function.name } })
}

fn metadata(function: &Function, name: String) -> Value {
    let mut metadata = json!({ "name": name });
    if let Some(namespace) = &function.namespace {
        metadata["namespace"] = json!(namespace);
    }
    metadata
}

/// A PingSource that calls the function's Service on its schedule with its payload.
fn ping_source(function: &Function, schedule: &str, payload: Option<&str>) -> Value {
    let mut spec = json!({ "schedule": schedule, "sink": service_ref(function) });
    if let Some(payload) = payload {
        let is_json = serde_json::from_str::<Value>(payload).is_ok();
        spec["contentType"] = json!(if is_json {
            "application/json"
        } else {
            "text/plain"
        });
        spec["data"] = json!(payload);
    }
    json!({
        "apiVersion": "sources.knative.dev/v1",
        "kind": "PingSource",
        "metadata": metadata(function, format!("{}-schedule", function.name)),
        "spec": spec,
    })
}

/// A KafkaSource reading the trigger's topic into the function's Service.
fn kafka_source(
    function: &Function,
    trigger: &PubSubTrigger,
    bootstrap_servers: &[String],
) -> Value {
    json!({
        "apiVersion": "sources.knative.dev/v1beta1",
        "kind": "KafkaSource",
        "metadata": metadata(function, format!("{}-{}", function.name, trigger.name)),
        "spec": {
            "bootstrapServers": bootstrap_servers,
            "topics": [trigger.topic],
            "consumerGroup": consumer_group(function, trigger),
            "sink": service_ref(function),
        },
    })
}

/// The consumer group Kubeless's Kafka trigger controller used for this trigger and function
/// (`NAMESPACE_TRIGGER_FUNCTION_TOPIC`), so that the source resumes from the offsets Kubeless
/// committed and keeps its own across re-applying. A namespace the file leaves out is taken
/// to be `default`.
fn consumer_group(function: &Function, trigger: &PubSubTrigger) -> String {
    let namespace = function
        .namespace
        .as_deref()
        .or(trigger.namespace.as_deref())
        .unwrap_or("default");
    format!(
        "{namespace}_{}_{}_{}",
        trigger.name, function.name, trigger.topic
    )
}

/// A Trigger passing the events of the namespace's Broker whose type is the NATS topic to the
/// function's Service.
fn broker_trigger(function: &Function, trigger: &PubSubTrigger) -> Value {
    json!({
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Trigger",
        "metadata": metadata(function, format!("{}-{}", function.name, trigger.name)),
        "spec": {
            "broker": BROKER,
            "filter": { "attributes": { "type": trigger.topic } },
            "subscriber": service_ref(function),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_servers_are_host_port_pairs() {
        assert_eq!(
            bootstrap_servers(" a.kafka:9092, [::1]:9093 ,").unwrap(),
            ["a.kafka:9092", "[::1]:9093"]
        );
        for bad in ["kafka", "kafka:", ":9092", "kafka:0", "kafka://k:9092", ","] {
            assert!(bootstrap_servers(bad).is_err(), "{bad}");
        }
    }
}
