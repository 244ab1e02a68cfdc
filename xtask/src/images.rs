//! The agent's images, one per guest architecture: which Rust target builds
//! each, where cargo puts it, building only the ones the selected boards
//! need, recognising a given image's architecture from its ELF header, and
//! what a board boots (the ELF with `-kernel`, or for `boot = "firmware"`
//! boards the `-bios` ROM made from it, see [`crate::rom`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Context, Result, bail};

use crate::config::{Board, Boot};
use crate::defmt_log::LogTable;
use crate::util::target_dir;

pub use crate::arch::Arch;

/// Cargo package of the agent (its image has the same name).
pub const PACKAGE: &str = "pvagent";

impl Arch {
    /// The board's architecture. Infallible since boards carry an [`Arch`];
    /// kept for callers that still expect a `Result`.
    pub fn of(board: &Board) -> Result<Arch> {
        Ok(board.arch)
    }
}

/// The architectures of `boards`, each once (never an error since boards
/// carry an [`Arch`]; a `Result` for the callers' `?`).
pub fn arches<'a>(boards: impl IntoIterator<Item = &'a Board>) -> Result<BTreeSet<Arch>> {
    Ok(boards.into_iter().map(|b| b.arch).collect())
}

/// Where `cargo build --release -p pvagent --target <arch's target>` puts the image.
pub fn image_path(root: &Path, arch: Arch) -> PathBuf {
    target_dir(root).join(arch.target()).join("release").join(PACKAGE)
}

/// The architecture of an agent image, from its ELF header.
pub fn arch_of_elf(bytes: &[u8]) -> Result<Arch> {
    if bytes.len() < 20 || &bytes[..4] != b"\x7fELF" {
        bail!("not an ELF file");
    }
    let machine = match bytes[5] {
        1 => u16::from_le_bytes([bytes[18], bytes[19]]),
        2 => u16::from_be_bytes([bytes[18], bytes[19]]),
        d => bail!("bad ELF data encoding {d}"),
    };
    Arch::from_elf_machine(machine).with_context(|| format!("ELF machine {machine} is neither x86_64 nor s390x"))
}

/// The architecture of the image at `path`.
pub fn arch_of_file(path: &Path) -> Result<Arch> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    arch_of_elf(&bytes).with_context(|| format!("{} is not an agent image", path.display()))
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// Builds the images of `arches` (one cargo invocation) and returns their paths.
pub fn build(root: &Path, arches: &BTreeSet<Arch>) -> Result<BTreeMap<Arch, PathBuf>> {
    if arches.is_empty() {
        return Ok(BTreeMap::new());
    }
    let mut args = vec!["build", "--release", "-p", PACKAGE];
    for a in arches {
        args.extend(["--target", a.target()]);
    }
    eprintln!("$ cargo {}", args.join(" "));
    let st = Command::new(cargo()).args(&args).current_dir(root).status().context("running cargo")?;
    if !st.success() {
        bail!("building the agent image failed ({st})");
    }
    arches
        .iter()
        .map(|&a| {
            let p = image_path(root, a);
            if !p.is_file() {
                bail!("cargo succeeded but {} does not exist", p.display());
            }
            Ok((a, p))
        })
        .collect()
}

/// Writes the `-bios` ROM made from the x86_64 image `elf` to `out`.
pub fn write_rom(elf: &Path, out: &Path) -> Result<()> {
    let bytes = std::fs::read(elf).with_context(|| format!("reading {}", elf.display()))?;
    let rom = crate::rom::build(&bytes).with_context(|| format!("making a ROM of {}", elf.display()))?;
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(out, rom).with_context(|| format!("writing {}", out.display()))
}

/// Environment variable with given images, `:`-separated (`PVAGENT_IMAGE`).
pub const IMAGE_ENV: &str = "PVAGENT_IMAGE";

/// Splits a `PVAGENT_IMAGE` value into paths.
pub fn split_env(value: &std::ffi::OsStr) -> Vec<PathBuf> {
    std::env::split_paths(value).filter(|p| !p.as_os_str().is_empty()).collect()
}

/// The images for `arches`: the given ones (recognised by their ELF header;
/// two of one architecture are an error), the others built.
pub fn resolve(root: &Path, given: &[PathBuf], arches: &BTreeSet<Arch>) -> Result<BTreeMap<Arch, PathBuf>> {
    let mut out = BTreeMap::new();
    for p in given {
        crate::util::image_file(p.clone()).map_err(anyhow::Error::msg)?;
        let a = arch_of_file(p)?;
        if let Some(other) = out.insert(a, p.clone()) {
            bail!("two {a} images given: {} and {}", other.display(), p.display());
        }
    }
    let missing: BTreeSet<Arch> = arches.iter().copied().filter(|a| !out.contains_key(a)).collect();
    out.extend(build(root, &missing)?);
    Ok(out)
}

/// One architecture's image, its defmt table and (x86_64, on demand) its ROM.
pub struct AgentImage {
    pub arch: Arch,
    pub elf: PathBuf,
    /// `Err` keeps the reason for agent.log.
    pub log_table: Result<LogTable, String>,
    rom: OnceLock<Result<PathBuf, String>>,
}

/// The images of a run.
pub struct Images {
    images: BTreeMap<Arch, AgentImage>,
    /// Where ROMs are written (the run directory).
    rom_dir: PathBuf,
}

impl Images {
    pub fn new(paths: BTreeMap<Arch, PathBuf>, rom_dir: PathBuf) -> Images {
        let images = paths
            .into_iter()
            .map(|(arch, elf)| {
                let log_table = LogTable::from_file(&elf).map_err(|e| format!("{e:#}"));
                (arch, AgentImage { arch, elf, log_table, rom: OnceLock::new() })
            })
            .collect();
        Images { images, rom_dir }
    }

    pub fn iter(&self) -> impl Iterator<Item = &AgentImage> {
        self.images.values()
    }

    /// The image for `board`'s architecture.
    pub fn for_board(&self, board: &Board) -> Result<&AgentImage> {
        let arch = board.arch;
        self.images.get(&arch).with_context(|| {
            format!(
                "no {arch} agent image for board {} (have: {})",
                board.name,
                self.images.keys().map(|a| a.as_str()).collect::<Vec<_>>().join(", ")
            )
        })
    }

    /// What `board` boots: the ELF (`-kernel`) or the ROM (`-bios`).
    pub fn boot_file(&self, board: &Board) -> Result<PathBuf> {
        let image = self.for_board(board)?;
        match board.boot {
            Boot::Kernel => Ok(image.elf.clone()),
            Boot::Firmware => image.rom(&self.rom_dir).map_err(anyhow::Error::msg),
        }
    }
}

impl AgentImage {
    pub fn table(&self) -> Option<&LogTable> {
        self.log_table.as_ref().ok()
    }

    /// The `-bios` ROM, written once to `<dir>/pvagent-<arch>.rom`.
    pub fn rom(&self, dir: &Path) -> Result<PathBuf, String> {
        self.rom
            .get_or_init(|| {
                let path = dir.join(format!("pvagent-{}.rom", self.arch));
                write_rom(&self.elf, &path).map(|()| path).map_err(|e| format!("{e:#}"))
            })
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elf_header(class_data: u8, machine: [u8; 2]) -> Vec<u8> {
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = 2;
        h[5] = class_data;
        h[18..20].copy_from_slice(&machine);
        h
    }

    #[test]
    fn arch_from_elf_header() {
        assert_eq!(arch_of_elf(&elf_header(1, [62, 0])).unwrap(), Arch::X86_64);
        assert_eq!(arch_of_elf(&elf_header(2, [0, 22])).unwrap(), Arch::S390x);
        assert!(arch_of_elf(&elf_header(1, [183, 0])).is_err());
        assert!(arch_of_elf(b"MZ").is_err());
    }

    #[test]
    fn image_env_splits_like_path() {
        let v = split_env(std::ffi::OsStr::new("/a/x86:/b/s390::"));
        assert_eq!(v, vec![PathBuf::from("/a/x86"), PathBuf::from("/b/s390")]);
    }
}
