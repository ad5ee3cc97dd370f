//! Fetching a function's source into a workspace: a local directory, file or archive, an
//! http(s) URL of a file or archive, or a tar stream on stdin. A `sha256:` checksum, when
//! given, is verified over the bytes fetched before anything is unpacked. Every fetch over
//! the network runs under the deadlines of [`deadline`]. A source that is one file is named
//! after the handler's module, as Kubeless names it ([`single_file`]). The workspace is what
//! the code layer is made from; its origin (URL, revision) goes into the image's annotations
//! and labels.

pub mod archive;
pub mod deadline;
pub mod git;
pub mod git_credentials;
mod http;
pub mod s3;
mod single_file;
mod workspace;

use std::fs;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::beneath;
use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::net::RedactedUrl;
pub use archive::{ArchiveKind, Limits};
pub use deadline::Deadlines;
pub use single_file::SingleFileName;
pub use workspace::Workspace;

/// Where a function's source comes from, as given to `--source`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    /// A local directory, file or archive.
    Path(PathBuf),
    /// An http(s) URL of a file or an archive.
    Url(String),
    /// A tar stream (plain or compressed) on standard input, given as `-`.
    Stdin,
    /// A Git repository at a revision.
    Git(git::GitSource),
    /// An object, or the objects under a prefix, in S3 or an S3-compatible store.
    S3(s3::S3Source),
}

impl FromStr for SourceSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        if s == "-" {
            return Ok(Self::Stdin);
        }
        if s.starts_with("http://") || s.starts_with("https://") {
            return Ok(Self::Url(s.to_string()));
        }
        if let Some(git) = git::GitSource::parse(s) {
            return Ok(Self::Git(git));
        }
        if let Some(s3) = s3::S3Source::parse(s) {
            return s3.map(Self::S3);
        }
        if let Some((scheme, _)) = s.split_once("://") {
            return Err(Error::Usage(format!(
                "--source '{s}': the scheme '{scheme}://' is not supported; accepted: a local \
                 directory, file or archive, an http(s):// URL, a Git URL (git+https://, \
                 git+ssh://, git://, git+file://), s3://BUCKET/KEY or s3://BUCKET/PREFIX/, or - for a \
                 tar on stdin"
            )));
        }
        if s.is_empty() {
            return Err(Error::Usage("--source is empty".into()));
        }
        Ok(Self::Path(PathBuf::from(s)))
    }
}

impl std::fmt::Display for SourceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Path(p) => write!(f, "{}", p.display()),
            Self::Url(u) => write!(f, "{}", RedactedUrl::new(u)),
            Self::Stdin => f.write_str("stdin"),
            Self::S3(s3) => write!(f, "{s3}"),
            Self::Git(g) => match &g.revision {
                Some(r) => write!(f, "{}#{r}", g.display_url()),
                None => f.write_str(&g.display_url()),
            },
        }
    }
}

/// Where the fetched source came from, recorded in the image's annotations and config labels.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    /// `org.opencontainers.image.source`: a URL without credentials.
    pub url: Option<String>,
    /// `org.opencontainers.image.revision`: a commit, version or checksum.
    pub revision: Option<String>,
}

impl Origin {
    /// Each of `self` (given with `--source-url`, `--source-revision`), else of `found` (what
    /// the fetch recorded); the URL without credentials or query string, whoever gave it.
    pub fn or(self, found: Origin) -> Origin {
        Origin {
            url: self
                .url
                .or(found.url)
                .map(|url| RedactedUrl::new(&url).to_string()),
            revision: self.revision.or(found.revision),
        }
    }

    /// The OCI keys and values an image records of its source.
    pub fn oci_keys(&self) -> impl Iterator<Item = (&str, &str)> {
        [
            (crate::image::SOURCE_KEY, &self.url),
            (crate::image::REVISION_KEY, &self.revision),
        ]
        .into_iter()
        .filter_map(|(key, value)| Some((key, value.as_deref()?)))
    }
}

/// How to fetch.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    pub checksum: Option<Digest>,
    pub limits: Limits,
    /// A directory for temporary files (the cache's, so large sources stay off small /tmp).
    pub temp_parent: PathBuf,
    /// The function's directory inside the source (Kyma's `baseDir`, Kaniko's
    /// `--context-sub-path`).
    pub sub_dir: Option<String>,
    pub git: git::GitOptions,
    pub s3: s3::S3Options,
    /// How long fetching over the network may take, and wait for data.
    pub deadlines: Deadlines,
    /// What a source that is one file (not an archive) is called in the workspace.
    pub single_file: SingleFileName,
}

/// Fetches a source into a workspace.
pub async fn fetch(spec: &SourceSpec, options: &FetchOptions) -> Result<Workspace> {
    let mut fetched = fetch_whole(spec, options).await?;
    if let Some(sub_dir) = &options.sub_dir {
        fetched.root = sub_directory(&fetched.root, sub_dir, spec)?;
    }
    Workspace::open(fetched.root, fetched.origin, fetched.temp)
}

/// A source fetched whole, before `--sub-dir` picks the function's directory in it.
struct Fetched {
    root: PathBuf,
    origin: Origin,
    /// The temporary directory the source was fetched into, if fnbuild made one.
    temp: Option<tempfile::TempDir>,
}

/// `root/sub_dir`, resolved beneath `root` (a link in the way may not lead out of it).
fn sub_directory(root: &Path, sub_dir: &str, spec: &SourceSpec) -> Result<PathBuf> {
    let relative = Path::new(sub_dir.trim_matches('/'));
    if relative.components().any(|c| {
        !matches!(
            c,
            std::path::Component::Normal(_) | std::path::Component::CurDir
        )
    }) {
        return Err(Error::Usage(format!(
            "--sub-dir '{sub_dir}': must be a relative path without '..'"
        )));
    }
    let dir = beneath::open_dir(root).io_context("open", root)?;
    match dir.canonicalize(relative) {
        Ok(real) if dir.metadata(&real).is_ok_and(|m| m.is_dir()) => return Ok(root.join(real)),
        Err(e) if beneath::is_escape(&e) => {
            return Err(Error::Source(format!(
                "sub-directory '{sub_dir}' of {spec} is a link that leads outside the source; \
                 links in a source must stay inside it"
            )))
        }
        _ => {}
    }
    let mut dirs: Vec<String> = fs::read_dir(root)
        .map(|l| {
            l.filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    Err(Error::Source(format!(
        "sub-directory '{sub_dir}' not found in {spec} (directories at its top: {})",
        if dirs.is_empty() {
            "none".to_string()
        } else {
            dirs.join(", ")
        }
    )))
}

async fn fetch_whole(spec: &SourceSpec, options: &FetchOptions) -> Result<Fetched> {
    match spec {
        SourceSpec::S3(source) => {
            if source.is_prefix() && options.checksum.is_some() {
                return Err(Error::Usage(
                    "--checksum applies to one file or archive, not to a prefix of objects".into(),
                ));
            }
            let temp = temp_dir(options)?;
            let object = deadline::watch(&source.to_string(), options.deadlines, |progress| {
                s3::fetch(source, &options.s3, temp.path(), options.limits, progress)
            })
            .await?;
            tracing::info!(source = %source, revision = %object.revision, "fetched from S3");
            let mut fetched = if source.is_prefix() {
                Fetched {
                    root: object.path,
                    origin: Origin::default(),
                    temp: Some(temp),
                }
            } else {
                from_file(&object.path, &source.to_string(), options, temp)?
            };
            fetched.origin = Origin {
                url: Some(source.to_string()),
                revision: Some(object.revision),
            };
            Ok(fetched)
        }
        SourceSpec::Git(source) => {
            if options.checksum.is_some() {
                return Err(Error::Usage("--checksum applies to files and archives; a Git source is pinned by its revision".into()));
            }
            let temp = temp_dir(options)?;
            let (dest, git_dir) = (temp.path().join("src"), temp.path().join("git"));
            let (source_clone, git_options, limits) =
                (source.clone(), options.git.clone(), options.limits);
            let (dest_clone, git_dir_clone) = (dest.clone(), git_dir.clone());
            let commit = deadline::watch(&source.display_url(), options.deadlines, |progress| {
                deadline::on_own_thread("git fetch", move || {
                    git::fetch(
                        &source_clone,
                        &dest_clone,
                        &git_dir_clone,
                        &git_options,
                        limits,
                        &progress,
                    )
                })
            })
            .await?;
            tracing::info!(url = %source.display_url(), %commit, "fetched the Git revision");
            Ok(Fetched {
                root: dest,
                origin: Origin {
                    url: Some(source.display_url()),
                    revision: Some(commit),
                },
                temp: Some(temp),
            })
        }
        SourceSpec::Path(path) => fetch_path(path, options),
        SourceSpec::Url(url) => {
            let temp = temp_dir(options)?;
            let shown = RedactedUrl::new(url).to_string();
            let file = deadline::watch(&shown, options.deadlines, |progress| {
                http::download(url, &shown, temp.path(), options.limits.max_bytes, progress)
            })
            .await?;
            let mut fetched = from_file(&file, &shown, options, temp)?;
            fetched.origin.url = Some(shown);
            Ok(fetched)
        }
        SourceSpec::Stdin => {
            if options.checksum.is_some() {
                return Err(Error::Usage(
                    "--checksum cannot be verified for a stream on stdin; pass a file instead"
                        .into(),
                ));
            }
            let temp = temp_dir(options)?;
            let dest = temp.path().join("src");
            fs::create_dir(&dest).io_context("create", &dest)?;
            let limits = options.limits;
            let dest_clone = dest.clone();
            tokio::task::spawn_blocking(move || {
                archive::unpack_tar_reader(std::io::stdin().lock(), "stdin", &dest_clone, limits)
            })
            .await
            .expect("the unpacking task does not panic")?;
            Ok(Fetched {
                root: single_top_dir(dest),
                origin: Origin::default(),
                temp: Some(temp),
            })
        }
    }
}

fn temp_dir(options: &FetchOptions) -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix("source-")
        .tempdir_in(&options.temp_parent)
        .io_context("create temporary directory in", &options.temp_parent)
}

fn fetch_path(path: &Path, options: &FetchOptions) -> Result<Fetched> {
    let meta = fs::metadata(path).map_err(|e| {
        Error::Source(format!(
            "{}: {} (expected a directory, a file or an archive)",
            path.display(),
            if e.kind() == std::io::ErrorKind::NotFound {
                "no such file or directory".to_string()
            } else {
                e.to_string()
            }
        ))
    })?;
    if meta.is_dir() {
        if options.checksum.is_some() {
            return Err(Error::Usage(format!(
                "--checksum applies to a file or an archive, but {} is a directory",
                path.display()
            )));
        }
        return Ok(Fetched {
            root: path.to_path_buf(),
            origin: Origin::default(),
            temp: None,
        });
    }
    from_file(
        path,
        &path.display().to_string(),
        options,
        temp_dir(options)?,
    )
}

/// A downloaded or local file: verified, then unpacked if it is an archive, else placed alone
/// under the handler's module name.
/// `shown` names it in messages as the user gave it (a path, a URL, an `s3://` object).
fn from_file(
    file: &Path,
    shown: &str,
    options: &FetchOptions,
    temp: tempfile::TempDir,
) -> Result<Fetched> {
    let digest = Digest::of_file(file).io_context("read", file)?;
    if let Some(expected) = &options.checksum {
        if &digest != expected {
            return Err(Error::Source(format!(
                "checksum mismatch for {}: it is {digest}, but --checksum says {expected}",
                file.file_name().map_or_else(
                    || file.display().to_string(),
                    |n| n.to_string_lossy().into_owned()
                )
            )));
        }
    }
    let dest = temp.path().join("src");
    fs::create_dir(&dest).io_context("create", &dest)?;
    let root = match ArchiveKind::of_file(file)? {
        Some(kind) => {
            archive::unpack_file(file, shown, kind, &dest, options.limits)?;
            single_top_dir(dest)
        }
        None => {
            let original = file
                .file_name()
                .ok_or_else(|| Error::Source(format!("{} has no file name", file.display())))?
                .to_string_lossy();
            let name = options.single_file.for_file(&original)?;
            if name != original {
                tracing::info!(file = %original.escape_debug(), stored_as = %name, "a single-file source is stored under the handler's module name, as Kubeless does");
            }
            let size = fs::metadata(file).io_context("read", file)?.len();
            if size > options.limits.max_bytes {
                return Err(Error::Source(format!(
                    "{shown} is {size} bytes, more than the limit of {} (raise it with --max-source-size)",
                    options.limits.max_bytes
                )));
            }
            fs::copy(file, dest.join(&name)).io_context("copy", file)?;
            dest
        }
    };
    Ok(Fetched {
        root,
        origin: Origin {
            url: None,
            revision: Some(digest.to_string()),
        },
        temp: Some(temp),
    })
}

/// An archive holding one top-level directory and nothing else (as GitHub and `git archive
/// --prefix` make them) is read from inside that directory.
fn single_top_dir(dir: PathBuf) -> PathBuf {
    let entries: Vec<_> = match fs::read_dir(&dir) {
        Ok(list) => list.filter_map(|e| e.ok()).collect(),
        Err(_) => return dir,
    };
    match entries.as_slice() {
        [only] if only.file_type().is_ok_and(|t| t.is_dir()) => {
            tracing::info!(dir = %only.file_name().to_string_lossy(), "the archive holds one directory; using its content as the function");
            only.path()
        }
        _ => dir,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_origin_wins_and_no_url_keeps_credentials() {
        let found = Origin {
            url: Some("https://fetched.example/f.tgz".into()),
            revision: Some("sha256:abc".into()),
        };
        let given = Origin {
            url: Some("https://user:pw@git.example/team/fn.git?token=t".into()),
            revision: None,
        };
        let recorded = given.or(found);
        assert_eq!(
            recorded.oci_keys().collect::<Vec<_>>(),
            [
                (
                    "org.opencontainers.image.source",
                    "https://git.example/team/fn.git"
                ),
                ("org.opencontainers.image.revision", "sha256:abc"),
            ]
        );
        assert_eq!(Origin::default().oci_keys().count(), 0);
    }

    #[test]
    fn specs_are_recognised() {
        assert_eq!("-".parse::<SourceSpec>().unwrap(), SourceSpec::Stdin);
        assert!(matches!(
            "https://x/f.zip".parse::<SourceSpec>().unwrap(),
            SourceSpec::Url(_)
        ));
        assert!(matches!(
            "./fn".parse::<SourceSpec>().unwrap(),
            SourceSpec::Path(_)
        ));
        let err = "ftp://x/y".parse::<SourceSpec>().unwrap_err().to_string();
        assert!(err.contains("'ftp://' is not supported"), "{err}");
    }
}
