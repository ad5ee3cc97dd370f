//! Publishing a built image to every output: first all blobs to all destinations (a HEAD
//! skips what a registry has, a cross-repository mount links what the same registry has
//! elsewhere, the rest is uploaded from disk), then the manifests and tags. A failure in the
//! first phase leaves no tag anywhere, so no tag ever points at a manifest with missing blobs.
//! How far each destination is goes to a [`Reporter`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use futures_util::stream::{self, TryStreamExt};

use std::collections::HashSet;

use super::{layout, local_blob, BlobSource, Location, SourceImage};
use crate::blocking;
use crate::cache::BlobStore;
use crate::digest::Digest;
use crate::error::Result;
use crate::image::{Descriptor, Manifest};
use crate::progress::{self, Blob, BlobOutcome, Reporter};
use crate::registry::{Reference, Registries};

/// Blob transfers run at once per destination.
const PARALLEL_BLOBS: usize = 4;

/// Blobs an image shares with the image it was made from, and where they are.
#[derive(Clone)]
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
#[derive(Clone)]
pub struct BuiltImage {
    pub manifest: Manifest,
    pub manifest_bytes: Vec<u8>,
    pub digest: Digest,
    /// Blobs it shares with other images, and where those are.
    pub inherited: Vec<Inherited>,
}

impl BuiltImage {
    pub fn new(manifest: Manifest, inherited: Vec<Inherited>) -> Self {
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
            inherited: vec![inherited],
        }
    }

    fn media_type(&self) -> &str {
        self.manifest
            .media_type
            .as_deref()
            .unwrap_or(crate::image::OCI_MANIFEST)
    }

    /// The descriptor of the image's manifest (what an artifact referring to it names).
    pub fn descriptor(&self) -> Descriptor {
        Descriptor::new(
            self.media_type(),
            self.digest.clone(),
            self.manifest_bytes.len() as u64,
        )
    }

    /// The config and the layers, in that order.
    fn blobs(&self) -> impl Iterator<Item = &Descriptor> {
        std::iter::once(&self.manifest.config).chain(&self.manifest.layers)
    }

    /// Where an inherited blob is, if this one is inherited.
    fn inherited_source(&self, digest: &Digest) -> Option<&BlobSource> {
        self.inherited
            .iter()
            .find(|i| i.digests.contains(digest))
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
/// Progress goes to the process's reporter (see [`progress::reporter`]).
pub async fn publish(
    image: &BuiltImage,
    outputs: &[Location],
    registries: &Registries,
    store: &BlobStore,
) -> Result<Vec<String>> {
    let reporter = progress::reporter();
    let started = Instant::now();
    // Phase 1: every blob to every destination.
    for output in outputs {
        if let Location::Registry(reference) = output {
            push_blobs(image, reference, registries, store, &reporter).await?;
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
            // Blobs are copied on a blocking thread: layers can be large.
            local => {
                let (image, output, blobs) = (image.clone(), local.clone(), local_blobs.clone());
                blocking::run(move || write_local(&image, &output, &blobs)).await?
            }
        };
        tracing::info!(image = %pinned, "published");
        published.push(pinned);
    }
    tracing::debug!(elapsed = ?started.elapsed(), "publish finished");
    Ok(published)
}

/// Writes the image into an OCI layout or a tarball, its blobs copied from their local files;
/// returns the image's reference there.
fn write_local(
    image: &BuiltImage,
    output: &Location,
    local_blobs: &[(Digest, PathBuf)],
) -> Result<String> {
    match output {
        Location::Registry(_) => unreachable!("registries are written through their client"),
        Location::Layout { dir, tag } => {
            layout::write_image(
                dir,
                tag.as_deref(),
                local_blobs,
                &image.manifest_bytes,
                image.media_type(),
            )?;
            Ok(format!("oci:{}@{}", dir.display(), image.digest))
        }
        Location::Tarball { file, name } => {
            let layers: Vec<Digest> = image
                .manifest
                .layers
                .iter()
                .map(|l| l.digest.clone())
                .collect();
            layout::write_tarball(
                file,
                name.as_deref(),
                &image.manifest.config.digest,
                &layers,
                local_blobs,
                &image.manifest_bytes,
                image.media_type(),
            )?;
            Ok(format!("tar:{}@{}", file.display(), image.digest))
        }
    }
}

/// Makes sure the destination repository has every blob of the image.
async fn push_blobs(
    image: &BuiltImage,
    destination: &Reference,
    registries: &Registries,
    store: &BlobStore,
    reporter: &Arc<dyn Reporter>,
) -> Result<()> {
    let client = registries.client(&destination.registry)?;
    let repo = destination.repository.as_str();
    client.check_push_access(repo).await?;
    let id = reporter.on_destination_start(
        &destination.to_string(),
        image.manifest.layers.len(),
        image.blobs().map(|d| d.size).sum(),
    );
    let config = &image.manifest.config.digest;
    let pushed = stream::iter(image.blobs().map(Ok))
        .try_for_each_concurrent(PARALLEL_BLOBS, |descriptor| {
            let client = client.clone();
            async move {
                let digest = &descriptor.digest;
                let blob = Blob {
                    digest,
                    size: descriptor.size,
                    is_layer: digest != config,
                };
                if client.blob_exists(repo, digest).await? {
                    reporter.on_blob_done(id, &blob, BlobOutcome::Present);
                    return Ok(());
                }
                if let Some(BlobSource::Registry {
                    client: from,
                    repository,
                }) = image.inherited_source(digest)
                {
                    if from.registry() == client.registry()
                        && client.mount_blob(repo, digest, repository).await?
                    {
                        reporter.on_blob_done(
                            id,
                            &blob,
                            BlobOutcome::Mounted {
                                from: repository.clone(),
                            },
                        );
                        return Ok(());
                    }
                }
                let path = image.local_path(descriptor, store).await?;
                let started = Instant::now();
                reporter.on_blob_start(id, &blob);
                let on_sent = {
                    let (reporter, digest, size) =
                        (reporter.clone(), digest.clone(), descriptor.size);
                    let is_layer = blob.is_layer;
                    Arc::new(move |sent| {
                        reporter.on_blob_progress(
                            id,
                            &Blob {
                                digest: &digest,
                                size,
                                is_layer,
                            },
                            sent,
                        )
                    })
                };
                client
                    .upload_blob(repo, digest, descriptor.size, &path, on_sent)
                    .await?;
                reporter.on_blob_done(
                    id,
                    &blob,
                    BlobOutcome::Uploaded {
                        elapsed: started.elapsed(),
                    },
                );
                Ok(())
            }
        })
        .await;
    reporter.on_destination_done(id, pushed.is_ok());
    pushed
}
