//! Publishing an image, or an index of images one per platform, to every output: first all
//! blobs to all destinations (a HEAD skips what a registry has, a cross-repository mount links
//! what the same registry has elsewhere, the rest is uploaded from disk; a blob several
//! platforms share goes once), then the manifests (an index's entries by digest) and last the
//! tags. A failure before the tags leaves no tag anywhere, so no tag ever points at a manifest
//! or index with missing parts. How far each destination is goes to a [`Reporter`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use futures_util::stream::{self, TryStreamExt};

use std::collections::HashSet;

use super::{layout, local_blob, BlobSource, Location, Opened, SourceImage, Wanted};
use crate::blocking;
use crate::cache::BlobStore;
use crate::digest::Digest;
use crate::error::Result;
use crate::image::{self, Descriptor, Index, Manifest, MediaFamily, Platform, Stored};
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

    /// An existing manifest, copied as it is: its bytes are kept, so its digest is too; its
    /// config and layers are copied from `blobs` (whatever they are: an attestation manifest
    /// of an index is copied like an image).
    fn copy_of(stored: &Stored, blobs: &BlobSource, place: &Location) -> Result<Self> {
        let manifest: Manifest = image::parse_json(
            &format!("the manifest {} of {place}", stored.digest),
            &stored.bytes,
        )?;
        let digests = std::iter::once(&manifest.config)
            .chain(&manifest.layers)
            .map(|d| d.digest.clone())
            .collect();
        Ok(Self {
            manifest,
            manifest_bytes: stored.bytes.clone(),
            digest: stored.digest.clone(),
            inherited: vec![Inherited {
                source: blobs.clone(),
                digests,
            }],
        })
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

/// What [`publish`] writes: one image, or an index of images, one per platform.
#[derive(Clone)]
pub struct Publication {
    /// What the outputs are tagged with: the image's manifest, or the index.
    pub top: Stored,
    /// The image, or the index's entries (each pushed by digest before the index).
    pub images: Vec<BuiltImage>,
}

impl Publication {
    pub fn image(image: BuiltImage) -> Self {
        let top = Stored {
            bytes: image.manifest_bytes.clone(),
            digest: image.digest.clone(),
            media_type: image.media_type().to_string(),
        };
        Self {
            top,
            images: vec![image],
        }
    }

    /// One platform's image as it is, several platforms' images as their [`index`](Self::index).
    pub fn of(mut images: Vec<(Platform, BuiltImage)>) -> Self {
        match images.len() {
            1 => Self::image(images.remove(0).1),
            _ => Self::index(images),
        }
    }

    /// The index of `images`, each entry labelled with its platform: a Docker manifest list
    /// when every image is a Docker schema 2 one, else an OCI index.
    pub fn index(images: Vec<(Platform, BuiltImage)>) -> Self {
        let all_docker = images
            .iter()
            .all(|(_, image)| image.manifest.family().ok() == Some(MediaFamily::Docker));
        let media_type = if all_docker {
            image::DOCKER_MANIFEST_LIST
        } else {
            image::OCI_INDEX
        };
        let index = Index {
            schema_version: 2,
            media_type: Some(media_type.to_string()),
            manifests: images
                .iter()
                .map(|(platform, image)| {
                    let mut entry = image.descriptor();
                    entry.platform = Some(platform.clone());
                    entry
                })
                .collect(),
            annotations: Default::default(),
        };
        let bytes = serde_json::to_vec(&index).expect("an index serializes");
        Self {
            top: Stored {
                digest: Digest::of(&bytes),
                bytes,
                media_type: media_type.to_string(),
            },
            images: images.into_iter().map(|(_, image)| image).collect(),
        }
    }

    /// What a location holds, copied as it is: an image, or an index with every entry, byte
    /// for byte, so digests do not change. With `platforms`, an index is cut down to those
    /// platforms' entries (a new index, with a new digest; the entries keep theirs), and an
    /// image must be for one of them.
    pub async fn copy(
        location: &Location,
        platforms: Option<&[Platform]>,
        registries: &crate::registry::Registries,
        store: &BlobStore,
    ) -> Result<Self> {
        let opened = Opened::open(location, registries, store).await?;
        let wanted = platforms.map(Wanted::These);
        let Some(mut index) = opened.index()? else {
            if let Some(wanted) = wanted {
                let image = SourceImage::read(&opened, opened.named.clone(), None, store).await?;
                wanted.check_image(&image.platform, location)?;
            }
            let image = BuiltImage::copy_of(&opened.named, &opened.blobs, location)?;
            return Ok(Self::image(image));
        };
        let mut top = opened.named.clone();
        if let Some(wanted) = wanted {
            let kept: Vec<Descriptor> = wanted
                .entries(&index, location)?
                .into_iter()
                .cloned()
                .collect();
            if kept.len() != index.manifests.len() {
                index.manifests = kept;
                let bytes = serde_json::to_vec(&index).expect("an index serializes");
                top = Stored::new(bytes, top.media_type);
            }
        }
        let mut images = Vec::with_capacity(index.manifests.len());
        for entry in &index.manifests {
            let stored = opened.entry(entry, store).await?;
            images.push(BuiltImage::copy_of(&stored, &opened.blobs, location)?);
        }
        Ok(Self { top, images })
    }

    pub fn digest(&self) -> &Digest {
        &self.top.digest
    }

    /// The image `docker load` gets of a tarball, which holds one image a name: of an index,
    /// this machine's platform's, else the first.
    fn image_docker_loads(&self) -> &BuiltImage {
        let index = self
            .is_index()
            .then(|| serde_json::from_slice::<Index>(&self.top.bytes).ok())
            .flatten();
        index
            .and_then(|index| {
                let entry = index.manifest_for(&Platform::this_machine()).ok()?;
                self.images.iter().find(|i| i.digest == entry.digest)
            })
            .unwrap_or(&self.images[0])
    }

    fn is_index(&self) -> bool {
        self.top.is_index()
    }

    /// The manifests an index lists, stored before it (none for a plain image).
    fn entries(&self) -> &[BuiltImage] {
        match self.is_index() {
            true => &self.images,
            false => &[],
        }
    }

    /// Every blob of every image once, with the image it is of.
    fn blobs(&self) -> Vec<(&BuiltImage, &Descriptor)> {
        let mut seen = HashSet::new();
        self.images
            .iter()
            .flat_map(|image| image.blobs().map(move |blob| (image, blob)))
            .filter(|(_, blob)| seen.insert(blob.digest.clone()))
            .collect()
    }
}

/// Publishes the image or index to every output and returns, per output, the reference by
/// digest. Progress goes to the process's reporter (see [`progress::reporter`]).
pub async fn publish(
    publication: &Publication,
    outputs: &[Location],
    registries: &Registries,
    store: &BlobStore,
) -> Result<Vec<String>> {
    let reporter = progress::reporter();
    let started = Instant::now();
    // Phase 1: every blob to every destination.
    for output in outputs {
        if let Location::Registry(reference) = output {
            push_blobs(publication, reference, registries, store, &reporter).await?;
        }
    }
    let mut local_blobs = Vec::new();
    if outputs.iter().any(|o| !matches!(o, Location::Registry(_))) {
        for (image, descriptor) in publication.blobs() {
            local_blobs.push((
                descriptor.digest.clone(),
                image.local_path(descriptor, store).await?,
            ));
        }
    }
    // Phase 2: manifests (an index's entries first, by digest), then tags.
    let digest = publication.digest();
    let mut published = Vec::new();
    for output in outputs {
        let pinned = match output {
            Location::Registry(reference) => {
                let client = registries.client(&reference.registry)?;
                let repo = &reference.repository;
                for image in publication.entries() {
                    client
                        .put_manifest(
                            repo,
                            &image.digest.to_string(),
                            &image.manifest_bytes,
                            image.media_type(),
                        )
                        .await?;
                }
                let tag = reference.tag.clone().unwrap_or_else(|| digest.to_string());
                let top = &publication.top;
                client
                    .put_manifest(repo, &tag, &top.bytes, &top.media_type)
                    .await?;
                reference.with_digest(digest).to_string()
            }
            // Blobs are copied on a blocking thread: layers can be large.
            local => {
                let (publication, output, blobs) =
                    (publication.clone(), local.clone(), local_blobs.clone());
                blocking::run(move || write_local(&publication, &output, &blobs)).await?
            }
        };
        tracing::info!(image = %pinned, "published");
        published.push(pinned);
    }
    tracing::debug!(elapsed = ?started.elapsed(), "publish finished");
    Ok(published)
}

/// Writes the image or index into an OCI layout or a tarball, its blobs copied from their
/// local files; returns its reference there.
fn write_local(
    publication: &Publication,
    output: &Location,
    local_blobs: &[(Digest, PathBuf)],
) -> Result<String> {
    let top = &publication.top;
    // An index's entries are blobs of the layout.
    let entries: Vec<&[u8]> = publication
        .entries()
        .iter()
        .map(|i| i.manifest_bytes.as_slice())
        .collect();
    match output {
        Location::Registry(_) => unreachable!("registries are written through their client"),
        Location::Layout { dir, tag } => {
            layout::write_image(
                dir,
                tag.as_deref(),
                local_blobs,
                &entries,
                &top.bytes,
                &top.media_type,
            )?;
            Ok(format!("oci:{}@{}", dir.display(), top.digest))
        }
        Location::Tarball { file, name } => {
            let loaded = publication.image_docker_loads();
            layout::write_tarball(
                file,
                name.as_deref(),
                &loaded.manifest,
                local_blobs,
                &entries,
                top,
            )?;
            Ok(format!("tar:{}@{}", file.display(), top.digest))
        }
    }
}

/// Makes sure the destination repository has every blob of every image.
async fn push_blobs(
    publication: &Publication,
    destination: &Reference,
    registries: &Registries,
    store: &BlobStore,
    reporter: &Arc<dyn Reporter>,
) -> Result<()> {
    let client = registries.client(&destination.registry)?;
    let repo = destination.repository.as_str();
    client.check_push_access(repo).await?;
    let blobs = publication.blobs();
    let configs: HashSet<&Digest> = publication
        .images
        .iter()
        .map(|i| &i.manifest.config.digest)
        .collect();
    let id = reporter.on_destination_start(
        &destination.to_string(),
        blobs
            .iter()
            .filter(|(_, d)| !configs.contains(&d.digest))
            .count(),
        blobs.iter().map(|(_, d)| d.size).sum(),
    );
    let configs = &configs;
    let pushed = stream::iter(blobs.into_iter().map(Ok))
        .try_for_each_concurrent(PARALLEL_BLOBS, |(image, descriptor)| {
            let client = client.clone();
            async move {
                let digest = &descriptor.digest;
                let blob = Blob {
                    digest,
                    size: descriptor.size,
                    is_layer: !configs.contains(digest),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::tests::index_fixture;

    #[tokio::test]
    async fn a_copy_keeps_the_index_and_its_entries_byte_for_byte() {
        let (dir, location, index, entries, store, registries) = index_fixture();
        let copy = Publication::copy(&location, None, &registries, &store)
            .await
            .unwrap();
        assert_eq!(copy.top.bytes, index.bytes);
        assert_eq!(copy.digest(), &index.digest);
        let copied: Vec<&Digest> = copy.images.iter().map(|i| &i.digest).collect();
        let listed: Vec<&Digest> = entries.iter().map(|(_, d)| d).collect();
        assert_eq!(copied, listed, "every entry, the attestation too");
        for image in &copy.images {
            assert_eq!(Digest::of(&image.manifest_bytes), image.digest);
        }

        // Written to another layout, it is the same index there.
        let out = Location::Layout {
            dir: dir.path().join("copy"),
            tag: Some("v1".into()),
        };
        publish(&copy, std::slice::from_ref(&out), &registries, &store)
            .await
            .unwrap();
        let again = Publication::copy(&out, None, &registries, &store)
            .await
            .unwrap();
        assert_eq!(again.top.bytes, index.bytes);

        // One platform: a new index of that entry alone, which keeps its digest.
        let (other, other_digest) = &entries[1];
        let cut = Publication::copy(
            &location,
            Some(std::slice::from_ref(other)),
            &registries,
            &store,
        )
        .await
        .unwrap();
        assert_ne!(cut.digest(), &index.digest);
        let cut_index: Index = serde_json::from_slice(&cut.top.bytes).unwrap();
        assert_eq!(cut_index.manifests.len(), 1);
        assert_eq!(&cut_index.manifests[0].digest, other_digest);
        assert_eq!(&cut.images[0].digest, other_digest);
    }
}
