//! Platforms (`linux/amd64`, `linux/arm64`): what an image's config says it runs on, what an
//! index entry is labelled with, and what `--platform` asks for. Two platforms match when
//! their OS and architecture are the same and their variants do not differ (`linux/arm64`
//! is `linux/arm64/v8`, the only arm64 variant images carry).

use serde::{Deserialize, Serialize};

use super::{oci_architecture, ImageConfig};
use crate::error::{Error, Result};

/// The architectures `--platform` accepts, in the Go (OCI) spelling.
const ARCHITECTURES: &[&str] = &[
    "amd64", "arm64", "arm", "386", "ppc64le", "s390x", "riscv64",
];

/// An OS, an architecture and maybe a variant, as OCI index entries and configs carry them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// Linux on this machine's architecture: what fnbuild builds for unless told otherwise.
    pub fn this_machine() -> Self {
        Self {
            architecture: oci_architecture().to_string(),
            os: "linux".to_string(),
            variant: None,
        }
    }

    /// The platform an image's config says it is for.
    pub fn of_config(config: &ImageConfig) -> Self {
        Self {
            architecture: config.architecture.clone(),
            os: config.os.clone(),
            variant: config
                .other
                .get("variant")
                .and_then(|v| v.as_str())
                .map(str::to_string),
        }
    }

    /// Whether `self` and `other` name the same platform (see the module doc on variants).
    pub fn matches(&self, other: &Platform) -> bool {
        self.os == other.os
            && self.architecture == other.architecture
            && self.normalized_variant() == other.normalized_variant()
    }

    fn normalized_variant(&self) -> Option<&str> {
        match (self.architecture.as_str(), self.variant.as_deref()) {
            ("arm64", Some("v8")) => None,
            (_, variant) => variant,
        }
    }

    /// Parses a comma-separated `--platform` value (`linux/amd64,linux/arm64`); a platform
    /// named twice counts once.
    pub fn parse_list(value: &str) -> Result<Vec<Self>> {
        let mut platforms: Vec<Self> = Vec::new();
        for part in value.split(',').map(str::trim) {
            let platform: Self = part.parse()?;
            if !platforms.iter().any(|p| p.matches(&platform)) {
                platforms.push(platform);
            }
        }
        Ok(platforms)
    }
}

impl std::str::FromStr for Platform {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: String| {
            Error::Usage(format!(
                "platform '{s}': {why}; expected OS/ARCH[/VARIANT] such as linux/amd64 or \
                 linux/arm64, ARCH one of {}",
                ARCHITECTURES.join(", ")
            ))
        };
        let parts: Vec<&str> = s.split('/').collect();
        let (os, architecture, variant) = match parts.as_slice() {
            [os, arch] => (*os, *arch, None),
            [os, arch, variant] if !variant.is_empty() => (*os, *arch, Some(*variant)),
            _ => return Err(bad("it is not OS/ARCH or OS/ARCH/VARIANT".into())),
        };
        if os != "linux" {
            return Err(bad(format!("function images run on linux, not '{os}'")));
        }
        if !ARCHITECTURES.contains(&architecture) {
            return Err(bad(format!("unknown architecture '{architecture}'")));
        }
        Ok(Self {
            architecture: architecture.to_string(),
            os: os.to_string(),
            variant: variant.map(str::to_string),
        })
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

/// `a, b, c` of some platforms, or `none`, for messages.
pub fn list(platforms: &[Platform]) -> String {
    if platforms.is_empty() {
        return "none".to_string();
    }
    platforms
        .iter()
        .map(Platform::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms_parse_and_print() {
        for (text, arch, variant) in [
            ("linux/amd64", "amd64", None),
            ("linux/arm64", "arm64", None),
            ("linux/arm/v7", "arm", Some("v7")),
        ] {
            let p: Platform = text.parse().unwrap();
            assert_eq!(
                (p.architecture.as_str(), p.variant.as_deref()),
                (arch, variant)
            );
            assert_eq!(p.to_string(), text);
        }
        for bad in [
            "amd64",
            "linux/x86_64",
            "windows/amd64",
            "linux/arm64/",
            "a/b/c/d",
            "",
        ] {
            let err = bad.parse::<Platform>().unwrap_err();
            assert!(err.is_usage(), "{bad}");
            assert!(err.to_string().contains("linux/arm64"), "{bad}: {err}");
        }
    }

    #[test]
    fn arm64_is_arm64_v8_and_lists_count_each_platform_once() {
        let v8: Platform = "linux/arm64/v8".parse().unwrap();
        assert!(v8.matches(&"linux/arm64".parse().unwrap()));
        assert!(!v8.matches(&"linux/amd64".parse().unwrap()));
        let arm7: Platform = "linux/arm/v7".parse().unwrap();
        assert!(!arm7.matches(&"linux/arm/v6".parse().unwrap()));
        let listed = Platform::parse_list("linux/amd64, linux/arm64,linux/arm64/v8").unwrap();
        assert_eq!(list(&listed), "linux/amd64, linux/arm64");
        assert!(Platform::parse_list("linux/amd64,").is_err());
    }

    #[test]
    fn a_config_names_its_platform() {
        let config: ImageConfig =
            serde_json::from_str(r#"{"architecture":"arm64","os":"linux","variant":"v8"}"#)
                .unwrap();
        let p = Platform::of_config(&config);
        assert_eq!(p.to_string(), "linux/arm64/v8");
        assert!(p.matches(&"linux/arm64".parse().unwrap()));
    }
}
