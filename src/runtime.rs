//! The runtime catalog: which runtimes fnbuild builds for (one per language version, each with
//! its own base image), where code and dependencies go, and which other names map to them:
//! old Kubeless versions to the nearest supported version, `python`/`nodejs` to the default
//! one. The catalog is embedded (`runtimes/catalog.json`) and can be replaced with
//! `--catalog FILE`; base image references may use `{base_registry}`, filled from
//! `FNBUILD_BASE_REGISTRY` (default `localhost:5000`) so one catalog serves every cluster
//! registry.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::function_image::SERVER_DIR;

const EMBEDDED_CATALOG: &str = include_str!("../runtimes/catalog.json");

/// The environment variable naming the registry that holds the runtime base images.
pub const BASE_REGISTRY_ENV: &str = "FNBUILD_BASE_REGISTRY";
const DEFAULT_BASE_REGISTRY: &str = "localhost:5000";

/// The languages fnbuild has a runtime server for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    Python,
    Nodejs,
}

impl Language {
    /// The dependencies file Kubeless users keep next to their code.
    pub fn deps_file(self) -> &'static str {
        match self {
            Self::Python => "requirements.txt",
            Self::Nodejs => "package.json",
        }
    }

    /// The extensions a handler module file may have.
    pub fn module_extensions(self) -> &'static [&'static str] {
        match self {
            Self::Python => &["py"],
            Self::Nodejs => &["js", "cjs", "mjs"],
        }
    }

    /// The language's name as people write it.
    pub fn title(self) -> &'static str {
        match self {
            Self::Python => "Python",
            Self::Nodejs => "Node.js",
        }
    }

    /// The runtime server's file name and source, as installed into base images.
    pub fn server(self) -> (&'static str, &'static str) {
        match self {
            Self::Python => (
                "kubeless.py",
                include_str!("../runtimes/python/kubeless.py"),
            ),
            Self::Nodejs => (
                "kubeless.js",
                include_str!("../runtimes/nodejs/kubeless.js"),
            ),
        }
    }

    /// The command that starts the runtime server.
    pub fn entrypoint(self) -> Vec<String> {
        let (file, _) = self.server();
        let path = format!("{SERVER_DIR}/{file}");
        match self {
            Self::Python => vec!["python3".into(), "-u".into(), path],
            Self::Nodejs => vec!["node".into(), path],
        }
    }
}

impl fmt::Display for Language {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Python => "python",
            Self::Nodejs => "nodejs",
        })
    }
}

/// One runtime of the catalog.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Runtime {
    pub name: String,
    pub language: Language,
    pub version: String,
    /// The runtime base image reference, possibly with `{base_registry}`.
    pub base_image: String,
    /// Other names accepted for this runtime, with a warning: older versions it replaces
    /// (`python3.7`, `nodejs14`: the same language and as many version parts), or names of
    /// the language standing for its default version (`python`, `python3`, `node`).
    #[serde(default)]
    pub aliases: Vec<String>,
}

impl Runtime {
    /// The base image reference with `{base_registry}` filled in.
    pub fn base_image_ref(&self) -> String {
        self.base_image_ref_in(&base_registry())
    }

    /// The base image reference with `{base_registry}` standing for `registry`.
    pub fn base_image_ref_in(&self, registry: &str) -> String {
        self.base_image.replace("{base_registry}", registry)
    }

    /// The version an alias names (`3.7` of `python3.7`, `14` of `nodejs14`), when it names
    /// one as precise as this runtime's; `None` for a name of the language (`python3`, `node`).
    fn version_named_by<'n>(&self, alias: &'n str) -> Option<&'n str> {
        let version = alias.trim_start_matches(|c: char| c.is_ascii_alphabetic());
        let parts = |v: &str| v.split('.').count();
        let numeric = !version.is_empty() && version.split('.').all(|p| p.parse::<u32>().is_ok());
        (numeric && parts(version) == parts(&self.version)).then_some(version)
    }

    /// The warning shown when `alias` is built as this runtime, saying why.
    fn alias_warning(&self, alias: &str) -> String {
        let language = self.language.title();
        let why = match self.version_named_by(alias) {
            Some(old) => format!(
                ": {language} {old} is not supported, and {} is the nearest supported version",
                self.version
            ),
            None => format!(", the default {language} version"),
        };
        format!("runtime '{alias}' is built as '{}'{why}", self.name)
    }
}

/// What `{base_registry}` stands for: `$FNBUILD_BASE_REGISTRY`, else `localhost:5000`.
pub fn base_registry() -> String {
    std::env::var(BASE_REGISTRY_ENV)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| DEFAULT_BASE_REGISTRY.to_string())
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Catalog {
    pub runtimes: Vec<Runtime>,
}

/// A runtime chosen by name, with the warning to show when an alias was used.
#[derive(Debug)]
pub struct Resolved<'a> {
    pub runtime: &'a Runtime,
    pub alias_warning: Option<String>,
}

impl Catalog {
    pub fn embedded() -> Self {
        serde_json::from_str(EMBEDDED_CATALOG).expect("the embedded runtime catalog is valid")
    }

    /// The catalog from `--catalog FILE`, or the embedded one.
    pub fn load(path: Option<&Path>) -> Result<Self> {
        let Some(path) = path else {
            return Ok(Self::embedded());
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::Usage(format!("--catalog {}: cannot read it: {e}", path.display()))
        })?;
        serde_json::from_str(&text).map_err(|e| {
            Error::Usage(format!(
                "--catalog {}: not a runtime catalog ({{\"runtimes\": [{{\"name\", \"language\", \"version\", \"base_image\", \"aliases\"}}]}}): {e}",
                path.display()
            ))
        })
    }

    /// Finds a runtime by name or alias.
    pub fn resolve(&self, name: &str) -> Result<Resolved<'_>> {
        if let Some(runtime) = self.runtimes.iter().find(|r| r.name == name) {
            return Ok(Resolved {
                runtime,
                alias_warning: None,
            });
        }
        if let Some(runtime) = self
            .runtimes
            .iter()
            .find(|r| r.aliases.iter().any(|a| a == name))
        {
            return Ok(Resolved {
                runtime,
                alias_warning: Some(runtime.alias_warning(name)),
            });
        }
        Err(Error::Usage(format!(
            "unknown runtime '{name}'; accepted: {} (and the Kubeless names {})",
            self.runtimes
                .iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            self.runtimes
                .iter()
                .flat_map(|r| r.aliases.iter().map(String::as_str))
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }
}

/// A Kubeless handler, `MODULE.FUNCTION`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handler {
    pub module: String,
    pub function: String,
}

impl std::str::FromStr for Handler {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| {
            Error::Usage(format!(
                "--handler '{s}': {why}; expected MODULE.FUNCTION, e.g. hello.handler for \
                 `def handler(event, context)` in hello.py"
            ))
        };
        let (module, function) = s.rsplit_once('.').ok_or_else(|| bad("it has no '.'"))?;
        if module.is_empty() || module.contains(['/', '\\']) || module.starts_with('.') {
            return Err(bad(
                "the module part must be a file name without its extension",
            ));
        }
        let identifier = !function.is_empty()
            && !function.starts_with(|c: char| c.is_ascii_digit())
            && function
                .chars()
                .all(|c| c.is_alphanumeric() || c == '_' || c == '$');
        if !identifier {
            return Err(bad("the function part must be an identifier"));
        }
        Ok(Self {
            module: module.to_string(),
            function: function.to_string(),
        })
    }
}

impl fmt::Display for Handler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.module, self.function)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A version's parts as numbers, for ordering (`3.10` after `3.9`).
    fn parts(version: &str) -> Vec<u32> {
        version.split('.').map(|p| p.parse().unwrap()).collect()
    }

    #[test]
    fn old_kubeless_versions_map_to_the_nearest_supported_version_with_a_warning() {
        let catalog = Catalog::embedded();
        for (old, chosen) in [
            ("python2.7", "python3.9"),
            ("python3.6", "python3.9"),
            ("python3.7", "python3.9"),
            ("python3.8", "python3.9"),
            ("nodejs6", "nodejs18"),
            ("nodejs10", "nodejs18"),
            ("nodejs14", "nodejs18"),
            ("nodejs16", "nodejs18"),
        ] {
            let resolved = catalog.resolve(old).unwrap();
            assert_eq!(resolved.runtime.name, chosen, "{old}");
            let warning = resolved.alias_warning.unwrap();
            let language = resolved.runtime.language.title();
            let (old_version, version) = (
                old.trim_start_matches(char::is_alphabetic),
                &resolved.runtime.version,
            );
            assert_eq!(
                warning,
                format!(
                    "runtime '{old}' is built as '{chosen}': {language} {old_version} is not \
                     supported, and {version} is the nearest supported version"
                )
            );
        }
    }

    #[test]
    fn every_alias_of_an_older_version_is_built_on_the_oldest_newer_one() {
        let catalog = Catalog::embedded();
        for runtime in &catalog.runtimes {
            for alias in &runtime.aliases {
                let Some(old) = runtime.version_named_by(alias) else {
                    continue;
                };
                assert!(parts(old) < parts(&runtime.version), "{alias}");
                let nearer = catalog.runtimes.iter().find(|r| {
                    r.language == runtime.language
                        && parts(old) <= parts(&r.version)
                        && parts(&r.version) < parts(&runtime.version)
                });
                assert!(nearer.is_none(), "{alias} is nearer to {nearer:?}");
            }
        }
    }

    #[test]
    fn language_names_build_the_default_versions() {
        let catalog = Catalog::embedded();
        for (name, chosen, language) in [
            ("python", "python3.13", "Python"),
            ("python3", "python3.13", "Python"),
            ("nodejs", "nodejs20", "Node.js"),
            ("node", "nodejs20", "Node.js"),
        ] {
            let resolved = catalog.resolve(name).unwrap();
            assert_eq!(
                resolved.alias_warning.unwrap(),
                format!("runtime '{name}' is built as '{chosen}', the default {language} version")
            );
        }
    }

    #[test]
    fn each_supported_version_is_a_runtime_with_its_own_base_image() {
        let catalog = Catalog::embedded();
        for name in [
            "python3.9",
            "python3.10",
            "python3.11",
            "python3.12",
            "python3.13",
            "nodejs18",
            "nodejs20",
            "nodejs22",
        ] {
            let resolved = catalog.resolve(name).unwrap();
            assert!(resolved.alias_warning.is_none(), "{name}");
            let runtime = resolved.runtime;
            assert_eq!(format!("{}{}", runtime.language, runtime.version), name);
            assert_eq!(
                runtime.base_image_ref_in("registry.local:5000"),
                format!(
                    "registry.local:5000/fnbuild/runtime-{}:{}",
                    runtime.language, runtime.version
                )
            );
        }
        assert_eq!(catalog.runtimes.len(), 8, "no runtime left unchecked");
    }

    #[test]
    fn unknown_runtime_lists_what_is_accepted() {
        for name in ["ruby2.6", "python3.99", "nodejs24"] {
            let err = Catalog::embedded().resolve(name).unwrap_err().to_string();
            assert!(err.contains(&format!("unknown runtime '{name}'")), "{err}");
            assert!(
                err.contains(
                    "python3.9, python3.10, python3.11, python3.12, python3.13, \
                              nodejs18, nodejs20, nodejs22"
                ) && err.contains("python3.7"),
                "{err}"
            );
        }
    }

    #[test]
    fn handlers_are_module_dot_function() {
        let h: Handler = "hello.foo".parse().unwrap();
        assert_eq!((h.module.as_str(), h.function.as_str()), ("hello", "foo"));
        for bad in ["hello", "hello.", ".foo", "a/b.foo", "hello.1x"] {
            let err = bad.parse::<Handler>().unwrap_err().to_string();
            assert!(err.contains("expected MODULE.FUNCTION"), "{bad}: {err}");
        }
    }
}
