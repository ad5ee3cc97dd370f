//! Kubeless's PubSub triggers, KafkaTrigger and NATSTrigger (`spec.functionSelector`, a label
//! selector, and `spec.topic`), read as Kubeless's trigger controllers read them: a trigger
//! applies to every Function of its namespace whose own labels the selector matches. A
//! trigger without a topic or a selector, or whose selector matches no Function in the file,
//! is refused naming it.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;

use super::function::{name, text_at, Function};
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PubSubKind {
    Kafka,
    Nats,
}

impl PubSubKind {
    /// The kind of a Kubeless object, when it is a PubSub trigger.
    pub fn of(kind: &str) -> Option<Self> {
        match kind {
            "KafkaTrigger" => Some(Self::Kafka),
            "NATSTrigger" => Some(Self::Nats),
            _ => None,
        }
    }

    pub fn kind(self) -> &'static str {
        match self {
            Self::Kafka => "KafkaTrigger",
            Self::Nats => "NATSTrigger",
        }
    }
}

/// A Kafka or NATS trigger, as attached to each function it selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubSubTrigger {
    pub kind: PubSubKind,
    pub name: String,
    /// The trigger's own namespace, when the file gives it.
    pub namespace: Option<String>,
    pub topic: String,
}

/// Reads a KafkaTrigger or NATSTrigger and attaches it to every function it selects.
pub(super) fn attach(
    object: &Value,
    kind: PubSubKind,
    functions: &mut [Function],
    origin: &str,
) -> Result<()> {
    let what = format!("{origin}: {} '{}'", kind.kind(), name(object));
    let selector = Selector::read(object.pointer("/spec/functionSelector"), &what)?;
    let topic = text_at(object, "/spec/topic")
        .ok_or_else(|| Error::Usage(format!("{what} has no topic")))?;
    let namespace = text_at(object, "/metadata/namespace").map(str::to_string);
    let trigger = PubSubTrigger {
        kind,
        name: name(object),
        namespace: namespace.clone(),
        topic: topic.to_string(),
    };
    let mut selected = 0;
    for function in functions.iter_mut().filter(|f| {
        same_namespace(namespace.as_deref(), f.namespace.as_deref())
            && selector.matches(&f.object_labels)
    }) {
        function.pubsub_triggers.push(trigger.clone());
        selected += 1;
    }
    if selected == 0 {
        let in_namespace = namespace
            .map(|ns| format!(" of namespace '{ns}'"))
            .unwrap_or_default();
        return Err(Error::Usage(format!(
            "{what} selects functions by '{selector}' (spec.functionSelector), which matches no Function{in_namespace} in the file"
        )));
    }
    Ok(())
}

/// Kubeless looked functions up in the trigger's namespace. A namespace the file leaves out
/// on either side is taken to be the other's: such objects are applied to one namespace.
fn same_namespace(trigger: Option<&str>, function: Option<&str>) -> bool {
    match (trigger, function) {
        (Some(trigger), Some(function)) => trigger == function,
        _ => true,
    }
}

/// A Kubernetes label selector: `matchLabels` and `matchExpressions`, all of which must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Selector {
    labels: BTreeMap<String, String>,
    expressions: Vec<Expression>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Expression {
    key: String,
    operator: Operator,
    values: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl Selector {
    /// `what` names the trigger in errors.
    fn read(value: Option<&Value>, what: &str) -> Result<Self> {
        let field = "spec.functionSelector";
        let Some(selector) = value.filter(|v| !v.is_null()) else {
            return Err(Error::Usage(format!("{what} has no {field}")));
        };
        let Some(selector) = selector.as_object() else {
            return Err(Error::Usage(format!("{what}: {field} is not a map")));
        };
        let mut labels = BTreeMap::new();
        match selector.get("matchLabels") {
            None | Some(Value::Null) => {}
            Some(Value::Object(map)) => {
                for (key, value) in map {
                    let Some(value) = value.as_str() else {
                        return Err(Error::Usage(format!(
                            "{what}: {field}.matchLabels.{key} is not a string"
                        )));
                    };
                    labels.insert(key.clone(), value.to_string());
                }
            }
            Some(_) => {
                return Err(Error::Usage(format!(
                    "{what}: {field}.matchLabels is not a map"
                )))
            }
        }
        let mut expressions = Vec::new();
        let listed = match selector.get("matchExpressions") {
            None | Some(Value::Null) => &[][..],
            Some(Value::Array(list)) => list.as_slice(),
            Some(_) => {
                return Err(Error::Usage(format!(
                    "{what}: {field}.matchExpressions is not a list"
                )))
            }
        };
        for (i, expression) in listed.iter().enumerate() {
            let at = format!("{what}: {field}.matchExpressions[{i}]");
            expressions.push(Expression::read(expression, &at)?);
        }
        if labels.is_empty() && expressions.is_empty() {
            return Err(Error::Usage(format!(
                "{what} has an empty {field}, which would select every function: name their labels in {field}.matchLabels"
            )));
        }
        Ok(Self {
            labels,
            expressions,
        })
    }

    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.labels
            .iter()
            .all(|(key, value)| labels.get(key) == Some(value))
            && self.expressions.iter().all(|e| e.matches(labels))
    }
}

impl Expression {
    fn read(value: &Value, at: &str) -> Result<Self> {
        let key = text_at(value, "/key")
            .ok_or_else(|| Error::Usage(format!("{at} has no key")))?
            .to_string();
        let operator = match text_at(value, "/operator") {
            Some("In") => Operator::In,
            Some("NotIn") => Operator::NotIn,
            Some("Exists") => Operator::Exists,
            Some("DoesNotExist") => Operator::DoesNotExist,
            other => {
                return Err(Error::Usage(format!(
                    "{at} has operator '{}' (accepted: In, NotIn, Exists, DoesNotExist)",
                    other.unwrap_or_default()
                )))
            }
        };
        let values: Vec<String> = value
            .get("values")
            .and_then(Value::as_array)
            .map(|values| {
                values
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let wants_values = matches!(operator, Operator::In | Operator::NotIn);
        if wants_values == values.is_empty() {
            return Err(Error::Usage(format!(
                "{at}: operator {operator:?} {} values",
                if wants_values { "needs" } else { "takes no" }
            )));
        }
        Ok(Self {
            key,
            operator,
            values,
        })
    }

    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            Operator::In => value.is_some_and(|v| self.values.contains(v)),
            Operator::NotIn => !value.is_some_and(|v| self.values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

/// As `kubectl` writes selectors: `created-by=kubeless,function=hello,tier in (a,b),!debug`.
impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = self
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        for e in &self.expressions {
            parts.push(match e.operator {
                Operator::In => format!("{} in ({})", e.key, e.values.join(",")),
                Operator::NotIn => format!("{} notin ({})", e.key, e.values.join(",")),
                Operator::Exists => e.key.clone(),
                Operator::DoesNotExist => format!("!{}", e.key),
            });
        }
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn selectors_match_labels_and_expressions() {
        let selector = Selector::read(
            Some(&json!({
                "matchLabels": {"created-by": "kubeless"},
                "matchExpressions": [
                    {"key": "tier", "operator": "In", "values": ["a", "b"]},
                    {"key": "debug", "operator": "DoesNotExist"},
                ],
            })),
            "t",
        )
        .unwrap();
        assert_eq!(
            selector.to_string(),
            "created-by=kubeless,tier in (a,b),!debug"
        );
        assert!(selector.matches(&labels(&[("created-by", "kubeless"), ("tier", "b")])));
        assert!(!selector.matches(&labels(&[("created-by", "kubeless"), ("tier", "c")])));
        assert!(!selector.matches(&labels(&[
            ("created-by", "kubeless"),
            ("tier", "a"),
            ("debug", "1")
        ])));
        assert!(!selector.matches(&labels(&[("tier", "a")])));
    }

    #[test]
    fn malformed_selectors_name_the_field() {
        for (selector, expected) in [
            (None, "t has no spec.functionSelector"),
            (Some(json!({})), "t has an empty spec.functionSelector"),
            (
                Some(json!({"matchLabels": {"v": 2}})),
                "spec.functionSelector.matchLabels.v is not a string",
            ),
            (
                Some(json!({"matchExpressions": [{"key": "k", "operator": "Near"}]})),
                "matchExpressions[0] has operator 'Near'",
            ),
            (
                Some(json!({"matchExpressions": [{"key": "k", "operator": "In"}]})),
                "operator In needs values",
            ),
        ] {
            let err = Selector::read(selector.as_ref(), "t")
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{expected}: {err}");
        }
    }

    #[test]
    fn namespaces_left_out_are_taken_as_the_same() {
        assert!(same_namespace(None, Some("a")) && same_namespace(Some("a"), None));
        assert!(same_namespace(Some("a"), Some("a")) && !same_namespace(Some("a"), Some("b")));
    }
}
