//! Installing a function's dependencies (requirements.txt, package.json) into a directory that
//! becomes the deps layer. By default the install runs inside the base image's own root
//! filesystem with its own interpreter and package manager (`sandbox`), so native wheels and
//! modules match the image; `--deps-installer host` uses this machine's pip or npm instead.
//!
//! Each package manager gets its own settings passed through (pip: index URLs and pip.conf;
//! npm: registry and .npmrc; both: proxies and a CA bundle), copied into a scratch directory
//! mounted at /tmp, never into the output, and nothing else of the builder's environment.
//! The deps files come as bytes read beneath the source (see `source::Workspace`).
//!
//! Where the build step runs in the runtime's own environment (its builder image), the image's
//! interpreter is this machine's: the install runs in place, confined with Landlock
//! (`confine`), and no root filesystem is unpacked.

use std::collections::VecDeque;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use crate::confine::{self, ConfinedSpec};
use crate::error::{Error, IoContext, Result};
use crate::function_image::CODE_DIR;
use crate::runtime::Language;
use crate::sandbox::{Bind, SandboxSpec, UNPRIVILEGED};

/// Lines of installer output kept for the error message of a failed install.
const TAIL_LINES: usize = 30;

/// pip's settings, passed through to a Python install as they are (never to npm: what a
/// package's install script can read is only its own package manager's settings).
const PIP_ENV: &[&str] = &[
    "PIP_INDEX_URL",
    "PIP_EXTRA_INDEX_URL",
    "PIP_TRUSTED_HOST",
    "PIP_DEFAULT_TIMEOUT",
    "PIP_RETRIES",
    "PIP_NO_BINARY",
    "PIP_ONLY_BINARY",
    "PIP_PREFER_BINARY",
];
/// npm's settings, passed through to a Node.js install as they are.
const NPM_ENV: &[&str] = &["NPM_CONFIG_REGISTRY", "NPM_CONFIG_STRICT_SSL"];
/// Proxy settings, passed through to every install.
const PROXY_ENV: &[&str] = &[
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
];
/// Variables naming a CA bundle; the first one set, the package manager's own first, is
/// copied in and all point at the copy.
const CA_BUNDLE_ENV: &[&str] = &[
    "PIP_CERT",
    "REQUESTS_CA_BUNDLE",
    "NPM_CONFIG_CAFILE",
    "NODE_EXTRA_CA_CERTS",
    "SSL_CERT_FILE",
];

/// The CA bundle variables in the order `language`'s package manager prefers them: its own
/// before the general `SSL_CERT_FILE` (which libraries set for themselves, too).
fn ca_bundle_env(language: Language) -> impl Iterator<Item = &'static str> {
    let own = match language {
        Language::Python => ["PIP_CERT", "REQUESTS_CA_BUNDLE"],
        Language::Nodejs => ["NPM_CONFIG_CAFILE", "NODE_EXTRA_CA_CERTS"],
    };
    own.into_iter().chain(
        CA_BUNDLE_ENV
            .iter()
            .copied()
            .filter(move |n| !own.contains(n)),
    )
}
/// Where Debian-based systems keep the CA bundle their TLS libraries trust by default.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// The installer's copy of the CA bundle, in its scratch directory.
const CA_COPY: &str = "fnbuild-ca.pem";
/// Kubeless's name for the npm registry setting.
const KUBELESS_NPM_REGISTRY_ENV: &str = "NPM_REGISTRY";

/// Which package manager installs the dependencies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Installer {
    /// The base image's own interpreter, run inside its root filesystem (sandboxed).
    Image,
    /// This machine's pip or npm.
    Host,
}

/// How dependencies are installed.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    pub installer: Installer,
    /// CA certificate files the package managers trust besides those they trust already
    /// (`--index-ca`).
    pub index_ca: Vec<PathBuf>,
}

/// Where the base image's own interpreter runs, for [`Installer::Image`].
#[derive(Debug, Clone)]
pub enum ImageRoot {
    /// The base image's root filesystem, unpacked here: the install runs inside it, sandboxed.
    Unpacked(PathBuf),
    /// This build step runs in the base image itself (a builder image made from it): the
    /// install runs at the image's own paths, confined.
    ThisStep,
}

/// The dependency files of a function, as read from its source (beneath the workspace) or
/// from the file given with `--dependencies`.
#[derive(Debug, Clone)]
pub struct DepsFiles {
    pub language: Language,
    /// Where the deps file came from, for messages.
    pub origin: String,
    /// The content of requirements.txt or package.json.
    pub manifest: Vec<u8>,
    /// package-lock.json next to package.json, if any.
    pub lock: Option<Vec<u8>>,
    /// The source's own `.npmrc` (npm's project settings), if any.
    pub npmrc: Option<Vec<u8>>,
    /// Whether the deps file is one of the function's files (else the code layer gets a copy).
    pub in_source: bool,
}

impl DepsFiles {
    /// Whether the file declares anything to install (an empty requirements.txt or a
    /// package.json without dependencies needs no deps layer).
    pub fn declares_dependencies(&self) -> Result<bool> {
        let text = String::from_utf8_lossy(&self.manifest);
        match self.language {
            Language::Python => Ok(text
                .lines()
                .map(|l| l.split('#').next().unwrap_or("").trim())
                .any(|l| !l.is_empty())),
            Language::Nodejs => {
                let json: serde_json::Value = serde_json::from_str(&text)
                    .map_err(|e| Error::Deps(format!("{} is not valid JSON: {e}", self.origin)))?;
                Ok(json
                    .get("dependencies")
                    .and_then(|d| d.as_object())
                    .is_some_and(|d| !d.is_empty()))
            }
        }
    }

    /// The files the installer finds in its working directory, by name.
    fn working_files(&self) -> Vec<(&'static str, &[u8])> {
        let mut files = vec![(self.language.deps_file(), self.manifest.as_slice())];
        files.extend(self.lock.as_deref().map(|l| (LOCK_FILE, l)));
        files.extend(self.npmrc.as_deref().map(|n| (NPMRC_FILE, n)));
        files
    }
}

/// npm's lock file, next to package.json.
pub const LOCK_FILE: &str = "package-lock.json";
/// npm's project settings file, next to package.json.
pub const NPMRC_FILE: &str = ".npmrc";

/// Installs the dependencies into `out` (laid out as under /kubeless), using `scratch` for
/// temporary files. `image_root` is required for [`Installer::Image`].
pub fn install(
    options: &InstallOptions,
    files: &DepsFiles,
    python_version: &str,
    image_root: Option<&ImageRoot>,
    out: &Path,
    scratch: &Path,
) -> Result<()> {
    let working_files = files.working_files();
    for (name, bytes) in &working_files {
        let path = out.join(name);
        fs::write(&path, bytes).io_context("write", &path)?;
    }
    let settings = Settings::collect(files.language, &options.index_ca, scratch)?;
    let result = match options.installer {
        Installer::Image => match image_root.expect("the image installer is given its root") {
            ImageRoot::ThisStep => {
                let spec = ConfinedSpec {
                    readable: confine::SYSTEM_DIRS.iter().map(PathBuf::from).collect(),
                    writable: vec![out.to_path_buf(), scratch.to_path_buf()],
                    workdir: out.to_path_buf(),
                    env: settings.env(&scratch.to_string_lossy()),
                    args: install_args(files, &out.to_string_lossy(), None),
                };
                run_installer(spec.command()?, files.language, &settings)
            }
            ImageRoot::Unpacked(root) => {
                let spec = SandboxSpec {
                    root: root.clone(),
                    binds: vec![
                        Bind::writable(out, CODE_DIR),
                        Bind::writable(scratch, "/tmp"),
                        Bind::resolv_conf(),
                    ],
                    workdir: CODE_DIR.into(),
                    env: settings.env("/tmp"),
                    args: install_args(files, CODE_DIR, None),
                    user: UNPRIVILEGED,
                };
                run_installer(spec.command()?, files.language, &settings)
            }
        },
        Installer::Host => {
            tracing::warn!(
                "installing dependencies with this machine's {} (--deps-installer host): native \
                     modules are built for this machine, not for the base image",
                package_manager(files.language)
            );
            let args = install_args(files, &out.to_string_lossy(), Some(python_version));
            let mut command = Command::new(&args[0]);
            command
                .args(&args[1..])
                .current_dir(out)
                .envs(settings.env(&scratch.to_string_lossy()));
            run_installer(command, files.language, &settings)
        }
    };
    // The dependency files belong to the code layer, not the deps layer.
    for (name, _) in &working_files {
        let _ = fs::remove_file(out.join(name));
    }
    result
}

/// The install command. Python installs with `--target` into the Kubeless prefix's
/// site-packages for the interpreter's own version (computed by that interpreter, or given for
/// the host installer).
fn install_args(files: &DepsFiles, code_dir: &str, python_version: Option<&str>) -> Vec<String> {
    match files.language {
        Language::Python => {
            let pip = "--no-cache-dir --no-compile --disable-pip-version-check --no-warn-script-location \
                       --no-input --progress-bar off";
            let target = |version: &str| format!("{code_dir}/lib/python{version}/site-packages");
            match python_version {
                Some(version) => {
                    let mut args = vec![
                        "python3".into(),
                        "-m".into(),
                        "pip".into(),
                        "install".into(),
                    ];
                    args.extend(pip.split_whitespace().map(String::from));
                    args.extend([
                        "--target".into(),
                        target(version),
                        "-r".into(),
                        format!("{code_dir}/requirements.txt"),
                    ]);
                    args
                }
                None => {
                    let script = format!(
                        "import runpy, sys\n\
                         version = '%d.%d' % sys.version_info[:2]\n\
                         sys.argv = ['pip', 'install'] + {pip:?}.split() + ['--target', '{code_dir}/lib/python' + version + '/site-packages', '-r', '{code_dir}/requirements.txt']\n\
                         runpy.run_module('pip', run_name='__main__', alter_sys=True)\n"
                    );
                    vec!["python3".into(), "-c".into(), script]
                }
            }
        }
        Language::Nodejs => {
            let verb = if files.lock.is_some() {
                "ci"
            } else {
                "install"
            };
            [
                "npm",
                verb,
                "--omit=dev",
                "--no-audit",
                "--no-fund",
                "--no-update-notifier",
                "--loglevel=warn",
            ]
            .into_iter()
            .map(String::from)
            .collect()
        }
    }
}

/// Package-manager settings taken from this process's environment and home directory.
struct Settings {
    pairs: Vec<(String, String)>,
    /// Files copied into the scratch directory: (env var, file name).
    files: Vec<(&'static str, &'static str)>,
    /// Secrets that must not appear in installer output shown to the user.
    secrets: Vec<String>,
}

impl Settings {
    fn collect(language: Language, index_ca: &[PathBuf], scratch: &Path) -> Result<Self> {
        let own_env = match language {
            Language::Python => PIP_ENV,
            Language::Nodejs => NPM_ENV,
        };
        let mut pairs: Vec<(String, String)> = own_env
            .iter()
            .chain(PROXY_ENV)
            .filter_map(|name| std::env::var(name).ok().map(|v| (name.to_string(), v)))
            .collect();
        if let Ok(registry) = std::env::var(KUBELESS_NPM_REGISTRY_ENV) {
            if language == Language::Nodejs && std::env::var("NPM_CONFIG_REGISTRY").is_err() {
                pairs.push(("NPM_CONFIG_REGISTRY".into(), registry));
            }
        }
        let secrets = pairs.iter().filter_map(|(_, v)| url_password(v)).collect();
        let mut files = Vec::new();
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let copy = |from: &Path, name: &str| -> Result<()> {
            let dest = scratch.join(name);
            fs::copy(from, &dest).io_context("copy", from)?;
            Ok(())
        };
        let named = ca_bundle_env(language)
            .find_map(std::env::var_os)
            .map(PathBuf::from)
            .filter(|ca| ca.is_file());
        // A bundle replaces what the package manager trusts: `--index-ca` certificates go
        // with the bundle it trusts by default (this system's) unless one is named.
        let system = Path::new(SYSTEM_CA_BUNDLE);
        let bundle: Vec<&Path> = match (&named, index_ca.is_empty()) {
            (Some(named), _) => vec![named.as_path()],
            (None, false) if system.is_file() => vec![system],
            _ => Vec::new(),
        };
        if !bundle.is_empty() || !index_ca.is_empty() {
            let mut pem = Vec::new();
            for file in bundle
                .into_iter()
                .chain(index_ca.iter().map(PathBuf::as_path))
            {
                pem.extend(fs::read(file).io_context("read the CA certificates", file)?);
                pem.push(b'\n');
            }
            let dest = scratch.join(CA_COPY);
            fs::write(&dest, pem).io_context("write", &dest)?;
            files.extend(CA_BUNDLE_ENV.iter().map(|n| (*n, CA_COPY)));
        }
        let pip_conf = std::env::var_os("PIP_CONFIG_FILE")
            .map(PathBuf::from)
            .or_else(|| {
                let home = home.as_ref()?;
                [".config/pip/pip.conf", ".pip/pip.conf"]
                    .iter()
                    .map(|p| home.join(p))
                    .find(|p| p.is_file())
            });
        if let Some(conf) = pip_conf.filter(|p| language == Language::Python && p.is_file()) {
            copy(&conf, "fnbuild-pip.conf")?;
            files.push(("PIP_CONFIG_FILE", "fnbuild-pip.conf"));
        }
        let npmrc = std::env::var_os("NPM_CONFIG_USERCONFIG")
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(".npmrc")));
        if let Some(rc) = npmrc.filter(|p| language == Language::Nodejs && p.is_file()) {
            copy(&rc, "fnbuild-npmrc")?;
            files.push(("NPM_CONFIG_USERCONFIG", "fnbuild-npmrc"));
        }
        Ok(Self {
            pairs,
            files,
            secrets,
        })
    }

    /// The installer's environment, with copied files under `scratch_in_view` (the scratch
    /// directory as the installer sees it).
    fn env(&self, scratch_in_view: &str) -> Vec<(String, String)> {
        let mut env = vec![
            (
                "PATH".to_string(),
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
            ),
            ("HOME".to_string(), scratch_in_view.to_string()),
            ("TMPDIR".to_string(), scratch_in_view.to_string()),
            ("LANG".to_string(), "C.UTF-8".to_string()),
            ("PIP_BREAK_SYSTEM_PACKAGES".to_string(), "1".to_string()),
            ("PYTHONDONTWRITEBYTECODE".to_string(), "1".to_string()),
            (
                "NPM_CONFIG_CACHE".to_string(),
                format!("{scratch_in_view}/npm-cache"),
            ),
            (
                "NPM_CONFIG_UPDATE_NOTIFIER".to_string(),
                "false".to_string(),
            ),
        ];
        env.extend(self.pairs.iter().cloned());
        for (name, file) in &self.files {
            env.push((name.to_string(), format!("{scratch_in_view}/{file}")));
        }
        env
    }
}

/// A line with every known secret masked.
fn redact(line: &str, secrets: &[String]) -> String {
    secrets.iter().fold(line.to_string(), |acc, secret| {
        acc.replace(secret.as_str(), "****")
    })
}

/// The password in a `scheme://user:password@host` URL, if any.
fn url_password(value: &str) -> Option<String> {
    let rest = value.split_once("://")?.1;
    let userinfo = rest.split('/').next()?.rsplit_once('@')?.0;
    let password = userinfo.split_once(':')?.1;
    (!password.is_empty()).then(|| password.to_string())
}

fn package_manager(language: Language) -> &'static str {
    match language {
        Language::Python => "pip",
        Language::Nodejs => "npm",
    }
}

/// Runs the installer, logging its output and returning its tail on failure.
fn run_installer(mut command: Command, language: Language, settings: &Settings) -> Result<()> {
    let tool = package_manager(language);
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .map_err(|e| Error::Deps(format!("cannot start {tool} to install dependencies: {e}")))?;
    let tail = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL_LINES)));
    let readers: Vec<_> = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    .map(|stream| {
        let tail = tail.clone();
        let secrets = settings.secrets.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(|l| l.ok()) {
                let line = redact(&line, &secrets);
                tracing::debug!(target: "fnbuild::deps::output", "{line}");
                let mut tail = tail.lock().unwrap();
                if tail.len() == TAIL_LINES {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
        })
    })
    .collect();
    let status = child
        .wait()
        .map_err(|e| Error::Deps(format!("{tool} did not finish: {e}")))?;
    for reader in readers {
        let _ = reader.join();
    }
    if status.success() {
        return Ok(());
    }
    let tail: Vec<String> = tail.lock().unwrap().iter().cloned().collect();
    Err(Error::Deps(format!(
        "installing the function's dependencies with {tool} failed ({status}); its last output:\n  {}",
        tail.join("\n  ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_requirements_declare_nothing() {
        let files = |text: &str| DepsFiles {
            language: Language::Python,
            origin: "requirements.txt".into(),
            manifest: text.into(),
            lock: None,
            npmrc: None,
            in_source: true,
        };
        assert!(!files("# nothing\n\n").declares_dependencies().unwrap());
        assert!(files("requests==2.32.3 # http\n")
            .declares_dependencies()
            .unwrap());
    }

    #[test]
    fn package_json_without_dependencies_declares_nothing() {
        let files = |text: &str| DepsFiles {
            language: Language::Nodejs,
            origin: "package.json".into(),
            manifest: text.into(),
            lock: None,
            npmrc: None,
            in_source: true,
        };
        assert!(!files(r#"{"name":"f","devDependencies":{"x":"1"}}"#)
            .declares_dependencies()
            .unwrap());
        assert!(files(r#"{"dependencies":{"left-pad":"1.3.0"}}"#)
            .declares_dependencies()
            .unwrap());
    }

    #[test]
    fn each_package_manager_prefers_its_own_ca_bundle_setting() {
        let order = |language| ca_bundle_env(language).collect::<Vec<_>>();
        assert_eq!(
            order(Language::Nodejs)[..2],
            ["NPM_CONFIG_CAFILE", "NODE_EXTRA_CA_CERTS"]
        );
        assert_eq!(
            order(Language::Python)[..2],
            ["PIP_CERT", "REQUESTS_CA_BUNDLE"]
        );
        for language in [Language::Python, Language::Nodejs] {
            assert_eq!(order(language).len(), CA_BUNDLE_ENV.len());
        }
    }

    #[test]
    fn url_passwords_are_found_for_redaction() {
        assert_eq!(
            url_password("https://bob:t0ken@pypi.local/simple").as_deref(),
            Some("t0ken")
        );
        assert_eq!(url_password("https://pypi.local/simple"), None);
    }
}
