//! Artifacts attached to an image in a registry (its SBOM, say) as OCI 1.1 defines them: a
//! manifest whose `subject` is the image, stored by digest in the image's repository.
//! Registries with the referrers API index it themselves (they answer the manifest PUT with
//! `OCI-Subject`); for the others fnbuild keeps the referrers tag schema the spec gives as the
//! fallback: an index tagged `sha256-<image digest hex>` listing the image's referrers, which
//! `oras discover` and `cosign` read as well.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{json, Value};

use crate::cache::BlobStore;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::{Descriptor, OCI_INDEX, OCI_MANIFEST};
use crate::registry::{RegistryClient, RegistryError};

/// The OCI empty descriptor's media type and content, the config of artifacts without one.
pub const EMPTY_CONFIG_TYPE: &str = "application/vnd.oci.empty.v1+json";
pub const EMPTY_CONFIG: &[u8] = b"{}";

/// One blob to attach, and what it is.
pub struct Artifact<'a> {
    pub artifact_type: &'a str,
    /// The blob's media type (the artifact type, for a single-document artifact).
    pub media_type: &'a str,
    pub bytes: &'a [u8],
    pub annotations: BTreeMap<String, String>,
}

/// Where an artifact was attached.
#[derive(Debug)]
pub struct Attached {
    pub digest: Digest,
    /// The fallback tag that lists it, when the registry has no referrers API.
    pub fallback_tag: Option<String>,
}

/// Attaches `artifact` to the image `subject` in `repo`.
pub async fn attach(
    client: &Arc<RegistryClient>,
    repo: &str,
    subject: &Descriptor,
    artifact: &Artifact<'_>,
    store: &BlobStore,
) -> Result<Attached> {
    let blob = store.insert_bytes(artifact.bytes)?;
    let config = store.insert_bytes(EMPTY_CONFIG)?;
    for (digest, size) in [(&blob, artifact.bytes.len()), (&config, EMPTY_CONFIG.len())] {
        if !client.blob_exists(repo, digest).await? {
            client
                .upload_blob(
                    repo,
                    digest,
                    size as u64,
                    &store.path(digest),
                    Arc::new(|_| {}),
                )
                .await?;
        }
    }
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact.artifact_type,
        "config": Descriptor::new(EMPTY_CONFIG_TYPE, config, EMPTY_CONFIG.len() as u64),
        "layers": [Descriptor::new(artifact.media_type, blob, artifact.bytes.len() as u64)],
        "subject": {
            "mediaType": subject.media_type,
            "digest": subject.digest,
            "size": subject.size,
        },
        "annotations": artifact.annotations,
    });
    let bytes = serde_json::to_vec(&manifest).expect("a manifest serializes");
    let digest = Digest::of(&bytes);
    let indexed = client
        .put_manifest(repo, &digest.to_string(), &bytes, OCI_MANIFEST)
        .await?;
    if indexed {
        return Ok(Attached {
            digest,
            fallback_tag: None,
        });
    }
    let mut descriptor = json!({
        "mediaType": OCI_MANIFEST,
        "digest": digest,
        "size": bytes.len(),
        "artifactType": artifact.artifact_type,
    });
    if !artifact.annotations.is_empty() {
        descriptor["annotations"] = json!(artifact.annotations);
    }
    let tag = fallback_tag(&subject.digest);
    add_to_fallback_index(client, repo, &tag, descriptor).await?;
    Ok(Attached {
        digest,
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
            .filter(|i| i["manifests"].is_array())
            .ok_or_else(|| {
                Error::Image(format!(
                    "{}/{repo}:{tag} is not an image index, so it cannot list the image's \
                     referrers; delete or retag it",
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
