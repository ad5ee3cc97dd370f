//! A fetched source as the rest of a build sees it: the function's directory, read only through
//! a handle that resolves every path beneath it (see `beneath`), so that a link in the source,
//! whatever it points to, can never make fnbuild read a file of the machine it runs on.

use std::path::{Path, PathBuf};

use super::Origin;
use crate::beneath::{self, Dir};
use crate::error::{Error, IoContext, Result};

/// The most fnbuild reads into memory of one file of a source (a handler module, a deps file).
pub const MAX_READ_BYTES: u64 = 64 * 1024 * 1024;

/// A fetched source: the directory holding the function's files.
#[derive(Debug)]
pub struct Workspace {
    /// The function's files; the code layer holds everything below it.
    pub root: PathBuf,
    pub origin: Origin,
    dir: Dir,
    /// The temporary directory the source was fetched into, removed when dropped.
    _temp: Option<tempfile::TempDir>,
}

impl Workspace {
    /// A workspace for the function's files at `root`; `temp`, if any, is removed with it.
    pub fn open(root: PathBuf, origin: Origin, temp: Option<tempfile::TempDir>) -> Result<Self> {
        let dir = beneath::open_dir(&root).io_context("open", &root)?;
        Ok(Self {
            root,
            origin,
            dir,
            _temp: temp,
        })
    }

    /// The function's directory, for lookups that stay beneath it.
    pub fn dir(&self) -> &Dir {
        &self.dir
    }

    /// The content of the function's file `relative` (`what` names it in errors): `None` when
    /// there is none; an error when it is a link leading out of the source, not a regular
    /// file, or larger than [`MAX_READ_BYTES`].
    pub fn read_file(&self, relative: &str, what: &str) -> Result<Option<Vec<u8>>> {
        beneath::read_file(&self.dir, Path::new(relative), MAX_READ_BYTES).map_err(|e| {
            Error::Source(if beneath::is_escape(&e) {
                format!(
                    "{what} '{relative}' is a link that leads outside the function's source; \
                     links in a source must stay inside it"
                )
            } else {
                format!("cannot read {what} '{relative}' in the function's source: {e}")
            })
        })
    }
}
