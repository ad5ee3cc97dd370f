//! Unpacking function archives safely: `.zip`, `.tar`, `.tar.gz`/`.tgz`, `.tar.bz2`,
//! `.tar.xz`, recognised by name or by their first bytes. Every entry is written beneath the
//! destination (see `beneath`); no entry, symlink or hard link may point outside it, whether
//! by its words or through other links (such an archive is refused, not silently trimmed);
//! the total size, the entry count and what the tar reader buffers between entries are
//! bounded, so an archive bomb stops early; and a compressed stream is read to its end, so a
//! corrupt one fails its checksum instead of being half used.

use std::cell::Cell;
use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use cap_fs_ext::{FollowSymlinks, OpenOptionsFollowExt};
use cap_std::fs::PermissionsExt;

use crate::beneath::{self, Dir};
use crate::error::{Error, IoContext, Result};

/// Bounds on what a source may unpack to.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_bytes: u64,
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_bytes: 1024 * 1024 * 1024,
            max_entries: 100_000,
        }
    }
}

/// The archive formats fnbuild unpacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveKind {
    Zip,
    Tar,
    TarGz,
    TarBz2,
    TarXz,
}

impl ArchiveKind {
    /// Recognises an archive by its file name.
    pub fn from_name(name: &str) -> Option<Self> {
        let name = name.to_ascii_lowercase();
        [
            (".zip", Self::Zip),
            (".tar.gz", Self::TarGz),
            (".tgz", Self::TarGz),
            (".tar.bz2", Self::TarBz2),
            (".tbz2", Self::TarBz2),
            (".tar.xz", Self::TarXz),
            (".txz", Self::TarXz),
            (".tar", Self::Tar),
        ]
        .into_iter()
        .find_map(|(suffix, kind)| name.ends_with(suffix).then_some(kind))
    }

    /// Recognises an archive by its first bytes (a tar by the `ustar` magic at offset 257).
    pub fn sniff(head: &[u8]) -> Option<Self> {
        if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
            Some(Self::Zip)
        } else if head.starts_with(&[0x1f, 0x8b]) {
            Some(Self::TarGz)
        } else if head.starts_with(b"BZh") {
            Some(Self::TarBz2)
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
            Some(Self::TarXz)
        } else if head.len() > 262 && &head[257..262] == b"ustar" {
            Some(Self::Tar)
        } else {
            None
        }
    }

    /// The kind of a file, by name first, then by content.
    pub fn of_file(path: &Path) -> Result<Option<Self>> {
        if let Some(kind) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(Self::from_name)
        {
            return Ok(Some(kind));
        }
        let mut head = Vec::with_capacity(512);
        fs::File::open(path)
            .and_then(|f| f.take(512).read_to_end(&mut head))
            .io_context("read", path)?;
        Ok(Self::sniff(&head))
    }
}

/// Unpacks an archive file into `dest` (an existing, empty directory); `name` is how
/// messages name the archive.
pub fn unpack_file(
    path: &Path,
    name: &str,
    kind: ArchiveKind,
    dest: &Path,
    limits: Limits,
) -> Result<()> {
    let file = fs::File::open(path).io_context("open archive", path)?;
    let mut unpacker = Unpacker::new(dest, name, limits)?;
    match kind {
        ArchiveKind::Zip => unpacker.zip(file)?,
        _ => unpacker.tar(decompressor(kind, BufReader::new(file)))?,
    }
    unpacker.check_links()
}

/// Unpacks a tar stream, compressed or not (detected from its first bytes), e.g. stdin.
pub fn unpack_tar_reader(reader: impl Read, name: &str, dest: &Path, limits: Limits) -> Result<()> {
    let mut buffered = BufReader::with_capacity(64 * 1024, reader);
    let head = buffered.fill_buf().io_context("read", name)?.to_vec();
    let kind = match ArchiveKind::sniff(&head) {
        Some(ArchiveKind::Zip) => {
            return Err(Error::Source(format!(
                "{name} is a zip archive; a stream must be a tar (plain, gzip, bzip2 or xz)"
            )))
        }
        Some(kind) => kind,
        None => ArchiveKind::Tar,
    };
    let mut unpacker = Unpacker::new(dest, name, limits)?;
    unpacker.tar(decompressor(kind, buffered))?;
    unpacker.check_links()
}

fn decompressor<'a>(kind: ArchiveKind, reader: impl BufRead + 'a) -> Box<dyn Read + 'a> {
    match kind {
        ArchiveKind::TarGz => Box::new(flate2::bufread::MultiGzDecoder::new(reader)),
        ArchiveKind::TarBz2 => Box::new(bzip2::bufread::MultiBzDecoder::new(reader)),
        ArchiveKind::TarXz => Box::new(liblzma::bufread::XzDecoder::new_multi_decoder(reader)),
        ArchiveKind::Tar | ArchiveKind::Zip => Box::new(reader),
    }
}

/// Counts entries and bytes against the limits.
struct Budget {
    limits: Limits,
    bytes: u64,
    entries: u64,
    name: String,
}

impl Budget {
    fn new(limits: Limits, name: &str) -> Self {
        Self {
            limits,
            bytes: 0,
            entries: 0,
            name: name.to_string(),
        }
    }

    fn entry(&mut self) -> Result<()> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(Error::Source(format!(
                "{} has more than {} entries (the limit; raise it with --max-source-files)",
                self.name, self.limits.max_entries
            )));
        }
        Ok(())
    }

    fn bytes_left(&self) -> u64 {
        self.limits.max_bytes.saturating_sub(self.bytes)
    }

    fn add_bytes(&mut self, n: u64) -> Result<()> {
        self.bytes += n;
        if self.bytes > self.limits.max_bytes {
            return Err(self.too_big());
        }
        Ok(())
    }

    fn too_big(&self) -> Error {
        Error::Source(format!(
            "{} unpacks to more than {} bytes (the limit; raise it with --max-source-size)",
            self.name, self.limits.max_bytes
        ))
    }
}

/// The most a tar stream may hold between two entries the unpacker sees: long names, PAX
/// headers and skipped data, which the tar reader buffers or reads through on its own.
const MAX_BYTES_BETWEEN_ENTRIES: u64 = 1024 * 1024;

/// A tar stream's bytes, counted: in all (see [`limits_total`])
/// and between two entries (at most [`MAX_BYTES_BETWEEN_ENTRIES`]), so that neither a
/// decompression bomb nor a gigabyte "long name" is read into memory or for ever.
struct Metered<R> {
    inner: R,
    meter: Rc<Meter>,
}

#[derive(Default)]
struct Meter {
    total: Cell<u64>,
    max_total: u64,
    /// Bytes read since the unpacker asked for the next entry, while it is asking.
    between_entries: Cell<Option<u64>>,
}

impl<R: Read> Read for Metered<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let meter = &self.meter;
        meter.total.set(meter.total.get() + n as u64);
        if meter.total.get() > meter.max_total {
            return Err(io::Error::other(format!(
                "the stream holds more than {} bytes",
                meter.max_total
            )));
        }
        if let Some(between) = meter.between_entries.get() {
            let between = between + n as u64;
            meter.between_entries.set(Some(between));
            if between > MAX_BYTES_BETWEEN_ENTRIES {
                return Err(io::Error::other(format!(
                    "more than {MAX_BYTES_BETWEEN_ENTRIES} bytes of headers, long names or \
                     skipped data between two entries"
                )));
            }
        }
        Ok(n)
    }
}

/// The most a tar stream may hold in all: its files' data and a header block or two for
/// each entry, with room to spare for padding and metadata.
fn limits_total(limits: &Limits) -> u64 {
    limits
        .max_bytes
        .saturating_mul(2)
        .saturating_add(limits.max_entries.saturating_add(2).saturating_mul(2048))
}

/// Writes an archive's entries beneath the destination directory: every path is resolved
/// beneath it (never through a link), and links are checked to stay inside it.
struct Unpacker {
    dir: Dir,
    archive: String,
    budget: Budget,
    /// The symlinks made, checked once every entry is in place.
    links: Vec<PathBuf>,
}

impl Unpacker {
    fn new(dest: &Path, archive: &str, limits: Limits) -> Result<Self> {
        Ok(Self {
            dir: beneath::open_dir(dest).io_context("open", dest)?,
            archive: archive.to_string(),
            budget: Budget::new(limits, archive),
            links: Vec::new(),
        })
    }

    fn tar(&mut self, reader: impl Read) -> Result<()> {
        let archive = self.archive.clone();
        let bad =
            |e: io::Error| Error::Source(format!("{archive} is not a readable tar archive: {e}"));
        let meter = Rc::new(Meter {
            max_total: limits_total(&self.budget.limits),
            ..Meter::default()
        });
        let mut tar = tar::Archive::new(Metered {
            inner: reader,
            meter: meter.clone(),
        });
        let mut entries = tar.entries().map_err(bad)?;
        loop {
            meter.between_entries.set(Some(0));
            let next = entries.next();
            meter.between_entries.set(None);
            let Some(entry) = next else { break };
            let mut entry = entry.map_err(bad)?;
            let raw = entry.path().map_err(bad)?.into_owned();
            let name = shown(&raw);
            let relative = safe_relative(&name, &archive, &raw)?;
            let kind = entry.header().entry_type();
            if relative.as_os_str().is_empty() || matches!(kind, tar::EntryType::XGlobalHeader) {
                continue;
            }
            self.budget.entry()?;
            match kind {
                tar::EntryType::Directory => self.directory(&relative)?,
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let mode = entry.header().mode().unwrap_or(0o644);
                    self.file(&relative, &mut entry, mode)
                        .map_err(|e| e.or_corrupt(&archive))?;
                }
                tar::EntryType::Symlink => {
                    let link = entry.link_name().map_err(bad)?.unwrap_or_default();
                    self.symlink(&relative, &link)?;
                }
                tar::EntryType::Link => {
                    let link = entry.link_name().map_err(bad)?.unwrap_or_default();
                    let source = safe_relative(&shown(&link), &archive, &link)?;
                    self.hard_link(&relative, &name, &source)?;
                }
                other => {
                    tracing::warn!(archive, entry = %name, kind = ?other, "skipping special file in archive");
                }
            }
        }
        // Read the stream to its end: a compressed stream's checksum comes after the tar's
        // last block, and a corrupt stream must fail the build, not be half used.
        let mut rest = tar.into_inner();
        let limit = self.budget.bytes_left() + 1;
        let drained = io::copy(&mut (&mut rest).take(limit), &mut io::sink())
            .map_err(|e| Error::Source(format!("{archive} is corrupt: {e}")))?;
        self.budget.add_bytes(drained)
    }

    fn zip(&mut self, file: fs::File) -> Result<()> {
        let archive = self.archive.clone();
        let bad = |e: zip::result::ZipError| {
            Error::Source(format!("{archive} is not a readable zip archive: {e}"))
        };
        let mut zip = zip::ZipArchive::new(BufReader::new(file)).map_err(bad)?;
        for index in 0..zip.len() {
            let mut entry = zip.by_index(index).map_err(bad)?;
            let name = entry.name().escape_debug().to_string();
            let relative = safe_relative(&name, &archive, Path::new(entry.name()))?;
            if relative.as_os_str().is_empty() {
                continue;
            }
            self.budget.entry()?;
            let mode = entry.unix_mode().unwrap_or(0o644);
            if entry.is_dir() {
                self.directory(&relative)?;
            } else if mode & 0o170000 == 0o120000 {
                let mut link = String::new();
                entry
                    .by_ref()
                    .take(4096)
                    .read_to_string(&mut link)
                    .map_err(|e| {
                        Error::Source(format!("{archive}: cannot read link '{name}': {e}"))
                    })?;
                self.symlink(&relative, Path::new(&link))?;
            } else {
                if entry.size() > self.budget.bytes_left() {
                    return Err(self.budget.too_big());
                }
                self.file(&relative, &mut entry, mode)
                    .map_err(|e| e.or_corrupt(&archive))?;
            }
        }
        Ok(())
    }

    fn directory(&self, relative: &Path) -> Result<()> {
        self.prepare_parent(relative)?;
        match self.dir.symlink_metadata(relative) {
            Ok(meta) if meta.is_dir() => Ok(()),
            _ => self
                .dir
                .create_dir(relative)
                .map_err(|e| self.io_error("create directory", relative, e)),
        }
    }

    /// Writes a regular file from `reader`, counting its bytes against the budget.
    fn file(&mut self, relative: &Path, reader: &mut dyn Read, mode: u32) -> Result<(), Unpack> {
        self.prepare_parent(relative)?;
        let mut options = cap_std::fs::OpenOptions::new();
        options
            .write(true)
            .create_new(true)
            .follow(FollowSymlinks::No);
        let mut out = self
            .dir
            .open_with(relative, &options)
            .map_err(|e| self.io_error("create", relative, e))?;
        let limit = self.budget.bytes_left() + 1;
        let written = io::copy(&mut reader.take(limit), &mut out).map_err(Unpack::Read)?;
        self.budget.add_bytes(written)?;
        let mode = if mode & 0o111 != 0 { 0o755 } else { 0o644 };
        out.set_permissions(cap_std::fs::Permissions::from_mode(mode))
            .map_err(|e| self.io_error("set mode of", relative, e))?;
        Ok(())
    }

    fn symlink(&mut self, relative: &Path, target: &Path) -> Result<()> {
        check_link_target(&self.archive, relative, target)?;
        self.prepare_parent(relative)?;
        self.dir
            .symlink_contents(target, relative)
            .map_err(|e| self.io_error("create symlink", relative, e))?;
        self.links.push(relative.to_path_buf());
        Ok(())
    }

    /// A hard link becomes a copy of the regular file it names, which must be in the archive
    /// before it; the name is resolved beneath the destination like every other.
    fn hard_link(&mut self, relative: &Path, name: &str, source: &Path) -> Result<()> {
        let archive = self.archive.clone();
        let refused = |why: &str| {
            Error::Source(format!(
                "{archive}: hard link '{name}' refers to '{}', {why}",
                source.display()
            ))
        };
        let mut file = match beneath::open_regular(&self.dir, source) {
            Ok(file) => file,
            Err(e) if beneath::is_escape(&e) => return Err(refused(
                "which leads outside the function's directory; links must stay inside the archive",
            )),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(refused("which is not in the archive before it"))
            }
            Err(_) => return Err(refused("which is not a regular file")),
        };
        let mode = file
            .metadata()
            .map_err(|e| self.io_error("read", source, e))?
            .permissions()
            .mode();
        self.file(relative, &mut file, mode)
            .map_err(|e| e.or_corrupt(&archive))
    }

    /// Makes the parent directories of an entry, refusing to go through a symlink (an
    /// archive could otherwise write through a link it made earlier), and removes an earlier
    /// entry of the same name, as tar does.
    fn prepare_parent(&self, relative: &Path) -> Result<()> {
        let mut current = PathBuf::new();
        if let Some(parent) = relative.parent() {
            for part in parent.components() {
                current.push(part);
                match self.dir.symlink_metadata(&current) {
                    Ok(meta) if meta.file_type().is_symlink() => {
                        return Err(Error::Source(format!(
                            "{}: entry '{}' is written through the link '{}'; \
                             archives may not write through links",
                            self.archive,
                            shown(relative),
                            shown(&current)
                        )))
                    }
                    Ok(meta) if meta.is_dir() => {}
                    Ok(_) => {
                        return Err(Error::Source(format!(
                            "{}: entry '{}' needs '{}' to be a directory, but it is a file",
                            self.archive,
                            shown(relative),
                            shown(&current)
                        )))
                    }
                    Err(_) => self
                        .dir
                        .create_dir(&current)
                        .map_err(|e| self.io_error("create directory", &current, e))?,
                }
            }
        }
        if let Ok(meta) = self.dir.symlink_metadata(relative) {
            if !meta.is_dir() {
                self.dir
                    .remove_file(relative)
                    .map_err(|e| self.io_error("replace", relative, e))?;
            }
        }
        Ok(())
    }

    /// Refuses the archive when one of its symlinks, resolved through the links around it as
    /// the kernel would, leads outside (`d/up -> ..` with `esc -> d/up/d/up/../../etc`).
    /// A link to nothing inside is kept: it can name nothing outside either.
    fn check_links(&self) -> Result<()> {
        for link in &self.links {
            if let Err(e) = self.dir.canonicalize(link) {
                if beneath::is_escape(&e) {
                    let target = self.dir.read_link_contents(link).unwrap_or_default();
                    return Err(link_escape(&self.archive, link, &target));
                }
            }
        }
        Ok(())
    }

    fn io_error(&self, action: &str, relative: &Path, e: io::Error) -> Error {
        Error::Source(format!(
            "{}: cannot {action} '{}': {e}",
            self.archive,
            shown(relative)
        ))
    }
}

/// Why writing a file failed: reading the archive (a corrupt stream) or anything else.
enum Unpack {
    Read(io::Error),
    Other(Error),
}

impl From<Error> for Unpack {
    fn from(e: Error) -> Self {
        Unpack::Other(e)
    }
}

impl Unpack {
    fn or_corrupt(self, archive: &str) -> Error {
        match self {
            Unpack::Read(e) => Error::Source(format!("{archive} is corrupt: {e}")),
            Unpack::Other(e) => e,
        }
    }
}

/// An entry or link name as messages show it: control characters escaped, so that a name
/// cannot forge log lines.
fn shown(path: &Path) -> String {
    path.to_string_lossy().escape_debug().to_string()
}

/// The entry's path made relative and checked: no `..`, nothing outside the destination.
fn safe_relative(name: &str, archive: &str, raw: &Path) -> Result<PathBuf> {
    let mut out = PathBuf::new();
    for component in raw.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(Error::Source(format!(
                    "{archive}: entry '{name}' would land outside the function's directory; \
                     archives may not contain '..' paths"
                )))
            }
        }
    }
    Ok(out)
}

fn link_escape(archive: &str, at: &Path, target: &Path) -> Error {
    Error::Source(format!(
        "{archive}: link '{}' points to '{}', outside the function's directory; \
         links must stay inside the archive",
        shown(at),
        shown(target)
    ))
}

/// Checks, by its words alone, that a link at `at` (relative to the destination) pointing
/// to `target` stays inside: an early, clear refusal. What the words cannot show (links
/// through other links) is checked by [`Unpacker::check_links`] once all are in place.
fn check_link_target(archive: &str, at: &Path, target: &Path) -> Result<()> {
    if target.is_absolute() {
        return Err(link_escape(archive, at, target));
    }
    let mut depth: i64 = at.parent().map_or(0, |p| p.components().count() as i64);
    for component in target.components() {
        match component {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            _ => {}
        }
        if depth < 0 {
            return Err(link_escape(archive, at, target));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_with(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, kind, data, link) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(*kind);
            header.set_mode(0o644);
            header.set_size(data.len() as u64);
            // Bypass the builder's own path checks to write hostile names as an attacker would.
            let name = header.as_old_mut().name.as_mut();
            name[..path.len()].copy_from_slice(path.as_bytes());
            if let Some(link) = link {
                header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
            }
            header.set_cksum();
            builder.append(&header, *data).unwrap();
        }
        builder.into_inner().unwrap()
    }

    fn unpack(bytes: &[u8]) -> (tempfile::TempDir, Result<()>) {
        let dest = tempfile::tempdir().unwrap();
        let result = unpack_tar_reader(bytes, "test.tar", dest.path(), Limits::default());
        (dest, result)
    }

    #[test]
    fn plain_files_and_dirs_unpack() {
        let tar = tar_with(&[
            ("src/", tar::EntryType::Directory, b"", None),
            (
                "src/hello.py",
                tar::EntryType::Regular,
                b"def handler(e, c): pass",
                None,
            ),
            (
                "alias.py",
                tar::EntryType::Symlink,
                b"",
                Some("src/hello.py"),
            ),
        ]);
        let (dest, result) = unpack(&tar);
        result.unwrap();
        assert_eq!(
            fs::read_to_string(dest.path().join("alias.py")).unwrap(),
            "def handler(e, c): pass"
        );
    }

    #[test]
    fn dot_dot_entries_are_refused() {
        let tar = tar_with(&[("../evil.py", tar::EntryType::Regular, b"x", None)]);
        let (dest, result) = unpack(&tar);
        let err = result.unwrap_err().to_string();
        assert!(err.contains("'../evil.py' would land outside"), "{err}");
        assert!(!dest.path().parent().unwrap().join("evil.py").exists());
    }

    #[test]
    fn escaping_links_are_refused() {
        for (link, target) in [
            ("up", "../../etc"),
            ("abs", "/etc/passwd"),
            ("d/x", "../../y"),
        ] {
            let tar = tar_with(&[(link, tar::EntryType::Symlink, b"", Some(target))]);
            let err = unpack(&tar).1.unwrap_err().to_string();
            assert!(
                err.contains("outside the function's directory"),
                "{link}: {err}"
            );
        }
        let tar = tar_with(&[("h", tar::EntryType::Link, b"", Some("../../etc/passwd"))]);
        assert!(unpack(&tar).1.unwrap_err().to_string().contains("'..'"));
    }

    #[test]
    fn writing_through_a_link_is_refused() {
        let tar = tar_with(&[
            ("d", tar::EntryType::Symlink, b"", Some(".")),
            ("d/f", tar::EntryType::Regular, b"x", None),
        ]);
        let err = unpack(&tar).1.unwrap_err().to_string();
        assert!(err.contains("through the link 'd'"), "{err}");
    }

    #[test]
    fn limits_stop_bombs() {
        let big = vec![0u8; 4096];
        let tar = tar_with(&[("a", tar::EntryType::Regular, &big, None)]);
        let dest = tempfile::tempdir().unwrap();
        let limits = Limits {
            max_bytes: 1000,
            max_entries: 10,
        };
        let err = unpack_tar_reader(&tar[..], "bomb.tar", dest.path(), limits).unwrap_err();
        assert!(err.to_string().contains("more than 1000 bytes"), "{err}");
        let many: Vec<(String, tar::EntryType, &[u8], Option<&str>)> = (0..5)
            .map(|i| (format!("f{i}"), tar::EntryType::Regular, &b"x"[..], None))
            .collect();
        let refs: Vec<_> = many
            .iter()
            .map(|(p, k, d, l)| (p.as_str(), *k, *d, *l))
            .collect();
        let tar = tar_with(&refs);
        let limits = Limits {
            max_bytes: 1000,
            max_entries: 3,
        };
        let err = unpack_tar_reader(
            &tar[..],
            "many.tar",
            tempfile::tempdir().unwrap().path(),
            limits,
        )
        .unwrap_err();
        assert!(err.to_string().contains("more than 3 entries"), "{err}");
    }

    #[test]
    fn kinds_are_recognised_by_name_and_content() {
        assert_eq!(ArchiveKind::from_name("f.TGZ"), Some(ArchiveKind::TarGz));
        assert_eq!(ArchiveKind::from_name("f.tar.xz"), Some(ArchiveKind::TarXz));
        assert_eq!(ArchiveKind::from_name("hello.py"), None);
        assert_eq!(
            ArchiveKind::sniff(b"PK\x03\x04rest"),
            Some(ArchiveKind::Zip)
        );
        assert_eq!(
            ArchiveKind::sniff(&tar_with(&[("a", tar::EntryType::Regular, b"x", None)])),
            Some(ArchiveKind::Tar)
        );
    }

    /// `d/up -> ..` and a link through it five times: lexically inside, physically `/`.
    fn chain_to(target: &str) -> String {
        format!("{}{}{target}", "d/up/".repeat(5), "../".repeat(5))
    }

    #[test]
    fn link_chains_out_of_the_directory_are_refused_and_nothing_is_read() {
        let host = tempfile::tempdir().unwrap();
        fs::write(host.path().join("shadow"), "host secret").unwrap();
        let host_dir = host.path().to_str().unwrap().trim_start_matches('/');
        for hard_link_too in [false, true] {
            let esc = chain_to(host_dir);
            let mut entries = vec![
                ("d/", tar::EntryType::Directory, &b""[..], None),
                ("d/up", tar::EntryType::Symlink, b"", Some("..")),
                ("esc", tar::EntryType::Symlink, b"", Some(esc.as_str())),
            ];
            if hard_link_too {
                entries.push(("stolen", tar::EntryType::Link, b"", Some("esc/shadow")));
            }
            let (dest, result) = unpack(&tar_with(&entries));
            let err = result.unwrap_err().to_string();
            let expected = if hard_link_too {
                "hard link 'stolen' refers to 'esc/shadow', which leads outside"
            } else {
                "link 'esc' points to"
            };
            assert!(err.contains(expected), "{err}");
            assert!(!dest.path().join("stolen").exists());
        }
        // The same through /proc: the builder's environment stays where it is.
        let proc_self = chain_to("proc/self");
        let tar = tar_with(&[
            ("d/", tar::EntryType::Directory, b"", None),
            ("d/up", tar::EntryType::Symlink, b"", Some("..")),
            ("p", tar::EntryType::Symlink, b"", Some(proc_self.as_str())),
            ("env", tar::EntryType::Link, b"", Some("p/environ")),
        ]);
        let err = unpack(&tar).1.unwrap_err().to_string();
        assert!(err.contains("which leads outside"), "{err}");
    }

    #[test]
    fn hard_links_inside_are_copies() {
        let tar = tar_with(&[
            ("a.py", tar::EntryType::Regular, b"x = 1\n", None),
            ("b.py", tar::EntryType::Link, b"", Some("a.py")),
        ]);
        let (dest, result) = unpack(&tar);
        result.unwrap();
        assert_eq!(fs::read(dest.path().join("b.py")).unwrap(), b"x = 1\n");
    }

    #[test]
    fn corrupt_compressed_streams_are_refused() {
        let tar = tar_with(&[(
            "hello.py",
            tar::EntryType::Regular,
            &b"def handler(event, context):\n    return 'hi'\n".repeat(50),
            None,
        )]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        io::Write::write_all(&mut gz, &tar).unwrap();
        let mut gz = gz.finish().unwrap();
        // The CRC of the data, in the trailer after the tar's end blocks.
        let at = gz.len() - 6;
        gz[at] ^= 0x01;
        let err = unpack(&gz).1.unwrap_err().to_string();
        assert!(err.contains("test.tar is corrupt"), "{err}");

        let mut xz = liblzma::write::XzEncoder::new(Vec::new(), 6);
        io::Write::write_all(&mut xz, &tar).unwrap();
        let xz = xz.finish().unwrap();
        let err = unpack(&xz[..xz.len() - 20]).1.unwrap_err().to_string();
        assert!(err.contains("corrupt"), "{err}");
    }

    #[test]
    fn a_huge_long_name_is_refused_before_it_is_buffered() {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::GNULongName);
        header.set_size(8 * MAX_BYTES_BETWEEN_ENTRIES);
        header.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
        header.set_cksum();
        let mut bytes = header.as_bytes().to_vec();
        bytes.resize(bytes.len() + 8 * MAX_BYTES_BETWEEN_ENTRIES as usize, b'a');
        let err = unpack(&bytes).1.unwrap_err().to_string();
        assert!(err.contains("between two entries"), "{err}");
    }
}
