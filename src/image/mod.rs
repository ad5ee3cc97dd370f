//! The image model: descriptors, manifests, indexes and configs as the OCI image spec and
//! Docker schema 2 define them, plus the layers fnbuild makes (`layer`, compressed on several
//! cores by `gzip`), the config it derives (`config`), and the one way images are made of a
//! base, layers and config changes (`append`).
//!
//! Values here are plain data: reading and writing them is done by `registry` and
//! `transport`; deciding what goes in them is done by `build`, `base` and `builder_image`.

pub mod append;
pub mod config;
pub mod gzip;
pub mod layer;
pub mod platform;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{Error, Result};

pub use config::ImageConfig;
pub use platform::Platform;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// The annotation saying when an image or artifact was made (RFC 3339).
pub const CREATED_ANNOTATION: &str = "org.opencontainers.image.created";
/// The URL of the source an image was built from (an annotation and a config label).
pub const SOURCE_KEY: &str = "org.opencontainers.image.source";
/// The source's revision: a commit, an object version or a checksum (likewise).
pub const REVISION_KEY: &str = "org.opencontainers.image.revision";

/// The `Accept` header value for fetching any manifest or index fnbuild understands.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";

/// Which family of media types an image uses. New layers and configs follow the base image's
/// family, because registries and runtimes reject manifests that mix them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaFamily {
    Oci,
    Docker,
}

impl MediaFamily {
    /// The family of a manifest media type; a manifest without one is taken as OCI.
    pub fn of_manifest(media_type: Option<&str>) -> Result<Self> {
        match media_type {
            None | Some(OCI_MANIFEST) => Ok(Self::Oci),
            Some(DOCKER_MANIFEST) => Ok(Self::Docker),
            Some(other) => Err(Error::Image(format!(
                "manifest media type '{other}' is not an image manifest \
                 (accepted: {OCI_MANIFEST}, {DOCKER_MANIFEST})"
            ))),
        }
    }

    pub fn manifest(self) -> &'static str {
        match self {
            Self::Oci => OCI_MANIFEST,
            Self::Docker => DOCKER_MANIFEST,
        }
    }

    pub fn config(self) -> &'static str {
        match self {
            Self::Oci => OCI_CONFIG,
            Self::Docker => DOCKER_CONFIG,
        }
    }

    pub fn layer_gzip(self) -> &'static str {
        match self {
            Self::Oci => OCI_LAYER_GZIP,
            Self::Docker => DOCKER_LAYER_GZIP,
        }
    }
}

/// A pointer to a blob or a manifest: its media type, digest and size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Descriptor {
    pub fn new(media_type: impl Into<String>, digest: Digest, size: u64) -> Self {
        Self {
            media_type: media_type.into(),
            digest,
            size,
            platform: None,
            annotations: BTreeMap::new(),
        }
    }
}

/// An image manifest (OCI or Docker schema 2).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Manifest {
    pub fn family(&self) -> Result<MediaFamily> {
        MediaFamily::of_manifest(self.media_type.as_deref())
    }

    /// The canonical bytes fnbuild pushes; the manifest digest is taken over exactly these.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a manifest always serializes")
    }
}

/// An image index or Docker manifest list: one manifest per platform.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Index {
    /// The entry for `platform`; the error lists the platforms there are.
    pub fn manifest_for(&self, platform: &Platform) -> Result<&Descriptor> {
        self.manifests
            .iter()
            .find(|d| d.platform.as_ref().is_some_and(|p| p.matches(platform)))
            .ok_or_else(|| {
                Error::Image(format!(
                    "the image index has no {platform} image (platforms: {})",
                    platform::list(&self.platforms())
                ))
            })
    }

    /// The entries that are images to run, in the index's order: not those without a
    /// platform, or with `unknown/unknown` (the attestation manifests BuildKit adds).
    pub fn runnable(&self) -> impl Iterator<Item = &Descriptor> {
        self.manifests
            .iter()
            .filter(|d| d.platform.as_ref().is_some_and(|p| p.os != "unknown"))
    }

    /// The platforms of the images in the index, in its order (see [`Index::runnable`]).
    pub fn platforms(&self) -> Vec<Platform> {
        self.runnable().filter_map(|d| d.platform.clone()).collect()
    }
}

/// A manifest or index exactly as stored (its digest is over these bytes), with its media
/// type.
#[derive(Debug, Clone)]
pub struct Stored {
    pub bytes: Vec<u8>,
    pub digest: Digest,
    pub media_type: String,
}

impl Stored {
    /// Bytes read from where their descriptor gave the media type (or, when it gave none,
    /// the bytes' own `mediaType` says it).
    pub fn new(bytes: Vec<u8>, media_type: String) -> Self {
        let media_type = if media_type.is_empty() {
            sniff_media_type(&bytes).unwrap_or_default()
        } else {
            media_type
        };
        Self {
            digest: Digest::of(&bytes),
            bytes,
            media_type,
        }
    }

    pub fn is_index(&self) -> bool {
        is_index(&self.media_type)
    }

    /// The descriptor naming it.
    pub fn descriptor(&self) -> Descriptor {
        Descriptor::new(
            self.media_type.clone(),
            self.digest.clone(),
            self.bytes.len() as u64,
        )
    }
}

/// Whether a media type names an index (OCI index or Docker manifest list).
pub fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_MANIFEST_LIST
}

/// This machine's architecture in OCI terms (`amd64`, `arm64`, ...).
pub fn oci_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// Reads a manifest's media type from its JSON when the transport did not say it.
pub fn sniff_media_type(bytes: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Sniff {
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
    }
    let sniff: Sniff = serde_json::from_slice(bytes).ok()?;
    sniff.media_type.or_else(|| {
        if sniff.manifests.is_some() {
            Some(OCI_INDEX.to_string())
        } else {
            Some(OCI_MANIFEST.to_string())
        }
    })
}

/// Parses JSON of an image document, naming what it was on failure.
pub fn parse_json<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::Image(format!("{what} is not valid: {e}")))
}
