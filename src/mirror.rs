//! Mirroring for air-gapped clusters: the runtime base images of the catalog (and any other
//! image, such as the builder image) are copied from a registry into one OCI layout or
//! tarball, carried across, and copied from there into the disconnected cluster's registry.
//!
//! In a layout or tarball each image is named `REPOSITORY:TAG`: its reference without the
//! registry (for catalog images, without `{base_registry}/`), e.g.
//! `fnbuild/runtime-python:3.13`. Copied to `REGISTRY[/PREFIX]`, it lands at
//! `REGISTRY[/PREFIX]/REPOSITORY:TAG`, where the catalog looks for it once
//! `FNBUILD_BASE_REGISTRY` is `REGISTRY[/PREFIX]`; `fnbuild build --base-image
//! oci:DIR:fnbuild/runtime-python:3.13` reads it straight from the layout.
//!
//! Every copy is `publish` of a `Publication::copy`: manifests and indexes (with every
//! platform) are copied byte for byte, so digests never change, unless `--platform` asks for
//! fewer platforms (the index is then a new one; its entries keep their digests). This module only decides what goes where; every name is checked
//! before anything is copied.

use std::path::PathBuf;

use crate::cache::Cache;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::Platform;
use crate::registry::{Reference, Registries, RegistryError};
use crate::runtime::{Catalog, Runtime};
use crate::transport::layout::{self, REF_NAME};
use crate::transport::publish::{publish, Publication};
use crate::transport::Location;

/// Where images are mirrored from or to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// `REGISTRY[/PREFIX]`: image `NAME` is at `REGISTRY/PREFIX/NAME`.
    Registry {
        host: String,
        prefix: Option<String>,
    },
    /// `oci:DIR`: one layout holding every image, each under its name.
    Layout(PathBuf),
    /// `tar:FILE`: the same as one tarball.
    Tarball(PathBuf),
}

const ACCEPTED: &str = "oci:DIR, tar:FILE or REGISTRY[/PREFIX] (e.g. registry.local:5000 or \
                        registry.local:5000/mirror)";

impl Place {
    /// Parses the value of `flag` (named in errors).
    pub fn parse(flag: &str, value: &str) -> Result<Self> {
        let usage =
            |why: &str| Error::Usage(format!("{flag} '{value}': {why}; expected {ACCEPTED}"));
        if value.starts_with("oci:") || value.starts_with("tar:") {
            let named = |name: &str| {
                usage(&format!(
                    "a mirror keeps each image's own name (REPOSITORY:TAG), so it takes no name \
                     ':{name}'; the path must not hold ':'"
                ))
            };
            return match value
                .parse::<Location>()
                .map_err(|e| usage(&e.to_string()))?
            {
                Location::Layout {
                    tag: Some(name), ..
                }
                | Location::Tarball {
                    name: Some(name), ..
                } => Err(named(&name)),
                Location::Layout { dir, tag: None } => Ok(Self::Layout(dir)),
                Location::Tarball { file, name: None } => Ok(Self::Tarball(file)),
                Location::Registry(_) => unreachable!("oci: and tar: are not registries"),
            };
        }
        if value.contains("://") {
            return Err(usage("give the registry's host without a scheme"));
        }
        if value.contains('@') {
            return Err(usage("a mirror takes no digest: each image keeps its own"));
        }
        // A trailing slash adds nothing: `registry.local:5000/` is the registry itself.
        let (host, prefix) = match value.split_once('/') {
            Some((host, prefix)) => (
                host,
                Some(prefix.trim_end_matches('/')).filter(|p| !p.is_empty()),
            ),
            None => (value, None),
        };
        let host_chars = |c: char| c.is_ascii_alphanumeric() || ".-:[]".contains(c);
        if host.is_empty()
            || !host.chars().all(host_chars)
            || !(host.contains('.') || host.contains(':') || host == "localhost")
        {
            return Err(usage(&format!(
                "'{host}' is not a registry host (one with a '.' or a :PORT, or localhost)"
            )));
        }
        if let Some(prefix) = prefix {
            if prefix
                .rsplit('/')
                .next()
                .is_some_and(|last| last.contains(':'))
            {
                return Err(usage(
                    "a mirror takes no tag: each image keeps its own (REPOSITORY:TAG)",
                ));
            }
            let valid = prefix.split('/').all(|part| {
                !part.is_empty()
                    && part
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
            });
            if !valid {
                return Err(usage(&format!(
                    "the path '{prefix}' may hold only lowercase letters, digits, '.', '_', '-' and '/'"
                )));
            }
        }
        Ok(Self::Registry {
            host: host.to_string(),
            prefix: prefix.map(str::to_string),
        })
    }

    /// `REGISTRY[/PREFIX]` of a registry place.
    fn registry_base(host: &str, prefix: Option<&str>) -> String {
        match prefix {
            Some(prefix) => format!("{host}/{prefix}"),
            None => host.to_string(),
        }
    }
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Registry { host, prefix } => {
                f.write_str(&Self::registry_base(host, prefix.as_deref()))
            }
            Self::Layout(dir) => write!(f, "oci:{}", dir.display()),
            Self::Tarball(file) => write!(f, "tar:{}", file.display()),
        }
    }
}

/// What to mirror.
#[derive(Debug, Clone)]
pub struct MirrorRequest {
    pub from: Place,
    pub to: Place,
    /// Runtimes (names or Kubeless aliases) whose base images are copied; empty: every
    /// runtime of the catalog that a registry holds (those it lacks are skipped with a
    /// warning), every image from a layout or tarball.
    pub runtimes: Vec<String>,
    /// Further images to copy from a registry source (the builder image, say).
    pub images: Vec<Reference>,
    /// `--platform`: only these platforms of multi-platform images; `None`: every platform,
    /// each index copied byte for byte.
    pub platforms: Option<Vec<Platform>>,
}

/// One image mirrored.
#[derive(Debug, Clone)]
pub struct Mirrored {
    /// `REPOSITORY:TAG`, its name in a layout or tarball.
    pub name: String,
    pub digest: Digest,
    /// Where it was copied to, by digest.
    pub published: String,
}

/// An image to copy: its name, where it is, and why it was chosen (for error messages).
struct Planned {
    name: String,
    from: Location,
    what: String,
    /// Whether it may be missing from the source: a runtime's base image copied because no
    /// runtime was named (a registry need not hold every version of the catalog).
    optional: bool,
}

/// Copies the images and returns, per image, where it went.
pub async fn mirror(
    request: &MirrorRequest,
    catalog: &Catalog,
    registries: &Registries,
    cache: &Cache,
) -> Result<Vec<Mirrored>> {
    let store = cache.blobs();
    let planned = plan(request, catalog, &store)?;
    let staging = match request.to {
        Place::Tarball(_) => Some(cache.temp_dir("mirror-")?),
        _ => None,
    };
    let mut targets = Vec::with_capacity(planned.len());
    for image in &planned {
        targets.push(match (&request.to, &staging) {
            (Place::Registry { host, prefix }, _) => {
                Location::Registry(destination(&image.name, host, prefix.as_deref())?)
            }
            (Place::Layout(dir), _) => Location::Layout {
                dir: dir.clone(),
                tag: Some(image.name.clone()),
            },
            (Place::Tarball(_), Some(staging)) => Location::Layout {
                dir: staging.path().to_path_buf(),
                tag: Some(image.name.clone()),
            },
            (Place::Tarball(_), None) => unreachable!("a tarball is staged as a layout"),
        });
    }
    let mut mirrored = Vec::with_capacity(planned.len());
    let mut skipped = Vec::new();
    for (image, target) in planned.iter().zip(&targets) {
        let copy = match Publication::copy(
            &image.from,
            request.platforms.as_deref(),
            registries,
            &store,
        )
        .await
        {
            Ok(copy) => copy,
            Err(Error::Registry(RegistryError::NotFound { .. })) if image.optional => {
                tracing::warn!(
                    "not mirrored: {} ({}) is not in {} (a runtime named with --runtime must be)",
                    image.from,
                    image.what,
                    request.from
                );
                skipped.push(image.from.to_string());
                continue;
            }
            Err(Error::Registry(inner)) => {
                return Err(Error::Image(format!(
                    "cannot read {} ({}) from {}: {inner}",
                    image.from, image.what, request.from
                )))
            }
            Err(other) => return Err(other),
        };
        if let Some(pinned) = pinned_digest(&image.name) {
            if &pinned != copy.digest() {
                return Err(Error::Image(format!(
                    "{} is named {} but its copy has digest {} (--platform cut its index down to \
                     a new one: name it by a tag)",
                    image.from,
                    image.name,
                    copy.digest()
                )));
            }
        }
        let published = publish(&copy, std::slice::from_ref(target), registries, &store).await?;
        tracing::info!(name = %image.name, digest = %copy.digest(), from = %image.from, platforms = copy.images.len(), "mirrored");
        mirrored.push(Mirrored {
            name: image.name.clone(),
            digest: copy.digest().clone(),
            published: published.into_iter().next().unwrap_or_default(),
        });
    }
    if mirrored.is_empty() {
        return Err(Error::Image(format!(
            "{} holds none of the images to mirror: {}",
            request.from,
            skipped.join(", ")
        )));
    }
    if let (Place::Tarball(file), Some(staging)) = (&request.to, &staging) {
        let (layout_dir, tarball) = (staging.path().to_path_buf(), file.clone());
        crate::blocking::run(move || layout::write_tarball_of_layout(&layout_dir, &tarball))
            .await?;
        for image in &mut mirrored {
            image.published = format!("tar:{}:{}@{}", file.display(), image.name, image.digest);
        }
    }
    Ok(mirrored)
}

/// The images to copy, named, with every name checked.
fn plan(
    request: &MirrorRequest,
    catalog: &Catalog,
    store: &crate::cache::BlobStore,
) -> Result<Vec<Planned>> {
    let runtimes: Vec<&Runtime> = if request.runtimes.is_empty() {
        catalog.runtimes.iter().collect()
    } else {
        let mut chosen: Vec<&Runtime> = Vec::new();
        for name in &request.runtimes {
            let resolved = catalog.resolve(name)?;
            if let Some(warning) = &resolved.alias_warning {
                tracing::warn!("{warning}");
            }
            if !chosen.iter().any(|r| r.name == resolved.runtime.name) {
                chosen.push(resolved.runtime);
            }
        }
        chosen
    };
    let mut planned: Vec<Planned> = Vec::new();
    match &request.from {
        Place::Registry { host, prefix } => {
            let base = Place::registry_base(host, prefix.as_deref());
            for runtime in runtimes {
                let reference = runtime_reference(runtime, &base)?;
                planned.push(Planned {
                    name: name_of(&reference, &base),
                    from: Location::Registry(reference),
                    what: format!("the base image of runtime {}", runtime.name),
                    optional: request.runtimes.is_empty(),
                });
            }
            for reference in &request.images {
                planned.push(Planned {
                    name: name_of(reference, &base),
                    from: Location::Registry(reference.clone()),
                    what: "given with --image".to_string(),
                    optional: false,
                });
            }
        }
        Place::Layout(_) | Place::Tarball(_) => {
            if !request.images.is_empty() {
                return Err(Error::Usage(format!(
                    "--image copies an image from a registry; from {} every image it holds is \
                     copied (or only the base images of --runtime NAME)",
                    request.from
                )));
            }
            let index = match &request.from {
                Place::Layout(dir) => layout::read_index(dir)?,
                Place::Tarball(file) => layout::unpack_tarball(file, store)?,
                Place::Registry { .. } => unreachable!("handled above"),
            };
            let mut names = Vec::new();
            for descriptor in &index.manifests {
                let name = descriptor.annotations.get(REF_NAME).ok_or_else(|| {
                    Error::Image(format!(
                        "{} holds an image without a name ({}): a mirror copies images named \
                         REPOSITORY:TAG ({REF_NAME}), as `fnbuild mirror` writes them",
                        request.from, descriptor.digest
                    ))
                })?;
                names.push(name.clone());
            }
            let wanted: Vec<(String, String)> = if request.runtimes.is_empty() {
                names
                    .iter()
                    .map(|n| (n.clone(), "an image of the source".to_string()))
                    .collect()
            } else {
                let mut wanted = Vec::new();
                for runtime in runtimes {
                    let name = name_of(&runtime_reference(runtime, "localhost")?, "localhost");
                    if !names.contains(&name) {
                        return Err(Error::Image(format!(
                            "{} has no image named '{name}' (the base image of runtime {}); \
                             names: {}",
                            request.from,
                            runtime.name,
                            names.join(", ")
                        )));
                    }
                    wanted.push((name, format!("the base image of runtime {}", runtime.name)));
                }
                wanted
            };
            for (name, what) in wanted {
                let from = match &request.from {
                    Place::Layout(dir) => Location::Layout {
                        dir: dir.clone(),
                        tag: Some(name.clone()),
                    },
                    Place::Tarball(file) => Location::Tarball {
                        file: file.clone(),
                        name: Some(name.clone()),
                    },
                    Place::Registry { .. } => unreachable!("handled above"),
                };
                planned.push(Planned {
                    name,
                    from,
                    what,
                    optional: false,
                });
            }
        }
    }
    let mut unique: Vec<Planned> = Vec::with_capacity(planned.len());
    for image in planned {
        check_name(&image.name, &request.from)?;
        match unique.iter().find(|u| u.name == image.name) {
            Some(same) if same.from == image.from => {}
            Some(other) => {
                return Err(Error::Usage(format!(
                    "two images would be named {}: {} and {}",
                    image.name, other.from, image.from
                )))
            }
            None => unique.push(image),
        }
    }
    if unique.is_empty() {
        return Err(Error::Usage(format!(
            "{} holds no image to mirror",
            request.from
        )));
    }
    Ok(unique)
}

/// The runtime's base image reference with `{base_registry}` standing for `base`.
fn runtime_reference(runtime: &Runtime, base: &str) -> Result<Reference> {
    let text = runtime.base_image_ref_in(base);
    text.parse().map_err(|e| {
        Error::Usage(format!(
            "the base image of runtime {} in the catalog: {e}",
            runtime.name
        ))
    })
}

/// `REPOSITORY:TAG` (or `REPOSITORY@DIGEST`) of a reference, the repository taken relative to
/// `base` (`REGISTRY[/PREFIX]`) when it is under it, else without its registry.
fn name_of(reference: &Reference, base: &str) -> String {
    let full = reference.repository_name();
    let repository = full
        .strip_prefix(&format!("{base}/"))
        .unwrap_or(&reference.repository);
    match (&reference.tag, &reference.digest) {
        (Some(tag), _) => format!("{repository}:{tag}"),
        (None, Some(digest)) => format!("{repository}@{digest}"),
        (None, None) => format!("{repository}:latest"),
    }
}

/// A name's repository, tag and digest.
fn parse_name(name: &str) -> Option<Reference> {
    let reference: Reference = format!("localhost/{name}").parse().ok()?;
    (reference.tag.is_some() || reference.digest.is_some()).then_some(reference)
}

/// Checks that a name says where the image goes: `REPOSITORY:TAG` or `REPOSITORY@DIGEST`.
fn check_name(name: &str, from: &Place) -> Result<()> {
    match parse_name(name) {
        Some(_) => Ok(()),
        None => Err(Error::Image(format!(
            "{from} names an image '{name}', which is not REPOSITORY:TAG (e.g. \
             fnbuild/runtime-python:3.13; lowercase repository): a mirror needs the repository \
             and tag to know where the image goes"
        ))),
    }
}

/// The digest a `REPOSITORY@DIGEST` name pins, if it is one.
fn pinned_digest(name: &str) -> Option<Digest> {
    parse_name(name).and_then(|r| r.digest)
}

/// Where image `name` goes in `host[/prefix]`.
fn destination(name: &str, host: &str, prefix: Option<&str>) -> Result<Reference> {
    let parsed =
        parse_name(name).ok_or_else(|| Error::Image(format!("'{name}' is not REPOSITORY:TAG")))?;
    Ok(Reference {
        registry: host.to_string(),
        repository: match prefix {
            Some(prefix) => format!("{prefix}/{}", parsed.repository),
            None => parsed.repository,
        },
        digest: if parsed.tag.is_some() {
            None
        } else {
            parsed.digest
        },
        tag: parsed.tag,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_parse_and_say_what_is_accepted() {
        assert_eq!(
            Place::parse("--to", "oci:./m").unwrap(),
            Place::Layout("./m".into())
        );
        assert_eq!(
            Place::parse("--to", "tar:m.tar").unwrap(),
            Place::Tarball("m.tar".into())
        );
        assert_eq!(
            Place::parse("--to", "registry.local:5000/mirror/").unwrap(),
            Place::Registry {
                host: "registry.local:5000".into(),
                prefix: Some("mirror".into())
            }
        );
        assert_eq!(
            Place::parse("--from", "localhost").unwrap().to_string(),
            "localhost"
        );
        for bare in ["registry.local:5000/", "registry.local:5000//"] {
            assert_eq!(
                Place::parse("--to", bare).unwrap(),
                Place::Registry {
                    host: "registry.local:5000".into(),
                    prefix: None
                },
                "{bare}"
            );
        }
        for bad in [
            "oci:./m:v1",
            "tar:m.tar:fnbuild/x:1",
            "http://registry.local",
            "registry",
            "registry.local/Mirror",
            "registry.local/mirror:v1",
            "registry.local/a@sha256:00",
            "registry.local/a//b",
            "/mirror",
            "",
        ] {
            let err = Place::parse("--to", bad).unwrap_err();
            assert!(err.is_usage(), "{bad}");
            let err = err.to_string();
            assert!(
                err.contains("--to") && err.contains("REGISTRY[/PREFIX]"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn names_keep_repository_and_tag_relative_to_the_base_registry() {
        let catalog = Catalog::embedded();
        let python = catalog.resolve("python3.13").unwrap().runtime;
        let reference = runtime_reference(python, "registry.local:5000/up").unwrap();
        assert_eq!(
            reference.to_string(),
            "registry.local:5000/up/fnbuild/runtime-python:3.13"
        );
        assert_eq!(
            name_of(&reference, "registry.local:5000/up"),
            "fnbuild/runtime-python:3.13"
        );
        let builder: Reference = "other.local/tools/builder".parse().unwrap();
        assert_eq!(
            name_of(&builder, "registry.local:5000"),
            "tools/builder:latest"
        );
        let dest = destination("fnbuild/runtime-python:3.13", "cluster.local", Some("m")).unwrap();
        assert_eq!(
            dest.to_string(),
            "cluster.local/m/fnbuild/runtime-python:3.13"
        );
        let digest = Digest::of(b"x");
        let dest = destination(&format!("a/b@{digest}"), "cluster.local", None).unwrap();
        assert_eq!(dest.to_string(), format!("cluster.local/a/b@{digest}"));
        assert!(check_name("v1", &Place::Layout("d".into()))
            .unwrap_err()
            .to_string()
            .contains("REPOSITORY:TAG"));
    }
}
