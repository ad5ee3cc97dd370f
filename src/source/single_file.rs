//! Naming a source that is one file (not an archive, not a directory). Kubeless stores the
//! content of `--from-file FILE` as `<handler module>.<runtime extension>`, whatever FILE is
//! called: `--from-file hello-loop.py --handler helloget.foo` runs `foo` of `helloget.py`.
//! fnbuild does the same for a local file, a downloaded one and an S3 object. The module name
//! becomes a file name in the workspace, so it must be a name, never a path.

use crate::error::{Error, Result};

/// How a single-file source is named in the workspace: after the handler's module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SingleFileName {
    module: String,
    extensions: &'static [&'static str],
}

impl SingleFileName {
    /// `module` is the handler's module; `extensions` are the runtime's module extensions,
    /// the first one the default (`py`; `js`, `cjs`, `mjs`).
    pub fn new(module: &str, extensions: &'static [&'static str]) -> Self {
        Self {
            module: module.to_string(),
            extensions,
        }
    }

    /// The name a file called `original` gets: the module, with the file's own extension
    /// when it is one of the runtime's (`.mjs` stays `.mjs`), else the runtime's default.
    /// Fails when the module is not a plain name.
    pub fn for_file(&self, original: &str) -> Result<String> {
        let module = &self.module;
        let plain = !module.is_empty()
            && !module.starts_with('.')
            && module
                .chars()
                .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if !plain {
            return Err(Error::Usage(format!(
                "--handler module '{}' cannot name a single-file function: a module name is \
                 letters, digits, '_', '-' and '.' (not first), such as helloget or \
                 hello_world, not a path",
                module.escape_debug()
            )));
        }
        let extension = original
            .rsplit_once('.')
            .map(|(_, ext)| ext)
            .filter(|ext| self.extensions.contains(ext))
            .or(self.extensions.first().copied())
            .unwrap_or_default();
        Ok(format!("{module}.{extension}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: &[&str] = &["js", "cjs", "mjs"];

    #[test]
    fn the_file_takes_the_module_name_and_a_runtime_extension() {
        let python = SingleFileName::new("helloget", &["py"]);
        assert_eq!(python.for_file("hello-loop.py").unwrap(), "helloget.py");
        assert_eq!(python.for_file("function").unwrap(), "helloget.py");
        let node = SingleFileName::new("helloget", NODE);
        assert_eq!(node.for_file("hello-loop.js").unwrap(), "helloget.js");
        assert_eq!(node.for_file("handler.mjs").unwrap(), "helloget.mjs");
        assert_eq!(node.for_file("handler.txt").unwrap(), "helloget.js");
        let dashed = SingleFileName::new("pubsub-python", &["py"]);
        assert_eq!(dashed.for_file("pubsub.py").unwrap(), "pubsub-python.py");
    }

    #[test]
    fn a_module_that_is_a_path_or_empty_is_refused_naming_what_is_accepted() {
        for module in ["../x", "a/b", "", ".hidden", "..", "a\\b", "a\nb", "a b"] {
            let err = SingleFileName::new(module, &["py"])
                .for_file("hello.py")
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("cannot name a single-file function")
                    && err.contains("letters, digits, '_', '-' and '.'")
                    && err.contains("not a path"),
                "{module:?}: {err}"
            );
            assert!(!err.contains('\n'), "{module:?}: {err}");
        }
    }
}
