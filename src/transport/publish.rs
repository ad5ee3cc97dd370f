//! Publishing a built image to every output: first all blobs to all destinations (a HEAD
//! skips what a registry has, a cross-repository mount links what the same registry has
//! elsewhere, the rest is uploaded from disk), then the manifests and tags. A failure in the
//! first phase leaves no tag anywhere, so no tag ever points at a manifest with missing blobs.

use std::path::PathBuf;
use std::time::Instant;

use futures_util::stream::{self, TryStreamExt};

use super::{layout, local_blob, BlobSource, Location};
use crate::cache::BlobStore;
use crate::digest::Digest;
use crate::error::Result;
use crate::image::{Descriptor, Manifest};
use crate::registry::{Reference, Registries};

/// Blob transfers run at once per destination.
const PARALLEL_BLOBS: usize = 4;

/// An image ready to publish. Blobs not in the local cache are the base image's, found at
/// `base_blobs`.
pub struct BuiltImage {
    pub manifest: Manifest,
    pub manifest_bytes: Vec<u8>,
    pub digest: Digest,
    pub base_blobs: Option<BlobSource>,
}

impl BuiltImage {
    pub fn new(manifest: Manifest, base_blobs: Option<BlobSource>) -> Self {
        let manifest_bytes = manifest.to_bytes();
        let digest = Digest::of(&manifest_bytes);
        Self {
            manifest,
            manifest_bytes,
            digest,
            base_blobs,
        }
    }

    fn media_type(&self) -> &str {
        self.manifest
            .media_type
            .as_deref()
            .unwrap_or(crate::image::OCI_MANIFEST)
    }

    /// An existing image, copied as it is: its manifest bytes are kept, so its digest is too.
    pub fn copy_of(source: &super::SourceImage) -> Self {
        Self {
            manifest: source.manifest.clone(),
            manifest_bytes: source.manifest_bytes.clone(),
            digest: source.digest.clone(),
            base_blobs: Some(source.blobs.clone()),
        }
    }

    /// The config and the layers, in that order.
    fn blobs(&self) -> impl Iterator<Item = &Descriptor> {
        std::iter::once(&self.manifest.config).chain(&self.manifest.layers)
    }

    async fn local_path(&self, descriptor: &Descriptor, store: &BlobStore) -> Result<PathBuf> {
        match (&self.base_blobs, store.contains(&descriptor.digest)) {
            (Some(source), false) => local_blob(source, descriptor, store).await,
            _ => Ok(store.path(&descriptor.digest)),
        }
    }
}

/// Publishes the image to every output and returns, per output, the reference by digest.
pub async fn publish(
    image: &BuiltImage,
    outputs: &[Location],
    registries: &Registries,
    store: &BlobStore,
) -> Result<Vec<String>> {
    let started = Instant::now();
    // Phase 1: every blob to every destination.
    for output in outputs {
        if let Location::Registry(reference) = output {
            push_blobs(image, reference, registries, store).await?;
        }
    }
    let mut local_blobs = Vec::new();
    if outputs.iter().any(|o| !matches!(o, Location::Registry(_))) {
        for descriptor in image.blobs() {
            local_blobs.push((
                descriptor.digest.clone(),
                image.local_path(descriptor, store).await?,
            ));
        }
    }
    // Phase 2: manifests and tags.
    let mut published = Vec::new();
    for output in outputs {
        let pinned = match output {
            Location::Registry(reference) => {
                let client = registries.client(&reference.registry)?;
                let tag = reference
                    .tag
                    .clone()
                    .unwrap_or_else(|| image.digest.to_string());
                client
                    .put_manifest(
                        &reference.repository,
                        &tag,
                        &image.manifest_bytes,
                        image.media_type(),
                    )
                    .await?;
                reference.with_digest(&image.digest).to_string()
            }
            Location::Layout { dir, tag } => {
                layout::write_image(
                    dir,
                    tag.as_deref(),
                    &local_blobs,
                    &image.manifest_bytes,
                    image.media_type(),
                )?;
                format!("oci:{}@{}", dir.display(), image.digest)
            }
            Location::Tarball(file) => {
                let layers: Vec<Digest> = image
                    .manifest
                    .layers
                    .iter()
                    .map(|l| l.digest.clone())
                    .collect();
                layout::write_tarball(
                    file,
                    None,
                    &image.manifest.config.digest,
                    &layers,
                    &local_blobs,
                    &image.manifest_bytes,
                    image.media_type(),
                )?;
                format!("tar:{}@{}", file.display(), image.digest)
            }
        };
        tracing::info!(image = %pinned, "published");
        published.push(pinned);
    }
    tracing::debug!(elapsed = ?started.elapsed(), "publish finished");
    Ok(published)
}

/// Makes sure the destination repository has every blob of the image.
async fn push_blobs(
    image: &BuiltImage,
    destination: &Reference,
    registries: &Registries,
    store: &BlobStore,
) -> Result<()> {
    let client = registries.client(&destination.registry)?;
    let repo = destination.repository.as_str();
    client.check_push_access(repo).await?;
    stream::iter(image.blobs().map(Ok))
        .try_for_each_concurrent(PARALLEL_BLOBS, |descriptor| {
            let client = client.clone();
            async move {
                let digest = &descriptor.digest;
                if client.blob_exists(repo, digest).await? {
                    tracing::debug!(%digest, "blob already in {}", destination.repository_name());
                    return Ok(());
                }
                if let Some(BlobSource::Registry { client: from, repository }) = &image.base_blobs {
                    if from.registry() == client.registry() && client.mount_blob(repo, digest, repository).await? {
                        tracing::info!(%digest, from = %repository, "mounted blob");
                        return Ok(());
                    }
                }
                let path = image.local_path(descriptor, store).await?;
                let started = Instant::now();
                client.upload_blob(repo, digest, descriptor.size, &path).await?;
                tracing::info!(%digest, size = descriptor.size, elapsed = ?started.elapsed(), to = %destination.repository_name(), "uploaded blob");
                Ok(())
            }
        })
        .await
}
