//! The image config (what a container runs: env, entrypoint, user, labels) and the
//! transformations fnbuild applies to a base config. Unknown fields are kept as they are, so a
//! config passes through fnbuild without losing what other tools wrote into it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::digest::Digest;

/// An image config as stored in the config blob.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub config: ContainerConfig,
    #[serde(default)]
    pub rootfs: RootFs,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<History>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// The part of the config that says how to run the container.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<BTreeMap<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// The layer diff IDs (digests of the uncompressed layers), in order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    pub diff_ids: Vec<Digest>,
}

impl Default for RootFs {
    fn default() -> Self {
        Self {
            kind: "layers".to_string(),
            diff_ids: Vec::new(),
        }
    }
}

/// One history entry; every layer fnbuild adds gets one.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct History {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub empty_layer: bool,
}

impl ImageConfig {
    /// Appends a layer's diff ID with its history entry.
    pub fn push_layer(&mut self, diff_id: Digest, created: &str, created_by: String) {
        self.rootfs.diff_ids.push(diff_id);
        self.history.push(History {
            created: Some(created.to_string()),
            created_by: Some(created_by),
            comment: Some("fnbuild".to_string()),
            empty_layer: false,
        });
    }

    /// The value of an environment variable set in the config.
    pub fn env_var(&self, name: &str) -> Option<&str> {
        self.config.env.iter().flatten().find_map(|entry| {
            let (key, value) = entry.split_once('=')?;
            (key == name).then_some(value)
        })
    }

    /// Sets environment variables, replacing earlier values of the same names and keeping the
    /// order of the rest.
    pub fn set_env<'a>(&mut self, vars: impl IntoIterator<Item = (&'a str, &'a str)>) {
        let env = self.config.env.get_or_insert_with(Vec::new);
        for (key, value) in vars {
            let entry = format!("{key}={value}");
            match env
                .iter_mut()
                .find(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) == key)
            {
                Some(existing) => *existing = entry,
                None => env.push(entry),
            }
        }
    }

    /// Adds labels, replacing earlier values of the same keys.
    pub fn set_labels<'a>(&mut self, labels: impl IntoIterator<Item = (&'a str, &'a str)>) {
        let map = self.config.labels.get_or_insert_with(BTreeMap::new);
        for (key, value) in labels {
            map.insert(key.to_string(), value.to_string());
        }
    }

    /// Declares a TCP port the container listens on.
    pub fn expose_tcp_port(&mut self, port: u16) {
        self.config
            .exposed_ports
            .get_or_insert_with(BTreeMap::new)
            .insert(format!("{port}/tcp"), Value::Object(Map::new()));
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an image config always serializes")
    }
}

/// Formats a Unix time as RFC 3339 in UTC, as image configs record times.
pub fn rfc3339(unix_seconds: u64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix_seconds);
    humantime::format_rfc3339_seconds(time).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_survive_a_round_trip() {
        let json = r#"{"architecture":"amd64","os":"linux","os.version":"x",
            "config":{"Env":["A=1"],"Hostname":"h","Labels":null},
            "rootfs":{"type":"layers","diff_ids":[]}}"#;
        let config: ImageConfig = serde_json::from_str(json).unwrap();
        let out: Value = serde_json::from_slice(&config.to_bytes()).unwrap();
        assert_eq!(out["os.version"], "x");
        assert_eq!(out["config"]["Hostname"], "h");
    }

    #[test]
    fn set_env_replaces_and_appends() {
        let mut config = ImageConfig::default();
        config.set_env([("PATH", "/bin"), ("A", "1")]);
        config.set_env([("A", "2"), ("B", "x=y")]);
        assert_eq!(
            config.config.env.as_deref().unwrap(),
            ["PATH=/bin", "A=2", "B=x=y"]
        );
        assert_eq!(config.env_var("B"), Some("x=y"));
    }

    #[test]
    fn rfc3339_of_epoch() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    }
}
