//! Checking at build time that the handler exists in the function's code, without running
//! the code: the module file must be there, and for Python the function must be defined at
//! the module's top level (a `def`, an assignment or an import of that name). Node.js exports
//! can only be known by running the module, so the runtime checks them when it starts.

use crate::error::{Error, Result};
use crate::runtime::{Handler, Language};
use crate::source::Workspace;

/// Fails with a message naming what is missing and what was found instead. Returns the
/// module's path in the source and its text.
pub fn check(workspace: &Workspace, handler: &Handler, language: Language) -> Result<Module> {
    let module = find_module(workspace, handler, language)?;
    if language == Language::Python {
        let names = top_level_python_names(&module.text);
        if !names.iter().any(|n| n == &handler.function) {
            let functions: Vec<&str> = names.iter().map(String::as_str).collect();
            return Err(Error::Function(format!(
                "handler '{handler}': {} has no function '{}' (top-level names found: {})",
                module.path,
                handler.function,
                if functions.is_empty() {
                    "none".to_string()
                } else {
                    functions.join(", ")
                }
            )));
        }
    }
    Ok(module)
}

/// The handler's module as found in the function's source.
#[derive(Debug, Clone)]
pub struct Module {
    /// Its path relative to the function's directory (`hello.py`, `hello/__init__.py`).
    pub path: String,
    pub text: String,
}

fn find_module(workspace: &Workspace, handler: &Handler, language: Language) -> Result<Module> {
    let mut candidates: Vec<String> = language
        .module_extensions()
        .iter()
        .map(|ext| format!("{}.{ext}", handler.module))
        .collect();
    candidates.push(format!(
        "{}/{}",
        handler.module,
        match language {
            Language::Python => "__init__.py",
            Language::Nodejs => "index.js",
        }
    ));
    for path in candidates {
        if let Some(bytes) = workspace.read_file(&path, "the handler module")? {
            let text = String::from_utf8(bytes).map_err(|_| {
                Error::Function(format!("handler '{handler}': {path} is not UTF-8 text"))
            })?;
            return Ok(Module { path, text });
        }
    }
    let mut files: Vec<String> = std::fs::read_dir(&workspace.root)
        .map(|list| {
            list.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files.truncate(20);
    let expected = language
        .module_extensions()
        .iter()
        .map(|ext| format!("{}.{ext}", handler.module))
        .collect::<Vec<_>>()
        .join(" or ");
    Err(Error::Function(format!(
        "handler '{handler}': no module '{}' in the function's code (expected {expected}; files found: {})",
        handler.module,
        if files.is_empty() { "none".to_string() } else { files.join(", ") }
    )))
}

/// Names bound at the top level of a Python module: `def`/`async def`/`class` names, simple
/// assignments and imported names. Indented lines and lines inside triple-quoted strings
/// are skipped.
fn top_level_python_names(source: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut in_string: Option<&str> = None;
    for line in source.lines() {
        if let Some(quote) = in_string {
            if line.matches(quote).count() % 2 == 1 {
                in_string = None;
            }
            continue;
        }
        for quote in ["\"\"\"", "'''"] {
            if line.matches(quote).count() % 2 == 1 {
                in_string = Some(quote);
            }
        }
        if line.starts_with([' ', '\t', '#']) {
            continue;
        }
        let line = line.trim_end();
        if let Some(rest) = line
            .strip_prefix("async def ")
            .or_else(|| line.strip_prefix("def "))
            .or_else(|| line.strip_prefix("class "))
        {
            names.push(identifier_prefix(rest));
        } else if let Some(rest) = line.strip_prefix("from ") {
            if let Some((_, imported)) = rest.split_once(" import ") {
                names.extend(imported_names(imported));
            }
        } else if let Some(rest) = line.strip_prefix("import ") {
            names.extend(
                imported_names(rest)
                    .into_iter()
                    .map(|n| n.split('.').next().unwrap_or(&n).to_string()),
            );
        } else if let Some((target, _)) = line.split_once('=') {
            let target = target.trim_end_matches([':', '+', '-', '*', '/', ' ']);
            let target = target.split(':').next().unwrap_or(target).trim();
            if !target.is_empty() && target.chars().all(|c| c.is_alphanumeric() || c == '_') {
                names.push(target.to_string());
            }
        }
    }
    names.retain(|n| !n.is_empty());
    names
}

fn identifier_prefix(s: &str) -> String {
    s.chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// `a, b as c, (d)` → `a`, `c`, `d`.
fn imported_names(list: &str) -> Vec<String> {
    list.trim_matches(['(', ')', ' ', '\\'])
        .split(',')
        .filter_map(|item| {
            let item = item.trim().trim_matches(['(', ')']);
            let name = item
                .rsplit_once(" as ")
                .map_or(item, |(_, alias)| alias)
                .trim();
            (!name.is_empty()).then(|| name.to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(files: &[(&str, &str)]) -> Workspace {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        Workspace::open(dir.path().to_path_buf(), Default::default(), Some(dir)).unwrap()
    }

    #[test]
    fn python_functions_are_found_without_running_the_code() {
        let dir = code(&[(
            "hello.py",
            "import os\nfrom json import dumps as to_json\n\"\"\"\ndef not_this(): pass\n\"\"\"\n\
             def handler(event, context):\n    def inner(): pass\n    return 'hi'\n\
             async def later(e, c): pass\nalias = handler\n",
        )]);
        let ok = |f: &str| {
            check(
                &dir,
                &format!("hello.{f}").parse().unwrap(),
                Language::Python,
            )
        };
        for name in ["handler", "later", "alias", "to_json", "os"] {
            ok(name).unwrap();
        }
        let err = ok("inner").unwrap_err().to_string();
        assert!(err.contains("hello.py has no function 'inner'"), "{err}");
        assert!(
            err.contains("handler, later") || err.contains("handler"),
            "{err}"
        );
        assert!(ok("not_this").is_err());
    }

    #[test]
    fn missing_module_lists_the_files() {
        let dir = code(&[("main.py", "def handler(e, c): pass\n")]);
        let err = check(&dir, &"hello.handler".parse().unwrap(), Language::Python)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no module 'hello'") && err.contains("main.py"),
            "{err}"
        );
    }

    #[test]
    fn node_modules_are_found_by_any_extension() {
        let dir = code(&[("hello.mjs", "export function handler() {}")]);
        check(&dir, &"hello.handler".parse().unwrap(), Language::Nodejs).unwrap();
    }

    #[test]
    fn a_module_that_links_out_of_the_source_is_refused_unread() {
        let host = tempfile::tempdir().unwrap();
        let secret = host.path().join("handler.py");
        std::fs::write(&secret, "def handler(e, c): pass\n").unwrap();
        let dir = code(&[]);
        std::os::unix::fs::symlink(&secret, dir.root.join("hello.py")).unwrap();
        let err = check(&dir, &"hello.handler".parse().unwrap(), Language::Python)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("'hello.py' is a link that leads outside the function's source"),
            "{err}"
        );
    }
}
