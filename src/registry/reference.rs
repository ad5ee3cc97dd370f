//! Image references: `[REGISTRY/]REPOSITORY[:TAG][@sha256:DIGEST]`, parsed the way Docker and
//! the distribution spec read them (a first component with a `.` or `:`, or `localhost`, is a
//! registry host; otherwise the image is on Docker Hub, under `library/` when unqualified).

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
            let valid = !tag.is_empty()
                && tag.len() <= 128
                && tag
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
                && !tag.starts_with(['.', '-']);
            if !valid {
                return Err(fail(&format!(
                    "tag '{tag}' may hold only letters, digits, '_', '.' and '-' (at most 128)"
                )));
            }
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), rest.to_string())
            }
            _ if name.contains('/') => (DOCKER_HUB.to_string(), name.to_string()),
            _ => (DOCKER_HUB.to_string(), format!("library/{name}")),
        };
        let valid_repo = !repository.is_empty()
            && repository.split('/').all(|part| {
                !part.is_empty()
                    && part
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
            });
        if !valid_repo {
            return Err(fail(&format!(
                "repository '{repository}' may hold only lowercase letters, digits, '.', '_', '-' and '/'"
            )));
        }
        Ok(Reference {
            registry,
            repository,
            tag: tag.map(str::to_string),
            digest,
        })
    }
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
    fn bad_references_say_what_is_expected() {
        for bad in [
            "",
            "Upper/Case",
            "host:5000/a:bad tag",
            "a@sha256:zz",
            "host:5000/",
        ] {
            let err = bad.parse::<Reference>().unwrap_err().to_string();
            assert!(
                err.contains("expected [REGISTRY/]REPOSITORY"),
                "{bad}: {err}"
            );
        }
    }
}
