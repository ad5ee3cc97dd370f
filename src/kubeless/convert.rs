//! Turning Kubeless functions into fnbuild builds: per function a directory with its code, its
//! deps file, `pod.yaml` (env from secrets and config maps, volumes), `build.sh` (the
//! `fnbuild build` command that builds it and writes its Knative Service), the Knative Eventing
//! objects of its triggers ([`super::eventing`]: PingSource, KafkaSource, Trigger) and, when a
//! registry is given, the build itself with the Service pinned to the image's digest.

use std::path::{Path, PathBuf};

use super::eventing;
use super::function::{read_objects, Content, Function};
use crate::build::{build, BuildContext, BuildRequest};
use crate::deps::{InstallOptions, Installer};
use crate::error::{Error, IoContext, Result};
use crate::function_image::DEFAULT_PORT;
use crate::knative::{self, ServiceOptions};
use crate::runtime::Handler;
use crate::source::{git::GitOptions, s3::S3Options, Deadlines, Limits};
use crate::transport::Location;

/// Kubeless's default timeout.
const KUBELESS_TIMEOUT_SECONDS: u32 = 180;

pub struct ConvertRequest {
    /// The file of Kubeless objects (`kubectl get functions -o yaml`).
    pub file: PathBuf,
    pub out_dir: PathBuf,
    /// `REGISTRY/PATH`: when given, each function is built and pushed to `PREFIX/NAME:latest`.
    pub image_prefix: Option<String>,
    pub installer: Installer,
    pub base_image: Option<Location>,
    pub source_date_epoch: u64,
    /// `HOST:PORT` of the Kafka brokers the KafkaSources read from.
    pub kafka_bootstrap_servers: Vec<String>,
}

/// What became of the functions, and what the cluster needs for their event sources.
pub struct Conversion {
    pub functions: Vec<Converted>,
    /// Said once for all functions, e.g. that KafkaSources need eventing-kafka-broker.
    pub cluster_needs: Vec<String>,
}

/// What became of one function.
pub struct Converted {
    pub name: String,
    pub dir: PathBuf,
    /// The image by digest, when it was built.
    pub image: Option<String>,
    pub not_carried: Vec<String>,
}

pub async fn convert(request: &ConvertRequest, ctx: &BuildContext<'_>) -> Result<Conversion> {
    let text = std::fs::read_to_string(&request.file).map_err(|e| {
        Error::Usage(format!(
            "-f {}: cannot read it: {e}",
            request.file.display()
        ))
    })?;
    let functions = read_objects(&text, &request.file.display().to_string())?;
    let mut converted = Vec::new();
    for function in &functions {
        converted.push(convert_one(function, request, ctx).await?);
    }
    Ok(Conversion {
        functions: converted,
        cluster_needs: eventing::cluster_needs(&functions, &request.kafka_bootstrap_servers),
    })
}

async fn convert_one(
    function: &Function,
    request: &ConvertRequest,
    ctx: &BuildContext<'_>,
) -> Result<Converted> {
    let resolved = ctx.catalog.resolve(&function.runtime)?;
    let language = resolved.runtime.language;
    let handler: Handler = function
        .handler
        .parse()
        .map_err(|e| Error::Usage(format!("Function '{}': {e}", function.name)))?;
    let dir = request.out_dir.join(&function.name);
    std::fs::create_dir_all(&dir).io_context("create", &dir)?;

    let source = match &function.content {
        Content::File(bytes) => {
            let code_dir = dir.join("code");
            std::fs::create_dir_all(&code_dir).io_context("create", &code_dir)?;
            let file = code_dir.join(format!(
                "{}.{}",
                handler.module,
                language.module_extensions()[0]
            ));
            std::fs::write(&file, bytes).io_context("write", &file)?;
            file.display().to_string()
        }
        Content::Archive { bytes, extension } => {
            let file = dir.join(format!("function.{extension}"));
            std::fs::write(&file, bytes).io_context("write", &file)?;
            file.display().to_string()
        }
        Content::Url(url) => url.clone(),
    };
    let deps = match &function.deps {
        Some(deps) => {
            let file = dir.join(language.deps_file());
            std::fs::write(&file, deps).io_context("write", &file)?;
            Some(file)
        }
        None => None,
    };
    let service_file = dir.join("service.yaml");
    let options = ServiceOptions {
        name: Some(function.name.clone()),
        namespace: function.namespace.clone(),
        env: function.env.clone(),
        labels: function.labels.clone().into_iter().collect(),
        timeout_seconds: function.timeout_seconds.unwrap_or(KUBELESS_TIMEOUT_SECONDS),
        port: function.port.unwrap_or(DEFAULT_PORT),
        memory: function.memory.clone(),
        cpu: function.cpu.clone(),
        min_scale: function.min_scale,
        max_scale: function.max_scale,
        scale_target: None,
        pod: function.pod.clone(),
    };
    knative::validate(&options)?;
    write_build_script(
        &dir,
        function,
        &source,
        deps.as_deref(),
        &options,
        &service_file,
    )?;
    eventing::write_objects(function, &dir, &request.kafka_bootstrap_servers)?;

    let image = match &request.image_prefix {
        Some(prefix) => {
            let destination: Location =
                format!("{}/{}:latest", prefix.trim_end_matches('/'), function.name).parse()?;
            let build_request = BuildRequest {
                source: source.parse()?,
                sub_dir: None,
                git: GitOptions::default(),
                s3: S3Options::default(),
                checksum: function
                    .checksum
                    .as_deref()
                    .map(str::parse)
                    .transpose()
                    .map_err(|e| {
                        Error::Usage(format!("Function '{}': checksum: {e}", function.name))
                    })?,
                origin: Default::default(),
                limits: Limits::default(),
                deadlines: Deadlines::default(),
                runtime: function.runtime.clone(),
                handler,
                dependencies: deps.clone(),
                env: function.env.clone(),
                labels: options.labels.clone(),
                timeout_seconds: options.timeout_seconds,
                port: options.port,
                memory_limit_bytes: function
                    .memory
                    .as_deref()
                    .map(crate::quantity::memory_bytes)
                    .transpose()?,
                base_image: request.base_image.clone(),
                outputs: vec![destination],
                install: InstallOptions {
                    installer: request.installer,
                    index_ca: Vec::new(),
                },
                source_date_epoch: request.source_date_epoch,
                sbom: true,
                platforms: None,
            };
            let outcome = build(&build_request, ctx).await?;
            let pinned = outcome.published[0].clone();
            let service = knative::service(&pinned, &options)?;
            std::fs::write(
                &service_file,
                serde_norway::to_string(&service).expect("a Service serializes"),
            )
            .io_context("write", &service_file)?;
            Some(pinned)
        }
        None => None,
    };
    Ok(Converted {
        name: function.name.clone(),
        dir,
        image,
        not_carried: function.not_carried.clone(),
    })
}

/// `build.sh`: the fnbuild command that builds the function and writes its Service, with the
/// image taken from `$IMAGE`.
fn write_build_script(
    dir: &Path,
    function: &Function,
    source: &str,
    deps: Option<&Path>,
    options: &ServiceOptions,
    service_file: &Path,
) -> Result<()> {
    let mut args: Vec<String> = vec![
        "fnbuild".into(),
        "build".into(),
        "--source".into(),
        source.into(),
    ];
    args.extend([
        "--runtime".into(),
        function.runtime.clone(),
        "--handler".into(),
        function.handler.clone(),
    ]);
    if let Some(deps) = deps {
        args.extend(["--dependencies".into(), deps.display().to_string()]);
    }
    if let Some(checksum) = &function.checksum {
        args.extend(["--checksum".into(), checksum.clone()]);
    }
    if !options.pod.is_empty() {
        let file = dir.join("pod.yaml");
        std::fs::write(
            &file,
            serde_norway::to_string(&options.pod.to_value()).expect("pod fields serialize"),
        )
        .io_context("write", &file)?;
        args.extend(["--knative-pod".into(), file.display().to_string()]);
    }
    for (key, value) in &function.env {
        args.extend(["--env".into(), format!("{key}={value}")]);
    }
    for (key, value) in &options.labels {
        args.extend(["--label".into(), format!("{key}={value}")]);
    }
    args.extend([
        "--timeout".into(),
        options.timeout_seconds.to_string(),
        "--port".into(),
        options.port.to_string(),
    ]);
    for (flag, value) in [
        ("--memory", &options.memory),
        ("--cpu", &options.cpu),
        ("--namespace", &options.namespace),
    ] {
        if let Some(value) = value {
            args.extend([flag.into(), value.clone()]);
        }
    }
    for (flag, value) in [
        ("--min-scale", options.min_scale),
        ("--max-scale", options.max_scale),
    ] {
        if let Some(value) = value {
            args.extend([flag.into(), value.to_string()]);
        }
    }
    args.extend([
        "--service-name".into(),
        function.name.clone(),
        "--knative-service".into(),
        service_file.display().to_string(),
    ]);
    let command: Vec<String> = args.iter().map(|a| shell_quote(a)).collect();
    let script = format!(
        "#!/bin/sh\n# Builds the Kubeless function '{}' with fnbuild and writes its Knative Service.\n\
         # usage: IMAGE=registry.example/functions/{}:v1 sh build.sh\nset -eu\n{} --image \"$IMAGE\"\n",
        function.name,
        function.name,
        command.join(" \\\n    ")
    );
    let path = dir.join("build.sh");
    std::fs::write(&path, script).io_context("write", &path)
}

fn shell_quote(arg: &str) -> String {
    if !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@,+".contains(c))
    {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::shell_quote;

    #[test]
    fn shell_quoting() {
        assert_eq!(shell_quote("--env"), "--env");
        assert_eq!(shell_quote("A=it's here"), r"'A=it'\''s here'");
        assert_eq!(shell_quote(""), "''");
    }
}
