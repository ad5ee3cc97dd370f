//! Unpacking image layers into a root filesystem, as a container runtime would: layers in
//! order, whiteouts (`.wh.NAME`, `.wh..wh..opq`) honoured, owners and modes kept. Paths are
//! resolved inside the root (a symlink to `/usr` means the root's `/usr`, never the host's),
//! so no layer can write outside it. A rootfs is unpacked once per key into the cache and
//! reused; it is made under a temporary name and moved into place when complete.
//!
//! Unpacked by an ordinary user (a rootless build or run), every file is theirs, as only root
//! can give files away, and every directory stays open to its owner (`u+rwx`): a layer may
//! make a directory read-only and then put files in it, and the cache must be able to remove
//! the tree. The sandbox maps that user to uid 0, so inside the files are root's as in the
//! image. Device nodes are never made, by anyone: the runtime provides `/dev`.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use crate::cache::Cache;
use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";
/// Symlinks followed while resolving one path before giving up (as Linux does).
const MAX_SYMLINK_HOPS: u32 = 40;

/// A layer blob on disk.
#[derive(Debug, Clone)]
pub struct LayerFile {
    pub digest: Digest,
    pub path: PathBuf,
}

/// Returns the root filesystem of `layers` (compressed or plain tar files, in order),
/// unpacking it into the cache the first time. Root filesystems are keyed by the chain of
/// their layers, so a function image starts from its base image's rootfs when that is
/// unpacked already (cloned with hard links: cheap, and safe because layers replace files
/// rather than write into them, and containers get the root read-only).
pub fn ensure_unpacked(cache: &Cache, layers: &[LayerFile]) -> Result<PathBuf> {
    let chains = chain_ids(layers.iter().map(|l| &l.digest));
    let Some(key) = chains.last() else {
        return Err(Error::Image("the image has no layers".into()));
    };
    let dest = cache.rootfs_dir(key);
    if dest.is_dir() {
        return Ok(dest);
    }
    let temp = cache.temp_dir("rootfs-")?;
    let root = temp.path().join("root");
    let started = std::time::Instant::now();
    let reused = (1..layers.len())
        .rev()
        .find(|&n| cache.rootfs_dir(&chains[n - 1]).is_dir());
    match reused {
        Some(n) => clone_tree(&cache.rootfs_dir(&chains[n - 1]), &root)?,
        None => {
            fs::create_dir(&root).io_context("create", &root)?;
            fs::set_permissions(&root, fs::Permissions::from_mode(0o755))
                .io_context("set mode of", &root)?;
        }
    }
    let start = reused.unwrap_or(0);
    for layer in &layers[start..] {
        apply_layer(&layer.path, &root)?;
    }
    match fs::rename(&root, &dest) {
        Ok(()) => {}
        // Another build unpacked the same image meanwhile: use theirs.
        Err(_) if dest.is_dir() => {}
        Err(e) => return Err(e).io_context("move rootfs into place at", &dest),
    }
    tracing::info!(layers = layers.len(), reused_layers = start, elapsed = ?started.elapsed(), "unpacked image root filesystem");
    Ok(dest)
}

/// The root filesystem of the layers with these digests, if it is unpacked in the cache
/// already (nothing is fetched to find out).
pub fn already_unpacked<'a>(
    cache: &Cache,
    digests: impl IntoIterator<Item = &'a Digest>,
) -> Option<PathBuf> {
    let dir = cache.rootfs_dir(chain_ids(digests).last()?);
    dir.is_dir().then_some(dir)
}

/// The OCI chain IDs of a layer stack: each names a layer and everything below it.
fn chain_ids<'a>(digests: impl IntoIterator<Item = &'a Digest>) -> Vec<Digest> {
    let mut chains: Vec<Digest> = Vec::new();
    for digest in digests {
        let chain = match chains.last() {
            None => digest.clone(),
            Some(below) => Digest::of(format!("{below} {digest}").as_bytes()),
        };
        chains.push(chain);
    }
    chains
}

/// Copies a directory tree with hard links for files: directories and symlinks are new,
/// file contents are shared.
fn clone_tree(src: &Path, dst: &Path) -> Result<()> {
    let meta = fs::symlink_metadata(src).io_context("read", src)?;
    fs::create_dir(dst).io_context("create", dst)?;
    for entry in fs::read_dir(src).io_context("read directory", src)? {
        let entry = entry.io_context("read directory", src)?;
        let (from, to) = (entry.path(), dst.join(entry.file_name()));
        let kind = entry.file_type().io_context("read", &from)?;
        if kind.is_dir() {
            clone_tree(&from, &to)?;
        } else if kind.is_symlink() {
            let target = fs::read_link(&from).io_context("read symlink", &from)?;
            std::os::unix::fs::symlink(&target, &to).io_context("create symlink", &to)?;
            let link_meta = fs::symlink_metadata(&from).io_context("read", &from)?;
            set_link_owner(&to, link_meta.uid(), link_meta.gid())?;
        } else {
            fs::hard_link(&from, &to).io_context("link", &to)?;
        }
    }
    set_owner_and_mode(dst, meta.uid(), meta.gid(), meta.mode() & 0o7777, true)
}

/// Applies one layer (gzip-compressed or plain tar) on top of `root`.
pub fn apply_layer(layer: &Path, root: &Path) -> Result<()> {
    let file = fs::File::open(layer).io_context("open layer", layer)?;
    let mut reader = BufReader::with_capacity(256 * 1024, file);
    let head = reader.fill_buf().io_context("read layer", layer)?;
    let stream: Box<dyn Read> = if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::bufread::MultiGzDecoder::new(reader))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return Err(Error::Image(format!(
            "layer {} is zstd-compressed; fnbuild reads gzip and plain tar layers",
            layer.display()
        )));
    } else {
        Box::new(reader)
    };
    let mut archive = tar::Archive::new(stream);
    let bad = |e: std::io::Error| {
        Error::Image(format!(
            "layer {} is not a readable tar: {e}",
            layer.display()
        ))
    };
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let path = entry.path().map_err(bad)?.into_owned();
        apply_entry(&mut entry, &path, root).map_err(|e| match e {
            Error::Io {
                action,
                path: p,
                source,
            } => Error::Image(format!(
                "layer {}: entry {}: cannot {action} {}: {source}",
                layer.display(),
                path.display(),
                p.display()
            )),
            other => other,
        })?;
    }
    Ok(())
}

fn apply_entry<R: Read>(entry: &mut tar::Entry<R>, path: &Path, root: &Path) -> Result<()> {
    let Some((parent_rel, name)) = split_entry_path(path) else {
        return Ok(()); // the root itself ("./")
    };
    let parent = resolve_in_root(root, &parent_rel)?;
    let name_str = name.to_string_lossy();
    if name_str == OPAQUE_WHITEOUT {
        for child in fs::read_dir(&parent).io_context("read directory", &parent)? {
            let child = child.io_context("read directory", &parent)?;
            remove_any(&child.path())?;
        }
        return Ok(());
    }
    if let Some(hidden) = name_str.strip_prefix(WHITEOUT_PREFIX) {
        let victim = parent.join(hidden);
        if fs::symlink_metadata(&victim).is_ok() {
            remove_any(&victim)?;
        }
        return Ok(());
    }
    let target = parent.join(&name);
    let header = entry.header();
    let mode = header.mode().unwrap_or(0o644) & 0o7777;
    let (uid, gid) = (
        header.uid().unwrap_or(0) as u32,
        header.gid().unwrap_or(0) as u32,
    );
    let existing = fs::symlink_metadata(&target).ok();
    match header.entry_type() {
        tar::EntryType::Directory => {
            if existing.as_ref().is_some_and(|m| !m.is_dir()) {
                remove_any(&target)?;
            }
            if !target.is_dir()
                || existing
                    .as_ref()
                    .is_some_and(|m| m.file_type().is_symlink())
            {
                fs::create_dir(&target).io_context("create directory", &target)?;
            }
            set_owner_and_mode(&target, uid, gid, mode, true)?;
        }
        tar::EntryType::Regular | tar::EntryType::Continuous => {
            if existing.is_some() {
                remove_any(&target)?;
            }
            let mut out = fs::File::create(&target).io_context("create", &target)?;
            std::io::copy(entry, &mut out).io_context("write", &target)?;
            set_owner_and_mode(&target, uid, gid, mode, false)?;
        }
        tar::EntryType::Symlink => {
            if existing.is_some() {
                remove_any(&target)?;
            }
            let link = entry
                .link_name()
                .map_err(|e| Error::Image(format!("bad symlink entry {}: {e}", path.display())))?
                .unwrap_or_default();
            std::os::unix::fs::symlink(&*link, &target).io_context("create symlink", &target)?;
            set_link_owner(&target, uid, gid)?;
        }
        tar::EntryType::Link => {
            let link = entry
                .link_name()
                .map_err(|e| Error::Image(format!("bad hard link entry {}: {e}", path.display())))?
                .unwrap_or_default()
                .into_owned();
            let Some((link_parent, link_name)) = split_entry_path(&link) else {
                return Ok(());
            };
            let source = resolve_in_root(root, &link_parent)?.join(link_name);
            if existing.is_some() {
                remove_any(&target)?;
            }
            fs::hard_link(&source, &target).io_context("create hard link", &target)?;
        }
        // Device nodes and FIFOs: the container runtime provides /dev; nothing else needs them.
        _ => {}
    }
    Ok(())
}

/// Splits an entry path into its normalised parent (relative to the root) and its name.
fn split_entry_path(path: &Path) -> Option<(PathBuf, OsString)> {
    let mut parts: Vec<OsString> = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(p) => parts.push(p.to_os_string()),
            Component::ParentDir => {
                parts.pop();
            }
            _ => {}
        }
    }
    let name = parts.pop()?;
    Some((parts.iter().collect(), name))
}

/// The host path of `relative` inside `root`, following symlinks as if `root` were `/`,
/// creating missing directories.
pub fn resolve_in_root(root: &Path, relative: &Path) -> Result<PathBuf> {
    walk_in_root(root, relative, Missing::Create)
        .map(|found| found.expect("missing directories are created"))
}

/// The host path of the file or directory `relative` inside `root`, following symlinks as if
/// `root` were `/`; none when something on the way is missing. Nothing is created.
pub fn find_in_root(root: &Path, relative: &Path) -> Result<Option<PathBuf>> {
    walk_in_root(root, relative, Missing::Absent)
}

/// What [`walk_in_root`] does about a part of the path that is not there.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Missing {
    /// Make it a directory (and the path must lead to a directory).
    Create,
    /// Stop: the path leads nowhere (it may lead to a file).
    Absent,
}

fn walk_in_root(root: &Path, relative: &Path, missing: Missing) -> Result<Option<PathBuf>> {
    let mut resolved = PathBuf::new();
    let mut pending: VecDeque<OsString> = relative
        .components()
        .filter_map(|c| match c {
            Component::Normal(p) => Some(p.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect();
    let mut hops = 0;
    while let Some(part) = pending.pop_front() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        let candidate = root.join(&resolved).join(&part);
        match fs::symlink_metadata(&candidate) {
            Ok(meta) if meta.file_type().is_symlink() => {
                hops += 1;
                if hops > MAX_SYMLINK_HOPS {
                    return Err(Error::Image(format!(
                        "too many levels of symlinks resolving {}",
                        relative.display()
                    )));
                }
                let target = fs::read_link(&candidate).io_context("read symlink", &candidate)?;
                if target.is_absolute() {
                    resolved.clear();
                }
                for component in target.components().rev() {
                    match component {
                        Component::Normal(p) => pending.push_front(p.to_os_string()),
                        Component::ParentDir => pending.push_front(OsString::from("..")),
                        _ => {}
                    }
                }
            }
            Ok(meta) if meta.is_dir() => resolved.push(&part),
            Ok(_) if missing == Missing::Absent && pending.is_empty() => resolved.push(&part),
            Ok(_) => {
                return Err(Error::Image(format!(
                    "{} is a file where a directory is needed",
                    resolved.join(&part).display()
                )))
            }
            Err(_) if missing == Missing::Absent => return Ok(None),
            Err(_) => {
                fs::create_dir(&candidate).io_context("create directory", &candidate)?;
                resolved.push(&part);
            }
        }
    }
    Ok(Some(root.join(resolved)))
}

fn remove_any(path: &Path) -> Result<()> {
    let meta = fs::symlink_metadata(path).io_context("read", path)?;
    if meta.is_dir() {
        fs::remove_dir_all(path).io_context("remove", path)
    } else {
        fs::remove_file(path).io_context("remove", path)
    }
}

/// Gives a file or directory its owner and mode from a layer: as root, both as they are; as an
/// ordinary user, the mode only, directories kept open to their owner (see the module's doc).
fn set_owner_and_mode(path: &Path, uid: u32, gid: u32, mode: u32, is_dir: bool) -> Result<()> {
    let mode = if unpacking_as_root() {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).io_context("set owner of", path)?;
        mode
    } else if is_dir {
        mode | 0o700
    } else {
        mode
    };
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).io_context("set mode of", path)
}

/// Gives a symlink its owner from a layer, as root; an ordinary user keeps it.
fn set_link_owner(path: &Path, uid: u32, gid: u32) -> Result<()> {
    if !unpacking_as_root() {
        return Ok(());
    }
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).io_context("set owner of", path)
}

/// Whether owners can be given away: this process is root.
fn unpacking_as_root() -> bool {
    nix::unistd::geteuid().is_root()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::layer::{write_layer, Content, Entry, LayerOptions};

    fn layer(cache: &Cache, entries: Vec<Entry>) -> LayerFile {
        let built = write_layer(entries, &LayerOptions::default(), &cache.blobs()).unwrap();
        LayerFile {
            path: cache.blobs().path(&built.digest),
            digest: built.digest,
        }
    }

    #[test]
    fn layers_stack_with_whiteouts_and_symlinks_stay_inside() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(&dir.path().join("cache")).unwrap();
        let base = layer(
            &cache,
            vec![
                Entry::directory("usr"),
                Entry::directory("usr/lib"),
                Entry {
                    path: "lib".into(),
                    mode: 0o777,
                    content: Content::Symlink("/usr/lib".into()),
                    owner: None,
                },
                Entry::file("usr/lib/old.so", 0o644, b"old".to_vec()),
                Entry::directory("etc"),
                Entry::file("etc/a", 0o644, b"a".to_vec()),
                Entry::file("etc/b", 0o644, b"b".to_vec()),
            ],
        );
        let top = layer(
            &cache,
            vec![
                // Written through the absolute symlink: must land in the root's /usr/lib.
                Entry::file("lib/new.so", 0o755, b"new".to_vec()),
                Entry::file("usr/lib/.wh.old.so", 0o644, Vec::new()),
                Entry::file("etc/.wh..wh..opq", 0o644, Vec::new()),
                Entry::file("etc/c", 0o644, b"c".to_vec()),
            ],
        );
        let base_root = ensure_unpacked(&cache, std::slice::from_ref(&base)).unwrap();
        let root = ensure_unpacked(&cache, &[base, top]).unwrap();
        // The base's own rootfs is untouched by the layer stacked on its clone.
        assert_eq!(fs::read(base_root.join("usr/lib/old.so")).unwrap(), b"old");
        assert_eq!(fs::read(base_root.join("etc/a")).unwrap(), b"a");
        assert!(!base_root.join("usr/lib/new.so").exists());
        assert_eq!(fs::read(root.join("usr/lib/new.so")).unwrap(), b"new");
        assert!(!root.join("usr/lib/old.so").exists());
        assert!(!root.join("etc/a").exists() && !root.join("etc/b").exists());
        assert_eq!(fs::read(root.join("etc/c")).unwrap(), b"c");
        assert_eq!(
            fs::metadata(root.join("usr/lib/new.so"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o755
        );
    }

    #[test]
    fn resolving_dot_dot_cannot_leave_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        fs::create_dir(&root).unwrap();
        std::os::unix::fs::symlink("../../../..", root.join("up")).unwrap();
        let resolved = resolve_in_root(&root, Path::new("up/etc")).unwrap();
        assert_eq!(resolved, root.join("etc"));
    }
}
