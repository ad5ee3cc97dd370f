//! The runtime catalog: which runtimes fnbuild builds for, the base image of each, where code
//! and dependencies go, and which old Kubeless runtime names map to them. The catalog is
//! embedded (`runtimes/catalog.json`) and can be replaced with `--catalog FILE`; base image
//! references may use `{base_registry}`, filled from `FNBUILD_BASE_REGISTRY` (default
//! `localhost:5000`) so one catalog serves every cluster registry.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

const EMBEDDED_CATALOG: &str = include_str!("../runtimes/catalog.json");

/// The environment variable naming the registry that holds the runtime base images.
pub const BASE_REGISTRY_ENV: &str = "FNBUILD_BASE_REGISTRY";
const DEFAULT_BASE_REGISTRY: &str = "localhost:5000";

/// Where a function's code lives in the image (the Kubeless layout); deps go there too
/// (`lib/pythonX.Y/site-packages` from `pip --prefix`, `node_modules` from npm).
pub const CODE_DIR: &str = "/kubeless";
/// Where the runtime server lives in a runtime base image.
pub const SERVER_DIR: &str = "/opt/fnbuild/runtime";

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
    /// Other names accepted for this runtime (old Kubeless names), with a warning.
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
            let warning = format!(
                "runtime '{name}' is built as '{}' ({} {}), the supported runtime for it",
                runtime.name, runtime.language, runtime.version
            );
            return Ok(Resolved {
                runtime,
                alias_warning: Some(warning),
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

    #[test]
    fn kubeless_names_map_with_a_warning() {
        let catalog = Catalog::embedded();
        let resolved = catalog.resolve("python3.7").unwrap();
        assert_eq!(resolved.runtime.name, "python3.13");
        assert!(resolved.alias_warning.unwrap().contains("python3.7"));
        assert!(catalog.resolve("nodejs20").unwrap().alias_warning.is_none());
        assert_eq!(
            catalog.resolve("nodejs14").unwrap().runtime.name,
            "nodejs20"
        );
    }

    #[test]
    fn unknown_runtime_lists_what_is_accepted() {
        let err = Catalog::embedded()
            .resolve("ruby2.6")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown runtime 'ruby2.6'"), "{err}");
        assert!(
            err.contains("python3.13") && err.contains("nodejs20"),
            "{err}"
        );
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
