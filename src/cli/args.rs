//! The command line: clap definitions only. Kaniko's and Kubeless's names for the same flags
//! are accepted as aliases (`--destination`, `--from-file`, `--runtime-image`, ...).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::deps::Installer;

#[derive(Debug, Parser)]
#[command(
    name = "fnbuild",
    version,
    about = "Builds Kubeless-interface function images and pushes them to a registry, without a Docker daemon",
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log format: text for people, json for build systems.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "FNBUILD_LOG_FORMAT", hide_env_values = true)]
    pub log_format: LogFormat,

    /// Log level: error, warn, info, debug or trace (or a RUST_LOG-style filter).
    #[arg(
        long,
        global = true,
        default_value = "info",
        env = "FNBUILD_LOG",
        hide_env_values = true,
        alias = "verbosity"
    )]
    pub log_level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build a function image from source and publish it.
    Build(Box<BuildArgs>),
    /// Make a runtime base image: an upstream language image plus the runtime server.
    Base(BaseArgs),
    /// Make the builder image: this fnbuild, its libraries and CA certificates, for Knative
    /// Build and Tekton steps.
    BuilderImage(BuilderImageArgs),
    /// Run a function image locally (under runc) until interrupted.
    Run(RunArgs),
    /// Copy an image between registries, OCI layouts and tarballs, keeping its digest.
    Push(PushArgs),
    /// Copy the runtime base images (and the builder image) for air-gapped clusters: from a
    /// registry into one OCI layout or tarball, and from there into another registry.
    Mirror(MirrorArgs),
    /// Convert Kubeless Function objects into fnbuild builds and Knative Services.
    Convert(ConvertArgs),
    /// List the runtimes fnbuild builds for.
    Runtimes(RuntimesArgs),
    /// Delete deps layers older than --cache-ttl from the cache repository.
    Gc(GcArgs),
    /// Internal: runs a command inside a root filesystem (dependency installs, checks).
    #[command(name = "__sandbox", hide = true)]
    Sandbox,
    /// Internal: process 1 of that command's PID namespace.
    #[command(name = "__sandbox-init", hide = true)]
    SandboxInit,
    /// Internal: runs a dependency install confined with Landlock.
    #[command(name = "__confined", hide = true)]
    Confined,
}

/// Flags for every command that talks to a registry.
#[derive(Debug, Clone, Args)]
pub struct RegistryArgs {
    /// A registry (HOST:PORT) reached over plain HTTP or TLS without verification. Repeatable.
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    pub insecure_registries: Vec<String>,

    /// A PEM file of CA certificates to trust for registries, besides the system's, or a
    /// directory of such files (its *.crt and *.pem, as buildah's --cert-dir); Kaniko's
    /// REGISTRY=FILE form is accepted too. Repeatable.
    #[arg(value_parser = path_or_empty,
        long = "registry-ca",
        value_name = "FILE",
        alias = "registry-certificate"
    )]
    pub registry_ca: Vec<PathBuf>,

    /// Directory (or file) with the Docker config.json holding registry credentials
    /// [default: $DOCKER_CONFIG, else $HOME/.docker].
    #[arg(value_parser = path_or_empty, long, value_name = "DIR")]
    pub docker_config: Option<PathBuf>,

    /// Cache directory for blobs, unpacked base images and deps layers
    /// [default: $XDG_CACHE_HOME/fnbuild or $HOME/.cache/fnbuild].
    #[arg(value_parser = path_or_empty,
        long,
        value_name = "DIR",
        env = "FNBUILD_CACHE_DIR",
        hide_env_values = true
    )]
    pub cache_dir: Option<PathBuf>,

    /// A runtime catalog file replacing the embedded one (see `fnbuild runtimes -o json`).
    #[arg(value_parser = path_or_empty,
        long,
        value_name = "FILE",
        env = "FNBUILD_CATALOG",
        hide_env_values = true
    )]
    pub catalog: Option<PathBuf>,
}

/// Flags of the deps cache shared through a registry.
#[derive(Debug, Clone, Args)]
pub struct CacheRepoArgs {
    /// A registry repository where deps layers are cached for every build that uses it (as
    /// Kaniko's --cache-repo), e.g. registry.local:5000/fnbuild/cache.
    #[arg(
        long,
        value_name = "REPOSITORY",
        env = "FNBUILD_CACHE_REPO",
        hide_env_values = true
    )]
    pub cache_repo: Option<String>,

    /// How long a deps layer in the cache repository is used: a duration such as 14days,
    /// 336h or 90m.
    #[arg(long, value_name = "DURATION", default_value = crate::cache_repo::DEFAULT_TTL)]
    pub cache_ttl: String,
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The function's source: a directory, a file, an archive (.zip, .tar, .tar.gz, .tgz,
    /// .tar.bz2, .tar.xz), an http(s) URL of one, a Git URL (git+https://, git+ssh://, git://,
    /// git+file://, with an optional #REVISION), s3://BUCKET/KEY (a file or an archive),
    /// s3://BUCKET/PREFIX/ (every object under it), or - for a tar on stdin.
    #[arg(
        long,
        short = 's',
        value_name = "SRC",
        alias = "from-file",
        short_alias = 'f',
        alias = "context",
        required_unless_present = "git_url"
    )]
    pub source: Option<String>,

    /// A Git repository to build from, instead of --source: an https://, ssh://, git:// or
    /// file:// URL.
    #[arg(long, value_name = "URL", conflicts_with = "source")]
    pub git_url: Option<String>,

    /// The branch, tag or commit SHA to build [default: the repository's HEAD branch].
    #[arg(long, value_name = "REVISION")]
    pub git_revision: Option<String>,

    /// Fetch the repository's submodules too.
    #[arg(long)]
    pub git_submodules: bool,

    /// The SSH private key for git+ssh:// sources [default: ~/.ssh/id_*].
    #[arg(value_parser = path_or_empty, long, value_name = "FILE")]
    pub git_ssh_key: Option<PathBuf>,

    /// The known_hosts file for git+ssh:// sources [default: ~/.ssh/known_hosts].
    #[arg(value_parser = path_or_empty, long, value_name = "FILE")]
    pub git_known_hosts: Option<PathBuf>,

    /// Accept any SSH host key (logged as a warning): only for servers you reach over a
    /// network you trust.
    #[arg(long)]
    pub git_insecure_skip_host_key_check: bool,

    /// The endpoint of an S3-compatible store (MinIO, ...) for s3:// sources; path-style
    /// addressing is used with it [default: AWS S3, or $AWS_ENDPOINT_URL].
    #[arg(
        long,
        value_name = "URL",
        env = "AWS_ENDPOINT_URL",
        hide_env_values = true
    )]
    pub s3_endpoint: Option<String>,

    /// The region for s3:// sources [default: $AWS_REGION, else us-east-1].
    #[arg(long, value_name = "REGION")]
    pub s3_region: Option<String>,

    /// A directory with AWS-style `credentials` and `config` files for s3:// sources (a mounted
    /// secret), used instead of ~/.aws.
    #[arg(long, value_name = "DIR", value_parser = path_or_empty)]
    pub s3_credentials_dir: Option<PathBuf>,

    /// A file holding the access key ID for s3:// sources (with --s3-secret-key-file)
    /// [default: the AWS chain: environment, shared files, web identity].
    #[arg(value_parser = path_or_empty, long, value_name = "FILE", requires = "s3_secret_key_file")]
    pub s3_access_key_file: Option<PathBuf>,

    /// A file holding the secret access key for s3:// sources.
    #[arg(value_parser = path_or_empty, long, value_name = "FILE", requires = "s3_access_key_file")]
    pub s3_secret_key_file: Option<PathBuf>,

    /// The function's directory inside the source (Kyma's baseDir).
    #[arg(
        long,
        value_name = "DIR",
        alias = "git-sub-dir",
        alias = "context-sub-path"
    )]
    pub sub_dir: Option<String>,

    /// sha256:HEX the source file or archive must have.
    #[arg(long, value_name = "sha256:HEX")]
    pub checksum: Option<String>,

    /// The runtime, a language version (see `fnbuild runtimes`): python3.9 to python3.13,
    /// nodejs18, nodejs20, nodejs22; python and nodejs are the defaults (python3.13, nodejs20),
    /// and older Kubeless names such as python3.7 or nodejs14 are built for the nearest
    /// supported version, with a warning.
    #[arg(long, short = 'r')]
    pub runtime: String,

    /// MODULE.FUNCTION, e.g. hello.handler for `def handler(event, context)` in hello.py.
    #[arg(long)]
    pub handler: String,

    /// The dependencies file (requirements.txt or package.json) [default: the one in the source].
    #[arg(value_parser = path_or_empty, long, short = 'd', value_name = "FILE")]
    pub dependencies: Option<PathBuf>,

    /// Environment variables for the function, K=V, K:V or a bare K (empty); repeatable, or
    /// comma separated as Kubeless took them.
    #[arg(long, short = 'e', value_name = "K=V")]
    pub env: Vec<String>,

    /// Image labels, k=v, k:v or a bare k; repeatable, or comma separated.
    #[arg(long, short = 'l', value_name = "K=V")]
    pub label: Vec<String>,

    /// The memory the function may use (a Kubernetes quantity such as 128Mi), given to it in
    /// bytes as FUNC_MEMORY_LIMIT.
    #[arg(long, value_name = "QUANTITY")]
    pub memory: Option<String>,

    /// The port the function listens on when Knative's PORT is not set (FUNC_PORT).
    #[arg(long, default_value_t = crate::function_image::DEFAULT_PORT)]
    pub port: u16,

    /// Seconds a call may take before the runtime answers 408 (FUNC_TIMEOUT).
    #[arg(long, default_value_t = 180, value_name = "SECONDS")]
    pub timeout: u32,

    /// The runtime base image, replacing the catalog's: REF, oci:DIR[:NAME] or tar:FILE[:NAME];
    /// NAME picks an image in a layout or tarball holding several, e.g.
    /// oci:/mirror:fnbuild/runtime-python:3.13 (the path ends at the first ':').
    #[arg(long, value_name = "REF", alias = "runtime-image")]
    pub base_image: Option<String>,

    /// Where to push the image: REGISTRY/REPO[:TAG]. Repeatable.
    #[arg(long, value_name = "REF", alias = "destination")]
    pub image: Vec<String>,

    /// Build for these platforms of the base image, comma-separated: linux/amd64,linux/arm64.
    /// Each platform's image has its base's layers, its own dependency layer (installed by its
    /// own interpreter, under emulation for another architecture) and the one code layer; the
    /// outputs get an index of them, which the digest files and the Knative Service name
    /// [default: every platform of a multi-platform base image (one image of a plain one)].
    #[arg(long, value_name = "OS/ARCH[,OS/ARCH...]")]
    pub platform: Option<String>,

    /// Write the image to an OCI layout (oci:DIR[:NAME]) or a tarball (tar:FILE[:NAME]), under
    /// NAME if given (a tag, or REPOSITORY:TAG). Repeatable.
    #[arg(long, value_name = "oci:DIR|tar:FILE")]
    pub output: Vec<String>,

    /// Write the image digest (sha256:...) here once the image is published.
    #[arg(value_parser = path_or_empty, long, value_name = "FILE")]
    pub digest_file: Option<PathBuf>,

    /// Write the image reference by digest (REF@sha256:...) here once the image is published.
    #[arg(value_parser = path_or_empty, long, value_name = "FILE", alias = "image-name-with-digest-file")]
    pub image_ref_file: Option<PathBuf>,

    /// Write the first --image as pushed, without its digest (REGISTRY/REPOSITORY[:TAG]),
    /// here once the image is published: Tekton's IMAGE_URL, which joined to the digest names
    /// the image (IMAGE_URL@IMAGE_DIGEST).
    #[arg(value_parser = path_or_empty, long, value_name = "FILE")]
    pub image_url_file: Option<PathBuf>,

    /// The source's URL to record in the image (org.opencontainers.image.source), instead of
    /// what the fetch found: e.g. the Git URL of a checkout another step made.
    #[arg(long, value_name = "URL")]
    pub source_url: Option<String>,

    /// The source's revision to record in the image (org.opencontainers.image.revision),
    /// instead of what the fetch found: e.g. the commit of a checkout another step made.
    #[arg(long, value_name = "REVISION")]
    pub source_revision: Option<String>,

    /// Also write a Knative Service (serving.knative.dev/v1) that runs the image by digest.
    #[arg(value_parser = path_or_empty, long, value_name = "FILE")]
    pub knative_service: Option<PathBuf>,

    /// The Knative Service's name [default: the image repository's last component].
    #[arg(long, value_name = "NAME", requires = "knative_service")]
    pub service_name: Option<String>,

    /// The Knative Service's namespace.
    #[arg(
        long,
        short = 'n',
        value_name = "NAMESPACE",
        requires = "knative_service"
    )]
    pub namespace: Option<String>,

    /// The CPU limit of the Knative Service (a Kubernetes quantity such as 100m).
    #[arg(long, value_name = "QUANTITY", requires = "knative_service")]
    pub cpu: Option<String>,

    /// autoscaling.knative.dev/min-scale of the Knative Service (0 scales to zero).
    #[arg(long, value_name = "N", requires = "knative_service")]
    pub min_scale: Option<u32>,

    /// autoscaling.knative.dev/max-scale of the Knative Service.
    #[arg(long, value_name = "N", requires = "knative_service")]
    pub max_scale: Option<u32>,

    /// autoscaling.knative.dev/target of the Knative Service: concurrent requests per instance.
    #[arg(long, value_name = "N", requires = "knative_service")]
    pub scale_target: Option<u32>,

    /// Mount the Kubernetes secret NAME at /NAME, read-only, in the Knative Service, as
    /// Kubeless's --secrets did (in the volume NAME-vol); repeatable, or comma separated.
    #[arg(long, value_name = "NAME", requires = "knative_service")]
    pub secrets: Vec<String>,

    /// A YAML file of what the Knative Service's pod gets, in pod spec fields: env (values, or
    /// valueFrom a secretKeyRef or configMapKeyRef), envFrom (secretRef, configMapRef),
    /// volumeMounts and volumes (secret, configMap, projected, emptyDir). `fnbuild convert`
    /// writes one as pod.yaml. What Knative has no place for is left out with a warning.
    #[arg(value_parser = path_or_empty, long, value_name = "FILE", requires = "knative_service")]
    pub knative_pod: Option<PathBuf>,

    /// Who installs dependencies: the base image's own interpreter (image) or this machine's
    /// pip/npm (host).
    #[arg(long, value_enum, default_value_t = Installer::Image)]
    pub deps_installer: Installer,

    /// A PEM file of CA certificates pip and npm trust for their package indexes, besides
    /// those they trust already, or a directory of such files (its *.crt and *.pem): a private
    /// index's CA, or a TLS-intercepting proxy's. Repeatable.
    #[arg(value_parser = path_or_empty, long = "index-ca", value_name = "FILE")]
    pub index_ca: Vec<PathBuf>,

    /// Largest source, in bytes, once fetched and unpacked.
    #[arg(long, default_value_t = 1024 * 1024 * 1024, value_name = "BYTES")]
    pub max_source_size: u64,

    /// Most files a source may unpack to.
    #[arg(long, default_value_t = 100_000, value_name = "COUNT")]
    pub max_source_files: u64,

    /// How long fetching the source over the network (http(s), S3, Git) may take in all,
    /// retries included: a duration such as 90s, 10m or 1h.
    #[arg(
        long,
        value_name = "DURATION",
        default_value = crate::source::deadline::DEFAULT_OVERALL,
        env = "FNBUILD_FETCH_TIMEOUT",
        hide_env_values = true
    )]
    pub fetch_timeout: String,

    /// How long fetching the source may wait for data before it fails.
    #[arg(
        long,
        value_name = "DURATION",
        default_value = crate::source::deadline::DEFAULT_IDLE,
        env = "FNBUILD_FETCH_IDLE_TIMEOUT",
        hide_env_values = true
    )]
    pub fetch_idle_timeout: String,

    /// Do not attach an SPDX SBOM (the runtime and the installed packages) to the image.
    #[arg(long)]
    pub no_sbom: bool,

    /// Also write the image's SPDX SBOM to this file; of a multi-platform build, the first
    /// platform's (every platform's is attached to its own image in the registry).
    #[arg(value_parser = path_or_empty, long, value_name = "FILE")]
    pub sbom_file: Option<PathBuf>,

    #[command(flatten)]
    pub cache: CacheRepoArgs,

    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Debug, Args)]
pub struct BaseArgs {
    /// The runtime this base image serves (see `fnbuild runtimes`).
    #[arg(long, short = 'r')]
    pub runtime: String,

    /// The upstream language image: REF, oci:DIR[:TAG], or rootfs:DIR for a root filesystem
    /// directory (e.g. made with debootstrap), whose architecture is read from its binaries.
    /// Every platform of a multi-platform image is made; repeat it with one rootfs:DIR per
    /// platform (rootfs:/srv/amd64 --from rootfs:/srv/arm64) for a multi-platform base image
    /// (an index). One platform makes a plain image.
    #[arg(long, value_name = "UPSTREAM", alias = "upstream", required = true)]
    pub from: Vec<String>,

    /// Only these platforms of the upstreams, comma-separated: linux/amd64,linux/arm64; each
    /// must be in one of them [default: every platform the upstreams have].
    #[arg(long, value_name = "OS/ARCH[,OS/ARCH...]")]
    pub platform: Option<String>,

    /// Where to publish: REF, oci:DIR[:TAG] or tar:FILE. Repeatable.
    #[arg(long, value_name = "REF", alias = "destination", required = true)]
    pub image: Vec<String>,

    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Debug, Args)]
pub struct BuilderImageArgs {
    /// Where to publish: REF, oci:DIR[:TAG] or tar:FILE. Repeatable.
    #[arg(long, value_name = "REF", alias = "destination", required = true)]
    pub image: Vec<String>,

    /// Make the builder image of this runtime: its base image plus fnbuild, where builds
    /// install dependencies with the image's own pip or npm, unprivileged (see `fnbuild
    /// runtimes`). Without it: the generic builder image (fnbuild and its libraries only).
    #[arg(long)]
    pub runtime: Option<String>,

    /// The runtime base image the builder image is made from, replacing the catalog's: REF,
    /// oci:DIR[:NAME] or tar:FILE[:NAME]. Only with --runtime.
    #[arg(
        long,
        value_name = "REF",
        alias = "runtime-image",
        requires = "runtime"
    )]
    pub base_image: Option<String>,

    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The function image: REF, oci:DIR[:NAME] or tar:FILE[:NAME].
    pub image: String,

    /// The port the function answers on (localhost:PORT).
    #[arg(long, short = 'p', default_value_t = crate::function_image::DEFAULT_PORT)]
    pub port: u16,

    /// An environment variable, K=V. Repeatable.
    #[arg(long, short = 'e', value_name = "K=V")]
    pub env: Vec<String>,

    /// The container's memory limit, e.g. 128Mi or 1G (Kubernetes quantities)
    /// [default: the image's FUNC_MEMORY_LIMIT, set by fnbuild build --memory].
    #[arg(long, value_name = "QUANTITY")]
    pub memory: Option<String>,

    /// How long the function has to stop after SIGTERM before it is killed, e.g. 10s.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub stop_timeout: std::time::Duration,

    /// The platform whose image to run, e.g. linux/arm64: of a multi-platform image (an
    /// index), that platform's entry; a single-platform image must be for it. Another
    /// architecture than this machine's runs under emulation (binfmt_misc with qemu-user,
    /// registered with the F flag) [default: this machine's; a single-platform image of
    /// another architecture runs under emulation, with a warning].
    #[arg(long, value_name = "OS/ARCH")]
    pub platform: Option<String>,

    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Debug, Args)]
pub struct PushArgs {
    /// The image to copy: REF, oci:DIR[:NAME] or tar:FILE[:NAME] (NAME picks one of several
    /// images, e.g. oci:/mirror:fnbuild/runtime-python:3.13; the path ends at the first ':').
    pub from: String,

    /// Where to copy it: REF, oci:DIR[:NAME] or tar:FILE[:NAME]. Repeatable.
    #[arg(required = true)]
    pub to: Vec<String>,

    /// Only these platforms of a multi-platform image (an index), comma-separated:
    /// linux/amd64,linux/arm64. The index copied is then a new one, listing just those
    /// platforms' images, which keep their digests [default: every platform, the index copied
    /// byte for byte].
    #[arg(long, value_name = "OS/ARCH[,OS/ARCH...]")]
    pub platform: Option<String>,

    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Debug, Args)]
pub struct GcArgs {
    #[command(flatten)]
    pub cache: CacheRepoArgs,

    /// List what would be deleted, and delete nothing.
    #[arg(long)]
    pub dry_run: bool,

    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Debug, Args)]
pub struct MirrorArgs {
    /// Where the images go: oci:DIR (one OCI layout, each image named REPOSITORY:TAG, e.g.
    /// fnbuild/runtime-python:3.13), tar:FILE (the same as one tarball), or REGISTRY[/PREFIX]
    /// (each image at REGISTRY/PREFIX/REPOSITORY:TAG: set FNBUILD_BASE_REGISTRY to
    /// REGISTRY[/PREFIX] there).
    #[arg(long, value_name = "oci:DIR|tar:FILE|REGISTRY[/PREFIX]")]
    pub to: String,

    /// Where the images come from: REGISTRY[/PREFIX], what the catalog's {base_registry}
    /// stands for [default: $FNBUILD_BASE_REGISTRY, else localhost:5000]; or an oci:DIR or
    /// tar:FILE written by `fnbuild mirror`, every image of which is copied.
    #[arg(long, value_name = "REGISTRY[/PREFIX]|oci:DIR|tar:FILE")]
    pub from: Option<String>,

    /// Only this runtime's base image (see `fnbuild runtimes`), which must be there.
    /// Repeatable [default: every runtime of the catalog the registry holds, or every image
    /// of a layout or tarball].
    #[arg(long, short = 'r', value_name = "NAME")]
    pub runtime: Vec<String>,

    /// Also copy this image from a registry, e.g. the builder image: REF. It is named by its
    /// repository (relative to --from when under it) and tag. Repeatable.
    #[arg(long, value_name = "REF", visible_alias = "builder-image")]
    pub image: Vec<String>,

    /// Only these platforms of a multi-platform image (an index), comma-separated:
    /// linux/amd64,linux/arm64. The index copied is then a new one, listing just those
    /// platforms' images, which keep their digests [default: every platform, the index copied
    /// byte for byte].
    #[arg(long, value_name = "OS/ARCH[,OS/ARCH...]")]
    pub platform: Option<String>,

    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// Where `fnbuild convert` writes when `--out` is not given (or empty).
const CONVERT_OUT: &str = "kubeless-functions";

#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// The Kubeless objects: Functions (kubeless.io/v1beta1), and their CronJobTrigger,
    /// HTTPTrigger, KafkaTrigger and NATSTrigger objects, e.g. from `kubectl get
    /// functions,cronjobtriggers,httptriggers,kafkatriggers,natstriggers -o yaml`.
    #[arg(value_parser = path_or_empty, long = "file", short = 'f', value_name = "FILE")]
    pub file: PathBuf,

    /// Where each function's directory is written (code, deps, build.sh, service.yaml,
    /// pingsource.yaml, kafkasource-TRIGGER.yaml, trigger-TRIGGER.yaml).
    #[arg(value_parser = path_or_empty, long, value_name = "DIR", default_value = CONVERT_OUT)]
    pub out: PathBuf,

    /// Build and push each function to PREFIX/NAME:latest and pin its Service to the digest,
    /// e.g. registry.local:5000/functions.
    #[arg(long, value_name = "REGISTRY/PATH")]
    pub image_prefix: Option<String>,

    /// The runtime base image for every function, replacing the catalog's.
    #[arg(long, value_name = "REF")]
    pub base_image: Option<String>,

    /// Who installs dependencies (see `fnbuild build --help`).
    #[arg(long, value_enum, default_value_t = Installer::Image)]
    pub deps_installer: Installer,

    /// The Kafka brokers the KafkaSources of KafkaTriggers read from, comma separated; the
    /// default is where Kubeless's Kafka trigger controller found them.
    #[arg(long, value_name = "HOST:PORT[,HOST:PORT...]",
        default_value = crate::kubeless::DEFAULT_KAFKA_BOOTSTRAP_SERVERS)]
    pub kafka_bootstrap_servers: String,

    #[command(flatten)]
    pub cache: CacheRepoArgs,

    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Debug, Args)]
pub struct RuntimesArgs {
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = ListFormat::Table)]
    pub output: ListFormat,

    /// A runtime catalog file replacing the embedded one.
    #[arg(value_parser = path_or_empty,
        long,
        value_name = "FILE",
        env = "FNBUILD_CATALOG",
        hide_env_values = true
    )]
    pub catalog: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ListFormat {
    Table,
    Json,
}

/// Build templates pass every parameter, so an empty value means "not given" (Knative Build
/// and Tekton have no way to leave an argument out), and lists come comma separated.
pub trait EmptyMeansAbsent {
    fn without_empty_values(self) -> Self;
}

/// Paths as given, the empty one included (clap's own path parser refuses it).
fn path_or_empty(value: &str) -> Result<PathBuf, std::convert::Infallible> {
    Ok(PathBuf::from(value))
}

fn given<T: AsRef<std::ffi::OsStr>>(value: Option<T>) -> Option<T> {
    value.filter(|v| !v.as_ref().is_empty())
}

fn split_list(values: Vec<String>) -> Vec<String> {
    values
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(String::from)
        .collect()
}

impl EmptyMeansAbsent for RegistryArgs {
    fn without_empty_values(self) -> Self {
        Self {
            insecure_registries: split_list(self.insecure_registries),
            registry_ca: self
                .registry_ca
                .into_iter()
                .filter(|p| !p.as_os_str().is_empty())
                .collect(),
            docker_config: given(self.docker_config),
            cache_dir: given(self.cache_dir),
            catalog: given(self.catalog),
        }
    }
}

impl EmptyMeansAbsent for BuildArgs {
    fn without_empty_values(self) -> Self {
        Self {
            source: given(self.source),
            git_url: given(self.git_url),
            git_revision: given(self.git_revision),
            checksum: given(self.checksum),
            dependencies: given(self.dependencies),
            sub_dir: given(self.sub_dir).filter(|d| d != "."),
            env: split_list(self.env),
            label: split_list(self.label),
            base_image: given(self.base_image),
            image: split_list(self.image),
            platform: given(self.platform),
            output: split_list(self.output),
            digest_file: given(self.digest_file),
            image_ref_file: given(self.image_ref_file),
            image_url_file: given(self.image_url_file),
            source_url: given(self.source_url),
            source_revision: given(self.source_revision),
            sbom_file: given(self.sbom_file),
            s3_endpoint: given(self.s3_endpoint),
            s3_region: given(self.s3_region),
            s3_credentials_dir: given(self.s3_credentials_dir),
            memory: given(self.memory),
            cpu: given(self.cpu),
            knative_service: given(self.knative_service),
            secrets: split_list(self.secrets),
            knative_pod: given(self.knative_pod),
            service_name: given(self.service_name),
            namespace: given(self.namespace),
            fetch_timeout: given(Some(self.fetch_timeout))
                .unwrap_or_else(|| crate::source::deadline::DEFAULT_OVERALL.to_string()),
            fetch_idle_timeout: given(Some(self.fetch_idle_timeout))
                .unwrap_or_else(|| crate::source::deadline::DEFAULT_IDLE.to_string()),
            cache: self.cache.without_empty_values(),
            registry: self.registry.without_empty_values(),
            ..self
        }
    }
}

impl EmptyMeansAbsent for CacheRepoArgs {
    fn without_empty_values(self) -> Self {
        Self {
            cache_repo: given(self.cache_repo),
            cache_ttl: given(Some(self.cache_ttl))
                .unwrap_or_else(|| crate::cache_repo::DEFAULT_TTL.to_string()),
        }
    }
}

impl EmptyMeansAbsent for ConvertArgs {
    fn without_empty_values(self) -> Self {
        Self {
            out: given(Some(self.out)).unwrap_or_else(|| PathBuf::from(CONVERT_OUT)),
            image_prefix: given(self.image_prefix),
            base_image: given(self.base_image),
            kafka_bootstrap_servers: given(Some(self.kafka_bootstrap_servers))
                .unwrap_or_else(|| crate::kubeless::DEFAULT_KAFKA_BOOTSTRAP_SERVERS.to_string()),
            cache: self.cache.without_empty_values(),
            registry: self.registry.without_empty_values(),
            ..self
        }
    }
}

impl EmptyMeansAbsent for GcArgs {
    fn without_empty_values(self) -> Self {
        Self {
            cache: self.cache.without_empty_values(),
            registry: self.registry.without_empty_values(),
            ..self
        }
    }
}
