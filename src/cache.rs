//! The local cache directory: content-addressed blobs, unpacked root filesystems (one per image
//! digest) and the deps-layer index. Everything is written to a temporary name first and moved
//! into place, so an interrupted build never leaves a half-written entry behind.
//!
//! Layout under the cache root:
//! `blobs/sha256/<hex>`, `rootfs/<hex>/`, `deps/<key>.json`, `tmp/`.
//!
//! Temporary files (fetched sources, blobs being written, root filesystems being unpacked) live
//! in one session directory per process, `tmp/session-<pid>-<random>/`, owned by an exclusive
//! `flock` on `tmp/session-<pid>-<random>.lock` that the process holds while it runs; the
//! session is removed when the last handle on the cache is dropped. Opening a cache sweeps
//! `tmp/`: a session whose lock can be taken belongs to a process that is gone (even one that
//! was killed) and is removed; so are entries of the older layout (temporary files directly in
//! `tmp/`) more than an hour old. A live session, of this process or of a concurrent build
//! sharing the cache directory, is never touched: its lock is held.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use nix::fcntl::{Flock, FlockArg};

use crate::digest::{Digest, HashingWriter};
use crate::error::{Error, IoContext, Result};

/// The cache root, opened and laid out, with this process's session in it.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
    session: Arc<Session>,
}

impl Cache {
    /// Opens (creating if needed) the cache at `root`: removes what processes that are gone
    /// left in `tmp/`, then starts this process's session there.
    pub fn open(root: &Path) -> Result<Self> {
        for sub in ["blobs/sha256", "rootfs", "deps", "tmp"] {
            let dir = root.join(sub);
            fs::create_dir_all(&dir).io_context("create cache directory", &dir)?;
        }
        let tmp = root.join("tmp");
        let swept = sweep(&tmp);
        if swept.removed_anything() {
            tracing::info!(cache = %root.display(), bytes = swept.bytes, "{swept}");
        }
        Ok(Self {
            root: root.to_path_buf(),
            session: Arc::new(Session::start(&tmp)?),
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

    /// This process's directory for temporary files: on the cache's file system, so what is
    /// made there can be moved into place, and removed with the session.
    pub fn session_dir(&self) -> &Path {
        &self.session.dir
    }

    pub fn blobs(&self) -> BlobStore {
        BlobStore {
            dir: self.root.join("blobs/sha256"),
            session: Arc::clone(&self.session),
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

    /// A fresh temporary directory in the session (same file system as the cache's entries,
    /// so they can be moved into place).
    pub fn temp_dir(&self, prefix: &str) -> Result<tempfile::TempDir> {
        tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(self.session_dir())
            .io_context("create temporary directory in", self.session_dir())
    }
}

/// Content-addressed blob files.
#[derive(Debug, Clone)]
pub struct BlobStore {
    dir: PathBuf,
    /// Blobs are written in the session, and kept alive by every store.
    session: Arc<Session>,
}

impl BlobStore {
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(digest.hex())
    }

    pub fn contains(&self, digest: &Digest) -> bool {
        self.path(digest).is_file()
    }

    /// A small blob's bytes (a manifest, a config), checked against its digest; `place` names
    /// where it came from, for errors.
    pub fn read_checked(&self, digest: &Digest, place: &str) -> Result<Vec<u8>> {
        let bytes = fs::read(self.path(digest))
            .map_err(|e| Error::Image(format!("{place} lacks blob {digest}: {e}")))?;
        if &Digest::of(&bytes) != digest {
            return Err(Error::Image(format!("{place}: blob {digest} is corrupt")));
        }
        Ok(bytes)
    }

    /// Stores bytes and returns their digest.
    pub fn insert_bytes(&self, bytes: &[u8]) -> Result<Digest> {
        let mut writer = self.writer()?;
        writer
            .write_all(bytes)
            .io_context("write blob to", &self.session.dir)?;
        Ok(writer.commit()?.0)
    }

    /// A writer for a new blob whose digest is known only once it is written.
    pub fn writer(&self) -> Result<BlobWriter> {
        let tmp = &self.session.dir;
        let file =
            tempfile::NamedTempFile::new_in(tmp).io_context("create temporary blob in", tmp)?;
        Ok(BlobWriter {
            inner: HashingWriter::new(BufWriter::with_capacity(256 * 1024, file)),
            dir: self.dir.clone(),
            _session: Arc::clone(&self.session),
        })
    }
}

/// A blob being written; `commit` moves it to its content address.
pub struct BlobWriter {
    inner: HashingWriter<BufWriter<tempfile::NamedTempFile>>,
    dir: PathBuf,
    /// The session holding the temporary file.
    _session: Arc<Session>,
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

// === Sessions ===

/// Session directories are named `session-<pid>-<random>`; a session's lock file is its
/// directory's name with [`LOCK_SUFFIX`].
const SESSION_PREFIX: &str = "session-";
const LOCK_SUFFIX: &str = ".lock";
/// Entries of the older layout (temporary files directly in `tmp/`) older than this belong to
/// no running build.
const OLD_ENTRY_AGE: Duration = Duration::from_secs(60 * 60);
/// How often starting a session is tried when concurrent sweeps remove its new lock file.
const SESSION_ATTEMPTS: usize = 5;
/// How often removing a tree is tried while files are still being added to it.
const REMOVE_ATTEMPTS: usize = 3;

/// The session directories of this process, for [`remove_own_sessions`].
static LIVE_SESSIONS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// A process's directory for temporary files in a cache, `tmp/<id>/`, owned by the exclusive
/// lock on `tmp/<id>.lock` held as long as this value lives. Dropping it removes both.
#[derive(Debug)]
struct Session {
    dir: PathBuf,
    _lock: Flock<File>,
}

impl Session {
    /// Creates and locks `tmp/<id>.lock`, then makes `tmp/<id>/`.
    fn start(tmp: &Path) -> Result<Self> {
        let prefix = format!("{SESSION_PREFIX}{}-", std::process::id());
        for _ in 0..SESSION_ATTEMPTS {
            let (file, lock_path) = tempfile::Builder::new()
                .prefix(&prefix)
                .suffix(LOCK_SUFFIX)
                .rand_bytes(10)
                .tempfile_in(tmp)
                .and_then(|file| file.keep().map_err(|e| e.error))
                .io_context("create a session lock in", tmp)?;
            let lock = Flock::lock(file, FlockArg::LockExclusive)
                .map_err(|(_, errno)| io::Error::from(errno))
                .io_context("lock", &lock_path)?;
            // A sweep in another process may have taken the new file's lock before it was
            // locked here, and removed the file: then another is made.
            if !same_file(&lock, &lock_path) {
                continue;
            }
            let dir = session_dir_of(&lock_path);
            if let Err(e) = fs::create_dir(&dir) {
                let _ = fs::remove_file(&lock_path);
                return Err(e).io_context("create", &dir);
            }
            LIVE_SESSIONS
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(dir.clone());
            return Ok(Self { dir, _lock: lock });
        }
        Err(io::Error::other(
            "concurrent sweeps of the cache kept removing new lock files",
        ))
        .io_context("start a session in", tmp)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        LIVE_SESSIONS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|dir| dir != &self.dir);
        remove_session(&self.dir);
    }
}

/// Removes the sessions of every cache this process has open (their directories, then their
/// lock files) and returns the bytes freed: for a process about to exit on a signal, whose
/// destructors will not run. Work still going on in other threads loses its files; the
/// process is expected to exit right after.
pub fn remove_own_sessions() -> u64 {
    let dirs = LIVE_SESSIONS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    dirs.iter().filter_map(|dir| remove_session(dir)).sum()
}

/// Removes a session's directory, then its lock file (made first, removed last); returns the
/// bytes freed, or `None` when the lock file was gone already.
fn remove_session(dir: &Path) -> Option<u64> {
    let bytes = remove_entry(dir).unwrap_or(0);
    fs::remove_file(lock_path_of(dir)).ok().map(|()| bytes)
}

/// `tmp/<id>.lock` of `tmp/<id>/`.
fn lock_path_of(dir: &Path) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(LOCK_SUFFIX);
    dir.with_file_name(name)
}

/// `tmp/<id>/` of `tmp/<id>.lock`.
fn session_dir_of(lock_path: &Path) -> PathBuf {
    let name = lock_path.file_name().unwrap_or_default().to_string_lossy();
    lock_path.with_file_name(name.strip_suffix(LOCK_SUFFIX).unwrap_or(&name))
}

/// Whether `path` still names the open `file`.
fn same_file(file: &File, path: &Path) -> bool {
    match (file.metadata(), fs::metadata(path)) {
        (Ok(open), Ok(named)) => (open.dev(), open.ino()) == (named.dev(), named.ino()),
        _ => false,
    }
}

// === Sweeping ===

/// What a sweep of `tmp/` removed.
#[derive(Debug, Default, PartialEq)]
struct Swept {
    /// Sessions of processes that are gone.
    sessions: usize,
    /// Entries of the older layout over an hour old.
    old_entries: usize,
    bytes: u64,
}

impl Swept {
    fn removed_anything(&self) -> bool {
        self.sessions + self.old_entries > 0
    }
}

impl fmt::Display for Swept {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = |n: usize, one: &str, many: &str| match n {
            1 => format!("1 {one}"),
            _ => format!("{n} {many}"),
        };
        let mut by = Vec::new();
        if self.sessions > 0 {
            by.push(count(
                self.sessions,
                "interrupted build",
                "interrupted builds",
            ));
        }
        if self.old_entries > 0 {
            by.push(format!(
                "older fnbuild versions ({} over an hour old)",
                count(self.old_entries, "temporary entry", "temporary entries")
            ));
        }
        write!(
            f,
            "removed {} left in the cache by {}",
            indicatif::DecimalBytes(self.bytes),
            by.join(" and ")
        )
    }
}

/// Removes from `tmp/` the sessions of processes that are gone, and the entries of the older
/// layout over an hour old.
fn sweep(tmp: &Path) -> Swept {
    let mut swept = Swept::default();
    let Ok(entries) = fs::read_dir(tmp) else {
        return swept;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_str().unwrap_or_default();
        if name.starts_with(SESSION_PREFIX) {
            let removed = if name.ends_with(LOCK_SUFFIX) {
                remove_dead_session(&path)
            } else if fs::symlink_metadata(lock_path_of(&path)).is_err() {
                // A session directory without its lock file: its owner is gone (the lock file
                // is made first and removed last).
                remove_entry(&path)
            } else {
                None
            };
            if let Some(bytes) = removed {
                swept.sessions += 1;
                swept.bytes += bytes;
            }
        } else if older_than(&path, OLD_ENTRY_AGE) {
            if let Some(bytes) = remove_entry(&path) {
                swept.old_entries += 1;
                swept.bytes += bytes;
            }
        }
    }
    swept
}

/// Removes the session of `lock_path` if its lock can be taken (its owner is gone), holding
/// the lock meanwhile; returns the bytes freed.
fn remove_dead_session(lock_path: &Path) -> Option<u64> {
    let file = File::open(lock_path).ok()?;
    let _lock = Flock::lock(file, FlockArg::LockExclusiveNonblock).ok()?;
    remove_session(&session_dir_of(lock_path))
}

/// Removes a file or a directory tree; returns the bytes of the files in it, or `None` when
/// there was nothing to remove or it could not be removed (said in a warning).
fn remove_entry(path: &Path) -> Option<u64> {
    let meta = fs::symlink_metadata(path).ok()?;
    let bytes = tree_size(path);
    let mut failure = None;
    for _ in 0..REMOVE_ATTEMPTS {
        let removed = if meta.is_dir() {
            fs::remove_dir_all(path)
        } else {
            fs::remove_file(path)
        };
        match removed {
            Ok(()) => return Some(bytes),
            Err(_) if fs::symlink_metadata(path).is_err() => return Some(bytes),
            // Another thread of a process stopping on a signal may still be adding files.
            Err(e) => failure = Some(e),
        }
    }
    if let Some(e) = failure {
        tracing::warn!(path = %path.display(), "cannot remove a temporary entry of the cache: {e}");
    }
    None
}

/// The bytes of the files under `path`, or of the file itself.
fn tree_size(path: &Path) -> u64 {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::read_dir(path)
            .map(|entries| entries.flatten().map(|e| tree_size(&e.path())).sum())
            .unwrap_or(0),
        Ok(meta) => meta.len(),
        Err(_) => 0,
    }
}

/// Whether `path` was last modified more than `age` ago.
fn older_than(path: &Path, age: Duration) -> bool {
    fs::symlink_metadata(path)
        .and_then(|meta| meta.modified())
        .ok()
        .and_then(|modified| SystemTime::now().duration_since(modified).ok())
        .is_some_and(|elapsed| elapsed > age)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names in a directory, sorted.
    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn blobs_land_at_their_digest() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let store = cache.blobs();
        let digest = store.insert_bytes(b"layer bytes").unwrap();
        assert_eq!(digest, Digest::of(b"layer bytes"));
        assert!(store.contains(&digest));
        assert_eq!(fs::read(store.path(&digest)).unwrap(), b"layer bytes");
        assert!(names(cache.session_dir()).is_empty());
    }

    #[test]
    fn temporary_files_live_in_the_session_until_the_cache_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("tmp");
        let cache = Cache::open(dir.path()).unwrap();
        let session = cache.session_dir().to_path_buf();
        assert_eq!(session.parent(), Some(tmp.as_path()));
        let name = session.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(names(&tmp), [name.clone(), format!("{name}.lock")]);
        let temp = cache.temp_dir("source-").unwrap();
        assert!(temp.path().starts_with(&session));
        fs::write(temp.path().join("partial"), "left behind").unwrap();
        // What a destructor that did not run would have left.
        std::mem::forget(temp);
        let mut unfinished = cache.blobs().writer().unwrap();
        unfinished.write_all(b"partial").unwrap();
        drop(cache);
        assert!(session.is_dir(), "the unfinished blob's session is gone");
        drop(unfinished);
        assert!(names(&tmp).is_empty(), "left in tmp: {:?}", names(&tmp));
    }

    #[test]
    fn sessions_of_processes_that_are_gone_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("tmp");
        fs::create_dir_all(tmp.join("session-1-gone/source-x")).unwrap();
        fs::write(tmp.join("session-1-gone.lock"), "").unwrap();
        fs::write(tmp.join("session-1-gone/source-x/big"), [0; 1000]).unwrap();
        // A directory whose lock file is gone: its owner was interrupted while removing it.
        fs::create_dir_all(tmp.join("session-2-half")).unwrap();
        fs::write(tmp.join("session-2-half/blob"), [0; 24]).unwrap();
        let swept = sweep(&tmp);
        assert_eq!(
            swept,
            Swept {
                sessions: 2,
                old_entries: 0,
                bytes: 1024
            }
        );
        assert!(names(&tmp).is_empty(), "left in tmp: {:?}", names(&tmp));
    }

    #[test]
    fn live_sessions_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let tmp = dir.path().join("tmp");
        fs::write(cache.session_dir().join("blob"), "x").unwrap();
        // Another process's session: its lock is held.
        fs::create_dir(tmp.join("session-3-live")).unwrap();
        let held = Flock::lock(
            File::create(tmp.join("session-3-live.lock")).unwrap(),
            FlockArg::LockExclusive,
        )
        .unwrap();
        let before = names(&tmp);
        assert_eq!(sweep(&tmp), Swept::default());
        let other = Cache::open(dir.path()).unwrap();
        assert!(cache.session_dir().join("blob").is_file());
        assert!(tmp.join("session-3-live").is_dir());
        drop((other, held));
        assert_eq!(names(&tmp), before);
    }

    #[test]
    fn entries_of_the_older_layout_go_after_an_hour() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("tmp");
        fs::create_dir_all(tmp.join("source-old")).unwrap();
        fs::write(tmp.join("source-old/hello.py"), [0; 10]).unwrap();
        fs::create_dir_all(tmp.join("source-new")).unwrap();
        fs::write(tmp.join(".tmpblob"), [0; 5]).unwrap();
        let two_hours_ago = SystemTime::now() - Duration::from_secs(2 * 60 * 60);
        for old in ["source-old", ".tmpblob"] {
            File::open(tmp.join(old))
                .unwrap()
                .set_modified(two_hours_ago)
                .unwrap();
        }
        let swept = sweep(&tmp);
        assert_eq!(
            swept,
            Swept {
                sessions: 0,
                old_entries: 2,
                bytes: 15
            }
        );
        assert_eq!(names(&tmp), ["source-new"]);
    }

    #[test]
    fn a_sweep_says_what_it_removed() {
        let swept = |sessions, old_entries, bytes| Swept {
            sessions,
            old_entries,
            bytes,
        };
        assert_eq!(
            swept(1, 0, 86_000_000).to_string(),
            "removed 86.00 MB left in the cache by 1 interrupted build"
        );
        assert_eq!(
            swept(2, 1, 1_500).to_string(),
            "removed 1.50 kB left in the cache by 2 interrupted builds and older fnbuild \
             versions (1 temporary entry over an hour old)"
        );
    }
}
