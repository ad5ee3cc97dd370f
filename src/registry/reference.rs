//! Image references: `[REGISTRY/]REPOSITORY[:TAG][@sha256:DIGEST]`, parsed the way Docker and
//! the distribution spec read them (a first component with a `.` or `:`, or `localhost`, is a
//! registry host; otherwise the image is on Docker Hub, under `library/` when unqualified),
//! and checked against the spec's grammar: a `HOST[:PORT]` registry, lowercase path components
//! without leading, trailing or doubled separators, tags of at most 128 characters, names of at
//! most 255.

use std::fmt;
use std::str::FromStr;

use crate::digest::Digest;

pub const DOCKER_HUB: &str = "docker.io";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

#[derive(Debug, thiserror::Error)]
#[error(
    "'{input}' is not an image reference: {reason} \
     (expected [REGISTRY/]REPOSITORY[:TAG][@sha256:DIGEST], e.g. registry.local:5000/functions/hello:v1)"
)]
pub struct ParseReferenceError {
    input: String,
    reason: String,
}

impl Reference {
    /// The tag or digest a manifest request names (digest first; `latest` when neither given).
    pub fn manifest_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_string(),
        }
    }

    /// The same repository, pinned to a digest (what `REF@sha256:...` outputs print).
    pub fn with_digest(&self, digest: &Digest) -> Reference {
        Reference {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: None,
            digest: Some(digest.clone()),
        }
    }

    /// `REGISTRY/REPOSITORY`.
    pub fn repository_name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The host to talk HTTP to (Docker Hub's API host differs from its name).
    pub fn api_host(&self) -> &str {
        api_host(&self.registry)
    }
}

/// The host serving the registry API for a registry name.
pub fn api_host(registry: &str) -> &str {
    if registry == DOCKER_HUB {
        "registry-1.docker.io"
    } else {
        registry
    }
}

impl FromStr for Reference {
    type Err = ParseReferenceError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let fail = |reason: &str| ParseReferenceError {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        if input.is_empty() {
            return Err(fail("it is empty"));
        }
        let (name_and_tag, digest) = match input.split_once('@') {
            Some((rest, digest)) => (
                rest,
                Some(digest.parse::<Digest>().map_err(|e| fail(&e.to_string()))?),
            ),
            None => (input, None),
        };
        let last_slash = name_and_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name_and_tag[last_slash..].rfind(':') {
            Some(i) => {
                let split = last_slash + i;
                (&name_and_tag[..split], Some(&name_and_tag[split + 1..]))
            }
            None => (name_and_tag, None),
        };
        if let Some(tag) = tag {
            if !is_tag(tag) {
                return Err(fail(&format!(
                    "tag '{tag}' must start with a letter, digit or '_' and hold only letters, \
                     digits, '_', '.' and '-' (at most {TAG_MAX} characters)"
                )));
            }
        }
        if name.len() > NAME_MAX {
            return Err(fail(&format!(
                "the name is {} characters long, at most {NAME_MAX} are allowed",
                name.len()
            )));
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                if !is_host(first) {
                    return Err(fail(&format!(
                        "registry '{first}' is not a host name, an IPv4 address or an [IPv6 \
                         address], with an optional :PORT"
                    )));
                }
                (first.to_string(), rest.to_string())
            }
            _ if name.contains('/') => (DOCKER_HUB.to_string(), name.to_string()),
            _ => (DOCKER_HUB.to_string(), format!("library/{name}")),
        };
        if let Some(component) = repository.split('/').find(|c| !is_path_component(c)) {
            return Err(fail(&if component.is_empty() {
                format!("repository '{repository}' has an empty path component")
            } else {
                format!(
                    "repository path component '{component}' is not lowercase letters and \
                     digits joined by '.', '_', '__' or '-'s (none at either end)"
                )
            }));
        }
        Ok(Reference {
            registry,
            repository,
            tag: tag.map(str::to_string),
            digest,
        })
    }
}

// === The distribution spec's grammar ===

/// The longest name (`[REGISTRY/]REPOSITORY` as written) the distribution spec allows.
const NAME_MAX: usize = 255;
/// The longest tag.
const TAG_MAX: usize = 128;

/// A tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn is_tag(tag: &str) -> bool {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    tag.len() <= TAG_MAX
        && tag.starts_with(word)
        && tag.chars().all(|c| word(c) || c == '.' || c == '-')
}

/// A repository path component: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn is_path_component(component: &str) -> bool {
    let alphanumeric = |b: &u8| matches!(b, b'a'..=b'z' | b'0'..=b'9');
    let mut rest = component.as_bytes();
    loop {
        // A run of letters and digits...
        let run = rest.iter().take_while(|b| alphanumeric(b)).count();
        if run == 0 {
            return false;
        }
        rest = &rest[run..];
        // ...then the end, or a separator before the next run.
        let separator = match rest {
            [] => return true,
            [b'_', b'_', ..] => 2,
            [b'.' | b'_', ..] => 1,
            _ => rest.iter().take_while(|&&b| b == b'-').count(),
        };
        if separator == 0 {
            return false;
        }
        rest = &rest[separator..];
    }
}

/// A registry: `HOST[:PORT]`, the host DNS labels (letters, digits and inner '-') joined by
/// '.' (which covers IPv4 addresses) or `[IPv6]`.
fn is_host(registry: &str) -> bool {
    let (host, port) = match registry.rfind(':') {
        Some(i) if !registry.starts_with('[') || registry[..i].ends_with(']') => {
            (&registry[..i], Some(&registry[i + 1..]))
        }
        _ => (registry, None),
    };
    let label = |l: &str| {
        !l.is_empty()
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => host.split('.').all(label),
    };
    let port_ok = port.is_none_or(|p| {
        !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()) && p.parse::<u16>().is_ok()
    });
    host_ok && port_ok
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Reference {
        s.parse().unwrap()
    }

    #[test]
    fn registry_host_is_recognised() {
        let r = parse("localhost:5000/fn/hello:v1");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("localhost:5000", "fn/hello")
        );
        assert_eq!(r.tag.as_deref(), Some("v1"));
        let r = parse("registry.local/hello");
        assert_eq!(r.registry, "registry.local");
        assert_eq!(r.manifest_reference(), "latest");
    }

    #[test]
    fn docker_hub_names_are_expanded() {
        let r = parse("python:3.12-slim");
        assert_eq!(r.to_string(), "docker.io/library/python:3.12-slim");
        assert_eq!(r.api_host(), "registry-1.docker.io");
        assert_eq!(parse("kubeless/python").repository, "kubeless/python");
    }

    #[test]
    fn digest_references() {
        let d = Digest::of(b"x");
        let r = parse(&format!("127.0.0.1:5000/a@{d}"));
        assert_eq!(r.digest.as_ref(), Some(&d));
        assert_eq!(r.manifest_reference(), d.to_string());
        assert_eq!(
            r.with_digest(&d).to_string(),
            format!("127.0.0.1:5000/a@{d}")
        );
    }

    #[test]
    fn bad_references_say_what_failed_and_what_is_expected() {
        let long_tag = format!("a:{}", "t".repeat(129));
        let long_name = "a".repeat(256);
        for (bad, failed) in [
            ("", "it is empty"),
            ("-", "component '-'"),
            ("localhost:5000/../x:t", "component '..'"),
            ("a//b", "empty path component"),
            ("a/./b", "component '.'"),
            ("-a", "component '-a'"),
            ("a-", "component 'a-'"),
            ("a..b", "component 'a..b'"),
            ("a___b", "component 'a___b'"),
            ("Upper/Case", "component 'Upper'"),
            ("host:5000/", "empty path component"),
            ("a:", "tag ''"),
            ("host:5000/a:bad tag", "tag 'bad tag'"),
            ("a:-v1", "tag '-v1'"),
            (&long_tag, "at most 128"),
            (&long_name, "at most 255"),
            ("-bad.host/x", "registry '-bad.host'"),
            ("a..b/x", "registry 'a..b'"),
            ("host:port/x", "registry 'host:port'"),
            ("host:99999/x", "registry 'host:99999'"),
            ("[::1/x", "registry '[::1'"),
            ("a@sha256:zz", "sha256"),
        ] {
            let err = bad.parse::<Reference>().unwrap_err().to_string();
            assert!(err.contains(failed), "{bad}: {err}");
            assert!(
                err.contains("expected [REGISTRY/]REPOSITORY"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn the_distribution_grammar_is_accepted() {
        for (good, registry, repository, tag) in [
            ("a__b", DOCKER_HUB, "library/a__b", None),
            ("a-b--c", DOCKER_HUB, "library/a-b--c", None),
            ("host:5000/x/y.z_1", "host:5000", "x/y.z_1", None),
            (
                "Host.Example/x:V_1.0-b",
                "Host.Example",
                "x",
                Some("V_1.0-b"),
            ),
            ("[::1]:5000/fn/a:_", "[::1]:5000", "fn/a", Some("_")),
            ("10.0.0.1/a", "10.0.0.1", "a", None),
        ] {
            let r = parse(good);
            assert_eq!(
                (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
                (registry, repository, tag),
                "{good}"
            );
        }
        parse(&format!("a:{}", "t".repeat(128)));
        parse(&"a".repeat(255));
    }
}
