//! Registry credentials from a Docker `config.json`, found where Kubernetes build systems put
//! it: `--docker-config`, `DOCKER_CONFIG` (Kaniko), `$HOME/.docker/config.json` (Knative Build's
//! creds-init), or a Tekton `dockerconfig` workspace holding `config.json` or
//! `.dockerconfigjson`. Credential helpers (`credsStore`, `credHelpers`) are called as Docker
//! calls them. Secrets never appear in `Debug` or `Display` output.

use std::collections::HashMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;
use serde::Deserialize;

use crate::error::{Error, Result};

/// A user name and a secret: a password, or an identity token (the OAuth2 refresh token
/// `docker login` stores for registries such as Azure Container Registry).
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub username: String,
    secret: String,
    identity_token: bool,
}

impl Credential {
    pub fn new(username: impl Into<String>, secret: impl Into<String>) -> Self {
        Self {
            username: username.into(),
            secret: secret.into(),
            identity_token: false,
        }
    }

    /// An identity token, under the user name Docker gives it (`<token>`).
    pub fn identity_token(token: impl Into<String>) -> Self {
        Self {
            identity_token: true,
            ..Self::new("<token>", token)
        }
    }

    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// The identity token, when the secret is one: it is exchanged for bearer tokens as an
    /// OAuth2 refresh token rather than sent as a password.
    pub fn refresh_token(&self) -> Option<&str> {
        self.identity_token.then_some(self.secret.as_str())
    }

    /// The value of a `Basic` Authorization header.
    pub fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.username, self.secret);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credential({}, ****)", self.username)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConfigFile {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
    #[serde(default)]
    creds_store: Option<String>,
    #[serde(default)]
    cred_helpers: HashMap<String, String>,
}

#[derive(Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default, rename = "identitytoken")]
    identity_token: Option<String>,
}

/// The credentials fnbuild knows, keyed by registry host.
#[derive(Debug, Default)]
pub struct DockerConfig {
    file: ConfigFile,
    path: Option<PathBuf>,
}

impl DockerConfig {
    /// Finds and reads the Docker config. `explicit` is `--docker-config` (a directory or a
    /// file); a missing default location means no credentials, a missing explicit one is an
    /// error.
    pub fn load(explicit: Option<&Path>) -> Result<Self> {
        let (candidates, required) = match explicit {
            Some(path) => (config_candidates(path), true),
            None => {
                let dir = std::env::var_os("DOCKER_CONFIG")
                    .map(PathBuf::from)
                    .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")));
                (
                    dir.map(|d| config_candidates(&d)).unwrap_or_default(),
                    false,
                )
            }
        };
        let Some(path) = candidates.iter().find(|p| p.is_file()) else {
            if required {
                return Err(Error::Usage(format!(
                    "--docker-config {}: no config.json or .dockerconfigjson there",
                    explicit
                        .map(Path::display)
                        .map(|d| d.to_string())
                        .unwrap_or_default()
                )));
            }
            return Ok(Self::default());
        };
        let text = std::fs::read(path).map_err(|e| {
            Error::Usage(format!("cannot read Docker config {}: {e}", path.display()))
        })?;
        let file: ConfigFile = serde_json::from_slice(&text).map_err(|e| {
            Error::Usage(format!(
                "Docker config {} is not valid JSON of the form {{\"auths\": {{\"REGISTRY\": {{\"auth\": \"BASE64(user:password)\"}}}}}}: {}",
                path.display(),
                // serde's message names the position, never the content.
                e
            ))
        })?;
        tracing::debug!(path = %path.display(), registries = file.auths.len(), "read Docker config");
        Ok(Self {
            file,
            path: Some(path.clone()),
        })
    }

    /// Where the config was read from, for messages.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The credential for a registry host, if the config has one.
    pub fn credential_for(&self, registry: &str) -> Result<Option<Credential>> {
        if let Some(helper) = self.file.cred_helpers.get(registry) {
            return call_helper(helper, registry);
        }
        // An empty entry (as Docker Desktop writes them) holds nothing: the store may.
        if let Some((_, entry)) = self
            .file
            .auths
            .iter()
            .find(|(key, _)| same_registry(&normalize_key(key), registry))
            .filter(|(_, entry)| !entry.is_empty())
        {
            return entry.credential(registry).map(Some);
        }
        match &self.file.creds_store {
            Some(store) => call_helper(store, registry),
            None => Ok(None),
        }
    }
}

fn config_candidates(path: &Path) -> Vec<PathBuf> {
    if path.is_file() {
        vec![path.to_path_buf()]
    } else {
        vec![path.join("config.json"), path.join(".dockerconfigjson")]
    }
}

impl fmt::Debug for AuthEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthEntry(****)")
    }
}

impl AuthEntry {
    fn is_empty(&self) -> bool {
        self.auth.as_deref().unwrap_or_default().is_empty()
            && self.username.is_none()
            && self.identity_token.is_none()
    }

    fn credential(&self, registry: &str) -> Result<Credential> {
        if let (Some(user), Some(pass)) = (&self.username, &self.password) {
            return Ok(Credential::new(user, pass));
        }
        if let Some(token) = &self.identity_token {
            return Ok(Credential::identity_token(token));
        }
        let encoded = self.auth.as_deref().unwrap_or_default();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok());
        match decoded.as_deref().and_then(|s| s.split_once(':')) {
            Some((user, pass)) => Ok(Credential::new(user, pass)),
            None => Err(Error::Usage(format!(
                "the Docker config entry for {registry} has no usable credentials: \
                 'auth' must be base64 of USER:PASSWORD"
            ))),
        }
    }
}

/// Reduces a config key (`https://host/v1/`, `host`, `http://host`) to the host.
fn normalize_key(key: &str) -> String {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    key.split('/').next().unwrap_or(key).to_string()
}

fn same_registry(key: &str, registry: &str) -> bool {
    const HUB: [&str; 3] = ["docker.io", "index.docker.io", "registry-1.docker.io"];
    key == registry || (HUB.contains(&key) && HUB.contains(&registry))
}

#[derive(Deserialize)]
struct HelperOutput {
    #[serde(rename = "Username")]
    username: String,
    #[serde(rename = "Secret")]
    secret: String,
}

/// Runs `docker-credential-NAME get`, as Docker does.
fn call_helper(name: &str, registry: &str) -> Result<Option<Credential>> {
    let program = format!("docker-credential-{name}");
    let mut child = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            Error::Usage(format!(
                "the Docker config names credential helper '{name}', but {program} cannot be run: {e}"
            ))
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that exits without reading is reported through its exit status below.
        let _ = stdin.write_all(registry.as_bytes());
    }
    let output = child
        .wait_with_output()
        .map_err(|e| Error::Usage(format!("{program} failed: {e}")))?;
    if !output.status.success() {
        // Helpers answer "credentials not found in native keychain" when they have none.
        tracing::debug!(helper = %program, registry, "credential helper has no credentials");
        return Ok(None);
    }
    let parsed: HelperOutput = serde_json::from_slice(&output.stdout).map_err(|_| {
        Error::Usage(format!(
            "{program} answered with something other than its JSON"
        ))
    })?;
    Ok(Some(Credential::new(parsed.username, parsed.secret)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_with(json: &str) -> (tempfile::TempDir, DockerConfig) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), json).unwrap();
        let config = DockerConfig::load(Some(dir.path())).unwrap();
        (dir, config)
    }

    #[test]
    fn auth_entries_match_by_host() {
        let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
        let (_dir, config) = config_with(&format!(
            r#"{{"auths":{{"https://registry.local:5000/v1/":{{"auth":"{auth}"}},
                 "https://index.docker.io/v1/":{{"username":"bob","password":"pw"}}}}}}"#
        ));
        let cred = config
            .credential_for("registry.local:5000")
            .unwrap()
            .unwrap();
        assert_eq!((cred.username.as_str(), cred.secret()), ("alice", "s3cret"));
        assert_eq!(
            config
                .credential_for("docker.io")
                .unwrap()
                .unwrap()
                .username,
            "bob"
        );
        assert!(config.credential_for("other:5000").unwrap().is_none());
    }

    #[test]
    fn an_empty_entry_means_anonymous() {
        let (_dir, config) = config_with(r#"{"auths":{"registry.local:5000":{}}}"#);
        assert!(config
            .credential_for("registry.local:5000")
            .unwrap()
            .is_none());
    }

    #[test]
    fn debug_output_hides_the_secret() {
        let cred = Credential::new("alice", "s3cret");
        assert!(!format!("{cred:?}").contains("s3cret"));
    }

    #[test]
    fn tekton_dockerconfigjson_file_is_found() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(".dockerconfigjson"),
            r#"{"auths":{"r:1":{"username":"u","password":"p"}}}"#,
        )
        .unwrap();
        let config = DockerConfig::load(Some(dir.path())).unwrap();
        assert!(config.credential_for("r:1").unwrap().is_some());
    }

    #[test]
    fn missing_explicit_config_is_an_error_and_bad_json_does_not_echo_content() {
        let dir = tempfile::tempdir().unwrap();
        assert!(DockerConfig::load(Some(dir.path())).is_err());
        std::fs::write(dir.path().join("config.json"), "{\"auths\": secretvalue").unwrap();
        let err = DockerConfig::load(Some(dir.path()))
            .unwrap_err()
            .to_string();
        assert!(!err.contains("secretvalue"), "{err}");
    }
}
