//! The builder images: the images a Knative Build or Tekton step runs.
//!
//! - The generic one ([`make_builder_image`]) holds this very fnbuild binary, the shared
//!   libraries the running process has loaded (read from /proc/self/maps, so nothing is
//!   guessed), the dynamic loader at the path the binary names, and CA certificates; no shell
//!   and no package manager. It builds functions whose dependencies it need not install, or
//!   installs them in a privileged step.
//! - One per runtime ([`make_runtime_builder_image`]): the runtime's base image plus this
//!   binary, as buildpacks pair a build image with a run image. A build step running there
//!   runs in the function's own environment: dependencies are installed by the image's own
//!   pip or npm where they are, with no root, no namespaces and nothing to unpack, which is
//!   what a pod under the restricted Pod Security Standard can do. The image records its
//!   base's digest ([`BASE_DIGEST_ENV`]), so a build knows when its base is the one it runs
//!   in.
//!
//! Both are made daemonlessly, like every image fnbuild makes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::blocking;
use crate::cache::{BlobStore, Cache};
use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::image::append::{Append, BaseName};
use crate::image::config::rfc3339;
use crate::image::layer::{self, BuiltLayer, Content, Entry, FileSource, LayerOptions};
use crate::image::Platform;
use crate::registry::Registries;
use crate::runtime::Runtime;
use crate::transport::publish::{publish, Publication};
use crate::transport::{Location, SourceImage};

/// Where the binary lives in the image.
pub const BINARY: &str = "/usr/local/bin/fnbuild";
const CA_BUNDLE: &str = crate::deps::SYSTEM_CA_BUNDLE;
/// The working directory of a build step (where Knative Build and Tekton mount workspaces).
const WORKSPACE: &str = "/workspace";
/// The variable a runtime's builder image sets to the digest of the base image it was made
/// from.
pub const BASE_DIGEST_ENV: &str = "FNBUILD_BUILDER_BASE";

/// The digest of the runtime base image this process runs in, when it runs in a runtime's
/// builder image.
pub fn base_of_this_step() -> Option<Digest> {
    std::env::var(BASE_DIGEST_ENV).ok()?.parse().ok()
}

/// Makes and publishes the builder image of `runtime`: its base image (read from
/// `base_location`) plus this binary; returns the published references.
pub async fn make_runtime_builder_image(
    runtime: &Runtime,
    base_location: &Location,
    outputs: &[Location],
    registries: &Registries,
    cache: &Cache,
    source_date_epoch: u64,
) -> Result<Vec<String>> {
    let store = cache.blobs();
    let base = SourceImage::load(base_location, registries, &store).await?;
    let exe = std::env::current_exe().io_context("find", "the fnbuild executable")?;
    let built = write_layer(source_date_epoch, cache, move || {
        let mut workspace = Entry::directory(WORKSPACE.trim_start_matches('/'));
        workspace.mode = 0o1777;
        Ok(vec![workspace, file_entry(&exe, BINARY, 0o755)])
    })
    .await?;

    let mut image = Append::on(&base, BaseName::Recorded, &rfc3339(source_date_epoch))?;
    let config = &mut image.config;
    let base_digest = base.digest.to_string();
    config.set_env([(BASE_DIGEST_ENV, base_digest.as_str())]);
    let title = format!("fnbuild builder for {}", runtime.name);
    config.set_labels([
        ("org.opencontainers.image.title", title.as_str()),
        (
            "org.opencontainers.image.version",
            env!("CARGO_PKG_VERSION"),
        ),
    ]);
    config.config.entrypoint = Some(vec![BINARY.to_string()]);
    config.config.cmd = None;
    config.config.working_dir = Some(WORKSPACE.to_string());
    image.layer(&built, "fnbuild: the fnbuild binary".to_string());
    finish_and_publish(image, outputs, registries, &store).await
}

/// Makes and publishes the builder image; returns the published references.
pub async fn make_builder_image(
    outputs: &[Location],
    registries: &Registries,
    cache: &Cache,
    source_date_epoch: u64,
) -> Result<Vec<String>> {
    let built = write_layer(source_date_epoch, cache, generic_entries).await?;
    let mut image = Append::scratch(&rfc3339(source_date_epoch), &Platform::this_machine());
    let config = &mut image.config;
    config.set_env([("PATH", "/usr/local/bin"), ("SSL_CERT_FILE", CA_BUNDLE)]);
    config.set_labels([
        ("org.opencontainers.image.title", "fnbuild builder"),
        (
            "org.opencontainers.image.version",
            env!("CARGO_PKG_VERSION"),
        ),
    ]);
    config.config.entrypoint = Some(vec![BINARY.to_string()]);
    config.config.working_dir = Some(WORKSPACE.to_string());
    image.layer(
        &built,
        "fnbuild: the fnbuild binary, its libraries and CA certificates".to_string(),
    );
    let store = cache.blobs();
    finish_and_publish(image, outputs, registries, &store).await
}

/// Stores the image's config and publishes it to every output.
async fn finish_and_publish(
    image: Append,
    outputs: &[Location],
    registries: &Registries,
    store: &BlobStore,
) -> Result<Vec<String>> {
    publish(
        &Publication::image(image.finish(store)?),
        outputs,
        registries,
        store,
    )
    .await
}

/// The builder's layer of `entries` and their parent directories, gathered and written off the
/// async workers (the binary alone is tens of megabytes).
async fn write_layer(
    source_date_epoch: u64,
    cache: &Cache,
    entries: impl FnOnce() -> Result<Vec<Entry>> + Send + 'static,
) -> Result<BuiltLayer> {
    let options = LayerOptions {
        mtime: source_date_epoch,
        ..LayerOptions::default()
    };
    let store = cache.blobs();
    blocking::run(move || layer::write_layer(add_parent_dirs(entries()?), &options, &store)).await
}

/// The generic builder image's files: this binary, its libraries and loader, CA certificates,
/// and the few files and directories programs expect.
fn generic_entries() -> Result<Vec<Entry>> {
    let exe = std::env::current_exe().io_context("find", "the fnbuild executable")?;
    let mut entries = vec![
        Entry::directory("tmp"),
        Entry::directory(WORKSPACE.trim_start_matches('/')),
        Entry::file("etc/passwd", 0o644, b"root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n".to_vec()),
        Entry::file("etc/group", 0o644, b"root:x:0:\nnogroup:x:65534:\n".to_vec()),
        file_entry(&exe, BINARY, 0o755),
    ];
    entries
        .iter_mut()
        .filter(|e| e.path == "tmp")
        .for_each(|e| e.mode = 0o1777);
    for library in loaded_libraries()? {
        let path = library.display().to_string();
        entries.push(file_entry(&library, &path, 0o755));
        entries.extend(soname_links(&library));
    }
    let interpreter = elf_interpreter(&exe)?;
    if let Some(interpreter) = interpreter {
        let real = std::fs::canonicalize(&interpreter).io_context("find", &interpreter)?;
        entries.push(file_entry(&real, &interpreter, 0o755));
    }
    let ca = std::env::var_os("SSL_CERT_FILE")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(CA_BUNDLE));
    if !ca.is_file() {
        return Err(Error::Usage(format!(
            "no CA certificate bundle at {} (set SSL_CERT_FILE)",
            ca.display()
        )));
    }
    entries.push(file_entry(&ca, CA_BUNDLE, 0o644));
    Ok(entries)
}

fn file_entry(source: &Path, path_in_image: &str, mode: u32) -> Entry {
    Entry {
        path: path_in_image.trim_start_matches('/').to_string(),
        mode,
        content: Content::File(FileSource::Host(source.to_path_buf())),
        owner: None,
    }
}

/// Every entry's parent directories, once each.
fn add_parent_dirs(entries: Vec<Entry>) -> Vec<Entry> {
    let mut dirs = BTreeSet::new();
    for entry in &entries {
        let mut parent = Path::new(&entry.path).parent();
        while let Some(dir) = parent.filter(|d| !d.as_os_str().is_empty()) {
            dirs.insert(dir.display().to_string());
            parent = dir.parent();
        }
    }
    let existing: BTreeSet<String> = entries.iter().map(|e| e.path.clone()).collect();
    dirs.into_iter()
        .filter(|d| !existing.contains(d))
        .map(Entry::directory)
        .chain(entries)
        .collect()
}

/// The symlinks beside a library that lead to it (`libz.so.1` to `libz.so.1.2.13`): the
/// loader looks libraries up by those names.
fn soname_links(library: &Path) -> Vec<Entry> {
    let (Some(dir), Ok(real)) = (library.parent(), std::fs::canonicalize(library)) else {
        return Vec::new();
    };
    let Ok(listing) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    listing
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.file_type().is_ok_and(|t| t.is_symlink()))
        .filter(|entry| std::fs::canonicalize(entry.path()).is_ok_and(|target| target == real))
        .map(|entry| Entry {
            path: entry
                .path()
                .display()
                .to_string()
                .trim_start_matches('/')
                .to_string(),
            mode: 0o777,
            content: Content::Symlink(PathBuf::from(real.file_name().unwrap_or_default())),
            owner: None,
        })
        .collect()
}

/// The shared libraries mapped into this process.
fn loaded_libraries() -> Result<BTreeSet<PathBuf>> {
    let maps = std::fs::read_to_string("/proc/self/maps").io_context("read", "/proc/self/maps")?;
    Ok(maps
        .lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .filter(|path| path.starts_with('/') && (path.ends_with(".so") || path.contains(".so.")))
        .map(PathBuf::from)
        .filter(|path| path.is_file())
        .collect())
}

/// The ELF interpreter (`PT_INTERP`) of a 64-bit executable, e.g. `/lib64/ld-linux-x86-64.so.2`.
fn elf_interpreter(exe: &Path) -> Result<Option<String>> {
    let bytes = std::fs::read(exe).io_context("read", exe)?;
    let not_elf = || {
        Error::Image(format!(
            "{} is not a 64-bit little-endian ELF executable",
            exe.display()
        ))
    };
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 || bytes[5] != 1 {
        return Err(not_elf());
    }
    let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]) as usize;
    let u64_at = |at: usize| -> Result<usize> {
        let slice = bytes.get(at..at + 8).ok_or_else(not_elf)?;
        Ok(u64::from_le_bytes(slice.try_into().expect("eight bytes")) as usize)
    };
    let (table, entry_size, count) = (u64_at(0x20)?, u16_at(0x36), u16_at(0x38));
    for index in 0..count {
        let header = table + index * entry_size;
        let kind = bytes.get(header..header + 4).ok_or_else(not_elf)?;
        if u32::from_le_bytes(kind.try_into().expect("four bytes")) == 3 {
            let (offset, size) = (u64_at(header + 8)?, u64_at(header + 32)?);
            let raw = bytes.get(offset..offset + size).ok_or_else(not_elf)?;
            return Ok(Some(
                String::from_utf8_lossy(raw)
                    .trim_end_matches('\0')
                    .to_string(),
            ));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_test_binary_names_its_loader_and_loads_libc() {
        let exe = std::env::current_exe().unwrap();
        let interpreter = elf_interpreter(&exe)
            .unwrap()
            .expect("a dynamically linked test binary");
        assert!(interpreter.contains("ld-linux"), "{interpreter}");
        let libraries = loaded_libraries().unwrap();
        assert!(
            libraries
                .iter()
                .any(|l| l.to_string_lossy().contains("libc.so")),
            "{libraries:?}"
        );
    }

    #[test]
    fn parent_directories_are_added_once() {
        let entries = add_parent_dirs(vec![
            Entry::file("usr/local/bin/fnbuild", 0o755, vec![]),
            Entry::file("usr/lib/x.so", 0o755, vec![]),
        ]);
        let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "usr",
                "usr/lib",
                "usr/local",
                "usr/local/bin",
                "usr/local/bin/fnbuild",
                "usr/lib/x.so"
            ]
        );
    }
}
