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
use crate::image::{self, Descriptor, ImageConfig, Manifest};
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
}

impl SourceImage {
    /// Reads an image's manifest (choosing this platform's from an index) and config.
    pub async fn load(
        location: &Location,
        registries: &Registries,
        store: &BlobStore,
    ) -> Result<Self> {
        let (manifest_bytes, digest, blobs) = match location {
            Location::Registry(reference) => {
                let client = registries.client(&reference.registry)?;
                let repo = &reference.repository;
                let mut fetched = client
                    .get_manifest(repo, &reference.manifest_reference())
                    .await?;
                if image::is_index(&fetched.media_type) {
                    let index: image::Index = image::parse_json("the image index", &fetched.bytes)?;
                    let chosen = index.manifest_for_this_platform()?;
                    fetched = client
                        .get_manifest(repo, &chosen.digest.to_string())
                        .await?;
                }
                let source = BlobSource::Registry {
                    client,
                    repository: repo.clone(),
                };
                (fetched.bytes, fetched.digest, source)
            }
            Location::Layout { dir, tag } => {
                let (bytes, digest) = layout::read_manifest(dir, tag.as_deref())?;
                (bytes, digest, BlobSource::Layout(dir.clone()))
            }
            Location::Tarball { file, name } => {
                // Unpacking copies and hashes every blob: on a blocking thread.
                let (tarball, name, unpack_into) = (file.clone(), name.clone(), store.clone());
                let (bytes, digest) = blocking::run(move || {
                    layout::read_tarball(&tarball, name.as_deref(), &unpack_into)
                })
                .await?;
                (bytes, digest, BlobSource::Tarball(file.clone()))
            }
        };
        let manifest: Manifest =
            image::parse_json(&format!("the manifest of {location}"), &manifest_bytes)?;
        manifest.family()?;
        let config_path = local_blob(&blobs, &manifest.config, store).await?;
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
            manifest,
            manifest_bytes,
            digest,
            config,
            blobs,
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
