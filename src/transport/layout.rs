//! OCI image layouts (`oci-layout`, `index.json`, `blobs/sha256/`) and tarballs. A tarball
//! holds a layout plus a Docker `manifest.json`, so `skopeo` reads it as `oci-archive:` or
//! `docker-archive:` and `docker load` accepts it. Both are written under a temporary name and
//! moved into place, so a failed write leaves nothing half made. A layout may hold several
//! images, each named by its `org.opencontainers.image.ref.name`; reading a tarball unpacks
//! its blobs into the local blob store (checking each digest) and reads its `index.json`.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cache::BlobStore;
use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::image::{self, Descriptor, Index, Manifest, Platform, Stored, OCI_INDEX};
use crate::registry::Reference;

/// The annotation naming an image in a layout's `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
const LAYOUT_FILE: &str = r#"{"imageLayoutVersion":"1.0.0"}"#;

pub fn blob_path(dir: &Path, digest: &Digest) -> PathBuf {
    dir.join("blobs/sha256").join(digest.hex())
}

/// The `index.json` of a layout.
pub fn read_index(dir: &Path) -> Result<Index> {
    let index_path = dir.join("index.json");
    let bytes = fs::read(&index_path).map_err(|e| {
        Error::Image(format!(
            "{} is not an OCI image layout (cannot read index.json: {e})",
            dir.display()
        ))
    })?;
    image::parse_json(&format!("{}", index_path.display()), &bytes)
}

/// The manifest or index named by `tag` (or the only entry) in a layout, with its digest and
/// media type; the entries of an index are read with [`read_blob`].
pub fn read_named(dir: &Path, tag: Option<&str>) -> Result<Stored> {
    let index = read_index(dir)?;
    let place = format!("oci:{}", dir.display());
    let descriptor = choose(&index, tag, &place)?;
    Ok(Stored::new(
        read_blob(dir, &descriptor.digest)?,
        descriptor.media_type.clone(),
    ))
}

/// The entry of an index named `name`, or its only entry; errors list the names there are.
fn choose<'a>(index: &'a Index, name: Option<&str>, place: &str) -> Result<&'a Descriptor> {
    let names = || {
        let names: Vec<&str> = index
            .manifests
            .iter()
            .filter_map(|d| d.annotations.get(REF_NAME).map(String::as_str))
            .collect();
        if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        }
    };
    match name {
        Some(name) => index
            .manifests
            .iter()
            .find(|d| d.annotations.get(REF_NAME).map(String::as_str) == Some(name))
            .ok_or_else(|| {
                Error::Image(format!(
                    "{place} has no image named '{name}' (names: {})",
                    names()
                ))
            }),
        None => match index.manifests.as_slice() {
            [only] => Ok(only),
            [] => Err(Error::Image(format!("{place} holds no image"))),
            _ => Err(Error::Image(format!(
                "{place} holds several images; name one as {place}:NAME (names: {})",
                names()
            ))),
        },
    }
}

/// A blob of a layout, checked against its digest.
pub fn read_blob(dir: &Path, digest: &Digest) -> Result<Vec<u8>> {
    let path = blob_path(dir, digest);
    let bytes = fs::read(&path).io_context("read blob", &path)?;
    if &Digest::of(&bytes) != digest {
        return Err(Error::Image(format!(
            "{} does not have digest {digest}: the layout is corrupt",
            path.display()
        )));
    }
    Ok(bytes)
}

/// Adds an image or an index to a layout directory (created if needed): blobs (hard-linked
/// from the cache where possible) and an index's `entries` (its manifests), then the manifest
/// or index itself, then the `index.json` entry, replacing one of the same tag.
pub fn write_image(
    dir: &Path,
    tag: Option<&str>,
    blobs: &[(Digest, PathBuf)],
    entries: &[&[u8]],
    manifest: &[u8],
    media_type: &str,
) -> Result<Descriptor> {
    let blob_dir = dir.join("blobs/sha256");
    fs::create_dir_all(&blob_dir).io_context("create", &blob_dir)?;
    fs::write(dir.join("oci-layout"), LAYOUT_FILE).io_context("write", dir.join("oci-layout"))?;
    for (digest, source) in blobs {
        let dest = blob_dir.join(digest.hex());
        if !dest.exists() && fs::hard_link(source, &dest).is_err() {
            let temp = blob_dir.join(format!(".{}.partial", digest.hex()));
            fs::copy(source, &temp).io_context("copy blob to", &temp)?;
            fs::rename(&temp, &dest).io_context("store blob", &dest)?;
        }
    }
    for bytes in entries.iter().chain([&manifest]) {
        fs::write(blob_dir.join(Digest::of(bytes).hex()), bytes)
            .io_context("write manifest to", &blob_dir)?;
    }
    let digest = Digest::of(manifest);

    let index_path = dir.join("index.json");
    let mut index = match fs::read(&index_path) {
        Ok(bytes) => image::parse_json::<Index>(&format!("{}", index_path.display()), &bytes)?,
        Err(_) => Index {
            schema_version: 2,
            media_type: Some(OCI_INDEX.into()),
            manifests: Vec::new(),
            annotations: BTreeMap::new(),
        },
    };
    let mut descriptor = Descriptor::new(media_type, digest, manifest.len() as u64);
    if let Some(tag) = tag {
        descriptor.annotations.insert(REF_NAME.into(), tag.into());
        index
            .manifests
            .retain(|d| d.annotations.get(REF_NAME).map(String::as_str) != Some(tag));
    } else {
        index.manifests.retain(|d| d.digest != descriptor.digest);
    }
    index.manifests.push(descriptor.clone());
    let temp = dir.join(".index.json.partial");
    fs::write(
        &temp,
        serde_json::to_vec_pretty(&index).expect("an index serializes"),
    )
    .io_context("write", &temp)?;
    fs::rename(&temp, &index_path).io_context("write", &index_path)?;
    Ok(descriptor)
}

/// An image's entry in a Docker archive's `manifest.json`, naming its files in the tarball.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerArchiveEntry {
    config: String,
    repo_tags: Vec<String>,
    layers: Vec<String>,
}

impl DockerArchiveEntry {
    /// The entry of the image with this config and these layers. `name` becomes its tag only
    /// when it parses as an image reference with a tag and no digest
    /// (`fnbuild/runtime-python:3.13`): `docker load` refuses the whole archive over a bare
    /// tag (`v1`), a name without a tag (`localhost:5000/x`) or a digest.
    fn new<'a>(
        name: Option<&str>,
        config: &Digest,
        layers: impl IntoIterator<Item = &'a Digest>,
    ) -> Self {
        Self {
            config: blob_entry(config),
            repo_tags: name
                .filter(|n| is_repo_tag(n))
                .map(|n| vec![n.to_string()])
                .unwrap_or_default(),
            layers: layers.into_iter().map(blob_entry).collect(),
        }
    }
}

/// Whether `name` is a `[REGISTRY/]REPOSITORY:TAG` reference, as Docker's `RepoTags` hold.
fn is_repo_tag(name: &str) -> bool {
    name.parse::<Reference>()
        .is_ok_and(|r| r.tag.is_some() && r.digest.is_none())
}

/// The name of a blob in a layout and in a tarball.
fn blob_entry(digest: &Digest) -> String {
    format!("blobs/sha256/{}", digest.hex())
}

/// Writes a tarball holding an image or an index (with its `entries`) as an OCI layout, and
/// `loaded` (the image, or one of the index's) as a Docker archive.
pub fn write_tarball(
    file: &Path,
    repo_tag: Option<&str>,
    loaded: &Manifest,
    blobs: &[(Digest, PathBuf)],
    entries: &[&[u8]],
    top: &Stored,
) -> Result<()> {
    let mut descriptor = top.descriptor();
    if let Some(tag) = repo_tag {
        descriptor.annotations.insert(REF_NAME.into(), tag.into());
    }
    let index = Index {
        schema_version: 2,
        media_type: Some(OCI_INDEX.into()),
        manifests: vec![descriptor],
        annotations: BTreeMap::new(),
    };
    let docker = [DockerArchiveEntry::new(
        repo_tag,
        &loaded.config.digest,
        loaded.layers.iter().map(|l| &l.digest),
    )];
    let in_memory: Vec<&[u8]> = entries
        .iter()
        .copied()
        .chain([top.bytes.as_slice()])
        .collect();
    write_archive(file, blobs, &in_memory, &index, &docker)
}

/// Writes `file` under a temporary name and moves it into place once complete: `oci-layout`,
/// each blob as `blobs/sha256/HEX` (the `blob_files`, then the `blobs_in_memory`), `index`
/// as `index.json` and `docker` as the Docker `manifest.json`.
fn write_archive(
    file: &Path,
    blob_files: &[(Digest, PathBuf)],
    blobs_in_memory: &[&[u8]],
    index: &Index,
    docker: &[DockerArchiveEntry],
) -> Result<()> {
    let parent = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let temp =
        tempfile::NamedTempFile::new_in(parent).io_context("create a temporary file in", parent)?;
    let mut tar = tar::Builder::new(std::io::BufWriter::new(temp));
    let mut append = |name: &str, size: u64, data: &mut dyn std::io::Read| -> Result<()> {
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        header.set_size(size);
        tar.append_data(&mut header, name, data)
            .io_context("write", file)
    };
    append(
        "oci-layout",
        LAYOUT_FILE.len() as u64,
        &mut LAYOUT_FILE.as_bytes(),
    )?;
    for (digest, path) in blob_files {
        let mut source = fs::File::open(path).io_context("read blob", path)?;
        let size = source.metadata().io_context("read blob", path)?.len();
        append(&blob_entry(digest), size, &mut source)?;
    }
    let index = serde_json::to_vec(index).expect("an index serializes");
    let docker = serde_json::to_vec(docker).expect("a manifest list serializes");
    let in_memory = blobs_in_memory
        .iter()
        .map(|bytes| (blob_entry(&Digest::of(bytes)), *bytes))
        .chain([
            ("index.json".to_string(), index.as_slice()),
            ("manifest.json".to_string(), docker.as_slice()),
        ]);
    for (name, mut bytes) in in_memory {
        append(&name, bytes.len() as u64, &mut bytes)?;
    }
    let mut buffered = tar.into_inner().io_context("write", file)?;
    buffered.flush().io_context("write", file)?;
    let temp = buffered
        .into_inner()
        .map_err(|e| e.into_error())
        .io_context("write", file)?;
    temp.persist(file)
        .map_err(|e| e.error)
        .io_context("write", file)?;
    Ok(())
}

/// Unpacks a tarball's blobs (`blobs/sha256/HEX`, as an OCI layout holds them) into the blob
/// store, checking each digest and skipping those already there, and returns its
/// `index.json`. Other entries (a Docker `manifest.json`, `oci-layout`) are not needed.
pub fn unpack_tarball(file: &Path, store: &BlobStore) -> Result<Index> {
    let place = format!("tar:{}", file.display());
    let not_tar = |e: std::io::Error| {
        Error::Image(format!(
            "{place} is not a readable tar archive ({e}); expected an uncompressed tarball \
             holding an OCI layout, as `--output tar:FILE` and `fnbuild mirror --to tar:FILE` \
             write"
        ))
    };
    let opened =
        fs::File::open(file).map_err(|e| Error::Image(format!("cannot read {place}: {e}")))?;
    let mut archive = tar::Archive::new(std::io::BufReader::new(opened));
    let mut index = None;
    for entry in archive.entries_with_seek().map_err(not_tar)? {
        let mut entry = entry.map_err(not_tar)?;
        let path = entry
            .path()
            .map_err(not_tar)?
            .to_string_lossy()
            .into_owned();
        let path = path.trim_start_matches("./");
        if path == "index.json" {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut bytes).map_err(not_tar)?;
            index = Some(image::parse_json::<Index>(
                &format!("index.json in {place}"),
                &bytes,
            )?);
        } else if let Some(hex) = path.strip_prefix("blobs/sha256/") {
            let digest: Digest = format!("sha256:{hex}").parse().map_err(|e| {
                Error::Image(format!("{place}: {path} is not named by its digest: {e}"))
            })?;
            if store.contains(&digest) {
                continue;
            }
            let mut writer = store.writer()?;
            std::io::copy(&mut entry, &mut writer).map_err(not_tar)?;
            let (actual, _) = writer.commit()?;
            if actual != digest {
                return Err(Error::Image(format!(
                    "{place}: {path} does not have digest {digest} (it has {actual}): the tarball is corrupt"
                )));
            }
        }
    }
    index.ok_or_else(|| {
        Error::Image(format!(
            "{place} holds no OCI image layout (no index.json); fnbuild reads the tarballs it \
             writes, skopeo's oci-archive: ones and those of `docker save` from Docker 25 on"
        ))
    })
}

/// The manifest or index named `name` (or the only entry) in a tarball, with its digest and
/// media type; the tarball's blobs are unpacked into the blob store first (see
/// [`unpack_tarball`]), where the entries of an index are then read.
pub fn read_tarball(file: &Path, name: Option<&str>, store: &BlobStore) -> Result<Stored> {
    let index = unpack_tarball(file, store)?;
    let place = format!("tar:{}", file.display());
    let descriptor = choose(&index, name, &place)?;
    Ok(Stored::new(
        store.read_checked(&descriptor.digest, &place)?,
        descriptor.media_type.clone(),
    ))
}

/// Writes a layout (with any number of images) as one tarball: the layout's files, plus a
/// Docker `manifest.json` with an entry per image manifest, tagged with its name, so `docker
/// load` and skopeo's `docker-archive:` read it too.
pub fn write_tarball_of_layout(dir: &Path, file: &Path) -> Result<()> {
    let index = read_index(dir)?;
    let mut docker = Vec::new();
    for named in &index.manifests {
        // Of a multi-platform image, Docker loads this machine's platform's (if it has one).
        let mut descriptor = named;
        let nested: Index;
        if image::is_index(&named.media_type) {
            nested = image::parse_json(
                &format!("the index {} in {}", named.digest, dir.display()),
                &read_blob(dir, &named.digest)?,
            )?;
            match nested.manifest_for(&Platform::this_machine()) {
                Ok(entry) => descriptor = entry,
                Err(_) => continue,
            }
        }
        let manifest: Manifest = image::parse_json(
            &format!("the manifest {} in {}", descriptor.digest, dir.display()),
            &read_blob(dir, &descriptor.digest)?,
        )?;
        docker.push(DockerArchiveEntry::new(
            named.annotations.get(REF_NAME).map(String::as_str),
            &manifest.config.digest,
            manifest.layers.iter().map(|l| &l.digest),
        ));
    }
    // Every file named by a digest; others (`.HEX.partial` left by an interrupted copy) are
    // not blobs.
    let blob_dir = dir.join("blobs/sha256");
    let mut blobs = Vec::new();
    for entry in fs::read_dir(&blob_dir).io_context("read", &blob_dir)? {
        let path = entry.io_context("read", &blob_dir)?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if let Ok(digest) = format!("sha256:{name}").parse::<Digest>() {
            blobs.push((digest, path));
        }
    }
    blobs.sort();
    write_archive(file, &blobs, &[], &index, &docker)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::Platform;

    #[test]
    fn repo_tags_hold_only_tagged_references() {
        for name in [
            "fnbuild/runtime-python:3.13",
            "registry.local:5000/functions/hello:v1",
            "localhost:5000/x:latest",
            "hello:v1",
        ] {
            assert!(is_repo_tag(name), "{name} is a repository and tag");
        }
        let digest = Digest::of(b"x");
        for name in [
            "v1".to_string(),
            "localhost:5000/x".to_string(),
            "registry.local:5000/functions/hello".to_string(),
            format!("hello@{digest}"),
            format!("hello:v1@{digest}"),
            "Not A Reference:v1".to_string(),
            String::new(),
        ] {
            assert!(!is_repo_tag(&name), "{name} is no repository and tag");
        }
        let entry = DockerArchiveEntry::new(Some("localhost:5000/x"), &digest, []);
        assert!(entry.repo_tags.is_empty());
        let entry = DockerArchiveEntry::new(Some("localhost:5000/x:v2"), &digest, []);
        assert_eq!(entry.repo_tags, ["localhost:5000/x:v2"]);
    }

    /// A layout and a tarball holding an index named `multi` (pointing to this platform's
    /// manifest and another one) and a manifest named `single` are read the same way: a name
    /// gives its index or manifest as stored, with its media type.
    #[test]
    fn layouts_and_tarballs_give_the_named_index_or_manifest() {
        let temp = tempfile::tempdir().unwrap();
        let blob = |name: &str, bytes: &[u8]| -> (Digest, PathBuf) {
            let path = temp.path().join(name);
            fs::write(&path, bytes).unwrap();
            (Digest::of(bytes), path)
        };
        let config = blob("config", b"{}");
        let manifest = |which: &str| {
            Manifest {
                schema_version: 2,
                media_type: Some(image::OCI_MANIFEST.into()),
                config: Descriptor::new(image::OCI_CONFIG, config.0.clone(), 2),
                layers: Vec::new(),
                annotations: BTreeMap::from([("which".to_string(), which.to_string())]),
            }
            .to_bytes()
        };
        let (ours, theirs) = (manifest("ours"), manifest("theirs"));
        let (ours, theirs) = (ours.as_slice(), theirs.as_slice());
        let ours_blob = blob("ours", ours);
        let theirs_blob = blob("theirs", theirs);
        let for_platform = |digest: &Digest, size: usize, architecture: &str| {
            let mut descriptor = Descriptor::new(image::OCI_MANIFEST, digest.clone(), size as u64);
            descriptor.platform = Some(Platform {
                architecture: architecture.into(),
                os: "linux".into(),
                variant: None,
            });
            descriptor
        };
        let nested = Index {
            schema_version: 2,
            media_type: Some(OCI_INDEX.into()),
            manifests: vec![
                for_platform(&theirs_blob.0, theirs.len(), "not-this-arch"),
                for_platform(&ours_blob.0, ours.len(), image::oci_architecture()),
            ],
            annotations: BTreeMap::new(),
        };
        let nested = serde_json::to_vec(&nested).unwrap();
        let layout = temp.path().join("layout");
        write_image(
            &layout,
            Some("multi"),
            &[config.clone(), ours_blob.clone(), theirs_blob.clone()],
            &[],
            &nested,
            OCI_INDEX,
        )
        .unwrap();
        write_image(
            &layout,
            Some("single"),
            &[],
            &[],
            theirs,
            image::OCI_MANIFEST,
        )
        .unwrap();

        /// Reads what a name names in the layout or the tarball: digest, bytes, media type.
        type Read<'a> = &'a dyn Fn(Option<&str>) -> Result<Stored>;
        let expect = |read: Read<'_>| {
            let multi = read(Some("multi")).unwrap();
            assert_eq!(
                (multi.bytes, multi.digest, multi.media_type.as_str()),
                (nested.clone(), Digest::of(&nested), OCI_INDEX)
            );
            let single = read(Some("single")).unwrap();
            assert_eq!(
                (
                    single.bytes.as_slice(),
                    single.digest,
                    single.media_type.as_str()
                ),
                (theirs, theirs_blob.0.clone(), image::OCI_MANIFEST)
            );
            let missing = read(Some("other")).unwrap_err().to_string();
            assert!(missing.contains("no image named 'other'"), "{missing}");
            let several = read(None).unwrap_err().to_string();
            assert!(several.contains("several images"), "{several}");
        };
        expect(&|name| read_named(&layout, name));

        let tarball = temp.path().join("image.tar");
        write_tarball_of_layout(&layout, &tarball).unwrap();
        let store = crate::cache::Cache::open(&temp.path().join("cache"))
            .unwrap()
            .blobs();
        expect(&|name| read_tarball(&tarball, name, &store));
    }
}
