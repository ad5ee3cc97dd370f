//! Multi-platform images written by hand into an OCI layout: an index of tiny images, one per
//! architecture (a one-file layer, a config with that architecture), and, as BuildKit adds,
//! an attestation manifest for the first (platform `unknown/unknown`). The index is written
//! pretty-printed, as no serializer of fnbuild's would: a copy that re-serialized it would
//! change its digest.

use std::path::Path;

use fnbuild::image::{OCI_CONFIG, OCI_INDEX, OCI_MANIFEST};
use serde_json::json;

use super::{sha256_digest, tar_of};

/// What a registry is asked for to get an index or a manifest as stored.
pub const ACCEPT_ANY: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.docker.distribution.manifest.v2+json";

/// One entry of the index: its platform (`unknown/unknown` for the attestation) and digest.
#[derive(Debug, Clone)]
pub struct Entry {
    pub platform: String,
    pub digest: String,
}

/// What [`write_layout`] wrote.
#[derive(Debug, Clone)]
pub struct MultiPlatform {
    pub index_digest: String,
    pub index_bytes: Vec<u8>,
    pub entries: Vec<Entry>,
    /// Every blob: layers, configs, the attestation's.
    pub blobs: Vec<String>,
}

impl MultiPlatform {
    /// The digest of `platform`'s entry (`linux/arm64`).
    pub fn entry(&self, platform: &str) -> &str {
        &self
            .entries
            .iter()
            .find(|e| e.platform == platform)
            .unwrap_or_else(|| panic!("no {platform} entry in {:?}", self.entries))
            .digest
    }
}

/// Writes a blob into the layout; its digest and size.
fn blob(dir: &Path, bytes: &[u8]) -> (String, usize) {
    let digest = sha256_digest(bytes);
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(blobs.join(&digest["sha256:".len()..]), bytes).unwrap();
    (digest, bytes.len())
}

/// A manifest of `config` (with its media type) and `layers` (media type, bytes).
fn manifest(dir: &Path, config_type: &str, config: &[u8], layers: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let (config_digest, config_size) = blob(dir, config);
    let layers: Vec<_> = layers
        .iter()
        .map(|(media_type, bytes)| {
            let (digest, size) = blob(dir, bytes);
            json!({ "mediaType": media_type, "digest": digest, "size": size })
        })
        .collect();
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": { "mediaType": config_type, "digest": config_digest, "size": config_size },
        "layers": layers,
    }))
    .unwrap()
}

/// Writes an OCI layout at `dir` holding, named `name`, an index of one tiny image per
/// architecture in `architectures` (linux), plus an attestation manifest for the first.
pub fn write_layout(dir: &Path, name: &str, architectures: &[&str]) -> MultiPlatform {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let mut descriptors = Vec::new();
    let mut entries = Vec::new();
    for arch in architectures {
        let layer = tar_of(&[("etc/architecture", arch.as_bytes())]);
        let config = serde_json::to_vec(&json!({
            "architecture": arch,
            "os": "linux",
            "config": { "Cmd": ["/bin/true"] },
            "rootfs": { "type": "layers", "diff_ids": [sha256_digest(&layer)] },
        }))
        .unwrap();
        let bytes = manifest(
            dir,
            OCI_CONFIG,
            &config,
            &[("application/vnd.oci.image.layer.v1.tar", layer)],
        );
        let (digest, size) = blob(dir, &bytes);
        descriptors.push(json!({
            "mediaType": OCI_MANIFEST, "digest": digest, "size": size,
            "platform": { "architecture": arch, "os": "linux" },
        }));
        entries.push(Entry {
            platform: format!("linux/{arch}"),
            digest,
        });
    }
    let statement = json!({ "_type": "https://in-toto.io/Statement/v0.1", "subject": [] });
    let attestation = manifest(
        dir,
        OCI_CONFIG,
        br#"{"architecture":"unknown","os":"unknown","config":{},"rootfs":{"type":"layers","diff_ids":[]}}"#,
        &[(
            "application/vnd.in-toto+json",
            serde_json::to_vec(&statement).unwrap(),
        )],
    );
    let (digest, size) = blob(dir, &attestation);
    descriptors.push(json!({
        "mediaType": OCI_MANIFEST, "digest": digest, "size": size,
        "platform": { "architecture": "unknown", "os": "unknown" },
        "annotations": {
            "vnd.docker.reference.digest": entries[0].digest,
            "vnd.docker.reference.type": "attestation-manifest",
        },
    }));
    entries.push(Entry {
        platform: "unknown/unknown".into(),
        digest,
    });
    let index_bytes = serde_json::to_vec_pretty(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": descriptors,
        "annotations": { "org.opencontainers.image.description": "made by hand" },
    }))
    .unwrap();
    let (index_digest, size) = blob(dir, &index_bytes);
    let top = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": OCI_INDEX, "digest": index_digest, "size": size,
            "annotations": { "org.opencontainers.image.ref.name": name },
        }],
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
    let blobs = std::fs::read_dir(dir.join("blobs/sha256"))
        .unwrap()
        .map(|e| format!("sha256:{}", e.unwrap().file_name().to_string_lossy()))
        .filter(|d| *d != index_digest && !entries.iter().any(|e| e.digest == *d))
        .collect();
    MultiPlatform {
        index_digest,
        index_bytes,
        entries,
        blobs,
    }
}
