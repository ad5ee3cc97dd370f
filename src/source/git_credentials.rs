//! Git credentials from where clusters mount them: `.git-credentials` (Knative Build's
//! creds-init and Tekton's basic-auth write it, with a `.gitconfig` naming the `store`
//! helper), a token in `FNBUILD_GIT_TOKEN`, SSH private keys (`--git-ssh-key`, or the `id_*`
//! files creds-init writes under `~/.ssh`) and `known_hosts`. Secrets are kept in types whose
//! `Debug` hides them and are never put into messages.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;

use crate::net::RedactedUrl;

/// The environment variables holding a token for https Git servers, and its user name.
pub const TOKEN_ENV: &str = "FNBUILD_GIT_TOKEN";
pub const TOKEN_USER_ENV: &str = "FNBUILD_GIT_USERNAME";

/// A user name and password (or token) for one URL prefix.
#[derive(Clone)]
pub struct StoredCredential {
    /// `scheme://host[/path]` the credential applies to.
    pub prefix: String,
    pub username: String,
    pub password: String,
}

impl fmt::Debug for StoredCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "StoredCredential({}, {}, ****)",
            self.prefix, self.username
        )
    }
}

/// A `known_hosts` entry: host patterns, key type and key bytes.
#[derive(Debug, Clone)]
pub struct KnownHost {
    pub hosts: Vec<String>,
    pub key_type: String,
    pub key: Vec<u8>,
}

/// Everything fnbuild may authenticate to a Git server with.
#[derive(Debug, Default, Clone)]
pub struct GitCredentials {
    pub stored: Vec<StoredCredential>,
    /// Where the stored credentials were read from, for messages.
    pub stored_from: Vec<PathBuf>,
    pub token: Option<StoredCredential>,
    pub ssh_keys: Vec<PathBuf>,
    pub known_hosts: Vec<KnownHost>,
    pub known_hosts_from: Option<PathBuf>,
}

/// Explicit choices from the command line.
#[derive(Debug, Default, Clone)]
pub struct GitCredentialOptions {
    pub ssh_key: Option<PathBuf>,
    pub known_hosts: Option<PathBuf>,
}

impl GitCredentials {
    /// Gathers credentials from `$HOME` and the environment.
    pub fn discover(options: &GitCredentialOptions) -> Self {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let mut credentials = GitCredentials::default();
        for file in credential_files(home.as_deref()) {
            if let Ok(text) = std::fs::read_to_string(&file) {
                credentials
                    .stored
                    .extend(text.lines().filter_map(parse_credential_line));
                credentials.stored_from.push(file);
            }
        }
        if let Ok(token) = std::env::var(TOKEN_ENV) {
            if !token.is_empty() {
                credentials.token = Some(StoredCredential {
                    prefix: String::new(),
                    username: std::env::var(TOKEN_USER_ENV).unwrap_or_else(|_| "git".into()),
                    password: token,
                });
            }
        }
        let ssh_dir = home.as_ref().map(|h| h.join(".ssh"));
        credentials.ssh_keys = match &options.ssh_key {
            Some(key) => vec![key.clone()],
            None => ssh_dir.as_deref().map(private_keys_in).unwrap_or_default(),
        };
        let known_hosts = options
            .known_hosts
            .clone()
            .or_else(|| ssh_dir.map(|d| d.join("known_hosts")));
        if let Some(path) = known_hosts {
            if let Ok(text) = std::fs::read_to_string(&path) {
                credentials.known_hosts = text.lines().filter_map(parse_known_host).collect();
                credentials.known_hosts_from = Some(path);
            }
        }
        credentials
    }

    /// The user and password for an https URL: the longest matching stored prefix, else the
    /// token.
    pub fn for_url(&self, url: &str) -> Option<&StoredCredential> {
        let target = RedactedUrl::new(url).to_string();
        self.stored
            .iter()
            .filter(|c| target.starts_with(&c.prefix) && boundary_ok(&target, &c.prefix))
            .max_by_key(|c| c.prefix.len())
            .or(self.token.as_ref())
    }

    /// Whether `host` (and `port`) is in known_hosts with this key.
    pub fn host_key_status(&self, host: &str, port: Option<u16>, key: &[u8]) -> HostKeyStatus {
        let names = match port {
            Some(p) if p != 22 => vec![format!("[{host}]:{p}")],
            _ => vec![host.to_string()],
        };
        let entries: Vec<&KnownHost> = self
            .known_hosts
            .iter()
            .filter(|k| k.hosts.iter().any(|h| names.iter().any(|n| n == h)))
            .collect();
        if entries.is_empty() {
            HostKeyStatus::Unknown
        } else if entries.iter().any(|k| k.key == key) {
            HostKeyStatus::Matches
        } else {
            HostKeyStatus::Mismatch
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKeyStatus {
    Matches,
    Unknown,
    Mismatch,
}

fn boundary_ok(target: &str, prefix: &str) -> bool {
    target.len() == prefix.len()
        || prefix.ends_with('/')
        || target[prefix.len()..].starts_with(['/', ':'])
}

/// `.git-credentials` files: the one `.gitconfig` names with `helper = store --file F`, and
/// the default places git's store helper uses.
fn credential_files(home: Option<&Path>) -> Vec<PathBuf> {
    let Some(home) = home else { return Vec::new() };
    let mut files = Vec::new();
    if let Ok(config) = git2::Config::open(&home.join(".gitconfig")) {
        if let Ok(helper) = config.get_string("credential.helper") {
            let mut words = helper.split_whitespace();
            if words.next() == Some("store") {
                if let (Some("--file"), Some(file)) = (words.next(), words.next()) {
                    files.push(PathBuf::from(file.replace('~', &home.to_string_lossy())));
                }
            }
        }
    }
    files.push(home.join(".git-credentials"));
    let xdg = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| home.join(".config"));
    files.push(xdg.join("git/credentials"));
    files.dedup();
    files
}

/// A `.git-credentials` line: `https://user:password@host[/path]`, percent-encoded.
fn parse_credential_line(line: &str) -> Option<StoredCredential> {
    let line = line.trim();
    let (scheme, rest) = line.split_once("://")?;
    let (userinfo, location) = rest.rsplit_once('@')?;
    let (user, password) = userinfo.split_once(':')?;
    Some(StoredCredential {
        prefix: format!("{scheme}://{}", location.trim_end_matches('/')),
        username: percent_decode(user),
        password: percent_decode(password),
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Private keys in an `.ssh` directory: `id_*` files that are not `.pub`.
fn private_keys_in(dir: &Path) -> Vec<PathBuf> {
    let mut keys: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|list| {
            list.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| {
                    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                    name.starts_with("id_") && !name.ends_with(".pub") && p.is_file()
                })
                .collect()
        })
        .unwrap_or_default();
    keys.sort();
    keys
}

/// A plain `known_hosts` line (`host[,host...] type base64key`). Hashed (`|1|...`) and
/// marker (`@cert-authority`) lines are not used.
fn parse_known_host(line: &str) -> Option<KnownHost> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') || line.starts_with('@') || line.starts_with('|') {
        return None;
    }
    let mut fields = line.split_whitespace();
    let hosts = fields.next()?.split(',').map(str::to_string).collect();
    let key_type = fields.next()?.to_string();
    let key = base64::engine::general_purpose::STANDARD
        .decode(fields.next()?)
        .ok()?;
    Some(KnownHost {
        hosts,
        key_type,
        key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_credentials_match_by_longest_prefix() {
        let credentials = GitCredentials {
            stored: [
                "https://bob:pw%40x@git.local",
                "https://alice:apw@git.local/team",
            ]
            .iter()
            .filter_map(|l| parse_credential_line(l))
            .collect(),
            ..GitCredentials::default()
        };
        let found = credentials
            .for_url("https://git.local/team/fn.git")
            .unwrap();
        assert_eq!(found.username, "alice");
        let found = credentials.for_url("https://git.local/other.git").unwrap();
        assert_eq!(
            (found.username.as_str(), found.password.as_str()),
            ("bob", "pw@x")
        );
        assert!(credentials.for_url("https://git.local.evil/x").is_none());
        assert!(!format!("{found:?}").contains("pw@x"));
    }

    #[test]
    fn known_hosts_lines_are_read() {
        let key = base64::engine::general_purpose::STANDARD.encode(b"keybytes");
        let credentials = GitCredentials {
            known_hosts: [
                format!("git.local,10.0.0.1 ssh-ed25519 {key}"),
                format!("[git.local]:2222 ssh-ed25519 {key}"),
                "|1|hashed ssh-rsa AAAA".into(),
            ]
            .iter()
            .filter_map(|l| parse_known_host(l))
            .collect(),
            ..GitCredentials::default()
        };
        assert_eq!(credentials.known_hosts.len(), 2);
        assert_eq!(
            credentials.host_key_status("git.local", None, b"keybytes"),
            HostKeyStatus::Matches
        );
        assert_eq!(
            credentials.host_key_status("git.local", Some(2222), b"other"),
            HostKeyStatus::Mismatch
        );
        assert_eq!(
            credentials.host_key_status("elsewhere", None, b"keybytes"),
            HostKeyStatus::Unknown
        );
    }

    #[test]
    fn a_url_with_user_info_matches_as_without_it() {
        let credentials = GitCredentials {
            stored: ["https://alice:apw@git.local/team"]
                .iter()
                .filter_map(|l| parse_credential_line(l))
                .collect(),
            ..GitCredentials::default()
        };
        let found = credentials
            .for_url("https://someone:old@git.local/team/fn.git")
            .unwrap();
        assert_eq!(found.username, "alice");
    }
}
