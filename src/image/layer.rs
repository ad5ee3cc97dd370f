//! Reproducible layers: a list of entries (directories, files, symlinks) written as one sorted
//! tar stream with fixed owners, modes and times, gzip-compressed on the way to the blob store.
//! The uncompressed digest (diff ID) and the compressed digest are both computed in the same
//! single pass, so a layer of any size needs only a small, fixed amount of memory. Layers larger
//! than one chunk are compressed on several cores as consecutive gzip members (see `gzip`).

use cap_std::fs::{MetadataExt as _, PermissionsExt as _};
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use flate2::Compression;

use super::gzip::ParallelGzEncoder;
use crate::beneath::{self, Dir};
use crate::cache::BlobStore;
use crate::digest::{Digest, HashingWriter};
use crate::error::{Error, IoContext, Result};

/// What one entry of a layer holds.
#[derive(Debug, Clone)]
pub enum Content {
    Directory,
    /// A regular file whose content is read when the layer is written.
    File(FileSource),
    /// A file whose content is given here.
    Bytes(Vec<u8>),
    Symlink(PathBuf),
}

/// Where a file's content is read from.
#[derive(Debug, Clone)]
pub enum FileSource {
    /// A file of the builder's own (its binary): a path on this machine.
    Host(PathBuf),
    /// A file at a path beneath a directory (what `entries_from_dir` walked), opened without
    /// following any link out of it, so what a source or an installer wrote can only ever
    /// bring its own files into a layer.
    Beneath(Arc<Dir>, PathBuf),
}

impl FileSource {
    fn open(&self) -> io::Result<fs::File> {
        match self {
            Self::Host(path) => fs::File::open(path),
            Self::Beneath(dir, path) => Ok(beneath::open_regular(dir, path)?.into_std()),
        }
    }

    fn path(&self) -> &Path {
        match self {
            Self::Host(path) | Self::Beneath(_, path) => path,
        }
    }
}

/// One entry of a layer, at a path relative to the image root (no leading `/`).
#[derive(Debug, Clone)]
pub struct Entry {
    pub path: String,
    pub mode: u32,
    pub content: Content,
    /// Owner (uid, gid); `None` takes the layer's default owner.
    pub owner: Option<(u64, u64)>,
}

impl Entry {
    pub fn directory(path: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            mode: 0o755,
            content: Content::Directory,
            owner: None,
        }
    }

    pub fn file(path: impl Into<String>, mode: u32, bytes: Vec<u8>) -> Self {
        Self {
            path: path.into(),
            mode,
            content: Content::Bytes(bytes),
            owner: None,
        }
    }
}

/// How entries are written: who owns them and when they were made.
#[derive(Debug, Clone, Copy)]
pub struct LayerOptions {
    /// Modification time of every entry (seconds since the epoch; `SOURCE_DATE_EPOCH`).
    pub mtime: u64,
    pub uid: u64,
    pub gid: u64,
    pub compression: Compression,
}

impl Default for LayerOptions {
    fn default() -> Self {
        Self {
            mtime: 0,
            uid: 0,
            gid: 0,
            compression: Compression::new(6),
        }
    }
}

/// A layer stored in the blob store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltLayer {
    /// Digest of the compressed blob.
    pub digest: Digest,
    /// Size of the compressed blob.
    pub size: u64,
    /// Digest of the uncompressed tar stream.
    pub diff_id: Digest,
}

/// The directory entries leading to `prefix` (`a/b` gives `a` and `a/b`).
pub fn parent_dirs(prefix: &str) -> Vec<Entry> {
    let mut dirs = Vec::new();
    let mut path = String::new();
    for part in prefix.split('/').filter(|p| !p.is_empty()) {
        if !path.is_empty() {
            path.push('/');
        }
        path.push_str(part);
        dirs.push(Entry::directory(path.clone()));
    }
    dirs
}

/// How `entries_from_dir` treats modes and owners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attributes {
    /// 0755 for directories and executable files, 0644 for other files, the layer's owner:
    /// for function code and deps, whose on-disk modes are accidents of a checkout.
    Normalized,
    /// Modes (setuid, sticky bits included) and owners as on disk: for a whole root filesystem.
    Preserved,
}

/// Every file, directory and symlink below `src`, placed under `prefix`; `skip` names
/// relative paths (files or whole directories) to leave out. Links are kept as links, never
/// followed; devices, FIFOs and sockets are left out.
pub fn entries_from_dir(
    src: &Path,
    prefix: &str,
    attributes: Attributes,
    skip: &dyn Fn(&Path) -> bool,
) -> Result<Vec<Entry>> {
    let mut entries = parent_dirs(prefix);
    let walker = Walker {
        root: Arc::new(beneath::open_dir(src).io_context("read directory", src)?),
        shown_root: src,
        prefix: prefix.trim_matches('/'),
        attributes,
        skip,
    };
    walker.walk(Path::new(""), &mut entries)?;
    Ok(entries)
}

struct Walker<'a> {
    root: Arc<Dir>,
    /// The root as errors show it.
    shown_root: &'a Path,
    prefix: &'a str,
    attributes: Attributes,
    skip: &'a dyn Fn(&Path) -> bool,
}

impl Walker<'_> {
    fn walk(&self, relative: &Path, entries: &mut Vec<Entry>) -> Result<()> {
        let shown = |rel: &Path| self.shown_root.join(rel);
        let listing = if relative.as_os_str().is_empty() {
            self.root.entries()
        } else {
            self.root.read_dir(relative)
        }
        .io_context("read directory", shown(relative))?;
        for item in listing {
            let item = item.io_context("read directory", shown(relative))?;
            let rel = relative.join(item.file_name());
            if (self.skip)(&rel) {
                continue;
            }
            // The entry itself, not what a link names.
            let meta = item.metadata().io_context("read", shown(&rel))?;
            let path = join_image_path(self.prefix, &rel)?;
            let kind = meta.file_type();
            let preserved = self.attributes == Attributes::Preserved;
            let owner = preserved.then(|| (u64::from(meta.uid()), u64::from(meta.gid())));
            let mode = |normalized: u32| {
                if preserved {
                    meta.mode() & 0o7777
                } else {
                    normalized
                }
            };
            let (mode, content) = if kind.is_symlink() {
                let target = self
                    .root
                    .read_link_contents(&rel)
                    .io_context("read symlink", shown(&rel))?;
                (0o777, Content::Symlink(target))
            } else if kind.is_dir() {
                (mode(0o755), Content::Directory)
            } else if kind.is_file() {
                let executable = meta.permissions().mode() & 0o111 != 0;
                (
                    mode(if executable { 0o755 } else { 0o644 }),
                    Content::File(FileSource::Beneath(self.root.clone(), rel.clone())),
                )
            } else {
                // Sockets, FIFOs and devices: the container runtime provides /dev; left out.
                continue;
            };
            let is_dir = matches!(content, Content::Directory);
            entries.push(Entry {
                path,
                mode,
                content,
                owner,
            });
            if is_dir {
                self.walk(&rel, entries)?;
            }
        }
        Ok(())
    }
}

fn join_image_path(prefix: &str, rel: &Path) -> Result<String> {
    let rel = rel.to_str().ok_or_else(|| {
        Error::Source(format!(
            "file name {} is not valid UTF-8; image layers need UTF-8 paths",
            rel.display()
        ))
    })?;
    Ok(if prefix.is_empty() {
        rel.to_string()
    } else {
        format!("{prefix}/{rel}")
    })
}

/// Writes the entries, sorted by path, as a gzip-compressed layer into the blob store. The tar
/// stream is compressed in fixed-size chunks on several threads (one gzip member each), so the
/// layer's bytes depend only on the entries and options, never on the machine.
pub fn write_layer(
    mut entries: Vec<Entry>,
    options: &LayerOptions,
    store: &BlobStore,
) -> Result<BuiltLayer> {
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    entries.dedup_by(|a, b| a.path == b.path);

    let blob = store.writer()?;
    let gzip = ParallelGzEncoder::new(blob, options.compression);
    let mut tar = tar::Builder::new(HashingWriter::new(gzip));
    for entry in &entries {
        append_entry(&mut tar, entry, options)?;
    }
    let tar_out = tar.into_inner().io_context("write layer", "(tar stream)")?;
    let (diff_id, _, gzip) = tar_out.finish();
    let blob = gzip
        .finish()
        .io_context("compress layer", "(gzip stream)")?;
    let (digest, size) = blob.commit()?;
    Ok(BuiltLayer {
        digest,
        size,
        diff_id,
    })
}

fn append_entry<W: Write>(
    tar: &mut tar::Builder<W>,
    entry: &Entry,
    options: &LayerOptions,
) -> Result<()> {
    let mut header = tar::Header::new_gnu();
    let (uid, gid) = entry.owner.unwrap_or((options.uid, options.gid));
    header.set_mtime(options.mtime);
    header.set_uid(uid);
    header.set_gid(gid);
    header.set_mode(entry.mode);
    let written = match &entry.content {
        Content::Directory => {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_size(0);
            tar.append_data(&mut header, format!("{}/", entry.path), io::empty())
        }
        Content::Bytes(bytes) => {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(bytes.len() as u64);
            tar.append_data(&mut header, &entry.path, bytes.as_slice())
        }
        Content::File(source) => {
            let file = source.open().io_context("read", source.path())?;
            let size = file.metadata().io_context("read", source.path())?.len();
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(size);
            // `take` guards against a file that grows while it is read: the header's size wins.
            tar.append_data(&mut header, &entry.path, file.take(size))
        }
        Content::Symlink(target) => {
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_size(0);
            append_link_target(tar, &mut header, target)
                .and_then(|()| tar.append_data(&mut header, &entry.path, io::empty()))
        }
    };
    written.io_context("add to layer", &entry.path)
}

/// Puts a link's target into its header byte for byte, as the link holds it (the tar crate's
/// own `append_link` normalises it, writing `/` as `//`); a target too long for the header
/// goes first in a GNU long-link entry, as GNU tar writes it.
fn append_link_target<W: Write>(
    tar: &mut tar::Builder<W>,
    header: &mut tar::Header,
    target: &Path,
) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = target.as_os_str().as_bytes();
    if header.set_link_name_literal(bytes).is_ok() {
        return Ok(());
    }
    let mut long = tar::Header::new_gnu();
    long.set_entry_type(tar::EntryType::GNULongLink);
    long.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
    long.set_mode(0o644);
    long.set_mtime(0);
    long.set_uid(0);
    long.set_gid(0);
    long.set_size(bytes.len() as u64 + 1);
    long.set_cksum();
    tar.append(&long, bytes.chain(&[0u8][..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::Cache;
    use std::os::unix::fs::PermissionsExt;

    /// (path, mode, mtime, content, link target) of each entry.
    type ReadEntry = (String, u32, u64, Vec<u8>, Option<String>);

    fn read_layer(store: &BlobStore, layer: &BuiltLayer) -> Vec<ReadEntry> {
        let file = fs::File::open(store.path(&layer.digest)).unwrap();
        let mut archive = tar::Archive::new(flate2::read::MultiGzDecoder::new(file));
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let path = e.path().unwrap().to_string_lossy().into_owned();
                let mode = e.header().mode().unwrap();
                let mtime = e.header().mtime().unwrap();
                let link = e
                    .link_name()
                    .unwrap()
                    .map(|l| l.to_string_lossy().into_owned());
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                (path, mode, mtime, data, link)
            })
            .collect()
    }

    #[test]
    fn layer_from_dir_is_sorted_normalised_and_reproducible() {
        let src = tempfile::tempdir().unwrap();
        fs::write(src.path().join("b.py"), "print(1)").unwrap();
        fs::create_dir(src.path().join("a")).unwrap();
        fs::write(src.path().join("a/run.sh"), "#!/bin/sh").unwrap();
        fs::set_permissions(
            src.path().join("a/run.sh"),
            fs::Permissions::from_mode(0o700),
        )
        .unwrap();
        fs::write(src.path().join("skip.me"), "x").unwrap();
        std::os::unix::fs::symlink("b.py", src.path().join("link.py")).unwrap();
        std::os::unix::fs::symlink("/", src.path().join("root")).unwrap();
        let long_target = format!("/{}", "d/".repeat(80));
        std::os::unix::fs::symlink(&long_target, src.path().join("long")).unwrap();

        let cache_dir = tempfile::tempdir().unwrap();
        let store = Cache::open(cache_dir.path()).unwrap().blobs();
        let skip = |p: &Path| p == Path::new("skip.me");
        let options = LayerOptions {
            mtime: 42,
            ..LayerOptions::default()
        };
        let build = || {
            let entries =
                entries_from_dir(src.path(), "kubeless", Attributes::Normalized, &skip).unwrap();
            write_layer(entries, &options, &store).unwrap()
        };
        let first = build();
        // Touch the files: times and permissions on disk must not change the layer.
        fs::set_permissions(src.path().join("b.py"), fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(build(), first);

        let entries = read_layer(&store, &first);
        let paths: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            paths,
            [
                "kubeless/",
                "kubeless/a/",
                "kubeless/a/run.sh",
                "kubeless/b.py",
                "kubeless/link.py",
                "kubeless/long",
                "kubeless/root"
            ]
        );
        let links: Vec<Option<&str>> = entries[4..].iter().map(|e| e.4.as_deref()).collect();
        assert_eq!(
            links,
            [Some("b.py"), Some(long_target.as_str()), Some("/")],
            "link targets are kept as they are"
        );
        assert_eq!(entries[2].1, 0o755);
        assert_eq!(entries[3].1, 0o644);
        assert_eq!(entries[3].3, b"print(1)");
        assert!(entries.iter().all(|e| e.2 == 42));
    }

    #[test]
    fn diff_id_is_the_digest_of_the_uncompressed_stream() {
        let cache_dir = tempfile::tempdir().unwrap();
        let store = Cache::open(cache_dir.path()).unwrap().blobs();
        let layer = write_layer(
            vec![Entry::file("x", 0o644, b"abc".to_vec())],
            &LayerOptions::default(),
            &store,
        )
        .unwrap();
        let file = fs::File::open(store.path(&layer.digest)).unwrap();
        let mut hasher = HashingWriter::new(io::sink());
        io::copy(&mut flate2::read::MultiGzDecoder::new(file), &mut hasher).unwrap();
        let (diff_id, _, _) = hasher.finish();
        assert_eq!(diff_id, layer.diff_id);
        assert_eq!(
            fs::metadata(store.path(&layer.digest)).unwrap().len(),
            layer.size
        );
    }

    #[test]
    fn a_large_layer_is_several_gzip_members_of_the_same_tar() {
        let cache_dir = tempfile::tempdir().unwrap();
        let store = Cache::open(cache_dir.path()).unwrap().blobs();
        let data: Vec<u8> = (0..3 * crate::image::gzip::CHUNK_SIZE as u64)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let entries = || vec![Entry::file("big.bin", 0o644, data.clone())];
        let layer = write_layer(entries(), &LayerOptions::default(), &store).unwrap();
        assert_eq!(
            write_layer(entries(), &LayerOptions::default(), &store).unwrap(),
            layer
        );

        let gz = fs::read(store.path(&layer.digest)).unwrap();
        let mut first = flate2::bufread::GzDecoder::new(gz.as_slice());
        io::copy(&mut first, &mut io::sink()).unwrap();
        assert!(!first.into_inner().is_empty(), "one gzip member only");

        let mut hasher = HashingWriter::new(io::sink());
        io::copy(
            &mut flate2::read::MultiGzDecoder::new(gz.as_slice()),
            &mut hasher,
        )
        .unwrap();
        assert_eq!(hasher.finish().0, layer.diff_id);
        let entries = read_layer(&store, &layer);
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].3, data);
    }
}
