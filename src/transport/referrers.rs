//! OCI artifacts in a registry: pushing one (a manifest with an `artifactType`, the empty
//! config and its blobs as layers), and attaching one to an image as OCI 1.1 defines it: an
//! artifact whose `subject` is the image, stored by digest in the image's repository (its
//! SBOM, say). Registries with the referrers API index it themselves (they answer the manifest
//! PUT with `OCI-Subject`); for the others fnbuild keeps the referrers tag schema the spec
//! gives as the fallback: an index tagged `sha256-<image digest hex>` listing the image's
//! referrers, which `oras discover` and `cosign` read as well. That index is read, changed and
//! written back: two builds attaching to the same image at the same moment may lose one entry.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{json, Value};

use crate::cache::BlobStore;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::{Descriptor, OCI_INDEX, OCI_MANIFEST};
use crate::registry::{RegistryClient, RegistryError};

/// The OCI empty descriptor's media type and content, the config of artifacts.
const EMPTY_CONFIG_TYPE: &str = "application/vnd.oci.empty.v1+json";
const EMPTY_CONFIG: &[u8] = b"{}";

/// An artifact to push: its type, its blobs (already in the local blob store), the image it
/// refers to, if any, and its annotations.
pub struct Artifact<'a> {
    pub artifact_type: &'a str,
    pub layers: Vec<Descriptor>,
    pub subject: Option<&'a Descriptor>,
    pub annotations: BTreeMap<String, String>,
}

/// A pushed artifact manifest.
#[derive(Debug)]
pub struct Pushed {
    pub digest: Digest,
    pub size: u64,
    /// The registry indexed its subject itself (it has the referrers API).
    pub subject_indexed: bool,
}

/// Pushes the blobs of `artifact` the repository lacks, then its manifest under `tag`, or by
/// digest when there is none.
pub async fn push_artifact(
    client: &RegistryClient,
    repo: &str,
    artifact: &Artifact<'_>,
    tag: Option<&str>,
    store: &BlobStore,
) -> Result<Pushed> {
    client.check_push_access(repo).await?;
    let config = store.insert_bytes(EMPTY_CONFIG)?;
    let config = Descriptor::new(EMPTY_CONFIG_TYPE, config, EMPTY_CONFIG.len() as u64);
    for blob in std::iter::once(&config).chain(&artifact.layers) {
        if !client.blob_exists(repo, &blob.digest).await? {
            client
                .upload_blob(
                    repo,
                    &blob.digest,
                    blob.size,
                    &store.path(&blob.digest),
                    Arc::new(|_| {}),
                )
                .await?;
        }
    }
    let mut manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact.artifact_type,
        "config": config,
        "layers": artifact.layers,
        "annotations": artifact.annotations,
    });
    if let Some(subject) = artifact.subject {
        manifest["subject"] = json!(Descriptor::new(
            subject.media_type.clone(),
            subject.digest.clone(),
            subject.size
        ));
    }
    let bytes = serde_json::to_vec(&manifest).expect("a manifest serializes");
    let digest = Digest::of(&bytes);
    let reference = tag.map_or_else(|| digest.to_string(), str::to_string);
    let subject_indexed = client
        .put_manifest(repo, &reference, &bytes, OCI_MANIFEST)
        .await?;
    Ok(Pushed {
        digest,
        size: bytes.len() as u64,
        subject_indexed,
    })
}

/// Where an artifact was attached.
#[derive(Debug)]
pub struct Attached {
    pub digest: Digest,
    /// The fallback tag that lists it, when the registry has no referrers API.
    pub fallback_tag: Option<String>,
}

/// Attaches `artifact` (whose `subject` is the image) in `repo`, listing it at the fallback
/// tag when the registry does not index referrers itself.
pub async fn attach(
    client: &Arc<RegistryClient>,
    repo: &str,
    artifact: &Artifact<'_>,
    store: &BlobStore,
) -> Result<Attached> {
    let subject = artifact
        .subject
        .expect("an attached artifact names its subject");
    let pushed = push_artifact(client, repo, artifact, None, store).await?;
    if pushed.subject_indexed {
        return Ok(Attached {
            digest: pushed.digest,
            fallback_tag: None,
        });
    }
    let mut descriptor = json!({
        "mediaType": OCI_MANIFEST,
        "digest": pushed.digest,
        "size": pushed.size,
        "artifactType": artifact.artifact_type,
    });
    if !artifact.annotations.is_empty() {
        descriptor["annotations"] = json!(artifact.annotations);
    }
    let tag = fallback_tag(&subject.digest);
    add_to_fallback_index(client, repo, &tag, descriptor).await?;
    Ok(Attached {
        digest: pushed.digest,
        fallback_tag: Some(tag),
    })
}

/// The referrers tag schema's tag for an image: `<algorithm>-<hex>`.
pub fn fallback_tag(subject: &Digest) -> String {
    format!("sha256-{}", subject.hex())
}

/// Adds a referrer to the index at the fallback tag (made when missing), keeping the
/// referrers already listed.
async fn add_to_fallback_index(
    client: &RegistryClient,
    repo: &str,
    tag: &str,
    descriptor: Value,
) -> Result<()> {
    let mut index = match client.get_manifest(repo, tag).await {
        Ok(fetched) => serde_json::from_slice::<Value>(&fetched.bytes)
            .ok()
            .filter(|i| fetched.media_type == OCI_INDEX && i["manifests"].is_array())
            .ok_or_else(|| {
                Error::Image(format!(
                    "{}/{repo}:{tag} is not an OCI image index, so it cannot list the \
                     image's referrers; delete or retag it",
                    client.registry()
                ))
            })?,
        Err(RegistryError::NotFound { .. }) => {
            json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []})
        }
        Err(e) => return Err(e.into()),
    };
    let manifests = index["manifests"]
        .as_array_mut()
        .expect("checked to be an array");
    if manifests
        .iter()
        .any(|m| m["digest"] == descriptor["digest"])
    {
        return Ok(());
    }
    manifests.push(descriptor);
    let bytes = serde_json::to_vec(&index).expect("an index serializes");
    client.put_manifest(repo, tag, &bytes, OCI_INDEX).await?;
    Ok(())
}
