//! The local cache directory: content-addressed blobs, unpacked root filesystems (one per image
//! digest) and the deps-layer index. Everything is written to a temporary name first and moved
//! into place, so an interrupted build never leaves a half-written entry behind.
//!
//! Layout under the cache root:
//! `blobs/sha256/<hex>`, `rootfs/<hex>/`, `deps/<key>.json`, `tmp/`.

use std::fs;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::digest::{Digest, HashingWriter};
use crate::error::{IoContext, Result};

/// The cache root, opened and laid out.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

impl Cache {
    /// Opens (creating if needed) the cache at `root`.
    pub fn open(root: &Path) -> Result<Self> {
        for sub in ["blobs/sha256", "rootfs", "deps", "tmp"] {
            let dir = root.join(sub);
            fs::create_dir_all(&dir).io_context("create cache directory", &dir)?;
        }
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    /// Where the cache lives when `--cache-dir` is not given: `$XDG_CACHE_HOME/fnbuild`, else
    /// `$HOME/.cache/fnbuild`, else a directory under the system's temporary directory.
    pub fn default_root() -> PathBuf {
        if let Some(xdg) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
            return PathBuf::from(xdg).join("fnbuild");
        }
        if let Some(home) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
            return PathBuf::from(home).join(".cache/fnbuild");
        }
        std::env::temp_dir().join("fnbuild-cache")
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blobs(&self) -> BlobStore {
        BlobStore {
            dir: self.root.join("blobs/sha256"),
            tmp: self.root.join("tmp"),
        }
    }

    /// The directory an image's root filesystem is unpacked into, keyed by a digest.
    pub fn rootfs_dir(&self, key: &Digest) -> PathBuf {
        self.root.join("rootfs").join(key.hex())
    }

    /// The file recording the deps layer built for a cache key.
    pub fn deps_entry(&self, key: &Digest) -> PathBuf {
        self.root.join("deps").join(format!("{}.json", key.hex()))
    }

    /// A fresh temporary directory inside the cache (same file system as its entries, so they
    /// can be moved into place).
    pub fn temp_dir(&self, prefix: &str) -> Result<tempfile::TempDir> {
        tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(self.root.join("tmp"))
            .io_context("create temporary directory in", self.root.join("tmp"))
    }
}

/// Content-addressed blob files.
#[derive(Debug, Clone)]
pub struct BlobStore {
    dir: PathBuf,
    tmp: PathBuf,
}

impl BlobStore {
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(digest.hex())
    }

    pub fn contains(&self, digest: &Digest) -> bool {
        self.path(digest).is_file()
    }

    /// Stores bytes and returns their digest.
    pub fn insert_bytes(&self, bytes: &[u8]) -> Result<Digest> {
        let mut writer = self.writer()?;
        writer
            .write_all(bytes)
            .io_context("write blob to", &self.tmp)?;
        Ok(writer.commit()?.0)
    }

    /// A writer for a new blob whose digest is known only once it is written.
    pub fn writer(&self) -> Result<BlobWriter> {
        let file = tempfile::NamedTempFile::new_in(&self.tmp)
            .io_context("create temporary blob in", &self.tmp)?;
        Ok(BlobWriter {
            inner: HashingWriter::new(BufWriter::with_capacity(256 * 1024, file)),
            dir: self.dir.clone(),
        })
    }
}

/// A blob being written; `commit` moves it to its content address.
pub struct BlobWriter {
    inner: HashingWriter<BufWriter<tempfile::NamedTempFile>>,
    dir: PathBuf,
}

impl BlobWriter {
    /// Finishes the blob and returns its digest and size.
    pub fn commit(self) -> Result<(Digest, u64)> {
        let (digest, size, buffered) = self.inner.finish();
        let file = buffered
            .into_inner()
            .map_err(|e| e.into_error())
            .io_context("write blob to", &self.dir)?;
        let dest = self.dir.join(digest.hex());
        file.persist(&dest)
            .map_err(|e| e.error)
            .io_context("store blob", &dest)?;
        Ok((digest, size))
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_land_at_their_digest() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let store = cache.blobs();
        let digest = store.insert_bytes(b"layer bytes").unwrap();
        assert_eq!(digest, Digest::of(b"layer bytes"));
        assert!(store.contains(&digest));
        assert_eq!(fs::read(store.path(&digest)).unwrap(), b"layer bytes");
        assert!(fs::read_dir(dir.path().join("tmp"))
            .unwrap()
            .next()
            .is_none());
    }
}
