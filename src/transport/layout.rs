//! OCI image layouts (`oci-layout`, `index.json`, `blobs/sha256/`) and tarballs. A tarball
//! holds a layout plus a Docker `manifest.json`, so `skopeo` reads it as `oci-archive:` or
//! `docker-archive:` and `docker load` accepts it. Both are written under a temporary name and
//! moved into place, so a failed write leaves nothing half made.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::image::{self, Descriptor, Index, OCI_INDEX};

const REF_NAME: &str = "org.opencontainers.image.ref.name";
const LAYOUT_FILE: &str = r#"{"imageLayoutVersion":"1.0.0"}"#;

pub fn blob_path(dir: &Path, digest: &Digest) -> PathBuf {
    dir.join("blobs/sha256").join(digest.hex())
}

/// The manifest named by `tag` (or the only one) in a layout, with its digest. An index
/// entry is followed to this platform's manifest.
pub fn read_manifest(dir: &Path, tag: Option<&str>) -> Result<(Vec<u8>, Digest)> {
    let index_path = dir.join("index.json");
    let bytes = fs::read(&index_path).map_err(|e| {
        Error::Image(format!(
            "{} is not an OCI image layout (cannot read index.json: {e})",
            dir.display()
        ))
    })?;
    let index: Index = image::parse_json(&format!("{}", index_path.display()), &bytes)?;
    let names = || {
        index
            .manifests
            .iter()
            .filter_map(|d| d.annotations.get(REF_NAME).cloned())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let chosen = match tag {
        Some(tag) => index
            .manifests
            .iter()
            .find(|d| d.annotations.get(REF_NAME).map(String::as_str) == Some(tag))
            .ok_or_else(|| {
                Error::Image(format!(
                    "{} has no image tagged '{tag}' (tags: {})",
                    dir.display(),
                    names()
                ))
            })?,
        None => match index.manifests.as_slice() {
            [only] => only,
            [] => return Err(Error::Image(format!("{} holds no image", dir.display()))),
            _ => {
                return Err(Error::Image(format!(
                    "{} holds several images; name one as oci:{}:TAG (tags: {})",
                    dir.display(),
                    dir.display(),
                    names()
                )))
            }
        },
    };
    let mut descriptor = chosen.clone();
    if image::is_index(&descriptor.media_type) {
        let nested: Index =
            image::parse_json("a nested index", &read_blob(dir, &descriptor.digest)?)?;
        descriptor = nested.manifest_for_this_platform()?.clone();
    }
    Ok((read_blob(dir, &descriptor.digest)?, descriptor.digest))
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
