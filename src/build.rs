//! The build: the one place that knows the whole path from a function's source to a
//! published image (see DESIGN.md). Source → workspace; runtime → base image (manifest and
//! config only); deps → cached deps layer; code → code layer; config and manifest derived from
//! the base's; then every output receives the image. For several platforms (every one of a
//! multi-platform base, or `--platform`'s), each gets its base's image with its own deps layer
//! (installed by its own interpreter, and cached under its base's digest) and the one code
//! layer, and the outputs receive the index of them.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::blocking;
use crate::builder_image;
use crate::cache::Cache;
use crate::cache_repo::{CacheRepo, DepsLayer, Lookup};
use crate::compile_check::{self, Compiled, Interpreter};
use crate::deps::{self, DepsFiles, ImageRoot, InstallOptions, Installer};
use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::function_image::{self, env, CODE_DIR};
use crate::handler_check;
use crate::image::append::{Append, BaseName};
use crate::image::config::rfc3339;
use crate::image::layer::{self, Attributes, BuiltLayer, Entry, LayerOptions};
use crate::image::{platform, Descriptor, Platform, CREATED_ANNOTATION, REVISION_KEY, SOURCE_KEY};
use crate::registry::Registries;
use crate::rootfs;
use crate::runtime::{Catalog, Handler, Language, Runtime};
use crate::sbom;
use crate::source::{self, FetchOptions, SingleFileName, SourceSpec, Workspace};
use crate::transport::publish::{publish, BuiltImage, Publication};
use crate::transport::referrers;
use crate::transport::{BlobSource, Location, SourceImage, Wanted};
use tracing::Instrument;

/// Bumped when the deps layer's content, or what a cache entry records of it, changes for the
/// same inputs, to retire cache entries.
const DEPS_LAYER_FORMAT: &str = "2";

/// Everything a build needs to know, as the CLI gathered it.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    pub source: SourceSpec,
    /// The function's directory inside the source.
    pub sub_dir: Option<String>,
    pub git: crate::source::git::GitOptions,
    pub s3: crate::source::s3::S3Options,
    pub checksum: Option<Digest>,
    /// `--source-url`, `--source-revision`: what the image records of its source, each given
    /// one instead of what the fetch found.
    pub origin: source::Origin,
    pub limits: source::Limits,
    /// How long fetching the source over the network may take, and wait for data.
    pub deadlines: source::Deadlines,
    pub runtime: String,
    pub handler: Handler,
    pub dependencies: Option<PathBuf>,
    pub env: Vec<(String, String)>,
    pub labels: Vec<(String, String)>,
    pub timeout_seconds: u32,
    /// `FUNC_PORT`: where the runtime listens when Knative's `PORT` is not set.
    pub port: u16,
    /// `FUNC_MEMORY_LIMIT`, when known.
    pub memory_limit_bytes: Option<u64>,
    pub base_image: Option<Location>,
    pub outputs: Vec<Location>,
    pub install: InstallOptions,
    /// Modification time of every layer entry and creation time of the image.
    pub source_date_epoch: u64,
    /// Attach an SPDX SBOM to the image in every registry output.
    pub sbom: bool,
    /// `--platform`: the base image's platforms to build for [default: every one it has].
    pub platforms: Option<Vec<Platform>>,
}

/// What a build produced.
#[derive(Debug, Clone)]
pub struct BuildOutcome {
    /// The image's digest; of several platforms' images, the index's.
    pub digest: Digest,
    /// Per output, the image by digest (`REF@sha256:...`).
    pub published: Vec<String>,
    /// The image's SPDX document, naming the image as its first output does; of several
    /// platforms' images, the first platform's (each is attached to its own image).
    pub sbom: serde_json::Value,
}

/// The environment a build runs in.
pub struct BuildContext<'a> {
    pub catalog: &'a Catalog,
    pub registries: &'a Registries,
    pub cache: &'a Cache,
    /// `--cache-repo`: deps layers shared through a registry.
    pub cache_repo: Option<&'a CacheRepo>,
}

pub async fn build(request: &BuildRequest, ctx: &BuildContext<'_>) -> Result<BuildOutcome> {
    let started = Instant::now();
    let resolved = ctx.catalog.resolve(&request.runtime)?;
    if let Some(warning) = &resolved.alias_warning {
        tracing::warn!("{warning}");
    }
    let runtime = resolved.runtime;
    let language = runtime.language;

    let workspace = fetch_source(request, language, ctx).await?;
    let module = handler_check::check(&workspace, &request.handler, language)?;
    let deps_files = find_deps_files(request, &workspace, language)?;
    let (base_location, bases) = load_bases(request, runtime, ctx).await?;
    let declared = match &deps_files {
        Some(files) if files.declares_dependencies()? => Some(files),
        _ => None,
    };
    if declared.is_some() && request.install.installer == Installer::Host {
        refuse_foreign_host_install(&bases)?;
    }
    if language == Language::Python {
        compile_handler(&module, request, runtime, compile_base(&bases), ctx).await?;
    }

    let layer_options = LayerOptions {
        mtime: request.source_date_epoch,
        ..LayerOptions::default()
    };
    let deps: Vec<Option<ResolvedDeps>> = match declared {
        Some(files) => platforms_deps_layers(files, runtime, &bases, request, &layer_options, ctx)
            .await?
            .into_iter()
            .map(Some)
            .collect(),
        None => bases.iter().map(|_| None).collect(),
    };
    // One code layer, the same in every platform's image.
    let code_layer = code_layer(&workspace, deps_files.as_ref(), layer_options, ctx.cache).await?;
    let images = bases
        .iter()
        .zip(&deps)
        .map(|(base, deps)| {
            let image = assemble(
                request,
                runtime,
                base,
                &workspace,
                deps.as_ref(),
                &code_layer,
                ctx.cache,
            )?;
            Ok((base.platform.clone(), image))
        })
        .collect::<Result<Vec<_>>>()?;
    let publication = Publication::of(images.clone());
    let published = publish(
        &publication,
        &request.outputs,
        ctx.registries,
        &ctx.cache.blobs(),
    )
    .await?;

    let created = rfc3339(request.source_date_epoch);
    let contents: Vec<sbom::Contents> = bases
        .iter()
        .zip(&deps)
        .map(|(base, deps)| sbom::Contents {
            runtime,
            base_image: base_location.to_string(),
            base_digest: &base.digest,
            packages: deps.as_ref().map_or(&[][..], |d| &d.layer.packages[..]),
            created: &created,
        })
        .collect();
    // The first platform's document as the first output names its image (for `--sbom-file`).
    let sbom_document = sbom::spdx_document(
        &request
            .outputs
            .first()
            .map_or_else(|| sbom::ImageName::local("function"), sbom_name),
        &images[0].1.digest,
        &contents[0],
    );
    if request.sbom {
        for ((_, image), contents) in images.iter().zip(&contents) {
            attach_sbom(image, &request.outputs, contents, ctx).await;
        }
    }
    let digest = publication.digest().clone();
    let platforms: Vec<Platform> = images.into_iter().map(|(p, _)| p).collect();
    tracing::info!(%digest, platforms = %platform::list(&platforms), elapsed = ?started.elapsed(), "build finished");
    Ok(BuildOutcome {
        digest,
        published,
        sbom: sbom_document,
    })
}

/// The function's source, fetched into a workspace; its origin is what `--source-url` and
/// `--source-revision` say, else what the fetch found.
async fn fetch_source(
    request: &BuildRequest,
    language: Language,
    ctx: &BuildContext<'_>,
) -> Result<Workspace> {
    let mut workspace = source::fetch(
        &request.source,
        &FetchOptions {
            checksum: request.checksum.clone(),
            limits: request.limits,
            temp_parent: ctx.cache.session_dir().to_path_buf(),
            sub_dir: request.sub_dir.clone(),
            git: request.git.clone(),
            s3: request.s3.clone(),
            deadlines: request.deadlines,
            single_file: SingleFileName::new(&request.handler.module, language.module_extensions()),
        },
    )
    .await?;
    tracing::info!(source = %request.source, "fetched the function's source");
    let found = std::mem::take(&mut workspace.origin);
    workspace.origin = request.origin.clone().or(found);
    Ok(workspace)
}

/// Where the base image is (`--base-image`, else the runtime's), and its image for each
/// platform built for: `--platform`'s, else every one it has.
async fn load_bases(
    request: &BuildRequest,
    runtime: &Runtime,
    ctx: &BuildContext<'_>,
) -> Result<(Location, Vec<SourceImage>)> {
    let location = match &request.base_image {
        Some(location) => location.clone(),
        None => runtime.base_image_ref().parse()?,
    };
    let wanted = match &request.platforms {
        Some(platforms) => Wanted::These(platforms),
        None => Wanted::Every,
    };
    let bases = SourceImage::load_all(&location, wanted, ctx.registries, &ctx.cache.blobs())
        .await
        .map_err(|e| match e {
            Error::Registry(inner) => Error::Image(format!(
                "cannot read the base image {location} of runtime {}: {inner}",
                runtime.name
            )),
            other => other,
        })?;
    for base in &bases {
        tracing::info!(base = %location, platform = %base.platform, digest = %base.digest, "read the base image's manifest and config");
    }
    Ok((location, bases))
}

/// Each platform's deps layer, installed by its own interpreter, the platforms at once (their
/// logs marked with the platform when there are several).
async fn platforms_deps_layers(
    files: &DepsFiles,
    runtime: &Runtime,
    bases: &[SourceImage],
    request: &BuildRequest,
    options: &LayerOptions,
    ctx: &BuildContext<'_>,
) -> Result<Vec<ResolvedDeps>> {
    let several = bases.len() > 1;
    futures_util::future::try_join_all(bases.iter().map(|base| {
        let span = match several {
            true => tracing::info_span!("platform", platform = %base.platform),
            false => tracing::Span::none(),
        };
        deps_layer(files, runtime, base, &request.install, options, ctx).instrument(span)
    }))
    .await
}

/// The base whose interpreter compiles the handler: this machine's platform's, else the
/// first (run under emulation).
fn compile_base(bases: &[SourceImage]) -> &SourceImage {
    let here = Platform::this_machine();
    bases
        .iter()
        .find(|base| base.platform.matches(&here))
        .unwrap_or(&bases[0])
}

/// `--deps-installer host` installs with this machine's pip or npm, whose native modules are
/// this machine's: refused for a base of another platform.
fn refuse_foreign_host_install(bases: &[SourceImage]) -> Result<()> {
    let here = Platform::this_machine();
    match bases.iter().find(|base| !base.platform.matches(&here)) {
        Some(foreign) => Err(Error::Usage(format!(
            "--deps-installer host installs dependencies with this machine's pip or npm, for \
             {here}: it cannot install them for {}; use --deps-installer image (each \
             platform's own interpreter, under emulation where needed) or --platform {here}",
            foreign.platform
        ))),
        None => Ok(()),
    }
}

/// Attaches the image's SBOM to it in every registry output. The image is published by now:
/// a registry that refuses the SBOM gets a warning, not a failed build.
async fn attach_sbom(
    image: &BuiltImage,
    outputs: &[Location],
    contents: &sbom::Contents<'_>,
    ctx: &BuildContext<'_>,
) {
    let subject = image.descriptor();
    let store = ctx.cache.blobs();
    for output in outputs {
        let Location::Registry(reference) = output else {
            continue;
        };
        let name = reference.repository_name();
        let attached = async {
            let document = sbom::spdx_document(&sbom_name(output), &image.digest, contents);
            let bytes = serde_json::to_vec(&document).expect("a document serializes");
            let blob = store.insert_bytes(&bytes)?;
            let artifact = referrers::Artifact {
                artifact_type: sbom::SPDX_JSON,
                layers: vec![Descriptor::new(sbom::SPDX_JSON, blob, bytes.len() as u64)],
                subject: Some(&subject),
                annotations: [(CREATED_ANNOTATION.to_string(), contents.created.to_string())]
                    .into(),
            };
            let client = ctx.registries.client(&reference.registry)?;
            referrers::attach(&client, &reference.repository, &artifact, &store).await
        }
        .await;
        match attached {
            Ok(attached) => tracing::info!(
                sbom = %reference.with_digest(&attached.digest),
                listed_at = attached.fallback_tag.as_deref().unwrap_or("the referrers API"),
                packages = contents.packages.len(),
                "attached the SBOM (SPDX)"
            ),
            Err(e) => {
                tracing::warn!(image = %name, "the image was published without its SBOM: {e}")
            }
        }
    }
}

/// How the SBOM names the image at an output: a registry repository, else the name in the
/// layout or tarball (or the file's name).
fn sbom_name(output: &Location) -> sbom::ImageName {
    match output {
        Location::Registry(reference) => sbom::ImageName::in_registry(&reference.repository_name()),
        Location::Layout { dir, tag } => sbom::ImageName::local(
            tag.as_deref()
                .unwrap_or(&dir.file_name().unwrap_or_default().to_string_lossy()),
        ),
        Location::Tarball { file, name } => sbom::ImageName::local(
            name.as_deref()
                .unwrap_or(&file.file_stem().unwrap_or_default().to_string_lossy()),
        ),
    }
}

/// The deps file: `--dependencies`, else the runtime's deps file in the source, if any. Files
/// of the source are read beneath its directory; `--dependencies` is the builder's own file.
fn find_deps_files(
    request: &BuildRequest,
    workspace: &Workspace,
    language: Language,
) -> Result<Option<DepsFiles>> {
    let name = language.deps_file();
    let nodejs = language == Language::Nodejs;
    let (manifest, lock, in_source, origin) = match &request.dependencies {
        Some(path) => {
            let manifest = std::fs::read(path).map_err(|e| {
                Error::Usage(format!(
                    "--dependencies {}: {e} (expected a {name} file)",
                    path.display()
                ))
            })?;
            let lock_path = path.with_file_name(deps::LOCK_FILE);
            let lock = if nodejs && lock_path.is_file() {
                Some(std::fs::read(&lock_path).io_context("read", &lock_path)?)
            } else {
                None
            };
            (manifest, lock, false, path.display().to_string())
        }
        None => {
            let Some(manifest) = workspace.read_file(name, "the dependencies file")? else {
                return Ok(None);
            };
            tracing::info!(
                file = name,
                "using the dependencies file found in the source"
            );
            let lock = if nodejs {
                workspace.read_file(deps::LOCK_FILE, "the lock file")?
            } else {
                None
            };
            (manifest, lock, true, name.to_string())
        }
    };
    let npmrc = if nodejs {
        workspace.read_file(deps::NPMRC_FILE, "npm's project settings file")?
    } else {
        None
    };
    Ok(Some(DepsFiles {
        language,
        origin,
        manifest,
        lock,
        npmrc,
        in_source,
    }))
}

/// The cache key of a deps layer: what the installed files depend on.
fn deps_cache_key(
    files: &DepsFiles,
    runtime: &Runtime,
    base: &SourceImage,
    installer: Installer,
) -> Digest {
    let key = serde_json::json!({
        "format": DEPS_LAYER_FORMAT,
        "base": base.digest,
        "runtime": runtime.name,
        "deps": Digest::of(&files.manifest),
        "lock": files.lock.as_deref().map(Digest::of),
        "npmrc": files.npmrc.as_deref().map(Digest::of),
        "installer": installer,
    });
    Digest::of(key.to_string().as_bytes())
}

/// A deps layer ready to go into the image, and the cache repository holding its blob, when
/// one does (after a hit there, the blob is not in the local blob store).
struct ResolvedDeps {
    layer: DepsLayer,
    remote: Option<BlobSource>,
}

/// The deps layer for the deps files: from the local cache, else the cache repository, else
/// installed and then stored in both.
async fn deps_layer(
    files: &DepsFiles,
    runtime: &Runtime,
    base: &SourceImage,
    install: &InstallOptions,
    options: &LayerOptions,
    ctx: &BuildContext<'_>,
) -> Result<ResolvedDeps> {
    let key = deps_cache_key(files, runtime, base, install.installer);
    let entry_path = ctx.cache.deps_entry(&key);
    let store = ctx.cache.blobs();
    if let Some(layer) = std::fs::read(&entry_path)
        .ok()
        .and_then(|b| serde_json::from_slice::<DepsLayer>(&b).ok())
        .filter(|layer| store.contains(&layer.digest))
    {
        tracing::info!(digest = %layer.digest, "deps layer cache hit: nothing to install");
        return Ok(ResolvedDeps {
            layer,
            remote: None,
        });
    }
    if let Some(repo) = ctx.cache_repo {
        // The cache only saves time: a cache repository that cannot be read is a miss.
        match repo.lookup(&key).await.unwrap_or_else(|e| {
            tracing::warn!(cache = %repo.name(), "cannot read the cache repository: {e}");
            Lookup::Miss
        }) {
            Lookup::Hit(layer) => {
                tracing::info!(digest = %layer.digest, cache = %repo.name(), "deps layer cache hit in the cache repository: nothing to install");
                return Ok(ResolvedDeps {
                    layer,
                    remote: Some(repo.blob_source()),
                });
            }
            Lookup::Expired { age } => {
                let age = age.map_or("unknown".to_string(), |a| {
                    humantime::format_duration(Duration::from_secs(a.as_secs())).to_string()
                });
                tracing::info!(cache = %repo.name(), %age, "deps layer cache entry older than --cache-ttl: installing again")
            }
            Lookup::Miss => {
                tracing::info!(cache = %repo.name(), "deps layer not in the cache repository")
            }
        }
    }
    tracing::info!(file = %files.origin, installer = ?install.installer, "deps layer cache miss: installing dependencies");
    let layer = install_deps(files, runtime, base, install, options, ctx).await?;
    std::fs::write(
        &entry_path,
        serde_json::to_vec(&layer).expect("a cache entry serializes"),
    )
    .io_context("write", &entry_path)?;
    let mut remote = None;
    if let Some(repo) = ctx.cache_repo {
        // A build whose layer cannot be cached still succeeds.
        match repo.store(&key, &layer, &runtime.name, &store).await {
            Ok(()) => {
                tracing::info!(cache = %repo.name(), "stored the deps layer in the cache repository");
                // Destinations on the same registry mount it from there instead of a second upload.
                remote = Some(repo.blob_source());
            }
            Err(e) => {
                tracing::warn!(cache = %repo.name(), "cannot store the deps layer in the cache repository: {e}")
            }
        }
    }
    Ok(ResolvedDeps { layer, remote })
}

/// Installs the dependencies into a fresh directory and makes the deps layer of it.
async fn install_deps(
    files: &DepsFiles,
    runtime: &Runtime,
    base: &SourceImage,
    install: &InstallOptions,
    options: &LayerOptions,
    ctx: &BuildContext<'_>,
) -> Result<DepsLayer> {
    let started = Instant::now();
    let store = ctx.cache.blobs();
    let image_root = match install.installer {
        Installer::Image => Some(image_root(base, runtime, ctx).await?),
        Installer::Host => None,
    };
    let work = ctx.cache.temp_dir("deps-")?;
    let (install, files, runtime, options) =
        (install.clone(), files.clone(), runtime.clone(), *options);
    // The installed files are removed with `work` on the blocking thread too: they can be many.
    let (built, packages) = blocking::run(move || {
        let out = work.path().join("out");
        let scratch = work.path().join("scratch");
        for dir in [&out, &scratch] {
            std::fs::create_dir(dir).io_context("create", dir)?;
        }
        deps::install(
            &install,
            &files,
            &runtime.version,
            image_root.as_ref(),
            &out,
            &scratch,
        )?;
        let packages = sbom::installed_packages(&out, runtime.language);
        tracing::info!(elapsed = ?started.elapsed(), packages = packages.len(), "dependencies installed");
        let entries = layer::entries_from_dir(&out, CODE_DIR, Attributes::Normalized, &|_| false)?;
        Ok::<_, Error>((layer::write_layer(entries, &options, &store)?, packages))
    })
    .await?;
    Ok(DepsLayer {
        digest: built.digest,
        size: built.size,
        diff_id: built.diff_id,
        packages,
    })
}

/// Where the base image's own interpreter runs the install: right here, when this build step
/// runs in a builder image made from this very base; else inside its root filesystem,
/// unpacked, which needs the sandbox.
async fn image_root(
    base: &SourceImage,
    runtime: &Runtime,
    ctx: &BuildContext<'_>,
) -> Result<ImageRoot> {
    let builder_base = builder_image::base_of_this_step();
    if builder_base.as_ref() == Some(&base.digest) {
        tracing::info!(runtime = %runtime.name, "this build step runs in the runtime's builder image: installing with its own interpreter, nothing to unpack");
        if !crate::confine::available() {
            tracing::warn!("Landlock is not available (a kernel older than 5.13, or one without it): the install runs as this step's user and can read what it can; give the step no more than it needs");
        }
        return Ok(ImageRoot::ThisStep);
    }
    if let Err(why) = crate::sandbox::mode() {
        let here = match builder_base {
            Some(digest) => format!(
                "this build step runs in a builder image made from another base ({digest}, not {}), and ",
                base.digest
            ),
            None => String::new(),
        };
        let this_machine = Platform::this_machine();
        let other_platform = match base.platform.matches(&this_machine) {
            true => String::new(),
            false => format!(
                " For the {platform} image of a multi-platform build, build it in a step on a \
                 {platform} node, or leave it out with --platform {this_machine} (the \
                 templates' PLATFORMS).",
                platform = base.platform
            ),
        };
        return Err(Error::Deps(format!(
            "dependencies are installed by the base image's own interpreter: {here}running \
             it inside the base image's root filesystem needs a sandbox, which cannot be made \
             here: {why}. Or build in the builder image made from this base (`fnbuild \
             builder-image --runtime {} --base-image BASE`; the templates' \
             BUILDER_IMAGE).{other_platform}",
            runtime.name
        )));
    }
    Ok(ImageRoot::Unpacked(base_rootfs(base, ctx).await?))
}

/// The base image's root filesystem, unpacked in the cache (its layers fetched first when the
/// cache lacks them).
async fn base_rootfs(base: &SourceImage, ctx: &BuildContext<'_>) -> Result<PathBuf> {
    let layers = base.layer_files(&ctx.cache.blobs()).await?;
    let cache = ctx.cache.clone();
    blocking::run(move || rootfs::ensure_unpacked(&cache, &layers)).await
}

/// Compiles the Python handler's module with the runtime's own interpreter: the base image's
/// when its root filesystem is unpacked already, else this machine's `python3` when it is the
/// runtime's version, else the base image's, unpacked for it once.
async fn compile_handler(
    module: &handler_check::Module,
    request: &BuildRequest,
    runtime: &Runtime,
    base: &SourceImage,
    ctx: &BuildContext<'_>,
) -> Result<()> {
    let version = runtime.version.clone();
    let layers = base.manifest.layers.iter().map(|l| &l.digest);
    let sandbox = crate::sandbox::mode();
    let can_sandbox = sandbox.is_ok();
    let interpreter = match rootfs::already_unpacked(ctx.cache, layers) {
        Some(root) if can_sandbox => Interpreter::Image(root),
        _ => {
            let host_version = version.clone();
            if blocking::run(move || compile_check::host_python_is(&host_version)).await {
                Interpreter::Host
            } else if can_sandbox {
                tracing::info!(runtime = %runtime.name, "unpacking the base image's root filesystem once, to compile the handler with its Python");
                Interpreter::Image(base_rootfs(base, ctx).await?)
            } else {
                tracing::warn!(
                    "the handler is not compiled at build time: this machine's python3 is not \
                     Python {version}, and the base image's cannot run here ({}); a syntax \
                     error shows when the function starts",
                    sandbox.err().unwrap_or_default()
                );
                return Ok(());
            }
        }
    };
    let (module, handler) = (module.clone(), request.handler.clone());
    let compiled =
        blocking::run(move || compile_check::python(&module, &handler, &interpreter, &version))
            .await?;
    if let Compiled::Unavailable(why) = compiled {
        tracing::warn!("the handler is not compiled at build time ({why}); a syntax error shows when the function starts");
    }
    Ok(())
}

/// The code layer: the workspace at the code directory, plus a deps file given from elsewhere.
async fn code_layer(
    workspace: &Workspace,
    deps: Option<&DepsFiles>,
    options: LayerOptions,
    cache: &Cache,
) -> Result<BuiltLayer> {
    let deps_file = deps.filter(|files| !files.in_source).map(|files| {
        Entry::file(
            format!(
                "{}/{}",
                CODE_DIR.trim_start_matches('/'),
                files.language.deps_file()
            ),
            0o644,
            files.manifest.clone(),
        )
    });
    let (root, store) = (workspace.root.clone(), cache.blobs());
    blocking::run(move || {
        let skip = |p: &Path| p.file_name() == Some(std::ffi::OsStr::new(".git"));
        let mut entries = layer::entries_from_dir(&root, CODE_DIR, Attributes::Normalized, &skip)?;
        entries.extend(deps_file);
        layer::write_layer(entries, &options, &store)
    })
    .await
}

/// The function image: the base's, with the deps and code layers and the function's settings.
fn assemble(
    request: &BuildRequest,
    runtime: &Runtime,
    base: &SourceImage,
    workspace: &Workspace,
    deps: Option<&ResolvedDeps>,
    code_layer: &BuiltLayer,
    cache: &Cache,
) -> Result<BuiltImage> {
    let created = rfc3339(request.source_date_epoch);
    let mut image = Append::on(base, BaseName::Recorded, &created)?;
    let config = &mut image.config;
    let timeout = request.timeout_seconds.to_string();
    let port = request.port.to_string();
    config.set_env([
        (env::HANDLER, request.handler.function.as_str()),
        (env::MODULE, request.handler.module.as_str()),
        (env::RUNTIME, runtime.name.as_str()),
        (env::TIMEOUT, timeout.as_str()),
        (env::PORT, port.as_str()),
    ]);
    if let Some(bytes) = request.memory_limit_bytes {
        config.set_env([(env::MEMORY_LIMIT, bytes.to_string().as_str())]);
    }
    config.set_env(request.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    // The source labels the base may carry name the base's source, not the function's.
    if let Some(labels) = config.config.labels.as_mut() {
        labels.retain(|key, _| key != SOURCE_KEY && key != REVISION_KEY);
    }
    config.set_labels(workspace.origin.oci_keys());
    config.set_labels(request.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    config.expose_tcp_port(request.port);
    config.config.working_dir = Some(CODE_DIR.to_string());
    if config
        .config
        .user
        .as_deref()
        .is_none_or(|u| u.is_empty() || u == "root" || u == "0")
    {
        config.config.user = Some(function_image::USER.to_string());
    }
    if let Some(deps) = deps {
        let layer = deps.layer.built();
        image.layer(
            &layer,
            format!("fnbuild: {} dependencies", runtime.language),
        );
        if let Some(source) = &deps.remote {
            image.layer_found_at(&layer, source);
        }
    }
    image.layer(
        code_layer,
        format!("fnbuild: function code, handler {}", request.handler),
    );
    image.annotate(
        [(CREATED_ANNOTATION, created.as_str())]
            .into_iter()
            .chain(workspace.origin.oci_keys())
            .map(|(key, value)| (key.to_string(), value.to_string())),
    );
    image.finish(&cache.blobs())
}
