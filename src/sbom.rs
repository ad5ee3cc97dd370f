//! What a function image is made of, as a software bill of materials: the packages the deps
//! step installed (read from what pip and npm left behind: `*.dist-info/METADATA`,
//! `node_modules/**/package.json`) and the runtime they run on, as an SPDX 2.3 JSON document.
//! The package list travels with every deps cache entry, so a cache hit knows it without the
//! layer. Attaching the document to the image is `transport::referrers`' job.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::beneath::{self, Dir};
use crate::digest::Digest;
use crate::runtime::{Language, Runtime};

/// The media type (and OCI artifact type) of an SPDX JSON document.
pub const SPDX_JSON: &str = "application/spdx+json";

/// What goes into a function image's SBOM besides the image itself.
pub struct Contents<'a> {
    pub runtime: &'a Runtime,
    /// The base image as it was named (a reference or `oci:DIR`).
    pub base_image: String,
    pub base_digest: &'a Digest,
    pub packages: &'a [Package],
    /// The image's creation time (RFC 3339), so the same build gives the same document.
    pub created: &'a str,
}

/// How the document names the image: its name, and the repository it is pulled from when it
/// is in a registry.
pub struct ImageName {
    name: String,
    repository_url: Option<String>,
}

impl ImageName {
    /// An image in a registry repository (`REGISTRY/REPOSITORY`).
    pub fn in_registry(repository: &str) -> Self {
        Self {
            name: repository.to_string(),
            repository_url: Some(repository.to_string()),
        }
    }

    /// An image in an OCI layout or a tarball, by the name it has there.
    pub fn local(name: &str) -> Self {
        Self {
            name: name.to_string(),
            repository_url: None,
        }
    }

    /// `pkg:oci/NAME@DIGEST[?repository_url=...]`: NAME is the last path segment, lower case,
    /// without a tag.
    fn purl(&self, digest: &Digest) -> String {
        let last = self.name.rsplit('/').next().unwrap_or(&self.name);
        let short = last.split(':').next().unwrap_or(last).to_ascii_lowercase();
        let version = digest.to_string().replacen(':', "%3A", 1);
        match &self.repository_url {
            Some(url) => format!("pkg:oci/{short}@{version}?repository_url={url}"),
            None => format!("pkg:oci/{short}@{version}"),
        }
    }
}

/// The SPDX 2.3 document of the image `digest`: the image contains the runtime (its base
/// image) and every installed package.
pub fn spdx_document(image: &ImageName, digest: &Digest, contents: &Contents<'_>) -> Value {
    let runtime = contents.runtime;
    let mut packages = vec![
        json!({
            "SPDXID": "SPDXRef-Image",
            "name": image.name,
            "versionInfo": digest.to_string(),
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": false,
            "primaryPackagePurpose": "CONTAINER",
            "externalRefs": [{
                "referenceCategory": "PACKAGE-MANAGER",
                "referenceType": "purl",
                "referenceLocator": image.purl(digest),
            }],
        }),
        json!({
            "SPDXID": "SPDXRef-Runtime",
            "name": runtime.language.to_string(),
            "versionInfo": runtime.version,
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": false,
            "primaryPackagePurpose": "OPERATING-SYSTEM",
            "comment": format!(
                "fnbuild runtime {} on base image {}@{}",
                runtime.name, contents.base_image, contents.base_digest
            ),
        }),
    ];
    let mut relationships = vec![
        relationship("SPDXRef-DOCUMENT", "DESCRIBES", "SPDXRef-Image"),
        relationship("SPDXRef-Image", "CONTAINS", "SPDXRef-Runtime"),
    ];
    for (i, package) in contents.packages.iter().enumerate() {
        let id = format!("SPDXRef-Package-{}", i + 1);
        packages.push(json!({
            "SPDXID": id,
            "name": package.name,
            "versionInfo": package.version,
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": false,
            "primaryPackagePurpose": "LIBRARY",
            "externalRefs": [{
                "referenceCategory": "PACKAGE-MANAGER",
                "referenceType": "purl",
                "referenceLocator": package.purl(runtime.language),
            }],
        }));
        relationships.push(relationship("SPDXRef-Image", "CONTAINS", &id));
    }
    json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": format!("{}@{digest}", image.name),
        "documentNamespace": format!("https://spdx.fnbuild.dev/images/{}", digest.hex()),
        "creationInfo": {
            "created": contents.created,
            "creators": [concat!("Tool: fnbuild-", env!("CARGO_PKG_VERSION"))],
        },
        "packages": packages,
        "relationships": relationships,
    })
}

fn relationship(from: &str, kind: &str, to: &str) -> Value {
    json!({
        "spdxElementId": from,
        "relationshipType": kind,
        "relatedSpdxElement": to,
    })
}

/// One installed package.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Package {
    pub name: String,
    pub version: String,
}

impl Package {
    /// The package URL (purl) naming this package in its ecosystem.
    pub fn purl(&self, language: Language) -> String {
        match language {
            Language::Python => format!(
                "pkg:pypi/{}@{}",
                normalize_python_name(&self.name),
                self.version
            ),
            Language::Nodejs => {
                // A scoped name's `@` is percent-encoded in a purl.
                let name = self.name.replacen('@', "%40", 1);
                format!("pkg:npm/{name}@{}", self.version)
            }
        }
    }
}

/// PEP 503 normalization: lower case, runs of `-`, `_`, `.` as one `-`.
fn normalize_python_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !out.ends_with('-') {
                out.push('-');
            }
        } else {
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

/// The packages installed under `dir` (the deps step's output, laid out as the code directory),
/// sorted by name and version. What the installer wrote is read beneath `dir` only: a link
/// it left never makes fnbuild read a file of the machine it runs on.
pub fn installed_packages(dir: &Path, language: Language) -> Vec<Package> {
    let mut packages = Vec::new();
    if let Ok(dir) = beneath::open_dir(dir) {
        match language {
            Language::Python => python_packages(&dir, &mut packages),
            Language::Nodejs => node_packages(&dir, Path::new("node_modules"), &mut packages),
        }
    }
    packages.sort();
    packages.dedup();
    packages
}

/// The most of one metadata file read.
const MAX_METADATA_BYTES: u64 = 1024 * 1024;

/// A file of the installed packages, if it is a regular file inside.
fn read(dir: &Dir, path: &Path) -> Option<Vec<u8>> {
    beneath::read_file(dir, path, MAX_METADATA_BYTES)
        .ok()
        .flatten()
}

/// `lib/python*/site-packages/*.dist-info/METADATA`.
fn python_packages(dir: &Dir, packages: &mut Vec<Package>) {
    for lib in sub_dirs(dir, Path::new("lib")) {
        for entry in sub_dirs(dir, &lib.join("site-packages")) {
            let is_dist_info = entry
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(".dist-info"));
            if !is_dist_info {
                continue;
            }
            if let Some(bytes) = read(dir, &entry.join("METADATA")) {
                packages.extend(parse_metadata(&String::from_utf8_lossy(&bytes)));
            }
        }
    }
}

/// `Name:` and `Version:` from the header block of a core metadata file.
fn parse_metadata(text: &str) -> Option<Package> {
    let mut name = None;
    let mut version = None;
    for line in text.lines().take_while(|l| !l.is_empty()) {
        if let Some(v) = line.strip_prefix("Name:") {
            name = Some(v.trim().to_string());
        } else if let Some(v) = line.strip_prefix("Version:") {
            version = Some(v.trim().to_string());
        }
    }
    Some(Package {
        name: name?,
        version: version?,
    })
}

/// Every `package.json` directly under a `node_modules` (scoped ones one level deeper), and
/// the `node_modules` nested in those packages.
fn node_packages(dir: &Dir, node_modules: &Path, packages: &mut Vec<Package>) {
    for entry in sub_dirs(dir, node_modules) {
        let name = entry.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with('.') {
            continue;
        }
        if name.starts_with('@') {
            for scoped in sub_dirs(dir, &entry) {
                node_package(dir, &scoped, packages);
            }
        } else {
            node_package(dir, &entry, packages);
        }
    }
}

fn node_package(dir: &Dir, package: &Path, packages: &mut Vec<Package>) {
    #[derive(Deserialize)]
    struct PackageJson {
        name: Option<String>,
        version: Option<String>,
    }
    if let Some(PackageJson {
        name: Some(name),
        version: Some(version),
    }) = read(dir, &package.join("package.json")).and_then(|b| serde_json::from_slice(&b).ok())
    {
        packages.push(Package { name, version });
    }
    node_packages(dir, &package.join("node_modules"), packages);
}

/// The entries of a directory that are directories (not symlinks), as paths relative to
/// `dir`, in name order; none when it cannot be read.
fn sub_dirs(dir: &Dir, relative: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<_> = dir
        .read_dir(relative)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| relative.join(e.file_name()))
        .collect();
    dirs.sort();
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn python_packages_come_from_dist_info_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let site = dir.path().join("lib/python3.13/site-packages");
        write(
            &site.join("requests-2.32.3.dist-info/METADATA"),
            "Metadata-Version: 2.1\nName: requests\nVersion: 2.32.3\n\nVersion: 9 (body)\n",
        );
        write(
            &site.join("Jinja2-3.1.4.dist-info/METADATA"),
            "Metadata-Version: 2.1\nName: Jinja2\nVersion: 3.1.4\n",
        );
        write(&site.join("requests/__init__.py"), "");
        let packages = installed_packages(dir.path(), Language::Python);
        assert_eq!(
            packages,
            vec![
                Package {
                    name: "Jinja2".into(),
                    version: "3.1.4".into()
                },
                Package {
                    name: "requests".into(),
                    version: "2.32.3".into()
                },
            ]
        );
        assert_eq!(packages[0].purl(Language::Python), "pkg:pypi/jinja2@3.1.4");
    }

    #[test]
    fn the_document_names_the_image_runtime_and_packages() {
        let runtime: Runtime = serde_json::from_value(json!({
            "name": "python3.13", "language": "python", "version": "3.13",
            "base_image": "{base_registry}/fnbuild/runtime-python:3.13"
        }))
        .unwrap();
        let digest = Digest::of(b"manifest");
        let packages = [Package {
            name: "six".into(),
            version: "1.16.0".into(),
        }];
        let contents = Contents {
            runtime: &runtime,
            base_image: "oci:/mirror:fnbuild/runtime-python:3.13".into(),
            base_digest: &digest,
            packages: &packages,
            created: "2026-01-01T00:00:00Z",
        };
        let in_registry = spdx_document(
            &ImageName::in_registry("registry.local:5000/team/hello"),
            &digest,
            &contents,
        )
        .to_string();
        assert!(in_registry.contains(&format!(
            "pkg:oci/hello@sha256%3A{}?repository_url=registry.local:5000/team/hello",
            digest.hex()
        )));
        assert!(in_registry.contains("pkg:pypi/six@1.16.0"));
        let local = spdx_document(&ImageName::local("Hello:v1"), &digest, &contents).to_string();
        assert!(local.contains(&format!("\"pkg:oci/hello@sha256%3A{}\"", digest.hex())));
    }

    #[test]
    fn node_packages_include_scoped_and_nested_ones() {
        let dir = tempfile::tempdir().unwrap();
        let modules = dir.path().join("node_modules");
        write(
            &modules.join("lodash/package.json"),
            r#"{"name":"lodash","version":"4.17.21"}"#,
        );
        write(
            &modules.join("@types/node/package.json"),
            r#"{"name":"@types/node","version":"20.1.0"}"#,
        );
        write(
            &modules.join("a/node_modules/b/package.json"),
            r#"{"name":"b","version":"1.0.0"}"#,
        );
        write(
            &modules.join("a/package.json"),
            r#"{"name":"a","version":"2.0.0"}"#,
        );
        write(&modules.join(".package-lock.json"), "{}");
        let packages = installed_packages(dir.path(), Language::Nodejs);
        let names: Vec<_> = packages
            .iter()
            .map(|p| format!("{}@{}", p.name, p.version))
            .collect();
        assert_eq!(
            names,
            ["@types/node@20.1.0", "a@2.0.0", "b@1.0.0", "lodash@4.17.21"]
        );
        assert_eq!(
            packages[0].purl(Language::Nodejs),
            "pkg:npm/%40types/node@20.1.0"
        );
    }
}
