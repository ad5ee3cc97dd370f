//! Where images are read from and written to, interchangeably: a registry (`REF`), an OCI
//! image layout (`oci:DIR[:NAME]`) or a tarball (`tar:FILE[:NAME]`). Reading an image
//! fetches just its manifest and config; layers stay where they are until something needs
//! them (`local_blob`); a tarball's blobs are unpacked into the local blob store. Writing is
//! `publish`.

pub mod layout;
pub mod publish;
pub mod referrers;

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use crate::blocking;
use crate::cache::BlobStore;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::{self, Descriptor, ImageConfig, Index, Manifest, Platform, Stored};
use crate::registry::{Reference, Registries, RegistryClient};

/// An image location as written on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Registry(Reference),
    /// `oci:DIR[:NAME]`: an OCI image layout directory, optionally naming an image in it
    /// (its `org.opencontainers.image.ref.name`, e.g. `v1` or `fnbuild/runtime-python:3.13`).
    Layout {
        dir: PathBuf,
        tag: Option<String>,
    },
    /// `tar:FILE[:NAME]`: a tarball readable as `docker-archive:` and `oci-archive:`, holding
    /// an OCI layout; NAME picks an image in it, or names the one written.
    Tarball {
        file: PathBuf,
        name: Option<String>,
    },
}

impl FromStr for Location {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        if let Some(rest) = s.strip_prefix("oci:") {
            let (dir, tag) = split_path_name(s, rest, "a directory", "oci:./out")?;
            return Ok(Self::Layout { dir, tag });
        }
        if let Some(rest) = s.strip_prefix("tar:") {
            let (file, name) = split_path_name(s, rest, "a file name", "tar:./images.tar")?;
            return Ok(Self::Tarball { file, name });
        }
        s.parse::<Reference>()
            .map(Self::Registry)
            .map_err(|e| Error::Usage(format!("{e}; or oci:DIR[:NAME], or tar:FILE[:NAME]")))
    }
}

/// `PATH[:NAME]`: the path ends at the first `:` (as skopeo reads `oci:` and `oci-archive:`),
/// so a name may hold `/` and `:` itself, e.g. `oci:./mirror:fnbuild/runtime-python:3.13`.
fn split_path_name(
    whole: &str,
    rest: &str,
    what: &str,
    example: &str,
) -> Result<(PathBuf, Option<String>)> {
    let (path, name) = match rest.split_once(':') {
        Some((path, name)) => (path, Some(name)),
        None => (rest, None),
    };
    let bad = |why: String| {
        Error::Usage(format!(
            "'{whole}': {why}; expected {example} or {example}:NAME, where the path holds no ':' \
             and NAME is a tag (v1) or a repository and tag (fnbuild/runtime-python:3.13)"
        ))
    };
    if path.is_empty() {
        return Err(bad(format!("it needs {what}")));
    }
    if let Some(name) = name {
        if name.is_empty() || name.chars().any(char::is_whitespace) {
            return Err(bad(format!(
                "the image name after '{path}:' is empty or holds a space"
            )));
        }
    }
    Ok((PathBuf::from(path), name.map(str::to_string)))
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Registry(r) => write!(f, "{r}"),
            Self::Layout {
                dir,
                tag: Some(tag),
            } => write!(f, "oci:{}:{tag}", dir.display()),
            Self::Layout { dir, tag: None } => write!(f, "oci:{}", dir.display()),
            Self::Tarball {
                file,
                name: Some(name),
            } => write!(f, "tar:{}:{name}", file.display()),
            Self::Tarball { file, name: None } => write!(f, "tar:{}", file.display()),
        }
    }
}

/// Where the blobs of an image that was read can be found.
#[derive(Clone)]
pub enum BlobSource {
    Registry {
        client: Arc<RegistryClient>,
        repository: String,
    },
    Layout(PathBuf),
    /// A tarball whose blobs were unpacked into the local blob store when it was read.
    Tarball(PathBuf),
}

/// What a location names, opened: its manifest or index, and where the manifests an index
/// points to and every blob are read from.
pub struct Opened {
    pub location: Location,
    pub named: Stored,
    pub blobs: BlobSource,
}

impl Opened {
    pub async fn open(
        location: &Location,
        registries: &Registries,
        store: &BlobStore,
    ) -> Result<Self> {
        let (named, blobs) = match location {
            Location::Registry(reference) => {
                let client = registries.client(&reference.registry)?;
                let named = client
                    .get_manifest(&reference.repository, &reference.manifest_reference())
                    .await?;
                let source = BlobSource::Registry {
                    client,
                    repository: reference.repository.clone(),
                };
                (named, source)
            }
            Location::Layout { dir, tag } => (
                layout::read_named(dir, tag.as_deref())?,
                BlobSource::Layout(dir.clone()),
            ),
            Location::Tarball { file, name } => {
                // Unpacking copies and hashes every blob: on a blocking thread.
                let (tarball, name, unpack_into) = (file.clone(), name.clone(), store.clone());
                let named = blocking::run(move || {
                    layout::read_tarball(&tarball, name.as_deref(), &unpack_into)
                })
                .await?;
                (named, BlobSource::Tarball(file.clone()))
            }
        };
        Ok(Self {
            location: location.clone(),
            named,
            blobs,
        })
    }

    /// The index it names; an error when it names an image.
    pub fn index(&self) -> Result<Option<Index>> {
        if !self.named.is_index() {
            return Ok(None);
        }
        image::parse_json(
            &format!("the image index {}", self.location),
            &self.named.bytes,
        )
        .map(Some)
    }

    /// A manifest the index points to, checked against its digest.
    pub async fn entry(&self, descriptor: &Descriptor, store: &BlobStore) -> Result<Stored> {
        let digest = &descriptor.digest;
        let bytes = match &self.blobs {
            BlobSource::Registry { client, repository } => {
                client
                    .get_manifest(repository, &digest.to_string())
                    .await?
                    .bytes
            }
            BlobSource::Layout(dir) => layout::read_blob(dir, digest)?,
            BlobSource::Tarball(file) => {
                store.read_checked(digest, &format!("tar:{}", file.display()))?
            }
        };
        let entry = Stored::new(bytes, descriptor.media_type.clone());
        if image::is_index(&entry.media_type) {
            return Err(Error::Image(format!(
                "{}: the index entry {digest} is itself an index; fnbuild reads one level of \
                 index (an index of images, one per platform)",
                self.location
            )));
        }
        Ok(entry)
    }
}

/// Which images of a location are wanted.
#[derive(Debug, Clone, Copy)]
pub enum Wanted<'a> {
    /// This machine's: from an index, its entry; else the one image, whatever its platform.
    ThisMachine,
    /// These platforms, each of which the location must have.
    These(&'a [Platform]),
    /// Every platform an index has (the one image, when the location names an image).
    Every,
}

impl Wanted<'_> {
    /// The entries of `index`, at `location`, that are wanted; an error names a platform it
    /// lacks.
    pub(crate) fn entries<'i>(
        self,
        index: &'i Index,
        location: &Location,
    ) -> Result<Vec<&'i Descriptor>> {
        match self {
            Wanted::ThisMachine => Ok(vec![index.manifest_for(&Platform::this_machine())?]),
            Wanted::These(platforms) => platforms
                .iter()
                .map(|p| index.manifest_for(p))
                .collect::<Result<_>>()
                .map_err(|e| Error::Image(format!("{location}: {e}"))),
            Wanted::Every => Ok(index.runnable().collect()),
        }
    }

    /// Whether the one image at `location`, for `platform`, is what is wanted.
    pub(crate) fn check_image(self, platform: &Platform, location: &Location) -> Result<()> {
        let Wanted::These(platforms) = self else {
            return Ok(());
        };
        match platforms.iter().find(|p| !p.matches(platform)) {
            Some(missing) => Err(Error::Image(format!(
                "{location} is a {platform} image, not a multi-platform one: it has no {missing} \
                 image"
            ))),
            None => Ok(()),
        }
    }
}

/// An image whose manifest and config are known; its layers are fetched on demand.
#[derive(Clone)]
pub struct SourceImage {
    pub location: Location,
    pub manifest: Manifest,
    /// The manifest exactly as stored (its digest is over these bytes).
    pub manifest_bytes: Vec<u8>,
    pub digest: Digest,
    pub config: ImageConfig,
    pub blobs: BlobSource,
    /// What it runs on: its index entry's platform, else its config's.
    pub platform: Platform,
}

impl SourceImage {
    /// Reads an image's manifest (choosing this platform's from an index) and config.
    pub async fn load(
        location: &Location,
        registries: &Registries,
        store: &BlobStore,
    ) -> Result<Self> {
        let mut images = Self::load_all(location, Wanted::ThisMachine, registries, store).await?;
        Ok(images.remove(0))
    }

    /// Reads the images `wanted` of a location: their manifests and configs, in the order of
    /// the platforms asked for (or of the index).
    pub async fn load_all(
        location: &Location,
        wanted: Wanted<'_>,
        registries: &Registries,
        store: &BlobStore,
    ) -> Result<Vec<Self>> {
        let opened = Opened::open(location, registries, store).await?;
        let Some(index) = opened.index()? else {
            let image = Self::read(&opened, opened.named.clone(), None, store).await?;
            wanted.check_image(&image.platform, location)?;
            return Ok(vec![image]);
        };
        let entries = wanted.entries(&index, location)?;
        let mut images = Vec::with_capacity(entries.len());
        for descriptor in entries {
            let stored = opened.entry(descriptor, store).await?;
            images.push(Self::read(&opened, stored, descriptor.platform.clone(), store).await?);
        }
        Ok(images)
    }

    /// The image of a manifest: its config read, its layers counted against the config's.
    pub(crate) async fn read(
        opened: &Opened,
        stored: Stored,
        platform: Option<Platform>,
        store: &BlobStore,
    ) -> Result<Self> {
        let location = &opened.location;
        let manifest: Manifest =
            image::parse_json(&format!("the manifest of {location}"), &stored.bytes)?;
        manifest.family()?;
        let config_path = local_blob(&opened.blobs, &manifest.config, store).await?;
        let config_bytes = std::fs::read(&config_path)
            .map_err(|e| Error::Image(format!("cannot read config of {location}: {e}")))?;
        let config: ImageConfig =
            image::parse_json(&format!("the config of {location}"), &config_bytes)?;
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(Error::Image(format!(
                "{location}: the config lists {} layers but the manifest {}",
                config.rootfs.diff_ids.len(),
                manifest.layers.len()
            )));
        }
        Ok(Self {
            location: location.clone(),
            platform: platform.unwrap_or_else(|| Platform::of_config(&config)),
            manifest,
            manifest_bytes: stored.bytes,
            digest: stored.digest,
            config,
            blobs: opened.blobs.clone(),
        })
    }

    /// The image's layers as local files, downloading the ones the cache lacks.
    pub async fn layer_files(&self, store: &BlobStore) -> Result<Vec<crate::rootfs::LayerFile>> {
        let mut files = Vec::with_capacity(self.manifest.layers.len());
        for layer in &self.manifest.layers {
            let path = local_blob(&self.blobs, layer, store).await?;
            files.push(crate::rootfs::LayerFile {
                digest: layer.digest.clone(),
                path,
            });
        }
        Ok(files)
    }
}

/// A local file holding the blob: in the layout, in the cache, or downloaded into the cache.
pub async fn local_blob(
    source: &BlobSource,
    descriptor: &Descriptor,
    store: &BlobStore,
) -> Result<PathBuf> {
    let digest = &descriptor.digest;
    match source {
        BlobSource::Layout(dir) => {
            let path = layout::blob_path(dir, digest);
            if path.is_file() {
                Ok(path)
            } else if store.contains(digest) {
                Ok(store.path(digest))
            } else {
                Err(Error::Image(format!(
                    "{} lacks blob {digest}",
                    dir.display()
                )))
            }
        }
        BlobSource::Tarball(file) => {
            if store.contains(digest) {
                Ok(store.path(digest))
            } else {
                Err(Error::Image(format!(
                    "tar:{} lacks blob {digest}",
                    file.display()
                )))
            }
        }
        BlobSource::Registry { client, repository } => {
            if !store.contains(digest) {
                tracing::info!(digest = %digest, size = descriptor.size, from = %format!("{}/{repository}", client.registry()), "downloading blob");
                client.download_blob(repository, digest, store).await?;
            }
            Ok(store.path(digest))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Writes a blob into the layout at `dir`; its descriptor's digest and size.
    fn put(dir: &std::path::Path, bytes: &[u8]) -> (Digest, usize) {
        let digest = Digest::of(bytes);
        let path = layout::blob_path(dir, &digest);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
        (digest, bytes.len())
    }

    /// An OCI layout at `dir` naming `multi` an index, pretty-printed (no serializer of
    /// fnbuild's writes it so), of one tiny image per architecture (this machine's and
    /// another) and an attestation manifest (`unknown/unknown`); the index as stored and its
    /// entries' platforms and digests.
    pub(super) fn index_layout(dir: &std::path::Path) -> (Stored, Vec<(Platform, Digest)>) {
        let other = if image::oci_architecture() == "arm64" {
            "amd64"
        } else {
            "arm64"
        };
        let mut descriptors = Vec::new();
        let mut entries = Vec::new();
        for arch in [image::oci_architecture(), other, "unknown"] {
            let os = if arch == "unknown" {
                "unknown"
            } else {
                "linux"
            };
            let (layer, layer_size) = put(dir, arch.as_bytes());
            let config = json!({
                "architecture": arch, "os": os,
                "rootfs": { "type": "layers", "diff_ids": [layer.to_string()] },
            });
            let (config, config_size) = put(dir, &serde_json::to_vec(&config).unwrap());
            let manifest = json!({
                "schemaVersion": 2, "mediaType": image::OCI_MANIFEST,
                "config": { "mediaType": "application/vnd.oci.image.config.v1+json",
                            "digest": config.to_string(), "size": config_size },
                "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar",
                             "digest": layer.to_string(), "size": layer_size }],
            });
            let (digest, size) = put(dir, &serde_json::to_vec(&manifest).unwrap());
            let platform = Platform {
                architecture: arch.into(),
                os: os.into(),
                variant: None,
            };
            descriptors.push(json!({
                "mediaType": image::OCI_MANIFEST, "digest": digest.to_string(), "size": size,
                "platform": platform,
            }));
            entries.push((platform, digest));
        }
        let bytes = serde_json::to_vec_pretty(&json!({
            "schemaVersion": 2, "mediaType": image::OCI_INDEX, "manifests": descriptors,
        }))
        .unwrap();
        let (digest, size) = put(dir, &bytes);
        let top = json!({ "schemaVersion": 2, "manifests": [{
            "mediaType": image::OCI_INDEX, "digest": digest.to_string(), "size": size,
            "annotations": { "org.opencontainers.image.ref.name": "multi" },
        }]});
        std::fs::write(dir.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
        (Stored::new(bytes, image::OCI_INDEX.into()), entries)
    }

    /// A layout with [`index_layout`], a blob store and registries (none reached).
    pub(super) fn index_fixture() -> (
        tempfile::TempDir,
        Location,
        Stored,
        Vec<(Platform, Digest)>,
        BlobStore,
        Registries,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (index, entries) = index_layout(&dir.path().join("layout"));
        let location: Location = format!("oci:{}:multi", dir.path().join("layout").display())
            .parse()
            .unwrap();
        let store = crate::cache::Cache::open(&dir.path().join("cache"))
            .unwrap()
            .blobs();
        let registries = Registries::new(&Default::default()).unwrap();
        (dir, location, index, entries, store, registries)
    }

    #[tokio::test]
    async fn every_these_or_this_machines_images_of_an_index_load() {
        let (_dir, location, _, entries, store, registries) = index_fixture();
        let [(here, here_digest), (other, other_digest), _attestation] = &entries[..] else {
            unreachable!()
        };
        let load = |wanted| SourceImage::load_all(&location, wanted, &registries, &store);
        let digests = |images: Vec<SourceImage>| {
            images
                .into_iter()
                .map(|i| (i.platform.to_string(), i.digest))
                .collect::<Vec<_>>()
        };
        // Every platform, in the index's order; the attestation is no platform's image.
        assert_eq!(
            digests(load(Wanted::Every).await.unwrap()),
            [
                (here.to_string(), here_digest.clone()),
                (other.to_string(), other_digest.clone())
            ]
        );
        assert_eq!(
            digests(load(Wanted::ThisMachine).await.unwrap()),
            [(here.to_string(), here_digest.clone())]
        );
        // In the order asked for; arm64/v8 is arm64.
        let asked = [other.clone(), here.clone()];
        let images = load(Wanted::These(&asked)).await.unwrap();
        assert_eq!(images[0].config.architecture, other.architecture);
        assert_eq!(
            digests(images),
            [
                (other.to_string(), other_digest.clone()),
                (here.to_string(), here_digest.clone())
            ]
        );
        let missing = ["linux/s390x".parse().unwrap()];
        let Err(err) = load(Wanted::These(&missing)).await else {
            panic!("an index without linux/s390x gave a linux/s390x image");
        };
        let err = err.to_string();
        assert!(err.contains("no linux/s390x image"), "{err}");
        assert!(
            err.contains(&format!("platforms: {here}, {other}")),
            "{err}"
        );
    }

    #[test]
    fn locations_parse() {
        assert_eq!(
            "oci:./out:v1".parse::<Location>().unwrap(),
            Location::Layout {
                dir: "./out".into(),
                tag: Some("v1".into())
            }
        );
        assert_eq!(
            "oci:/tmp/x".parse::<Location>().unwrap(),
            Location::Layout {
                dir: "/tmp/x".into(),
                tag: None
            }
        );
        assert_eq!(
            "tar:f.tar".parse::<Location>().unwrap(),
            Location::Tarball {
                file: "f.tar".into(),
                name: None
            }
        );
        // Names keep their repository and tag: the path ends at the first ':'.
        assert_eq!(
            "oci:/m:fnbuild/runtime-python:3.13"
                .parse::<Location>()
                .unwrap(),
            Location::Layout {
                dir: "/m".into(),
                tag: Some("fnbuild/runtime-python:3.13".into())
            }
        );
        assert_eq!(
            "tar:m.tar:fnbuild/builder:1".parse::<Location>().unwrap(),
            Location::Tarball {
                file: "m.tar".into(),
                name: Some("fnbuild/builder:1".into())
            }
        );
        for location in [
            "oci:/m:fnbuild/runtime-python:3.13",
            "tar:m.tar:v1",
            "oci:out",
        ] {
            assert_eq!(location.parse::<Location>().unwrap().to_string(), location);
        }
        for bad in ["oci:out:", "tar:", "tar::v1", "oci:out:a b"] {
            let err = bad.parse::<Location>().unwrap_err().to_string();
            assert!(err.contains("NAME"), "{bad}: {err}");
        }
        assert!(matches!(
            "localhost:5000/a:b".parse::<Location>().unwrap(),
            Location::Registry(_)
        ));
        assert!("oci:".parse::<Location>().is_err());
    }
}
