//! The deps cache shared through a registry (`--cache-repo`, as Kaniko's): each deps layer is
//! stored in the cache repository as a small OCI artifact tagged `deps-<cache key>`, whose one
//! layer is the deps layer and whose annotations say when it was made, the layer's diff ID and
//! the packages in it. Any build pod that computes the same key reuses it: the lookup is one
//! manifest request, and the layer reaches the destination by a cross-repository mount (no
//! download, no upload) when both are on the same registry.
//!
//! Entries older than the TTL are misses (and are replaced); `fnbuild gc` deletes them. This
//! module decides nothing about what a key covers: that is `build`'s.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::cache::BlobStore;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::config::rfc3339;
use crate::image::layer::BuiltLayer;
use crate::image::{Descriptor, CREATED_ANNOTATION, OCI_LAYER_GZIP};
use crate::registry::{Reference, Registries, RegistryClient};
use crate::sbom::Package;
use crate::transport::referrers::{push_artifact, Artifact};
use crate::transport::BlobSource;

/// Kaniko's default: two weeks.
pub const DEFAULT_TTL: &str = "14days";
/// The artifact type of a cache entry's manifest.
const ARTIFACT_TYPE: &str = "application/vnd.dev.fnbuild.deps-layer.v1";
const TAG_PREFIX: &str = "deps-";
const KEY: &str = "dev.fnbuild.deps.key";
const DIFF_ID: &str = "dev.fnbuild.deps.diff-id";
const PACKAGES: &str = "dev.fnbuild.deps.packages";
const RUNTIME: &str = "dev.fnbuild.deps.runtime";

/// A deps layer and what is installed in it: what a cache entry, local or remote, holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DepsLayer {
    pub digest: Digest,
    pub size: u64,
    pub diff_id: Digest,
    pub packages: Vec<Package>,
}

impl DepsLayer {
    pub fn built(&self) -> BuiltLayer {
        BuiltLayer {
            digest: self.digest.clone(),
            size: self.size,
            diff_id: self.diff_id.clone(),
        }
    }
}

/// The cache repository and how old its entries may be.
pub struct CacheRepo {
    client: Arc<RegistryClient>,
    reference: Reference,
    ttl: Duration,
}

/// What a lookup found.
pub enum Lookup {
    Hit(DepsLayer),
    Miss,
    /// An entry older than the TTL (or that does not say when it was made): treated as a
    /// miss, and replaced.
    Expired {
        age: Option<Duration>,
    },
}

/// A cache entry as `gc` sees it.
#[derive(Debug)]
pub struct Entry {
    pub tag: String,
    pub digest: Digest,
    /// When it was made; `None` when the entry does not say (it is then stale).
    pub created: Option<SystemTime>,
    pub layer_size: u64,
}

/// The annotations and layer of a cache entry's manifest.
#[derive(Deserialize)]
struct EntryManifest {
    #[serde(default)]
    layers: Vec<Descriptor>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

impl CacheRepo {
    /// `--cache-repo REF` (a repository; a tag or digest in it is refused) and `--cache-ttl`.
    pub fn new(repository: &str, ttl: Duration, registries: &Registries) -> Result<Self> {
        let reference: Reference = repository
            .parse()
            .map_err(|e| Error::Usage(format!("--cache-repo {repository}: {e}")))?;
        if reference.tag.is_some() || reference.digest.is_some() {
            return Err(Error::Usage(format!(
                "--cache-repo {repository}: give a repository without a tag or digest, e.g. \
                 registry.local:5000/fnbuild/cache (entries are tagged by their cache key)"
            )));
        }
        Ok(Self {
            client: registries.client(&reference.registry)?,
            reference,
            ttl,
        })
    }

    /// `REGISTRY/REPOSITORY`, for messages.
    pub fn name(&self) -> String {
        self.reference.repository_name()
    }

    /// Where the cached layers are, for publishing to mount or copy them from.
    pub fn blob_source(&self) -> BlobSource {
        BlobSource::Registry {
            client: self.client.clone(),
            repository: self.reference.repository.clone(),
        }
    }

    fn tag(key: &Digest) -> String {
        format!("{TAG_PREFIX}{}", key.hex())
    }

    /// Looks the key up: one manifest request.
    pub async fn lookup(&self, key: &Digest) -> Result<Lookup> {
        let repo = &self.reference.repository;
        let fetched = match self.client.get_manifest(repo, &Self::tag(key)).await {
            Ok(fetched) => fetched,
            Err(crate::registry::RegistryError::NotFound { .. }) => return Ok(Lookup::Miss),
            Err(e) => return Err(e.into()),
        };
        let Ok(manifest) = serde_json::from_slice::<EntryManifest>(&fetched.bytes) else {
            tracing::warn!(tag = %Self::tag(key), cache = %self.name(), "a cache entry is not a deps layer entry; rebuilding it");
            return Ok(Lookup::Miss);
        };
        let created = created_at(&manifest.annotations);
        if self.is_stale(created, SystemTime::now()) {
            return Ok(Lookup::Expired {
                age: created.and_then(|c| SystemTime::now().duration_since(c).ok()),
            });
        }
        let annotations = &manifest.annotations;
        let (Some(layer), Some(diff_id), Some(packages)) = (
            manifest.layers.first(),
            annotations.get(DIFF_ID).and_then(|d| d.parse().ok()),
            annotations
                .get(PACKAGES)
                .and_then(|p| serde_json::from_str(p).ok()),
        ) else {
            tracing::warn!(tag = %Self::tag(key), cache = %self.name(), "a cache entry lacks its layer, diff ID or package list; rebuilding it");
            return Ok(Lookup::Miss);
        };
        Ok(Lookup::Hit(DepsLayer {
            digest: layer.digest.clone(),
            size: layer.size,
            diff_id,
            packages,
        }))
    }

    /// Stores a deps layer built locally (its blob in `store`) under its key.
    pub async fn store(
        &self,
        key: &Digest,
        layer: &DepsLayer,
        runtime: &str,
        store: &BlobStore,
    ) -> Result<()> {
        let artifact = Artifact {
            artifact_type: ARTIFACT_TYPE,
            layers: vec![Descriptor::new(
                OCI_LAYER_GZIP,
                layer.digest.clone(),
                layer.size,
            )],
            subject: None,
            annotations: [
                (CREATED_ANNOTATION, rfc3339(unix_now())),
                (KEY, key.to_string()),
                (DIFF_ID, layer.diff_id.to_string()),
                (RUNTIME, runtime.to_string()),
                (
                    PACKAGES,
                    serde_json::to_string(&layer.packages).expect("packages serialize"),
                ),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        };
        push_artifact(
            &self.client,
            &self.reference.repository,
            &artifact,
            Some(&Self::tag(key)),
            store,
        )
        .await?;
        Ok(())
    }

    /// Every deps entry of the cache repository (tags of other shapes are left alone).
    pub async fn entries(&self) -> Result<Vec<Entry>> {
        let repo = &self.reference.repository;
        let mut entries = Vec::new();
        for tag in self.client.list_tags(repo).await? {
            if !tag.starts_with(TAG_PREFIX) {
                continue;
            }
            let fetched = self.client.get_manifest(repo, &tag).await?;
            let manifest: EntryManifest = match serde_json::from_slice(&fetched.bytes) {
                Ok(m) => m,
                Err(_) => continue,
            };
            entries.push(Entry {
                tag,
                digest: fetched.digest,
                created: created_at(&manifest.annotations),
                layer_size: manifest.layers.iter().map(|l| l.size).sum(),
            });
        }
        Ok(entries)
    }

    /// Whether an entry made at `created` is older than the TTL (one that does not say when it
    /// was made is).
    pub fn is_stale(&self, created: Option<SystemTime>, now: SystemTime) -> bool {
        created.is_none_or(|c| now.duration_since(c).is_ok_and(|age| age > self.ttl))
    }

    /// Deletes an entry's manifest (the registry's own garbage collection frees the blobs).
    pub async fn delete(&self, entry: &Entry) -> Result<()> {
        self.client
            .delete_manifest(&self.reference.repository, &entry.digest)
            .await?;
        Ok(())
    }
}

/// `--cache-ttl`: a duration such as `14days`, `336h`, `90m`.
pub fn parse_ttl(value: &str) -> Result<Duration> {
    humantime::parse_duration(value).map_err(|e| {
        Error::Usage(format!(
            "--cache-ttl {value}: {e}; expected a duration such as 14days, 336h or 90m"
        ))
    })
}

fn created_at(annotations: &BTreeMap<String, String>) -> Option<SystemTime> {
    humantime::parse_rfc3339(annotations.get(CREATED_ANNOTATION)?).ok()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_parse_in_the_units_people_write() {
        assert_eq!(parse_ttl("336h").unwrap(), Duration::from_secs(336 * 3600));
        assert_eq!(
            parse_ttl(DEFAULT_TTL).unwrap(),
            parse_ttl("2weeks").unwrap()
        );
        let err = parse_ttl("fortnight").unwrap_err().to_string();
        assert!(
            err.contains("--cache-ttl fortnight") && err.contains("336h"),
            "{err}"
        );
    }
}
