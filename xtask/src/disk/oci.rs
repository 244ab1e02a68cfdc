//! A KubeVirt containerDisk: an OCI image whose one layer holds the disk as
//! `/disk/pvagent.qcow2`, owned by UID/GID 107 (the qemu user of
//! virt-launcher), as KubeVirt documents it (`ADD --chown=107:107 x.qcow2
//! /disk/` on `FROM scratch`). Written as an OCI image archive (a tar of an
//! OCI image layout: `oci-layout`, `index.json`, `blobs/sha256/…`), what
//! `skopeo copy oci-archive:FILE docker://REGISTRY/pvagent:TAG` pushes and
//! `podman load -i FILE` loads.
//!
//! The JSON documents are oci-spec's types; the layer is a gzipped tar.
//! Everything is reproducible: fixed timestamps (0), owners and modes, no
//! `created` field, so the same disk gives the same digests.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::str::FromStr;

use anyhow::{Context, Result};
use oci_spec::image::{
    Arch, Descriptor, ImageConfigurationBuilder, ImageIndexBuilder, ImageManifestBuilder, MediaType, OciLayoutBuilder,
    Os, RootFsBuilder, Sha256Digest,
};
use sha2::{Digest as _, Sha256};

use crate::arch::Arch as GuestArch;

/// The disk's name in the image (`/disk/pvagent.qcow2`).
pub const DISK_NAME: &str = "pvagent.qcow2";
/// The owner KubeVirt wants (the qemu user, UID and GID 107).
pub const QEMU_UID: u64 = 107;
/// The reference name of the one image in the archive
/// (`oci-archive:FILE:pvagent:latest`; `podman load` names it
/// `localhost/pvagent:latest`).
pub const REF_NAME: &str = "pvagent:latest";

/// The digests of what was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    /// `sha256:…` of the manifest (the image's digest in a registry).
    pub manifest_digest: String,
    pub config_digest: String,
    /// `sha256:…` of the gzipped layer.
    pub layer_digest: String,
    /// `sha256:…` of the uncompressed layer (the config's diff_id).
    pub diff_id: String,
}

fn sha256(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

fn digest(hex: &str) -> Result<Sha256Digest> {
    Sha256Digest::from_str(hex).map_err(|e| anyhow::anyhow!("digest {hex}: {e}"))
}

/// A tar header for `path` with fixed metadata.
fn header(kind: tar::EntryType, size: u64, mode: u32, uid: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(uid);
    h.set_gid(uid);
    h.set_mtime(0);
    h
}

/// The layer, uncompressed: `disk/` and `disk/pvagent.qcow2`, both owned by
/// 107:107.
pub fn layer_tar(qcow2: &[u8]) -> Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    b.mode(tar::HeaderMode::Deterministic);
    let mut dir = header(tar::EntryType::Directory, 0, 0o755, QEMU_UID);
    b.append_data(&mut dir, "disk/", std::io::empty())?;
    let mut file = header(tar::EntryType::Regular, qcow2.len() as u64, 0o644, QEMU_UID);
    b.append_data(&mut file, format!("disk/{DISK_NAME}"), qcow2)?;
    Ok(b.into_inner()?)
}

/// gzip with no name and mtime 0.
fn gzip(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut gz = flate2::GzBuilder::new().mtime(0).write(Vec::new(), flate2::Compression::best());
    gz.write_all(bytes)?;
    Ok(gz.finish()?)
}

/// A file of the archive: its path and bytes.
pub type File = (String, Vec<u8>);

/// The OCI architecture of a containerDisk of `arch`'s agent (what the
/// image config says, and what a cluster's nodes must be).
pub fn oci_arch(arch: GuestArch) -> Arch {
    match arch {
        GuestArch::X86_64 => Arch::Amd64,
        GuestArch::Aarch64 => Arch::ARM64,
        GuestArch::S390x => Arch::s390x,
    }
}

/// The archive's files, in order, and the digests, for a disk of `arch`'s
/// agent.
pub fn archive_files(qcow2: &[u8], arch: GuestArch) -> Result<(Vec<File>, Summary)> {
    let layer = layer_tar(qcow2)?;
    let diff_id = sha256(&layer);
    let layer_gz = gzip(&layer)?;
    let layer_hex = sha256(&layer_gz);
    let rootfs = RootFsBuilder::default().typ("layers").diff_ids(vec![format!("sha256:{diff_id}")]).build()?;
    let history = oci_spec::image::HistoryBuilder::default()
        .created_by(format!("cargo xtask image --containerdisk (ADD --chown=107:107 {DISK_NAME} /disk/)"))
        .build()?;
    let config = ImageConfigurationBuilder::default()
        .architecture(oci_arch(arch))
        .os(Os::Linux)
        .rootfs(rootfs)
        .history(vec![history])
        .build()?
        .to_string()?
        .into_bytes();
    let config_hex = sha256(&config);
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(Descriptor::new(MediaType::ImageConfig, config.len() as u64, digest(&config_hex)?))
        .layers(vec![Descriptor::new(MediaType::ImageLayerGzip, layer_gz.len() as u64, digest(&layer_hex)?)])
        .build()?
        .to_string()?
        .into_bytes();
    let manifest_hex = sha256(&manifest);
    let mut manifest_desc = Descriptor::new(MediaType::ImageManifest, manifest.len() as u64, digest(&manifest_hex)?);
    manifest_desc.set_annotations(Some(HashMap::from([(
        "org.opencontainers.image.ref.name".to_string(),
        REF_NAME.to_string(),
    )])));
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(vec![manifest_desc])
        .build()?
        .to_string()?
        .into_bytes();
    let layout = OciLayoutBuilder::default().image_layout_version("1.0.0").build()?.to_string()?.into_bytes();
    let blob = |hex: &str| format!("blobs/sha256/{hex}");
    let files = vec![
        ("oci-layout".to_string(), layout),
        ("index.json".to_string(), index),
        (blob(&manifest_hex), manifest),
        (blob(&config_hex), config),
        (blob(&layer_hex), layer_gz),
    ];
    let summary = Summary {
        manifest_digest: format!("sha256:{manifest_hex}"),
        config_digest: format!("sha256:{config_hex}"),
        layer_digest: format!("sha256:{layer_hex}"),
        diff_id: format!("sha256:{diff_id}"),
    };
    Ok((files, summary))
}

/// The OCI image archive (an uncompressed tar of the layout) of the
/// containerDisk holding `qcow2` (a disk of `arch`'s agent).
pub fn archive(qcow2: &[u8], arch: GuestArch) -> Result<(Vec<u8>, Summary)> {
    let (files, summary) = archive_files(qcow2, arch)?;
    let mut b = tar::Builder::new(Vec::new());
    b.mode(tar::HeaderMode::Deterministic);
    for dir in ["blobs/", "blobs/sha256/"] {
        b.append_data(&mut header(tar::EntryType::Directory, 0, 0o755, 0), dir, std::io::empty())?;
    }
    for (path, bytes) in &files {
        b.append_data(&mut header(tar::EntryType::Regular, bytes.len() as u64, 0o644, 0), path, &bytes[..])?;
    }
    Ok((b.into_inner()?, summary))
}

/// Writes the archive of the containerDisk holding `qcow2` (a disk of
/// `arch`'s agent) to `out`.
pub fn write_archive(qcow2: &[u8], arch: GuestArch, out: &Path) -> Result<Summary> {
    let (bytes, summary) = archive(qcow2, arch)?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(out, bytes).with_context(|| format!("writing {}", out.display()))?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;
    use serde_json::Value;

    fn files_of(tar_bytes: &[u8]) -> Vec<(String, u64, u64, u32, Vec<u8>)> {
        let mut a = tar::Archive::new(tar_bytes);
        a.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let h = e.header().clone();
                let mut v = Vec::new();
                e.read_to_end(&mut v).unwrap();
                (e.path().unwrap().display().to_string(), h.uid().unwrap(), h.gid().unwrap(), h.mode().unwrap(), v)
            })
            .collect()
    }

    /// Every descriptor's size and digest are those of the blob it names,
    /// the config's diff_id is the uncompressed layer's, and the layer holds
    /// the disk at /disk/pvagent.qcow2 owned by 107:107.
    #[test]
    fn manifest_config_and_layer_digests() {
        let qcow2 = b"QFI\xfb pretend qcow2 bytes".repeat(100);
        let (archive, s) = archive(&qcow2, GuestArch::X86_64).unwrap();
        let files = files_of(&archive);
        let get = |p: &str| files.iter().find(|f| f.0 == p).unwrap_or_else(|| panic!("{p}")).4.clone();
        let json = |p: &str| serde_json::from_slice::<Value>(&get(p)).unwrap();
        let blob = |d: &str| format!("blobs/sha256/{}", d.strip_prefix("sha256:").unwrap());
        assert_eq!(json("oci-layout")["imageLayoutVersion"], "1.0.0");
        let index = json("index.json");
        assert_eq!(index["schemaVersion"], 2);
        let m = &index["manifests"][0];
        assert_eq!(m["mediaType"], "application/vnd.oci.image.manifest.v1+json");
        assert_eq!(m["digest"], s.manifest_digest);
        assert_eq!(m["annotations"]["org.opencontainers.image.ref.name"], "pvagent:latest");
        let manifest_bytes = get(&blob(&s.manifest_digest));
        assert_eq!(m["size"], manifest_bytes.len());
        assert_eq!(format!("sha256:{}", sha256(&manifest_bytes)), s.manifest_digest);
        let manifest: Value = serde_json::from_slice(&manifest_bytes).unwrap();
        assert_eq!(manifest["config"]["mediaType"], "application/vnd.oci.image.config.v1+json");
        assert_eq!(manifest["config"]["digest"], s.config_digest);
        let config_bytes = get(&blob(&s.config_digest));
        assert_eq!(manifest["config"]["size"], config_bytes.len());
        assert_eq!(format!("sha256:{}", sha256(&config_bytes)), s.config_digest);
        let layer = &manifest["layers"][0];
        assert_eq!(layer["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip");
        assert_eq!(layer["digest"], s.layer_digest);
        let gz = get(&blob(&s.layer_digest));
        assert_eq!(layer["size"], gz.len());
        assert_eq!(format!("sha256:{}", sha256(&gz)), s.layer_digest);
        let config: Value = serde_json::from_slice(&config_bytes).unwrap();
        assert_eq!((config["architecture"].as_str(), config["os"].as_str()), (Some("amd64"), Some("linux")));
        assert_eq!(config["rootfs"]["type"], "layers");
        let mut tar_bytes = Vec::new();
        flate2::read::GzDecoder::new(&gz[..]).read_to_end(&mut tar_bytes).unwrap();
        assert_eq!(config["rootfs"]["diff_ids"][0], s.diff_id);
        assert_eq!(format!("sha256:{}", sha256(&tar_bytes)), s.diff_id);
        let layer_files = files_of(&tar_bytes);
        assert_eq!(layer_files.len(), 2);
        assert_eq!((layer_files[0].0.as_str(), layer_files[0].1, layer_files[0].2), ("disk/", 107, 107));
        let disk = &layer_files[1];
        assert_eq!((disk.0.as_str(), disk.1, disk.2, disk.3), ("disk/pvagent.qcow2", 107, 107, 0o644));
        assert_eq!(disk.4, qcow2);
        // Reproducible.
        assert!(super::archive(&qcow2, GuestArch::X86_64).unwrap() == (archive, s));
        // The aarch64 disk's: the same but for the architecture.
        let (arm, _) = super::archive(&qcow2, GuestArch::Aarch64).unwrap();
        let files = files_of(&arm);
        let index: Value = serde_json::from_slice(&files.iter().find(|f| f.0 == "index.json").unwrap().4).unwrap();
        let manifest_blob = blob(index["manifests"][0]["digest"].as_str().unwrap());
        let manifest: Value = serde_json::from_slice(&files.iter().find(|f| f.0 == manifest_blob).unwrap().4).unwrap();
        let config_blob = blob(manifest["config"]["digest"].as_str().unwrap());
        let config: Value = serde_json::from_slice(&files.iter().find(|f| f.0 == config_blob).unwrap().4).unwrap();
        assert_eq!(config["architecture"], "arm64");
    }

    /// A real OCI tool reads the archive: `skopeo inspect` sees the image,
    /// `skopeo copy` to a directory gets the layer back with the disk in it.
    /// Without skopeo the test says so and passes, except under CI
    /// (`CI=true`), where `cargo xtask setup` installs it.
    #[test]
    fn skopeo_reads_the_archive() {
        let Some(skopeo) = crate::util::find_program("skopeo") else {
            let ci = crate::runner::is_ci(std::env::var("CI").ok().as_deref());
            assert!(!ci, "skopeo is not installed: run `cargo xtask setup` (Debian package skopeo)");
            eprintln!("note: skopeo is not installed (apt-get install skopeo): the archive is not checked with it");
            return;
        };
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("containerdisk.tar");
        let qcow2 = b"QFI\xfb not really a qcow2".repeat(50);
        let s = write_archive(&qcow2, GuestArch::X86_64, &file).unwrap();
        let out = std::process::Command::new(&skopeo)
            .args(["inspect", "--raw"])
            .arg(format!("oci-archive:{}", file.display()))
            .output()
            .unwrap();
        assert!(out.status.success(), "skopeo inspect: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(format!("sha256:{}", sha256(&out.stdout)), s.manifest_digest, "the manifest as stored");
        let out = std::process::Command::new(&skopeo)
            .args(["inspect"])
            .arg(format!("oci-archive:{}:{REF_NAME}", file.display()))
            .output()
            .unwrap();
        assert!(out.status.success(), "skopeo inspect: {}", String::from_utf8_lossy(&out.stderr));
        let info: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!((info["Architecture"].as_str(), info["Os"].as_str()), (Some("amd64"), Some("linux")));
        assert_eq!(info["Layers"][0], s.layer_digest);
        let dir = tmp.path().join("copied");
        let out = std::process::Command::new(&skopeo)
            .args(["--insecure-policy", "copy"])
            .arg(format!("oci-archive:{}", file.display()))
            .arg(format!("dir:{}", dir.display()))
            .output()
            .unwrap();
        assert!(out.status.success(), "skopeo copy: {}", String::from_utf8_lossy(&out.stderr));
        let gz = std::fs::read(dir.join(s.layer_digest.strip_prefix("sha256:").unwrap())).unwrap();
        let mut tar_bytes = Vec::new();
        flate2::read::GzDecoder::new(&gz[..]).read_to_end(&mut tar_bytes).unwrap();
        let files = files_of(&tar_bytes);
        assert_eq!((files[1].0.as_str(), files[1].1, &files[1].4), ("disk/pvagent.qcow2", 107, &qcow2));
    }
}
