//! Unpacking function archives safely: `.zip`, `.tar`, `.tar.gz`/`.tgz`, `.tar.bz2`,
//! `.tar.xz`, recognised by name or by their first bytes. No entry, symlink or hard link may
//! point outside the destination (such an archive is refused, not silently trimmed), and the
//! total size and entry count are bounded so an archive bomb stops early.

use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

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

/// Unpacks an archive file into `dest` (an existing, empty directory).
pub fn unpack_file(path: &Path, kind: ArchiveKind, dest: &Path, limits: Limits) -> Result<()> {
    let file = fs::File::open(path).io_context("open archive", path)?;
    let name = path.display().to_string();
    match kind {
        ArchiveKind::Zip => unpack_zip(file, &name, dest, limits),
        _ => unpack_tar_stream(
            decompressor(kind, BufReader::new(file)),
            &name,
            dest,
            limits,
        ),
    }
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
    unpack_tar_stream(decompressor(kind, buffered), name, dest, limits)
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

/// Checks that a link at `at` (relative to the destination) pointing to `target` stays inside.
fn check_link_target(archive: &str, at: &Path, target: &Path) -> Result<()> {
    let escape = || {
        Error::Source(format!(
            "{archive}: link '{}' points to '{}', outside the function's directory; \
             links must stay inside the archive",
            at.display(),
            target.display()
        ))
    };
    if target.is_absolute() {
        return Err(escape());
    }
    let mut depth: i64 = at.parent().map_or(0, |p| p.components().count() as i64);
    for component in target.components() {
        match component {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            _ => {}
        }
        if depth < 0 {
            return Err(escape());
        }
    }
    Ok(())
}

/// Makes the parent directories of a destination path, refusing to go through a symlink
/// (an archive could otherwise write through a link it created earlier).
fn prepare_parent(dest: &Path, relative: &Path, archive: &str) -> Result<PathBuf> {
    let mut current = dest.to_path_buf();
    if let Some(parent) = relative.parent() {
        for part in parent.components() {
            current.push(part);
            match fs::symlink_metadata(&current) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(Error::Source(format!(
                        "{archive}: entry '{}' is written through the link '{}'; \
                         archives may not write through links",
                        relative.display(),
                        current.strip_prefix(dest).unwrap_or(&current).display()
                    )))
                }
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => {
                    return Err(Error::Source(format!(
                        "{archive}: entry '{}' needs '{}' to be a directory, but it is a file",
                        relative.display(),
                        current.strip_prefix(dest).unwrap_or(&current).display()
                    )))
                }
                Err(_) => fs::create_dir(&current).io_context("create directory", &current)?,
            }
        }
    }
    let target = dest.join(relative);
    // An entry replaces an earlier one of the same name, as tar does.
    if let Ok(meta) = fs::symlink_metadata(&target) {
        if !meta.is_dir() {
            fs::remove_file(&target).io_context("replace", &target)?;
        }
    }
    Ok(target)
}

fn write_file(target: &Path, reader: &mut dyn Read, mode: u32, budget: &mut Budget) -> Result<()> {
    let mut out = fs::File::create(target).io_context("create", target)?;
    let limit = budget.bytes_left() + 1;
    let written = io::copy(&mut reader.take(limit), &mut out).io_context("write", target)?;
    budget.add_bytes(written)?;
    let mode = if mode & 0o111 != 0 { 0o755 } else { 0o644 };
    fs::set_permissions(target, fs::Permissions::from_mode(mode)).io_context("set mode of", target)
}

fn unpack_tar_stream(reader: impl Read, archive: &str, dest: &Path, limits: Limits) -> Result<()> {
    let mut budget = Budget::new(limits, archive);
    let mut tar = tar::Archive::new(reader);
    let bad = |e: io::Error| Error::Source(format!("{archive} is not a readable tar archive: {e}"));
    for entry in tar.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let raw = entry.path().map_err(bad)?.into_owned();
        let name = raw.display().to_string();
        let relative = safe_relative(&name, archive, &raw)?;
        let kind = entry.header().entry_type();
        if relative.as_os_str().is_empty() || matches!(kind, tar::EntryType::XGlobalHeader) {
            continue;
        }
        budget.entry()?;
        match kind {
            tar::EntryType::Directory => {
                prepare_parent(dest, &relative, archive)?;
                let dir = dest.join(&relative);
                if !dir.is_dir() {
                    fs::create_dir(&dir).io_context("create directory", &dir)?;
                }
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let target = prepare_parent(dest, &relative, archive)?;
                let mode = entry.header().mode().unwrap_or(0o644);
                write_file(&target, &mut entry, mode, &mut budget)?;
            }
            tar::EntryType::Symlink => {
                let link = entry
                    .link_name()
                    .map_err(bad)?
                    .unwrap_or_default()
                    .into_owned();
                check_link_target(archive, &relative, &link)?;
                let target = prepare_parent(dest, &relative, archive)?;
                std::os::unix::fs::symlink(&link, &target).io_context("create symlink", &target)?;
            }
            tar::EntryType::Link => {
                let link = entry
                    .link_name()
                    .map_err(bad)?
                    .unwrap_or_default()
                    .into_owned();
                let source = safe_relative(&link.display().to_string(), archive, &link)?;
                let target = prepare_parent(dest, &relative, archive)?;
                let source_path = dest.join(&source);
                let meta = fs::symlink_metadata(&source_path).map_err(|_| {
                    Error::Source(format!(
                        "{archive}: hard link '{name}' refers to '{}', which is not in the archive before it",
                        link.display()
                    ))
                })?;
                if !meta.is_file() {
                    return Err(Error::Source(format!(
                        "{archive}: hard link '{name}' must refer to a regular file"
                    )));
                }
                budget.add_bytes(meta.len())?;
                fs::copy(&source_path, &target).io_context("copy", &target)?;
            }
            other => {
                tracing::warn!(archive, entry = %name, kind = ?other, "skipping special file in archive");
            }
        }
    }
    Ok(())
}

fn unpack_zip(file: fs::File, archive: &str, dest: &Path, limits: Limits) -> Result<()> {
    let mut budget = Budget::new(limits, archive);
    let bad = |e: zip::result::ZipError| {
        Error::Source(format!("{archive} is not a readable zip archive: {e}"))
    };
    let mut zip = zip::ZipArchive::new(BufReader::new(file)).map_err(bad)?;
    for index in 0..zip.len() {
        let mut entry = zip.by_index(index).map_err(bad)?;
        let name = entry.name().to_string();
        let relative = safe_relative(&name, archive, Path::new(&name))?;
        if relative.as_os_str().is_empty() {
            continue;
        }
        budget.entry()?;
        let mode = entry.unix_mode().unwrap_or(0o644);
        if entry.is_dir() {
            prepare_parent(dest, &relative, archive)?;
            let dir = dest.join(&relative);
            if !dir.is_dir() {
                fs::create_dir(&dir).io_context("create directory", &dir)?;
            }
        } else if mode & 0o170000 == 0o120000 {
            let mut link = String::new();
            entry
                .read_to_string(&mut link)
                .map_err(|e| Error::Source(format!("{archive}: cannot read link '{name}': {e}")))?;
            check_link_target(archive, &relative, Path::new(&link))?;
            let target = prepare_parent(dest, &relative, archive)?;
            std::os::unix::fs::symlink(&link, &target).io_context("create symlink", &target)?;
        } else {
            if entry.size() > budget.bytes_left() {
                return Err(budget.too_big());
            }
            let target = prepare_parent(dest, &relative, archive)?;
            write_file(&target, &mut entry, mode, &mut budget)?;
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
}
