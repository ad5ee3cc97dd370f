//! Paths resolved beneath a directory, never outside it: every read of what a source or an
//! installer wrote (a function's files, archive entries, installed packages' metadata) goes
//! through a [`Dir`] handle, whose lookups follow links only while they stay inside the
//! directory, as `openat2(RESOLVE_BENEATH)` does (cap-std uses that call where the kernel has
//! it). A link chain that leads out (`d/up -> ..`, `esc -> d/up/d/up/../../etc`), an absolute
//! link and a link into `/proc` fail with an error that [`is_escape`] recognises.

use std::io::{self, Read};
use std::path::Path;

use cap_fs_ext::{FollowSymlinks, OpenOptionsFollowExt};
use cap_std::fs::OpenOptions;
pub use cap_std::fs::{Dir, File};

/// The message cap-std gives a lookup that would leave the directory.
const ESCAPE_MESSAGE: &str = "a path led outside of the filesystem";

/// Opens `path` as the directory that later lookups stay beneath.
pub fn open_dir(path: &Path) -> io::Result<Dir> {
    Dir::open_ambient_dir(path, cap_std::ambient_authority())
}

/// Whether a lookup failed because it would have left the directory.
pub fn is_escape(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::PermissionDenied && error.to_string() == ESCAPE_MESSAGE
}

/// Opens the regular file at `relative`, whose final component may not be a link (the
/// components before it may, while they stay inside). Anything else (a directory, a FIFO, a
/// device, a link) is refused with `InvalidInput`.
pub fn open_regular(dir: &Dir, relative: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).follow(FollowSymlinks::No);
    let file = dir.open_with(relative, &options).map_err(|e| {
        // A link as the final component: ELOOP.
        if e.raw_os_error() == Some(nix::libc::ELOOP) {
            not_regular(relative)
        } else {
            e
        }
    })?;
    if !file.metadata()?.is_file() {
        return Err(not_regular(relative));
    }
    Ok(file)
}

/// Reads the file at `relative`, following links only inside the directory: `None` when
/// nothing is there, an error when it is not a regular file, leads outside, or holds more
/// than `max_bytes`.
pub fn read_file(dir: &Dir, relative: &Path, max_bytes: u64) -> io::Result<Option<Vec<u8>>> {
    let meta = match dir.metadata(relative) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if !meta.is_file() {
        return Err(not_regular(relative));
    }
    let file = dir.open(relative)?;
    if !file.metadata()?.is_file() {
        return Err(not_regular(relative));
    }
    let mut bytes = Vec::new();
    file.take(max_bytes + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max_bytes {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("it is larger than {max_bytes} bytes"),
        ));
    }
    Ok(Some(bytes))
}

fn not_regular(relative: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{} is not a regular file", relative.display()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn links_inside_are_followed_and_links_out_are_escapes() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "host file").unwrap();
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir(r.join("d")).unwrap();
        std::fs::write(r.join("d/f.txt"), "inside").unwrap();
        symlink("d/f.txt", r.join("alias")).unwrap();
        symlink("..", r.join("d/up")).unwrap();
        // Lexically inside (as many `d/up` as `..`), physically outside: each `d/up` is the
        // root again, so the `..` climb out of it.
        let levels = r.components().count() + 1;
        let chain = format!(
            "{}{}{}",
            "d/up/".repeat(levels),
            "../".repeat(levels),
            outside
                .path()
                .join("secret")
                .display()
                .to_string()
                .trim_start_matches('/')
        );
        symlink(chain, r.join("chain")).unwrap();
        symlink(outside.path().join("secret"), r.join("absolute")).unwrap();
        symlink("/proc/self/environ", r.join("environ")).unwrap();

        let dir = open_dir(r).unwrap();
        let read = |p: &str| read_file(&dir, Path::new(p), 1 << 20);
        assert_eq!(read("alias").unwrap().unwrap(), b"inside");
        assert_eq!(read("missing").unwrap(), None);
        for escaping in ["chain", "absolute", "environ", "d/up/../x"] {
            let err = read(escaping).unwrap_err();
            assert!(is_escape(&err), "{escaping}: {err}");
        }
        assert_eq!(read("d").unwrap_err().kind(), io::ErrorKind::InvalidInput);
        assert!(open_regular(&dir, Path::new("alias")).is_err());
        assert!(open_regular(&dir, Path::new("d/f.txt")).is_ok());
    }

    #[test]
    fn oversized_files_are_refused() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("big"), vec![b'x'; 100]).unwrap();
        let dir = open_dir(root.path()).unwrap();
        assert!(read_file(&dir, Path::new("big"), 99).is_err());
        assert_eq!(
            read_file(&dir, Path::new("big"), 100)
                .unwrap()
                .unwrap()
                .len(),
            100
        );
    }
}
