//! Making a runtime base image: an upstream language image (from a registry, an OCI layout,
//! or a root filesystem directory such as a debootstrap) plus one layer holding the runtime
//! server, with the config that starts it. Upstream layers are not downloaded when the
//! upstream is in a registry: they are mounted or copied blob by blob at publish time.
//! An upstream that shows another interpreter version than the runtime's is refused (see
//! [`check_interpreter`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::cache::Cache;
use crate::error::{Error, Result};
use crate::image::config::{rfc3339, RootFs};
use crate::image::layer::{self, Attributes, BuiltLayer, Entry, LayerOptions};
use crate::image::{oci_architecture, Descriptor, ImageConfig, Manifest, MediaFamily};
use crate::registry::Registries;
use crate::runtime::{Language, Runtime, CODE_DIR, SERVER_DIR};
use crate::transport::publish::{publish, BuiltImage, Inherited};
use crate::transport::{Location, SourceImage};

/// Where the upstream image comes from.
#[derive(Debug, Clone)]
pub enum Upstream {
    Image(Location),
    /// `rootfs:DIR`: a root filesystem directory, made into one layer.
    Rootfs(PathBuf),
}

impl std::str::FromStr for Upstream {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.strip_prefix("rootfs:") {
            Some(dir) if !dir.is_empty() => Ok(Self::Rootfs(PathBuf::from(dir))),
            Some(_) => Err(Error::Usage(
                "rootfs: needs a directory, e.g. rootfs:/srv/rootfs/python".into(),
            )),
            None => Ok(Self::Image(s.parse()?)),
        }
    }
}

/// The user the runtime server runs as (Knative and Kubernetes prefer non-root).
pub const RUNTIME_USER: &str = "1000:1000";

pub struct BaseRequest<'a> {
    pub runtime: &'a Runtime,
    pub upstream: Upstream,
    pub outputs: Vec<Location>,
    pub source_date_epoch: u64,
}

/// Builds and publishes a runtime base image; returns the published references.
pub async fn make_base(
    request: &BaseRequest<'_>,
    registries: &Registries,
    cache: &Cache,
) -> Result<Vec<String>> {
    let store = cache.blobs();
    let options = LayerOptions {
        mtime: request.source_date_epoch,
        ..LayerOptions::default()
    };
    let created = rfc3339(request.source_date_epoch);
    let (family, mut layers, annotations, mut config, inherited) = match &request.upstream {
        Upstream::Image(location) => {
            let upstream = SourceImage::load(location, registries, &store).await?;
            let family = upstream.manifest.family()?;
            let mut annotations = BTreeMap::new();
            if family == MediaFamily::Oci {
                annotations.insert(
                    "org.opencontainers.image.base.digest".to_string(),
                    upstream.digest.to_string(),
                );
            }
            check_interpreter(request.runtime, &Shown::Config(&upstream.config), location)?;
            let layers = upstream.manifest.layers.clone();
            (
                family,
                layers,
                annotations,
                upstream.config.clone(),
                vec![Inherited::layers_of(&upstream)],
            )
        }
        Upstream::Rootfs(dir) => {
            check_interpreter(
                request.runtime,
                &Shown::Rootfs(dir),
                format!("rootfs:{}", dir.display()),
            )?;
            let (layer, config) = rootfs_layer(dir, &options, cache, &created)?;
            (
                MediaFamily::Oci,
                vec![layer],
                BTreeMap::new(),
                config,
                Vec::new(),
            )
        }
    };
    let server = server_layer(request.runtime, &options, cache)?;
    config.created = Some(created.clone());
    config.config.entrypoint = Some(request.runtime.language.entrypoint());
    config.config.cmd = None;
    config.config.user = Some(RUNTIME_USER.to_string());
    config.config.working_dir = Some(CODE_DIR.to_string());
    config.set_env([("FUNC_PORT", "8080")]);
    if request.runtime.language == Language::Python {
        config.set_env([("PYTHONUNBUFFERED", "1")]);
    }
    config.set_labels([
        ("dev.fnbuild.runtime", request.runtime.name.as_str()),
        (
            "dev.fnbuild.runtime.language",
            &request.runtime.language.to_string(),
        ),
    ]);
    config.expose_tcp_port(crate::build::DEFAULT_PORT);
    config.push_layer(
        server.diff_id.clone(),
        &created,
        format!("fnbuild: {} runtime server", request.runtime.language),
    );
    layers.push(Descriptor::new(
        family.layer_gzip(),
        server.digest,
        server.size,
    ));
    let manifest = Manifest::assemble(family, &config, layers, annotations, &store)?;
    publish(
        &BuiltImage::new(manifest, inherited),
        &request.outputs,
        registries,
        &store,
    )
    .await
}

/// What an upstream shows of its interpreter without running it.
enum Shown<'a> {
    /// A root filesystem: Python's versioned `pythonX.Y` binary.
    Rootfs(&'a Path),
    /// An image's config: `PYTHON_VERSION` or `NODE_VERSION`, as the official images set them.
    Config(&'a ImageConfig),
}

/// Refuses an upstream that shows an interpreter of another version than the runtime's: its
/// functions' dependencies would be installed for a version it does not run. What cannot be
/// seen (a Node.js root filesystem, an image without those variables) is not checked here;
/// a Python build still checks its base image's interpreter when it compiles the handler.
fn check_interpreter(
    runtime: &Runtime,
    shown: &Shown<'_>,
    upstream: impl std::fmt::Display,
) -> Result<()> {
    let version = &runtime.version;
    let found = match (runtime.language, shown) {
        (Language::Python, Shown::Rootfs(dir)) => {
            let binary = format!("python{version}");
            let held = ["usr/bin", "usr/local/bin"]
                .iter()
                .any(|bin| std::fs::symlink_metadata(dir.join(bin).join(&binary)).is_ok());
            if held {
                return Ok(());
            }
            format!("no {binary} in /usr/bin or /usr/local/bin")
        }
        (Language::Nodejs, Shown::Rootfs(_)) => return Ok(()),
        (language, Shown::Config(config)) => {
            let variable = match language {
                Language::Python => "PYTHON_VERSION",
                Language::Nodejs => "NODE_VERSION",
            };
            match config.env_var(variable) {
                Some(value) if value != version && !value.starts_with(&format!("{version}.")) => {
                    format!("its {variable} is {value}")
                }
                _ => return Ok(()),
            }
        }
    };
    Err(Error::Usage(format!(
        "--from {upstream}: {found}; a base image of runtime {} must hold {} {version}",
        runtime.name,
        runtime.language.title()
    )))
}

/// The runtime server file and the (empty, root-owned) code directory.
fn server_layer(runtime: &Runtime, options: &LayerOptions, cache: &Cache) -> Result<BuiltLayer> {
    let (file, source) = runtime.language.server();
    let mut entries = layer::parent_dirs(SERVER_DIR);
    entries.push(Entry::file(
        format!("{}/{file}", SERVER_DIR.trim_start_matches('/')),
        0o644,
        source.as_bytes().to_vec(),
    ));
    entries.push(Entry::directory(CODE_DIR.trim_start_matches('/')));
    layer::write_layer(entries, options, &cache.blobs())
}

/// The layer of a root filesystem directory (modes and owners kept) and a config for it.
fn rootfs_layer(
    dir: &Path,
    options: &LayerOptions,
    cache: &Cache,
    created: &str,
) -> Result<(Descriptor, ImageConfig)> {
    if !dir.join("bin").exists() && !dir.join("usr").is_dir() {
        return Err(Error::Usage(format!(
            "rootfs:{}: not a root filesystem (no /usr or /bin in it)",
            dir.display()
        )));
    }
    let skip = |p: &Path| {
        // Kernel file systems and caches have no place in an image.
        ["proc", "sys", "dev"].iter().any(|d| p == Path::new(d))
            || p.starts_with("var/cache/apt")
            || p.starts_with("var/lib/apt/lists")
    };
    let mut entries = layer::entries_from_dir(dir, "", Attributes::Preserved, &skip)?;
    entries.extend(["proc", "sys", "dev"].map(Entry::directory));
    let built = layer::write_layer(entries, options, &cache.blobs())?;
    let mut config = ImageConfig {
        created: Some(created.to_string()),
        architecture: oci_architecture().to_string(),
        os: "linux".to_string(),
        rootfs: RootFs::default(),
        ..ImageConfig::default()
    };
    config.set_env([
        (
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        ),
        ("LANG", "C.UTF-8"),
    ]);
    config.push_layer(
        built.diff_id.clone(),
        created,
        format!("fnbuild: root filesystem from {}", dir.display()),
    );
    Ok((
        Descriptor::new(MediaFamily::Oci.layer_gzip(), built.digest, built.size),
        config,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::Catalog;

    fn check(runtime: &str, shown: &Shown<'_>) -> Result<()> {
        let catalog = Catalog::embedded();
        check_interpreter(catalog.resolve(runtime).unwrap().runtime, shown, "UPSTREAM")
    }

    #[test]
    fn a_python_root_filesystem_must_hold_the_runtimes_version() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("usr/bin")).unwrap();
        std::fs::write(dir.path().join("usr/bin/python3.11"), "").unwrap();
        check("python3.11", &Shown::Rootfs(dir.path())).unwrap();
        let err = check("python3.13", &Shown::Rootfs(dir.path()))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "--from UPSTREAM: no python3.13 in /usr/bin or /usr/local/bin; a base image of \
             runtime python3.13 must hold Python 3.13"
        );
    }

    #[test]
    fn an_images_version_variable_must_name_the_runtimes_version() {
        let config = |variable: &str| {
            let mut config = ImageConfig::default();
            config.set_env([(variable, "3.10.4")]);
            config
        };
        let python = config("PYTHON_VERSION");
        check("python3.10", &Shown::Config(&python)).unwrap();
        let err = check("python3.9", &Shown::Config(&python))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("its PYTHON_VERSION is 3.10.4") && err.contains("must hold Python 3.9"),
            "{err}"
        );
        // Nothing shown: nothing to refuse.
        check("nodejs22", &Shown::Config(&python)).unwrap();
        let mut node = ImageConfig::default();
        node.set_env([("NODE_VERSION", "18.20.4")]);
        check("nodejs18", &Shown::Config(&node)).unwrap();
        let err = check("nodejs20", &Shown::Config(&node))
            .unwrap_err()
            .to_string();
        assert!(err.contains("its NODE_VERSION is 18.20.4"), "{err}");
    }
}
