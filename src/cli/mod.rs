//! The command-line edge: parses arguments, sets up logging, turns flag values into library
//! requests, runs them, prints results to stdout and errors to stderr, and maps failures to
//! exit codes (0 success, 1 build failure, 2 usage error, 128 + N when stopped by signal N).

mod args;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;

use crate::base::{make_base, BaseRequest};
use crate::build::{build, BuildContext, BuildRequest};
use crate::cache::Cache;
use crate::cache_repo::{CacheRepo, Entry};
use crate::deps::InstallOptions;
use crate::error::{Error, IoContext, Result};
use crate::function_image::CODE_DIR;
use crate::image::Platform;
use crate::knative::{self, ServiceOptions};
use crate::kubeless::ConvertRequest;
use crate::registry::{Reference, Registries, TransportOptions};
use crate::run::{run, RunRequest};
use crate::runtime::Catalog;
use crate::source::git::{GitOptions, GitSource};
use crate::source::git_credentials::{GitCredentialOptions, GitCredentials};
use crate::source::s3::S3Options;
use crate::source::{Deadlines, Limits, Origin, SourceSpec};
use crate::transport::publish::{publish, Publication};
use crate::transport::Location;
use args::{
    BaseArgs, BuildArgs, BuilderImageArgs, CacheRepoArgs, Cli, Command, ConvertArgs,
    EmptyMeansAbsent, GcArgs, ListFormat, LogFormat, PushArgs, RegistryArgs, RunArgs, RuntimesArgs,
};

/// The command line's definition, for tools that walk it (the generated CLI reference).
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Sandbox => return crate::sandbox::helper_main(),
        Command::SandboxInit => return crate::sandbox::init_main(),
        Command::Confined => return crate::confine::main(),
        _ => {}
    }
    init_logging(cli.log_format, &cli.log_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    // `fnbuild run` stops the function it runs on these signals itself, then exits.
    if !matches!(cli.command, Command::Run(_)) {
        if let Err(e) = exit_on_signals(&runtime) {
            tracing::warn!("cannot listen for SIGINT and SIGTERM: {e}");
        }
    }
    match runtime.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        Err(err) => {
            report(&err, cli.log_format);
            ExitCode::from(if err.is_usage() { 2 } else { 1 })
        }
    }
}

/// Makes SIGINT and SIGTERM end the process whatever the command is doing: this process's
/// temporary files in the cache are removed, one line says so, and the exit code is 128 plus
/// the signal's number. Listens on a task of its own, so a command busy on the main thread, or
/// blocking tasks that never finish, cannot hold the exit up. What is published stays whole:
/// a registry push sends the manifest, which names the image, last.
fn exit_on_signals(runtime: &tokio::runtime::Runtime) -> std::io::Result<()> {
    use nix::sys::signal::Signal;
    use tokio::signal::unix::{signal, SignalKind};
    // Listening from here on, before the command starts.
    let _context = runtime.enter();
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    runtime.spawn(async move {
        let stopped_by = tokio::select! {
            _ = interrupt.recv() => Signal::SIGINT,
            _ = terminate.recv() => Signal::SIGTERM,
        };
        let freed = crate::cache::remove_own_sessions();
        tracing::warn!(
            signal = stopped_by.as_str(),
            "stopped by {stopped_by} before finishing; removed its temporary files ({})",
            indicatif::DecimalBytes(freed)
        );
        std::process::exit(128 + stopped_by as i32);
    });
    Ok(())
}

/// Libraries whose info lines name credentials (the AWS SDK logs the access key ID): they
/// say only warnings unless a filter names them.
const QUIET_LIBRARIES: &str =
    "aws_config=warn,aws_smithy_runtime=warn,aws_sdk_sts=warn,aws_sdk_s3=warn";

fn init_logging(format: LogFormat, level: &str) {
    let level = if level.contains('=') {
        level.to_string()
    } else {
        format!("{level},{QUIET_LIBRARIES}")
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => builder
            .with_writer(std::io::stderr)
            .json()
            .with_current_span(false)
            .init(),
        LogFormat::Text => {
            let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
            let color = terminal && std::env::var_os("NO_COLOR").is_none();
            let builder = builder.with_ansi(color).with_target(false).compact();
            // Progress bars on a terminal that can move the cursor; log lines everywhere else.
            if terminal && std::env::var_os("TERM").is_none_or(|t| t != "dumb") {
                let reporter = std::sync::Arc::new(crate::progress::TerminalReporter::new());
                let writer = reporter.log_writer();
                crate::progress::install(reporter);
                builder.with_writer(writer).init()
            } else {
                builder.with_writer(std::io::stderr).init()
            }
        }
    }
}

fn report(err: &Error, format: LogFormat) {
    match format {
        LogFormat::Json => tracing::error!(error = %err, "fnbuild failed"),
        LogFormat::Text => {
            let mut message = format!("error: {err}");
            let mut source = std::error::Error::source(err);
            while let Some(cause) = source {
                message.push_str(&format!("\n  caused by: {cause}"));
                source = cause.source();
            }
            eprintln!("{message}");
        }
    }
}

async fn dispatch(command: Command) -> Result<ExitCode> {
    match command {
        Command::Build(args) => run_build(args.without_empty_values()).await,
        Command::Base(args) => run_base(args).await,
        Command::Run(args) => run_image(args).await,
        Command::BuilderImage(args) => builder_image(args).await,
        Command::Push(args) => push_image(args).await,
        Command::Mirror(args) => mirror_images(args).await,
        Command::Convert(args) => convert_functions(args.without_empty_values()).await,
        Command::Runtimes(args) => list_runtimes(args),
        Command::Gc(args) => collect_garbage(args.without_empty_values()).await,
        Command::Sandbox | Command::SandboxInit | Command::Confined => {
            unreachable!("handled before the async runtime starts")
        }
    }
}

/// The registry clients and cache every registry-facing command uses.
async fn setup(args: &RegistryArgs) -> Result<(Registries, Cache, Catalog)> {
    // Every command treats an empty flag value (an unset template parameter) as not given.
    let args = &args.clone().without_empty_values();
    let registries = Registries::new(&TransportOptions {
        insecure_registries: args.insecure_registries.clone(),
        ca_certs: args
            .registry_ca
            .iter()
            .map(|ca| ca_files("--registry-ca", &kaniko_certificate_path(ca)))
            .collect::<Result<Vec<_>>>()?
            .concat(),
        docker_config: args.docker_config.clone(),
    })?;
    let cache_root = args.cache_dir.clone().unwrap_or_else(Cache::default_root);
    // Opening sweeps what dead processes left in the cache: file system work.
    let cache = crate::blocking::run(move || Cache::open(&cache_root)).await?;
    let catalog = Catalog::load(args.catalog.as_deref())?;
    Ok((registries, cache, catalog))
}

/// The cache repository of `--cache-repo`, if given.
fn cache_repo(args: &CacheRepoArgs, registries: &Registries) -> Result<Option<CacheRepo>> {
    let ttl = crate::cache_repo::parse_ttl(&args.cache_ttl)?;
    args.cache_repo
        .as_deref()
        .map(|repo| CacheRepo::new(repo, ttl, registries))
        .transpose()
}

async fn run_build(args: BuildArgs) -> Result<ExitCode> {
    let (registries, cache, catalog) = setup(&args.registry).await?;
    let cache_repo = cache_repo(&args.cache, &registries)?;
    let mut outputs = Vec::new();
    for image in &args.image {
        match image.parse::<Location>()? {
            location @ Location::Registry(_) => outputs.push(location),
            _ => {
                return Err(Error::Usage(format!(
                    "--image {image}: use --output for oci: and tar: outputs"
                )))
            }
        }
    }
    for output in &args.output {
        match output.parse::<Location>()? {
            Location::Registry(_) => {
                return Err(Error::Usage(format!(
                "--output {output}: expected oci:DIR[:TAG] or tar:FILE; use --image for a registry"
            )))
            }
            location => outputs.push(location),
        }
    }
    if args.knative_service.is_some() && !outputs.iter().any(|o| matches!(o, Location::Registry(_)))
    {
        return Err(Error::Usage(
            "--knative-service needs an --image in a registry: a Knative Service runs an image the cluster can pull".into(),
        ));
    }
    if args.image_url_file.is_some() && first_image(&outputs).is_none() {
        return Err(Error::Usage(
            "--image-url-file needs an --image: it names the image pushed there".into(),
        ));
    }
    if outputs.is_empty() {
        return Err(Error::Usage(
            "nothing to publish to: give --image REF (repeatable), or --output oci:DIR / tar:FILE"
                .into(),
        ));
    }
    let request = BuildRequest {
        source: source_spec(&args)?,
        sub_dir: args.sub_dir.clone(),
        git: GitOptions {
            credentials: GitCredentials::discover(&GitCredentialOptions {
                ssh_key: args.git_ssh_key.clone(),
                known_hosts: args.git_known_hosts.clone(),
            }),
            skip_host_key_check: args.git_insecure_skip_host_key_check,
        },
        s3: S3Options {
            endpoint: args.s3_endpoint.clone(),
            region: args.s3_region.clone(),
            credentials_dir: args.s3_credentials_dir.clone(),
            access_key_file: args.s3_access_key_file.clone(),
            secret_key_file: args.s3_secret_key_file.clone(),
        },
        checksum: args
            .checksum
            .as_deref()
            .map(|c| {
                c.parse()
                    .map_err(|e| Error::Usage(format!("--checksum: {e}")))
            })
            .transpose()?,
        origin: Origin {
            url: args.source_url.clone(),
            revision: args.source_revision.clone(),
        },
        limits: Limits {
            max_bytes: args.max_source_size,
            max_entries: args.max_source_files,
        },
        deadlines: Deadlines::parse(&args.fetch_timeout, &args.fetch_idle_timeout)?,
        runtime: args.runtime.clone(),
        handler: args.handler.parse()?,
        dependencies: args.dependencies.clone(),
        env: args
            .env
            .iter()
            .map(|e| parse_key_value("--env", e, true))
            .collect::<Result<_>>()?,
        labels: args
            .label
            .iter()
            .map(|l| parse_key_value("--label", l, true))
            .collect::<Result<_>>()?,
        timeout_seconds: args.timeout,
        port: args.port,
        memory_limit_bytes: args
            .memory
            .as_deref()
            .map(crate::quantity::memory_bytes)
            .transpose()?,
        base_image: args.base_image.as_deref().map(str::parse).transpose()?,
        outputs,
        install: InstallOptions {
            installer: args.deps_installer,
            index_ca: args
                .index_ca
                .iter()
                .filter(|ca| !ca.as_os_str().is_empty())
                .map(|ca| ca_files("--index-ca", ca))
                .collect::<Result<Vec<_>>>()?
                .concat(),
        },
        source_date_epoch: source_date_epoch()?,
        sbom: !args.no_sbom,
        platforms: platforms_flag(args.platform.as_deref())?,
    };
    if request.timeout_seconds == 0 {
        return Err(Error::Usage("--timeout must be at least 1 second".into()));
    }
    let service_options = match &args.knative_service {
        Some(_) => {
            let pod = service_pod(&args)?;
            let mut env = request.env.clone();
            env.extend(pod.env);
            let options = ServiceOptions {
                name: args.service_name.clone(),
                namespace: args.namespace.clone(),
                env,
                labels: request.labels.clone(),
                timeout_seconds: request.timeout_seconds,
                port: request.port,
                memory: args.memory.clone(),
                cpu: args.cpu.clone(),
                min_scale: args.min_scale,
                max_scale: args.max_scale,
                scale_target: args.scale_target,
                pod: pod.additions,
            };
            knative::validate(&options)?;
            Some(options)
        }
        None => None,
    };
    let outcome = build(
        &request,
        &BuildContext {
            catalog: &catalog,
            registries: &registries,
            cache: &cache,
            cache_repo: cache_repo.as_ref(),
        },
    )
    .await?;
    if let Some(path) = &args.digest_file {
        write_result(path, &outcome.digest.to_string())?;
    }
    if let Some(path) = &args.image_ref_file {
        write_result(path, &outcome.published[0])?;
    }
    if let Some(path) = &args.image_url_file {
        let pushed = first_image(&request.outputs).expect("an --image was required above");
        write_result(path, &pushed.to_string())?;
    }
    if let Some(path) = &args.sbom_file {
        let text = serde_json::to_string_pretty(&outcome.sbom).expect("a document serializes");
        write_result(path, &format!("{text}\n"))?;
    }
    if let (Some(path), Some(options)) = (&args.knative_service, &service_options) {
        let pinned = request
            .outputs
            .iter()
            .zip(&outcome.published)
            .find_map(|(output, pinned)| matches!(output, Location::Registry(_)).then_some(pinned))
            .expect("a registry output was required above");
        let service = knative::service(pinned, options)?;
        write_result(
            path,
            &serde_norway::to_string(&service).expect("a Service serializes"),
        )?;
        tracing::info!(file = %path.display(), "wrote the Knative Service");
    }
    let mut stdout = std::io::stdout().lock();
    for reference in &outcome.published {
        let _ = writeln!(stdout, "{reference}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The first `--image` as pushed: its reference without a digest (`REGISTRY/REPOSITORY[:TAG]`).
fn first_image(outputs: &[Location]) -> Option<Reference> {
    outputs.iter().find_map(|output| match output {
        Location::Registry(reference) => Some(Reference {
            digest: None,
            ..reference.clone()
        }),
        _ => None,
    })
}

/// The source from `--source` or `--git-url`, with the Git flags applied.
fn source_spec(args: &BuildArgs) -> Result<SourceSpec> {
    let mut spec = match (&args.source, &args.git_url) {
        (Some(source), _) => source.parse()?,
        (None, Some(url)) => {
            let prefixed = if url.starts_with("git+") || url.starts_with("git://") {
                url.clone()
            } else {
                format!("git+{url}")
            };
            SourceSpec::Git(
                GitSource::parse(&prefixed)
                    .ok_or_else(|| Error::Usage(format!("--git-url '{url}' is not a Git URL")))?,
            )
        }
        (None, None) => return Err(Error::Usage("give --source SRC or --git-url URL".into())),
    };
    match &mut spec {
        SourceSpec::Git(git) => {
            if let Some(revision) = &args.git_revision {
                if git.revision.as_ref().is_some_and(|r| r != revision) {
                    return Err(Error::Usage(format!(
                        "the source names revision '{}' and --git-revision '{revision}': give one",
                        git.revision.as_deref().unwrap_or_default()
                    )));
                }
                git.revision = Some(revision.clone());
            }
            git.submodules = args.git_submodules;
        }
        _ if args.git_revision.is_some() || args.git_submodules => {
            return Err(Error::Usage(
                "--git-revision and --git-submodules apply to Git sources only".into(),
            ))
        }
        _ => {}
    }
    Ok(spec)
}

async fn run_base(args: BaseArgs) -> Result<ExitCode> {
    let (registries, cache, catalog) = setup(&args.registry).await?;
    let resolved = catalog.resolve(&args.runtime)?;
    if let Some(warning) = &resolved.alias_warning {
        tracing::warn!("{warning}");
    }
    let outputs = args
        .image
        .iter()
        .map(|i| i.parse())
        .collect::<Result<Vec<Location>>>()?;
    let request = BaseRequest {
        runtime: resolved.runtime,
        upstreams: args
            .from
            .iter()
            .map(|from| from.parse())
            .collect::<Result<_>>()?,
        platforms: platforms_flag(args.platform.as_deref())?,
        outputs,
        source_date_epoch: source_date_epoch()?,
    };
    for reference in make_base(&request, &registries, &cache).await? {
        println!("{reference}");
    }
    Ok(ExitCode::SUCCESS)
}

async fn builder_image(args: BuilderImageArgs) -> Result<ExitCode> {
    let (registries, cache, catalog) = setup(&args.registry).await?;
    let outputs = args
        .image
        .iter()
        .map(|i| i.parse())
        .collect::<Result<Vec<Location>>>()?;
    let epoch = source_date_epoch()?;
    let published = match &args.runtime {
        Some(name) => {
            let resolved = catalog.resolve(name)?;
            if let Some(warning) = &resolved.alias_warning {
                tracing::warn!("{warning}");
            }
            let base: Location = match &args.base_image {
                Some(base) => base.parse()?,
                None => resolved.runtime.base_image_ref().parse()?,
            };
            crate::builder_image::make_runtime_builder_image(
                resolved.runtime,
                &base,
                &outputs,
                &registries,
                &cache,
                epoch,
            )
            .await?
        }
        None => {
            crate::builder_image::make_builder_image(&outputs, &registries, &cache, epoch).await?
        }
    };
    for reference in published {
        println!("{reference}");
    }
    Ok(ExitCode::SUCCESS)
}

async fn run_image(args: RunArgs) -> Result<ExitCode> {
    let (registries, cache, _) = setup(&args.registry).await?;
    let request = RunRequest {
        image: args.image.parse()?,
        port: args.port,
        env: args
            .env
            .iter()
            .map(|e| parse_key_value("--env", e, false))
            .collect::<Result<_>>()?,
        memory_limit_bytes: args
            .memory
            .as_deref()
            .map(crate::quantity::memory_bytes)
            .transpose()?,
        stop_timeout: args.stop_timeout,
        platform: match platforms_flag(args.platform.as_deref())?.as_deref() {
            None => None,
            Some([one]) => Some(one.clone()),
            Some(several) => {
                return Err(Error::Usage(format!(
                    "--platform: fnbuild run runs one platform's image, not {}; e.g. \
                     --platform linux/arm64",
                    crate::image::platform::list(several)
                )))
            }
        },
    };
    let code = run(&request, &registries, &cache).await?;
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

async fn mirror_images(args: args::MirrorArgs) -> Result<ExitCode> {
    use crate::mirror::{mirror, MirrorRequest, Place};
    let (registries, cache, catalog) = setup(&args.registry).await?;
    let request = MirrorRequest {
        from: match &args.from {
            Some(from) => Place::parse("--from", from)?,
            None => Place::parse(
                &format!("${}", crate::runtime::BASE_REGISTRY_ENV),
                &crate::runtime::base_registry(),
            )?,
        },
        to: Place::parse("--to", &args.to)?,
        runtimes: args.runtime.clone(),
        images: args
            .image
            .iter()
            .map(|i| i.parse().map_err(|e| Error::Usage(format!("--image: {e}"))))
            .collect::<Result<_>>()?,
        platforms: platforms_flag(args.platform.as_deref())?,
    };
    let mut stdout = std::io::stdout().lock();
    for image in mirror(&request, &catalog, &registries, &cache).await? {
        let _ = writeln!(stdout, "{}\t{}", image.name, image.published);
    }
    Ok(ExitCode::SUCCESS)
}

async fn push_image(args: PushArgs) -> Result<ExitCode> {
    let (registries, cache, _) = setup(&args.registry).await?;
    let from: Location = args.from.parse()?;
    let to = args
        .to
        .iter()
        .map(|t| t.parse())
        .collect::<Result<Vec<Location>>>()?;
    let platforms = platforms_flag(args.platform.as_deref())?;
    let store = cache.blobs();
    let copy = Publication::copy(&from, platforms.as_deref(), &registries, &store).await?;
    for reference in publish(&copy, &to, &registries, &store).await? {
        println!("{reference}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The platforms of a `--platform` value; none when it is not given or empty.
fn platforms_flag(value: Option<&str>) -> Result<Option<Vec<Platform>>> {
    value
        .filter(|v| !v.trim().is_empty())
        .map(|v| Platform::parse_list(v).map_err(|e| Error::Usage(format!("--platform: {e}"))))
        .transpose()
}

/// The Service's pod fields from `--knative-pod FILE` and `--secrets`; what Knative has no
/// place for is logged as a warning.
fn service_pod(args: &BuildArgs) -> Result<knative::ReadPod> {
    let pod = knative::ReadPod::from_file_and_secrets(args.knative_pod.as_deref(), &args.secrets)?;
    for note in &pod.not_carried {
        tracing::warn!("not in the Knative Service: {note}");
    }
    Ok(pod)
}

async fn convert_functions(args: ConvertArgs) -> Result<ExitCode> {
    let (registries, cache, catalog) = setup(&args.registry).await?;
    let cache_repo = cache_repo(&args.cache, &registries)?;
    let request = ConvertRequest {
        file: args.file.clone(),
        out_dir: args.out.clone(),
        image_prefix: args.image_prefix.clone(),
        installer: args.deps_installer,
        base_image: args.base_image.as_deref().map(str::parse).transpose()?,
        source_date_epoch: source_date_epoch()?,
        kafka_bootstrap_servers: crate::kubeless::bootstrap_servers(&args.kafka_bootstrap_servers)?,
    };
    let context = BuildContext {
        catalog: &catalog,
        registries: &registries,
        cache: &cache,
        cache_repo: cache_repo.as_ref(),
    };
    let mut out = std::io::stdout().lock();
    let conversion = crate::kubeless::convert(&request, &context).await?;
    for need in &conversion.cluster_needs {
        tracing::warn!("{need}");
    }
    for function in conversion.functions {
        for note in &function.not_carried {
            tracing::warn!(function = %function.name, "not carried over: {note}");
        }
        let _ = match &function.image {
            Some(image) => writeln!(out, "{}	{}	{image}", function.name, function.dir.display()),
            None => writeln!(out, "{}	{}", function.name, function.dir.display()),
        };
    }
    Ok(ExitCode::SUCCESS)
}

/// `fnbuild gc`: deletes the stale entries of the cache repository, saying on stdout which
/// were deleted (or, with `--dry-run`, which would be). An entry that cannot be deleted is
/// reported and the rest are still deleted; the exit code is then 1.
async fn collect_garbage(args: GcArgs) -> Result<ExitCode> {
    let (registries, _cache, _catalog) = setup(&args.registry).await?;
    let Some(repo) = cache_repo(&args.cache, &registries)? else {
        return Err(Error::Usage(
            "fnbuild gc needs --cache-repo REPOSITORY (or FNBUILD_CACHE_REPO): the repository \
             builds cache their deps layers in"
                .into(),
        ));
    };
    let now = std::time::SystemTime::now();
    let entries = repo.entries().await?;
    let total = entries.len();
    let stale: Vec<_> = entries
        .into_iter()
        .filter(|e| repo.is_stale(e.created, now))
        .collect();
    let failed = delete_stale(
        &stale,
        &repo.name(),
        now,
        args.dry_run,
        |entry| repo.delete(entry),
        &mut std::io::stdout(),
    )
    .await;
    tracing::info!(
        cache = %repo.name(),
        entries = total,
        stale = stale.len(),
        deleted = if args.dry_run { 0 } else { stale.len() - failed },
        failed,
        "garbage collection finished{}",
        if args.dry_run { " (dry run)" } else { "" }
    );
    if failed > 0 {
        tracing::error!(
            cache = %repo.name(),
            "{failed} of {} stale entries could not be deleted",
            stale.len()
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// Deletes each stale entry of the cache repository `repo` with `delete`, going on after a
/// failure: a line on `out` per entry deleted (`deleted REPO:TAG (...)`, written once it is),
/// an error log per entry that could not be. With `dry_run`, nothing is deleted and each line
/// says `would delete`. Returns how many deletes failed.
async fn delete_stale<'a, F, Fut>(
    stale: &'a [Entry],
    repo: &str,
    now: std::time::SystemTime,
    dry_run: bool,
    mut delete: F,
    out: &mut dyn Write,
) -> usize
where
    F: FnMut(&'a Entry) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let mut failed = 0;
    for entry in stale {
        let name = format!("{repo}:{}", entry.tag);
        let age = entry
            .created
            .and_then(|c| now.duration_since(c).ok())
            .map_or("unknown age".to_string(), |age| {
                format!(
                    "{} old",
                    humantime::format_duration(std::time::Duration::from_secs(
                        age.as_secs() / 60 * 60
                    ))
                )
            });
        let details = format!("({age}, layer {} bytes)", entry.layer_size);
        if dry_run {
            let _ = writeln!(out, "would delete {name} {details}");
            continue;
        }
        match delete(entry).await {
            Ok(()) => {
                let _ = writeln!(out, "deleted {name} {details}");
            }
            Err(err) => {
                failed += 1;
                tracing::error!(entry = %name, "could not delete {name}: {err}");
            }
        }
        let _ = out.flush();
    }
    let _ = out.flush();
    failed
}

fn list_runtimes(args: RuntimesArgs) -> Result<ExitCode> {
    let catalog = Catalog::load(args.catalog.as_deref())?;
    let mut out = std::io::stdout().lock();
    match args.output {
        ListFormat::Json => {
            let _ = writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&catalog).expect("the catalog serializes")
            );
        }
        ListFormat::Table => {
            let rows: Vec<[String; 6]> = catalog
                .runtimes
                .iter()
                .map(|r| {
                    [
                        r.name.clone(),
                        format!("{} {}", r.language, r.version),
                        r.base_image_ref(),
                        CODE_DIR.to_string(),
                        format!("{CODE_DIR}/{}", r.language.deps_file()),
                        r.aliases.join(","),
                    ]
                })
                .collect();
            let header = [
                "NAME",
                "VERSION",
                "BASE IMAGE",
                "CODE",
                "DEPS",
                "ALSO NAMED",
            ]
            .map(String::from);
            let widths: Vec<usize> = (0..6)
                .map(|i| {
                    rows.iter()
                        .chain([&header])
                        .map(|r| r[i].len())
                        .max()
                        .unwrap_or(0)
                })
                .collect();
            for row in std::iter::once(&header).chain(&rows) {
                let line: Vec<String> = row
                    .iter()
                    .zip(&widths)
                    .map(|(cell, w)| format!("{cell:<w$}"))
                    .collect();
                let _ = writeln!(out, "{}", line.join("  ").trim_end());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Kaniko's `--registry-certificate REGISTRY=FILE` names the file after the `=`; a plain
/// file name is taken as it is.
fn kaniko_certificate_path(value: &Path) -> PathBuf {
    match value.to_str().and_then(|v| v.split_once('=')) {
        Some((_, file)) if !value.exists() => PathBuf::from(file),
        _ => value.to_path_buf(),
    }
}

/// The CA certificate files a `--registry-ca` or `--index-ca` (`flag`) path stands for: a
/// file itself; a directory (as buildah's --cert-dir, e.g. a mounted Secret or ConfigMap) its
/// `*.crt` and `*.pem` files, by name, leaving out hidden ones (a mounted volume's `..data`).
fn ca_files(flag: &str, path: &Path) -> Result<Vec<PathBuf>> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).io_context("read", path)? {
        let file = entry.io_context("read", path)?.path();
        let name = file.file_name().unwrap_or_default().to_string_lossy();
        if !name.starts_with('.') && (name.ends_with(".crt") || name.ends_with(".pem")) {
            files.push(file);
        }
    }
    if files.is_empty() {
        return Err(Error::Usage(format!(
            "{flag} {}: a directory without a *.crt or *.pem file",
            path.display()
        )));
    }
    files.sort();
    Ok(files)
}

/// `K=V` or `K:V` (Kubeless accepts both); with `bare_ok`, a bare `K` means an empty value.
fn parse_key_value(flag: &str, raw: &str, bare_ok: bool) -> Result<(String, String)> {
    let split = raw.split_once('=').or_else(|| raw.split_once(':'));
    let (key, value) = match split {
        Some((k, v)) => (k, v),
        None if bare_ok => (raw, ""),
        None => {
            return Err(Error::Usage(format!(
                "{flag} '{raw}': expected KEY=VALUE (or KEY:VALUE)"
            )))
        }
    };
    if key.is_empty() || key.contains(char::is_whitespace) {
        return Err(Error::Usage(format!(
            "{flag} '{raw}': the key must be non-empty and without spaces"
        )));
    }
    Ok((key.to_string(), value.to_string()))
}

/// `SOURCE_DATE_EPOCH` (seconds), else 0: the time recorded in layers and configs.
fn source_date_epoch() -> Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(value) if !value.is_empty() => value.parse().map_err(|_| {
            Error::Usage(format!(
                "SOURCE_DATE_EPOCH '{value}' is not a whole number of seconds"
            ))
        }),
        _ => Ok(0),
    }
}

/// Writes a result file (Tekton results, Kaniko's digest file) atomically.
fn write_result(path: &Path, content: &str) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let write = || -> std::io::Result<()> {
        let mut temp = tempfile::NamedTempFile::new_in(&dir)?;
        temp.write_all(content.as_bytes())?;
        temp.persist(path).map_err(|e| e.error)?;
        Ok(())
    };
    write().map_err(|e| Error::Io {
        action: "write result file",
        path: path.to_path_buf(),
        source: e,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_template_parameters_mean_absent_and_lists_are_split() {
        let cli = Cli::try_parse_from([
            "fnbuild",
            "build",
            "--source=/workspace",
            "--runtime=python3.13",
            "--handler=h.f",
            "--image=r.local/x",
            "--env=",
            "--env=A=1,B=2",
            "--label=",
            "--sub-dir=",
            "--base-image=",
            "--docker-config=",
            "--git-revision=",
            "--fetch-timeout=",
        ])
        .unwrap();
        let Command::Build(args) = cli.command else {
            panic!("not a build")
        };
        let args = args.without_empty_values();
        assert_eq!(args.env, ["A=1", "B=2"]);
        assert!(args.label.is_empty());
        assert!(args.sub_dir.is_none() && args.base_image.is_none() && args.git_revision.is_none());
        assert!(args.registry.docker_config.is_none());
        assert_eq!(
            Deadlines::parse(&args.fetch_timeout, &args.fetch_idle_timeout).unwrap(),
            Deadlines::default()
        );
        assert!(matches!(source_spec(&args).unwrap(), SourceSpec::Path(_)));
    }

    #[test]
    fn convert_treats_empty_values_as_absent_like_build() {
        let cli = Cli::try_parse_from([
            "fnbuild",
            "convert",
            "--file=functions.yaml",
            "--out=",
            "--image-prefix=",
            "--base-image=",
            "--kafka-bootstrap-servers=",
            "--cache-repo=",
            "--cache-ttl=",
            "--docker-config=",
            "--insecure-registry=",
        ])
        .unwrap();
        let Command::Convert(args) = cli.command else {
            panic!("not a convert")
        };
        let args = args.without_empty_values();
        assert_eq!(args.file, Path::new("functions.yaml"));
        assert_eq!(args.out, Path::new("kubeless-functions"));
        assert!(args.image_prefix.is_none() && args.base_image.is_none());
        assert_eq!(
            args.kafka_bootstrap_servers,
            crate::kubeless::DEFAULT_KAFKA_BOOTSTRAP_SERVERS
        );
        assert!(args.cache.cache_repo.is_none());
        assert_eq!(args.cache.cache_ttl, crate::cache_repo::DEFAULT_TTL);
        assert!(args.registry.docker_config.is_none());
        assert!(args.registry.insecure_registries.is_empty());
    }

    fn entries(tags: &[&str]) -> Vec<Entry> {
        tags.iter()
            .map(|tag| Entry {
                tag: tag.to_string(),
                digest: crate::digest::Digest::of(tag.as_bytes()),
                created: None,
                layer_size: 10,
            })
            .collect()
    }

    #[tokio::test]
    async fn gc_says_deleted_only_after_each_delete_and_goes_on_after_a_failure() {
        let stale = entries(&["deps-a", "deps-b", "deps-c"]);
        let now = std::time::SystemTime::now();
        let mut tried = Vec::new();
        let mut out = Vec::new();
        let failed = delete_stale(
            &stale,
            "r.local/cache",
            now,
            false,
            |entry| {
                tried.push(entry.tag.clone());
                let result = match entry.tag.as_str() {
                    "deps-b" => Err(Error::Image("refused".into())),
                    _ => Ok(()),
                };
                async move { result }
            },
            &mut out,
        )
        .await;
        assert_eq!(failed, 1);
        assert_eq!(tried, ["deps-a", "deps-b", "deps-c"]);
        let out = String::from_utf8(out).unwrap();
        assert_eq!(
            out.lines().collect::<Vec<_>>(),
            [
                "deleted r.local/cache:deps-a (unknown age, layer 10 bytes)",
                "deleted r.local/cache:deps-c (unknown age, layer 10 bytes)",
            ]
        );
    }

    #[tokio::test]
    async fn gc_dry_run_deletes_nothing() {
        let stale = entries(&["deps-a", "deps-b"]);
        let mut out = Vec::new();
        let failed = delete_stale(
            &stale,
            "r.local/cache",
            std::time::SystemTime::now(),
            true,
            |_: &Entry| -> std::future::Ready<Result<()>> { panic!("a dry run deletes nothing") },
            &mut out,
        )
        .await;
        assert_eq!(failed, 0);
        let out = String::from_utf8(out).unwrap();
        assert_eq!(
            out.lines().collect::<Vec<_>>(),
            [
                "would delete r.local/cache:deps-a (unknown age, layer 10 bytes)",
                "would delete r.local/cache:deps-b (unknown age, layer 10 bytes)",
            ]
        );
    }

    #[test]
    fn kaniko_registry_certificate_form_names_the_file() {
        assert_eq!(
            kaniko_certificate_path(Path::new("my.registry=/certs/ca.pem")),
            PathBuf::from("/certs/ca.pem")
        );
        assert_eq!(
            kaniko_certificate_path(Path::new("/certs/ca.pem")),
            PathBuf::from("/certs/ca.pem")
        );
    }

    #[test]
    fn key_values_accept_both_kubeless_forms() {
        assert_eq!(
            parse_key_value("--env", "A=b=c", false).unwrap(),
            ("A".into(), "b=c".into())
        );
        assert_eq!(
            parse_key_value("--env", "A:b", false).unwrap(),
            ("A".into(), "b".into())
        );
        for flag in ["--label", "--env"] {
            assert_eq!(
                parse_key_value(flag, "tier", true).unwrap(),
                ("tier".into(), String::new())
            );
        }
        assert!(parse_key_value("--env", "A", false)
            .unwrap_err()
            .to_string()
            .contains("expected KEY=VALUE"));
    }
}
