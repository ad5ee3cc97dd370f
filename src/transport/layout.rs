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
use crate::image::{self, Descriptor, Index, Manifest, OCI_INDEX};

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

/// The manifest named by `tag` (or the only one) in a layout, with its digest. An index
/// entry is followed to this platform's manifest.
pub fn read_manifest(dir: &Path, tag: Option<&str>) -> Result<(Vec<u8>, Digest)> {
    let index = read_index(dir)?;
    let place = format!("oci:{}", dir.display());
    let read = |digest: &Digest| read_blob(dir, digest);
    let mut descriptor = choose(&index, tag, &place)?.clone();
    if image::is_index(&descriptor.media_type) {
        let nested: Index = image::parse_json("a nested index", &read(&descriptor.digest)?)?;
        descriptor = nested.manifest_for_this_platform()?.clone();
    }
    Ok((read(&descriptor.digest)?, descriptor.digest))
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

fn read_blob(dir: &Path, digest: &Digest) -> Result<Vec<u8>> {
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

/// Adds an image to a layout directory (created if needed): blobs (hard-linked from the cache
/// where possible), then the manifest, then the index entry, replacing one of the same tag.
pub fn write_image(
    dir: &Path,
    tag: Option<&str>,
    blobs: &[(Digest, PathBuf)],
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
    let digest = Digest::of(manifest);
    fs::write(blob_dir.join(digest.hex()), manifest).io_context("write manifest to", &blob_dir)?;

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

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerArchiveEntry {
    config: String,
    repo_tags: Vec<String>,
    layers: Vec<String>,
}

/// Writes a tarball holding the image as an OCI layout and as a Docker archive.
pub fn write_tarball(
    file: &Path,
    repo_tag: Option<&str>,
    config: &Digest,
    layers: &[Digest],
    blobs: &[(Digest, PathBuf)],
    manifest: &[u8],
    media_type: &str,
) -> Result<()> {
    let parent = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let temp =
        tempfile::NamedTempFile::new_in(parent).io_context("create a temporary file in", parent)?;
    let mut tar = tar::Builder::new(std::io::BufWriter::new(temp));
    let add_bytes = |tar: &mut tar::Builder<_>, name: &str, bytes: &[u8]| -> Result<()> {
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        header.set_size(bytes.len() as u64);
        tar.append_data(&mut header, name, bytes)
            .io_context("write", file)
    };
    add_bytes(&mut tar, "oci-layout", LAYOUT_FILE.as_bytes())?;
    for (digest, path) in blobs {
        let mut source = fs::File::open(path).io_context("read blob", path)?;
        let size = source.metadata().io_context("read blob", path)?.len();
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        header.set_size(size);
        tar.append_data(
            &mut header,
            format!("blobs/sha256/{}", digest.hex()),
            &mut source,
        )
        .io_context("write", file)?;
    }
    let digest = Digest::of(manifest);
    add_bytes(
        &mut tar,
        &format!("blobs/sha256/{}", digest.hex()),
        manifest,
    )?;
    let mut descriptor = Descriptor::new(media_type, digest, manifest.len() as u64);
    if let Some(tag) = repo_tag {
        descriptor.annotations.insert(REF_NAME.into(), tag.into());
    }
    let index = Index {
        schema_version: 2,
        media_type: Some(OCI_INDEX.into()),
        manifests: vec![descriptor],
        annotations: BTreeMap::new(),
    };
    add_bytes(
        &mut tar,
        "index.json",
        &serde_json::to_vec(&index).expect("an index serializes"),
    )?;
    let docker = [DockerArchiveEntry {
        config: format!("blobs/sha256/{}", config.hex()),
        repo_tags: repo_tag.map(|t| vec![t.to_string()]).unwrap_or_default(),
        layers: layers
            .iter()
            .map(|d| format!("blobs/sha256/{}", d.hex()))
            .collect(),
    }];
    add_bytes(
        &mut tar,
        "manifest.json",
        &serde_json::to_vec(&docker).expect("a manifest list serializes"),
    )?;
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

/// The manifest named `name` (or the only one) in a tarball, with its digest; the tarball's
/// blobs are unpacked into the blob store first (see [`unpack_tarball`]).
pub fn read_tarball(
    file: &Path,
    name: Option<&str>,
    store: &BlobStore,
) -> Result<(Vec<u8>, Digest)> {
    let index = unpack_tarball(file, store)?;
    let place = format!("tar:{}", file.display());
    let read = |digest: &Digest| -> Result<Vec<u8>> {
        let bytes = fs::read(store.path(digest))
            .map_err(|e| Error::Image(format!("{place} lacks blob {digest}: {e}")))?;
        if &Digest::of(&bytes) != digest {
            return Err(Error::Image(format!("{place}: blob {digest} is corrupt")));
        }
        Ok(bytes)
    };
    let mut descriptor = choose(&index, name, &place)?.clone();
    if image::is_index(&descriptor.media_type) {
        let nested: Index = image::parse_json("a nested index", &read(&descriptor.digest)?)?;
        descriptor = nested.manifest_for_this_platform()?.clone();
    }
    Ok((read(&descriptor.digest)?, descriptor.digest))
}

/// Writes a layout (with any number of images) as one tarball: the layout's files, plus a
/// Docker `manifest.json` with an entry per image manifest, tagged with its name, so `docker
/// load` and skopeo's `docker-archive:` read it too.
pub fn write_tarball_of_layout(dir: &Path, file: &Path) -> Result<()> {
    let index = read_index(dir)?;
    let mut docker = Vec::new();
    for descriptor in &index.manifests {
        if image::is_index(&descriptor.media_type) {
            continue;
        }
        let manifest: Manifest = image::parse_json(
            &format!("the manifest {} in {}", descriptor.digest, dir.display()),
            &read_blob(dir, &descriptor.digest)?,
        )?;
        let name = descriptor.annotations.get(REF_NAME);
        docker.push(DockerArchiveEntry {
            config: format!("blobs/sha256/{}", manifest.config.digest.hex()),
            repo_tags: name
                .filter(|n| n.contains(':') && !n.contains('@'))
                .map(|n| vec![n.clone()])
                .unwrap_or_default(),
            layers: manifest
                .layers
                .iter()
                .map(|l| format!("blobs/sha256/{}", l.digest.hex()))
                .collect(),
        });
    }
    let blob_dir = dir.join("blobs/sha256");
    let mut blobs: Vec<PathBuf> = fs::read_dir(&blob_dir)
        .io_context("read", &blob_dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .io_context("read", &blob_dir)?;
    blobs.retain(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| !n.starts_with('.'))
    });
    blobs.sort();

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
    for path in &blobs {
        let mut source = fs::File::open(path).io_context("read blob", path)?;
        let size = source.metadata().io_context("read blob", path)?.len();
        let name = format!(
            "blobs/sha256/{}",
            path.file_name().unwrap_or_default().to_string_lossy()
        );
        append(&name, size, &mut source)?;
    }
    let index_bytes = serde_json::to_vec(&index).expect("an index serializes");
    append(
        "index.json",
        index_bytes.len() as u64,
        &mut index_bytes.as_slice(),
    )?;
    let docker_bytes = serde_json::to_vec(&docker).expect("a manifest list serializes");
    append(
        "manifest.json",
        docker_bytes.len() as u64,
        &mut docker_bytes.as_slice(),
    )?;
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
