//! Making an image: a base (an image read from an output, or nothing) plus layers, with its
//! config changed, as go-containerregistry's `mutate.Append` and `mutate.Config` do. Here the
//! config gets its creation time, each layer its diff ID and history entry, the manifest its
//! layer descriptors (in the base's media-type family) and its annotations, and the config blob
//! is stored; every command that makes an image (`build`, `base`, `builder-image`) makes it
//! with an [`Append`].

use std::collections::BTreeMap;

use super::layer::BuiltLayer;
use super::{Descriptor, ImageConfig, Manifest, MediaFamily, Platform};
use crate::cache::BlobStore;
use crate::error::Result;
use crate::transport::publish::{BuiltImage, Inherited};
use crate::transport::{BlobSource, Location, SourceImage};

/// The annotation naming the base image by digest.
const BASE_DIGEST_ANNOTATION: &str = "org.opencontainers.image.base.digest";
/// The annotation naming the base image by reference.
const BASE_NAME_ANNOTATION: &str = "org.opencontainers.image.base.name";

/// Whether an image names its base by reference too, when the base was read from a registry
/// (always by digest).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaseName {
    Recorded,
    Omitted,
}

/// An image being made: its config, open to changes, and what it has so far.
pub struct Append {
    /// The image's config: the base's to start with, with the creation time set. Changing it
    /// is `mutate.Config`: env, user, working directory, entrypoint, ports, labels.
    pub config: ImageConfig,
    family: MediaFamily,
    layers: Vec<Descriptor>,
    annotations: BTreeMap<String, String>,
    inherited: Vec<Inherited>,
    created: String,
}

impl Append {
    /// An image of nothing yet: OCI media types, no layers, a config for `platform`.
    pub fn scratch(created: &str, platform: &Platform) -> Self {
        let mut config = ImageConfig {
            created: Some(created.to_string()),
            architecture: platform.architecture.clone(),
            os: platform.os.clone(),
            ..ImageConfig::default()
        };
        if let Some(variant) = &platform.variant {
            config
                .other
                .insert("variant".to_string(), variant.clone().into());
        }
        Self {
            config,
            family: MediaFamily::Oci,
            layers: Vec::new(),
            annotations: BTreeMap::new(),
            inherited: Vec::new(),
            created: created.to_string(),
        }
    }

    /// An image on `base`: its layers (which stay where the base is until an output needs
    /// them), its config and its media-type family. In the OCI family the image names its base
    /// (Docker schema 2 has no place for annotations).
    pub fn on(base: &SourceImage, name: BaseName, created: &str) -> Result<Self> {
        let family = base.manifest.family()?;
        let mut config = base.config.clone();
        config.created = Some(created.to_string());
        let mut image = Self {
            config,
            family,
            layers: base.manifest.layers.clone(),
            annotations: BTreeMap::new(),
            inherited: vec![Inherited::layers_of(base)],
            created: created.to_string(),
        };
        image.annotate([(BASE_DIGEST_ANNOTATION.to_string(), base.digest.to_string())]);
        if let (Location::Registry(reference), BaseName::Recorded) = (&base.location, name) {
            image.annotate([(BASE_NAME_ANNOTATION.to_string(), reference.to_string())]);
        }
        Ok(image)
    }

    /// Adds a layer on top, with the history entry saying what made it.
    pub fn layer(&mut self, layer: &BuiltLayer, created_by: String) {
        self.layers.push(Descriptor::new(
            self.family.layer_gzip(),
            layer.digest.clone(),
            layer.size,
        ));
        self.config
            .push_layer(layer.diff_id.clone(), &self.created, created_by);
    }

    /// Records that a layer's blob is not in the local blob store but at `source` (a deps layer
    /// found in the cache repository): outputs copy or mount it from there.
    pub fn layer_found_at(&mut self, layer: &BuiltLayer, source: &BlobSource) {
        self.inherited.push(Inherited {
            source: source.clone(),
            digests: [layer.digest.clone()].into(),
        });
    }

    /// Adds manifest annotations; a Docker schema 2 image has no place for them.
    pub fn annotate(&mut self, annotations: impl IntoIterator<Item = (String, String)>) {
        if self.family == MediaFamily::Oci {
            self.annotations.extend(annotations);
        }
    }

    /// Stores the config blob and makes the manifest: the image, ready to publish.
    pub fn finish(self, store: &BlobStore) -> Result<BuiltImage> {
        let config_bytes = self.config.to_bytes();
        let config_digest = store.insert_bytes(&config_bytes)?;
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(self.family.manifest().to_string()),
            config: Descriptor::new(
                self.family.config(),
                config_digest,
                config_bytes.len() as u64,
            ),
            layers: self.layers,
            annotations: self.annotations,
        };
        Ok(BuiltImage::new(manifest, self.inherited))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::Cache;
    use crate::image::layer::{write_layer, Entry, LayerOptions};
    use crate::image::{parse_json, DOCKER_LAYER_GZIP, DOCKER_MANIFEST, OCI_LAYER_GZIP};
    use crate::transport::BlobSource;

    const CREATED: &str = "2024-01-01T00:00:00Z";
    const LATER: &str = "2025-01-01T00:00:00Z";

    fn layer(store: &BlobStore, name: &str) -> BuiltLayer {
        let entries = vec![Entry::file(name, 0o644, name.as_bytes().to_vec())];
        write_layer(entries, &LayerOptions::default(), store).unwrap()
    }

    /// The image as an output would give it back, read from `location`.
    fn read_back(image: &BuiltImage, store: &BlobStore, location: &str) -> SourceImage {
        let config_bytes = std::fs::read(store.path(&image.manifest.config.digest)).unwrap();
        SourceImage {
            location: location.parse().unwrap(),
            manifest: image.manifest.clone(),
            manifest_bytes: image.manifest_bytes.clone(),
            digest: image.digest.clone(),
            config: parse_json("the config", &config_bytes).unwrap(),
            blobs: BlobSource::Layout("/nonexistent".into()),
            platform: crate::image::Platform::this_machine(),
        }
    }

    fn created_by(config: &ImageConfig) -> Vec<&str> {
        let by = config.history.iter().map(|h| h.created_by.as_deref());
        by.map(Option::unwrap_or_default).collect()
    }

    #[test]
    fn layers_go_on_top_of_the_base_and_config_changes_stay() {
        let cache_dir = tempfile::tempdir().unwrap();
        let store = Cache::open(cache_dir.path()).unwrap().blobs();
        let (first, second, third) = (layer(&store, "a"), layer(&store, "b"), layer(&store, "c"));

        let mut scratch = Append::scratch(CREATED, &Platform::this_machine());
        scratch.config.set_env([("PATH", "/bin")]);
        scratch.layer(&first, "first".to_string());
        scratch.layer(&second, "second".to_string());
        let built = scratch.finish(&store).unwrap();
        assert!(built.manifest.annotations.is_empty());
        assert!(built.inherited.is_empty());
        let base = read_back(&built, &store, "localhost:5000/base:1");
        assert_eq!(base.config.os, "linux");

        let on_base = || {
            let mut image = Append::on(&base, BaseName::Recorded, LATER).unwrap();
            image.config.set_env([("A", "1")]);
            image.config.config.user = Some("app".to_string());
            image.layer(&third, "third".to_string());
            image.annotate([("k".to_string(), "v".to_string())]);
            image.finish(&store).unwrap()
        };
        let built = on_base();
        // The same inputs make the same image.
        assert_eq!(on_base().digest, built.digest);
        let image = read_back(&built, &store, "oci:/x");

        let digests: Vec<_> = image.manifest.layers.iter().map(|l| &l.digest).collect();
        assert_eq!(digests, [&first.digest, &second.digest, &third.digest]);
        assert!(image
            .manifest
            .layers
            .iter()
            .all(|l| l.media_type == OCI_LAYER_GZIP));
        assert_eq!(image.manifest.layers[2].size, third.size);
        assert_eq!(
            image.config.rootfs.diff_ids,
            [&first.diff_id, &second.diff_id, &third.diff_id].map(Clone::clone)
        );
        assert_eq!(created_by(&image.config), ["first", "second", "third"]);
        assert_eq!(image.config.history[0].created.as_deref(), Some(CREATED));
        assert_eq!(image.config.history[2].created.as_deref(), Some(LATER));
        assert_eq!(image.config.created.as_deref(), Some(LATER));
        assert_eq!(
            image.config.config.env.as_deref().unwrap(),
            ["PATH=/bin", "A=1"]
        );
        assert_eq!(image.config.config.user.as_deref(), Some("app"));
        let annotations = [
            ("k", "v".to_string()),
            (BASE_DIGEST_ANNOTATION, base.digest.to_string()),
            (BASE_NAME_ANNOTATION, "localhost:5000/base:1".to_string()),
        ];
        assert_eq!(
            image.manifest.annotations,
            annotations
                .map(|(key, value)| (key.to_string(), value))
                .into()
        );
        // The base's layers are inherited, not copied.
        let inherited = &built.inherited[0].digests;
        assert!(inherited.contains(&first.digest) && inherited.contains(&second.digest));
        assert!(!inherited.contains(&third.digest));
    }

    #[test]
    fn a_docker_base_keeps_its_media_types_and_takes_no_annotations() {
        let cache_dir = tempfile::tempdir().unwrap();
        let store = Cache::open(cache_dir.path()).unwrap().blobs();
        let mut scratch = Append::scratch(CREATED, &Platform::this_machine());
        scratch.layer(&layer(&store, "a"), "a".to_string());
        let mut base = read_back(&scratch.finish(&store).unwrap(), &store, "oci:/b");
        base.manifest.media_type = Some(DOCKER_MANIFEST.to_string());

        let mut image = Append::on(&base, BaseName::Recorded, CREATED).unwrap();
        image.layer(&layer(&store, "b"), "b".to_string());
        image.annotate([("k".to_string(), "v".to_string())]);
        let built = image.finish(&store).unwrap();
        assert_eq!(built.manifest.media_type.as_deref(), Some(DOCKER_MANIFEST));
        assert_eq!(built.manifest.layers[1].media_type, DOCKER_LAYER_GZIP);
        assert!(built.manifest.annotations.is_empty());
        // Omitted: only the digest names an OCI base.
        let mut oci_base = read_back(&built, &store, "localhost:5000/base:1");
        oci_base.manifest.media_type = None;
        let image = Append::on(&oci_base, BaseName::Omitted, CREATED).unwrap();
        let keys: Vec<_> = image
            .finish(&store)
            .unwrap()
            .manifest
            .annotations
            .into_keys()
            .collect();
        assert_eq!(keys, [BASE_DIGEST_ANNOTATION]);
    }
}
