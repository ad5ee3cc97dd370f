//! Making a runtime base image: an upstream language image (from a registry, an OCI layout,
//! or a root filesystem directory such as a debootstrap) plus one layer holding the runtime
//! server, with the config that starts it. Several platforms (every one of a multi-platform
//! upstream, or one root filesystem each) make an index of such images, which share the
//! server layer; one platform makes a plain image. Upstream layers are not downloaded when the
//! upstream is in a registry: they are mounted or copied blob by blob at publish time.
//! An upstream that shows another interpreter version than the runtime's is refused (see
//! [`check_interpreter`]).

use std::path::{Path, PathBuf};

use crate::blocking;
use crate::cache::Cache;
use crate::error::{Error, Result};
use crate::function_image::{self, env, labels, CODE_DIR, SERVER_DIR};
use crate::image::append::{Append, BaseName};
use crate::image::config::rfc3339;
use crate::image::layer::{self, Attributes, BuiltLayer, Entry, LayerOptions};
use crate::image::{platform, ImageConfig, Platform};
use crate::registry::Registries;
use crate::runtime::{Language, Runtime};
use crate::transport::publish::{publish, Publication};
use crate::transport::{Location, SourceImage, Wanted};

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

pub struct BaseRequest<'a> {
    pub runtime: &'a Runtime,
    /// An image (each of its platforms), or root filesystems (one per platform).
    pub upstreams: Vec<Upstream>,
    /// `--platform`: only these, each of which an upstream must have.
    pub platforms: Option<Vec<Platform>>,
    pub outputs: Vec<Location>,
    pub source_date_epoch: u64,
}

/// One platform's upstream: an image read, or a root filesystem directory.
enum Part {
    Image(Box<SourceImage>),
    Rootfs(PathBuf),
}

/// Builds and publishes a runtime base image, one per platform the upstreams have (an index
/// of them when they are several); returns the published references.
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
    let parts = platform_parts(request, registries, cache).await?;
    let several = parts.len() > 1;
    // The same server layer (the same bytes) in every platform's image.
    let server = server_layer(request.runtime, options, cache).await?;
    // Every platform's interpreter is checked before any layer is made.
    for (platform, part) in &parts {
        match part {
            Part::Image(upstream) => {
                let named = match several {
                    true => format!("{} ({platform})", upstream.location),
                    false => upstream.location.to_string(),
                };
                check_interpreter(request.runtime, &Shown::Config(&upstream.config), named)?
            }
            Part::Rootfs(dir) => check_interpreter(
                request.runtime,
                &Shown::Rootfs(dir),
                format!("rootfs:{}", dir.display()),
            )?,
        }
    }
    let mut images = Vec::with_capacity(parts.len());
    for (platform, part) in parts {
        let mut image = match part {
            Part::Image(upstream) => Append::on(&upstream, BaseName::Omitted, &created)?,
            Part::Rootfs(dir) => {
                let mut image = Append::scratch(&created, &platform);
                image.config.set_env([
                    (
                        "PATH",
                        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    ),
                    ("LANG", "C.UTF-8"),
                ]);
                image.layer(
                    &rootfs_layer(&dir, options, cache).await?,
                    format!("fnbuild: root filesystem from {}", dir.display()),
                );
                image
            }
        };
        serve(&mut image, request.runtime, &server);
        images.push((platform, image.finish(&store)?));
    }
    publish(
        &Publication::of(images),
        &request.outputs,
        registries,
        &store,
    )
    .await
}

/// The upstream of each platform: every platform of an image upstream, one per root
/// filesystem (its binaries' architecture), only `--platform`'s when given. Two upstreams of
/// one platform, or a platform asked for that none has, are refused.
async fn platform_parts(
    request: &BaseRequest<'_>,
    registries: &Registries,
    cache: &Cache,
) -> Result<Vec<(Platform, Part)>> {
    let mut parts: Vec<(Platform, Part, String)> = Vec::new();
    let mut found_platforms = Vec::new();
    for upstream in &request.upstreams {
        let found = match upstream {
            Upstream::Image(location) => {
                SourceImage::load_all(location, Wanted::Every, registries, &cache.blobs())
                    .await?
                    .into_iter()
                    .map(|image| {
                        (
                            image.platform.clone(),
                            Part::Image(Box::new(image)),
                            location.to_string(),
                        )
                    })
                    .collect()
            }
            Upstream::Rootfs(dir) => {
                let platform = Platform::of_root_filesystem(dir)?;
                vec![(
                    platform,
                    Part::Rootfs(dir.clone()),
                    format!("rootfs:{}", dir.display()),
                )]
            }
        };
        found_platforms.extend(found.iter().map(|(p, _, _)| p.clone()));
        for (platform, part, named) in found {
            if let Some(asked) = &request.platforms {
                if !asked.iter().any(|p| p.matches(&platform)) {
                    // A root filesystem is given for its one platform; an image's others are
                    // left out.
                    if let Part::Rootfs(_) = part {
                        return Err(Error::Usage(format!(
                            "--from {named} is {platform}, not one of --platform {}",
                            platform::list(asked)
                        )));
                    }
                    continue;
                }
            }
            if let Some((_, _, first)) = parts.iter().find(|(p, _, _)| p.matches(&platform)) {
                return Err(Error::Usage(format!(
                    "--from {first} and --from {named} are both {platform}: give one upstream \
                     per platform"
                )));
            }
            parts.push((platform, part, named));
        }
    }
    if let Some(asked) = &request.platforms {
        let kept: Vec<Platform> = parts.iter().map(|(p, _, _)| p.clone()).collect();
        if let Some(missing) = asked.iter().find(|a| !kept.iter().any(|p| p.matches(a))) {
            return Err(Error::Usage(format!(
                "--platform {missing}: no upstream given is {missing} (they have {}); give a \
                 --from image that has it, or a rootfs:DIR of that architecture",
                platform::list(&found_platforms)
            )));
        }
    }
    if parts.is_empty() {
        return Err(Error::Usage(
            "no upstream has a platform to make a base image of".into(),
        ));
    }
    Ok(parts.into_iter().map(|(p, part, _)| (p, part)).collect())
}

/// Sets what starts the runtime server, and adds its layer.
fn serve(image: &mut Append, runtime: &Runtime, server: &BuiltLayer) {
    let config = &mut image.config;
    config.config.entrypoint = Some(runtime.language.entrypoint());
    config.config.cmd = None;
    config.config.user = Some(function_image::USER.to_string());
    config.config.working_dir = Some(CODE_DIR.to_string());
    let port = function_image::DEFAULT_PORT.to_string();
    config.set_env([(env::PORT, port.as_str())]);
    if runtime.language == Language::Python {
        config.set_env([("PYTHONUNBUFFERED", "1")]);
    }
    config.set_labels([
        (labels::RUNTIME, runtime.name.as_str()),
        (labels::LANGUAGE, &runtime.language.to_string()),
    ]);
    config.expose_tcp_port(function_image::DEFAULT_PORT);
    image.layer(
        server,
        format!("fnbuild: {} runtime server", runtime.language),
    );
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
async fn server_layer(
    runtime: &Runtime,
    options: LayerOptions,
    cache: &Cache,
) -> Result<BuiltLayer> {
    let (file, source) = runtime.language.server();
    let mut entries = layer::parent_dirs(SERVER_DIR);
    entries.push(Entry::file(
        format!("{}/{file}", SERVER_DIR.trim_start_matches('/')),
        0o644,
        source.as_bytes().to_vec(),
    ));
    entries.push(Entry::directory(CODE_DIR.trim_start_matches('/')));
    let store = cache.blobs();
    blocking::run(move || layer::write_layer(entries, &options, &store)).await
}

/// The layer of a root filesystem directory, modes and owners kept.
async fn rootfs_layer(dir: &Path, options: LayerOptions, cache: &Cache) -> Result<BuiltLayer> {
    if !dir.join("bin").exists() && !dir.join("usr").is_dir() {
        return Err(Error::Usage(format!(
            "rootfs:{}: not a root filesystem (no /usr or /bin in it)",
            dir.display()
        )));
    }
    let (dir, store) = (dir.to_path_buf(), cache.blobs());
    blocking::run(move || {
        let skip = |p: &Path| {
            // Kernel file systems and caches have no place in an image.
            ["proc", "sys", "dev"].iter().any(|d| p == Path::new(d))
                || p.starts_with("var/cache/apt")
                || p.starts_with("var/lib/apt/lists")
        };
        let mut entries = layer::entries_from_dir(&dir, "", Attributes::Preserved, &skip)?;
        entries.extend(["proc", "sys", "dev"].map(Entry::directory));
        layer::write_layer(entries, &options, &store)
    })
    .await
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
