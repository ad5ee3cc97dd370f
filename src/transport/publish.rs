//! Publishing a built image to every output: first all blobs to all destinations (a HEAD
//! skips what a registry has, a cross-repository mount links what the same registry has
//! elsewhere, the rest is uploaded from disk), then the manifests and tags. A failure in the
//! first phase leaves no tag anywhere, so no tag ever points at a manifest with missing blobs.

use std::path::PathBuf;
use std::time::Instant;

use futures_util::stream::{self, TryStreamExt};

use std::collections::HashSet;

use super::{layout, local_blob, BlobSource, Location, SourceImage};
use crate::cache::BlobStore;
use crate::digest::Digest;
use crate::error::Result;
use crate::image::{Descriptor, Manifest};
use crate::registry::{Reference, Registries};

/// Blob transfers run at once per destination.
const PARALLEL_BLOBS: usize = 4;

/// Blobs an image shares with the image it was made from, and where they are.
pub struct Inherited {
    pub source: BlobSource,
    pub digests: HashSet<Digest>,
}

impl Inherited {
    /// The layers of `image`, at its blob source.
    pub fn layers_of(image: &SourceImage) -> Self {
        Self {
            source: image.blobs.clone(),
            digests: image
                .manifest
                .layers
                .iter()
                .map(|l| l.digest.clone())
                .collect(),
        }
    }
}

/// An image ready to publish. Its new blobs are in the local blob store; the ones it inherits
/// stay where they are until a destination needs them.
pub struct BuiltImage {
    pub manifest: Manifest,
    pub manifest_bytes: Vec<u8>,
    pub digest: Digest,
    pub inherited: Option<Inherited>,
}

impl BuiltImage {
    pub fn new(manifest: Manifest, inherited: Option<Inherited>) -> Self {
        let manifest_bytes = manifest.to_bytes();
        let digest = Digest::of(&manifest_bytes);
        Self {
            manifest,
            manifest_bytes,
            digest,
            inherited,
        }
    }

    /// An existing image, copied as it is: its manifest bytes are kept, so its digest is too.
    pub fn copy_of(source: &SourceImage) -> Self {
        let mut inherited = Inherited::layers_of(source);
        inherited
            .digests
            .insert(source.manifest.config.digest.clone());
        Self {
            manifest: source.manifest.clone(),
            manifest_bytes: source.manifest_bytes.clone(),
            digest: source.digest.clone(),
            inherited: Some(inherited),
        }
    }

    fn media_type(&self) -> &str {
        self.manifest
            .media_type
            .as_deref()
            .unwrap_or(crate::image::OCI_MANIFEST)
    }

    /// The config and the layers, in that order.
    fn blobs(&self) -> impl Iterator<Item = &Descriptor> {
        std::iter::once(&self.manifest.config).chain(&self.manifest.layers)
    }

    /// Where an inherited blob is, if this one is inherited.
    fn inherited_source(&self, digest: &Digest) -> Option<&BlobSource> {
        self.inherited
            .as_ref()
            .filter(|i| i.digests.contains(digest))
            .map(|i| &i.source)
    }

    async fn local_path(&self, descriptor: &Descriptor, store: &BlobStore) -> Result<PathBuf> {
        match self.inherited_source(&descriptor.digest) {
            Some(source) if !store.contains(&descriptor.digest) => {
                local_blob(source, descriptor, store).await
            }
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
                if let Some(BlobSource::Registry { client: from, repository }) = image.inherited_source(digest) {
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
