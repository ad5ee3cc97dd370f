//! Writing JSON values as YAML, for the Kubernetes objects fnbuild emits. Strings are always
//! double-quoted (JSON escaping is valid YAML), so no value is ever misread as a number, a
//! boolean or null.

use serde_json::Value;

/// The YAML text of a value (a document without the leading `---`).
pub fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    match value {
        Value::Object(map) if !map.is_empty() => write_map(map, 0, &mut out),
        Value::Array(items) if !items.is_empty() => write_list(items, 0, &mut out),
        scalar => {
            out.push_str(&inline(scalar));
            out.push('\n');
        }
    }
    out
}

fn write_map(map: &serde_json::Map<String, Value>, indent: usize, out: &mut String) {
    for (key, value) in map {
        out.push_str(&" ".repeat(indent));
        out.push_str(&key_text(key));
        out.push(':');
        write_nested(value, indent, out);
    }
}

fn write_list(items: &[Value], indent: usize, out: &mut String) {
    for item in items {
        out.push_str(&" ".repeat(indent));
        out.push('-');
        match item {
            Value::Object(map) if !map.is_empty() => {
                // The first key goes on the dash's line; the rest line up under it.
                let mut nested = String::new();
                write_map(map, indent + 2, &mut nested);
                out.push(' ');
                out.push_str(nested.trim_start());
            }
            Value::Array(inner) if !inner.is_empty() => {
                out.push('\n');
                write_list(inner, indent + 2, out);
            }
            scalar => {
                out.push(' ');
                out.push_str(&inline(scalar));
                out.push('\n');
            }
        }
    }
}

/// What follows `key:`: an inline scalar, or a nested block on the next lines.
fn write_nested(value: &Value, indent: usize, out: &mut String) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            out.push('\n');
            write_map(map, indent + 2, out);
        }
        Value::Array(items) if !items.is_empty() => {
            out.push('\n');
            write_list(items, indent, out);
        }
        scalar => {
            out.push(' ');
            out.push_str(&inline(scalar));
            out.push('\n');
        }
    }
}

fn inline(value: &Value) -> String {
    match value {
        Value::Object(_) => "{}".to_string(),
        Value::Array(_) => "[]".to_string(),
        other => other.to_string(),
    }
}

fn key_text(key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_./-".contains(c))
        && !key.starts_with(['-', '.']);
    if plain {
        key.to_string()
    } else {
        Value::String(key.to_string()).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::to_yaml;
    use serde_json::json;

    #[test]
    fn nested_maps_lists_and_quoted_scalars() {
        let value = json!({
            "apiVersion": "v1",
            "metadata": {"name": "f", "annotations": {"a.b/c": "1"}},
            "spec": {"containers": [{"image": "r/i@sha256:x", "env": [{"name": "A", "value": "true"}], "ports": []}], "n": 3},
            "empty": {}
        });
        assert_eq!(
            to_yaml(&value),
            "apiVersion: \"v1\"\nempty: {}\nmetadata:\n  annotations:\n    a.b/c: \"1\"\n  name: \"f\"\n\
             spec:\n  containers:\n  - env:\n    - name: \"A\"\n      value: \"true\"\n    image: \"r/i@sha256:x\"\n    ports: []\n  n: 3\n"
        );
    }
}
