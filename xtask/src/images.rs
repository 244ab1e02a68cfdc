//! The agent's images, one per guest architecture: which Rust target builds
//! each, where cargo puts it, building only the ones the selected boards
//! need, recognising a given image's architecture from its ELF header, and
//! what a board boots (the ELF with `-kernel`; for `boot = "firmware"`
//! boards the `-bios` ROM made from it, see [`crate::rom`]; on aarch64 the
//! flat arm64 `Image` made from it for `-kernel`, see [`crate::arm64_image`]).

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
    Arch::from_elf_machine(machine)
        .with_context(|| format!("ELF machine {machine} is none of the agent's ({})", Arch::known()))
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

/// Writes the flat arm64 `Image` made from the aarch64 image `elf` to `out`
/// (what `-kernel` boots on `-M virt`).
pub fn write_arm64_image(elf: &Path, out: &Path) -> Result<()> {
    let bytes = std::fs::read(elf).with_context(|| format!("reading {}", elf.display()))?;
    let image =
        crate::arm64_image::build(&bytes).with_context(|| format!("making an arm64 Image of {}", elf.display()))?;
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(out, image).with_context(|| format!("writing {}", out.display()))
}

/// What a board boots, made from an architecture's ELF.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootFile {
    /// The ELF itself, with `-kernel` (x86_64 PVH, s390x).
    Elf,
    /// The x86_64 `-bios` ROM ([`crate::rom`]).
    Rom,
    /// The flat arm64 `Image`, with `-kernel` ([`crate::arm64_image`]).
    Arm64Image,
    /// The disk of `cargo xtask image` ([`crate::disk`]: x86_64's hybrid,
    /// aarch64's UEFI-only), which every run copies.
    Disk,
}

impl BootFile {
    /// What a board of `arch` booting with `boot` needs.
    pub fn of(arch: Arch, boot: Boot) -> BootFile {
        match (arch, boot) {
            (_, Boot::Firmware) => BootFile::Rom,
            (_, Boot::Disk) => BootFile::Disk,
            (Arch::Aarch64, Boot::Kernel) => BootFile::Arm64Image,
            (Arch::X86_64 | Arch::S390x, Boot::Kernel) => BootFile::Elf,
        }
    }

    /// The file name of what is made from the ELF of `arch` (`None`: the
    /// ELF is booted as it is).
    pub fn made_name(self, arch: Arch) -> Option<String> {
        match self {
            BootFile::Elf => None,
            BootFile::Rom => Some(format!("pvagent-{arch}.rom")),
            BootFile::Arm64Image => Some(format!("pvagent-{arch}.Image")),
            BootFile::Disk => Some(format!("pvagent-{arch}.disk.raw")),
        }
    }

    /// Writes what is made from `elf` to `out`.
    pub fn write(self, elf: &Path, out: &Path) -> Result<()> {
        match self {
            BootFile::Elf => bail!("the ELF is booted as it is"),
            BootFile::Rom => write_rom(elf, out),
            BootFile::Arm64Image => write_arm64_image(elf, out),
            BootFile::Disk => crate::disk::write(elf, out),
        }
    }
}

/// The image in the target dir that `cargo xtask decode` decodes `serial`
/// with when none is given: of the built images, the one whose build id the
/// log's banner names, or x86_64's when none matches (decoding then says
/// why).
pub fn decoding_image(root: &Path, serial: &Path) -> PathBuf {
    let default = image_path(root, Arch::X86_64);
    let Ok(log) = crate::defmt_log::read_log_file(serial) else {
        return default;
    };
    Arch::ALL
        .into_iter()
        .map(|a| image_path(root, a))
        .filter(|p| p.is_file())
        .find(|p| {
            LogTable::from_file(p)
                .is_ok_and(|t| matches!(t.decode_log(&log.bytes).build, crate::defmt_log::BuildCheck::Match))
        })
        .unwrap_or(default)
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

/// One architecture's image, its defmt table and, made on demand, the file
/// boards boot when it is not the ELF (x86_64's ROM, aarch64's Image).
pub struct AgentImage {
    pub arch: Arch,
    pub elf: PathBuf,
    /// `Err` keeps the reason for agent.log.
    pub log_table: Result<LogTable, String>,
    /// The files made from the ELF, one per kind (x86_64: the ROM, the disk).
    made: [OnceLock<Result<PathBuf, String>>; 4],
}

/// The images of a run.
pub struct Images {
    images: BTreeMap<Arch, AgentImage>,
    /// Where ROMs and Images are written (the run directory).
    rom_dir: PathBuf,
}

impl Images {
    pub fn new(paths: BTreeMap<Arch, PathBuf>, rom_dir: PathBuf) -> Images {
        let images = paths
            .into_iter()
            .map(|(arch, elf)| {
                let log_table = LogTable::from_file(&elf).map_err(|e| format!("{e:#}"));
                (arch, AgentImage { arch, elf, log_table, made: Default::default() })
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

    /// What `board` boots: the ELF (`-kernel`), the ROM (`-bios`) or the
    /// arm64 Image (`-kernel`), see [`BootFile`].
    pub fn boot_file(&self, board: &Board) -> Result<PathBuf> {
        let image = self.for_board(board)?;
        match BootFile::of(board.arch, board.boot) {
            BootFile::Elf => Ok(image.elf.clone()),
            kind => image.made(kind, &self.rom_dir).map_err(anyhow::Error::msg),
        }
    }
}

impl AgentImage {
    pub fn table(&self) -> Option<&LogTable> {
        self.log_table.as_ref().ok()
    }

    /// The file of `kind` made from the ELF, written once to
    /// `<dir>/pvagent-<arch>.rom`, `….Image` or `….disk.raw`.
    pub fn made(&self, kind: BootFile, dir: &Path) -> Result<PathBuf, String> {
        self.made[kind as usize]
            .get_or_init(|| {
                let name =
                    kind.made_name(self.arch).ok_or_else(|| format!("the {} ELF is booted as it is", self.arch))?;
                let path = dir.join(name);
                kind.write(&self.elf, &path).map(|()| path).map_err(|e| format!("{e:#}"))
            })
            .clone()
    }

    /// The `-bios` ROM, written once to `<dir>/pvagent-<arch>.rom`.
    pub fn rom(&self, dir: &Path) -> Result<PathBuf, String> {
        self.made(BootFile::Rom, dir)
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
        assert_eq!(arch_of_elf(&elf_header(1, [183, 0])).unwrap(), Arch::Aarch64);
        let e = arch_of_elf(&elf_header(1, [40, 0])).unwrap_err().to_string();
        assert_eq!(e, "ELF machine 40 is none of the agent's (x86_64, s390x, aarch64)");
        assert!(arch_of_elf(b"MZ").is_err());
    }

    #[test]
    fn boot_files_per_architecture_and_boot() {
        assert_eq!(BootFile::of(Arch::X86_64, Boot::Kernel), BootFile::Elf);
        assert_eq!(BootFile::of(Arch::X86_64, Boot::Firmware), BootFile::Rom);
        assert_eq!(BootFile::of(Arch::S390x, Boot::Kernel), BootFile::Elf);
        assert_eq!(BootFile::of(Arch::Aarch64, Boot::Kernel), BootFile::Arm64Image);
        assert_eq!(BootFile::Arm64Image.made_name(Arch::Aarch64).unwrap(), "pvagent-aarch64.Image");
        assert_eq!(BootFile::Elf.made_name(Arch::S390x), None);
        assert_eq!(BootFile::of(Arch::Aarch64, Boot::Disk), BootFile::Disk);
        assert_eq!(BootFile::Disk.made_name(Arch::Aarch64).unwrap(), "pvagent-aarch64.disk.raw");
    }

    /// An aarch64 board boots the Image made (once, into the run directory)
    /// from the ELF; the ELF stays the image of the run (defmt table).
    #[test]
    fn an_aarch64_board_boots_the_image_made_per_run() {
        let tmp = tempfile::tempdir().unwrap();
        let elf = tmp.path().join("pvagent");
        std::fs::write(&elf, crate::arm64_image::tests::agent_like(0x2000)).unwrap();
        let run = tmp.path().join("run");
        let images = Images::new(BTreeMap::from([(Arch::Aarch64, elf.clone())]), run.clone());
        let board = crate::config::parse_board(
            Path::new("boards/virt.toml"),
            "name = \"virt\"\ndescription = \"d\"\narch = \"aarch64\"\nbinary = \"qemu-system-aarch64\"\n\
             machine = \"virt\"\naccel = \"tcg\"\nmemory = \"128M\"\npackage = \"qemu-system-arm\"\n",
            Path::new("/w"),
        )
        .unwrap();
        let file = images.boot_file(&board).unwrap();
        assert_eq!(file, run.join("pvagent-aarch64.Image"));
        let bytes = std::fs::read(&file).unwrap();
        assert_eq!(bytes.len(), 0x1008);
        assert_eq!(&bytes[56..60], b"ARM\x64");
        assert_eq!(images.boot_file(&board).unwrap(), file, "made once");
        assert_eq!(images.for_board(&board).unwrap().elf, elf);
        // A broken ELF: the reason, for the run's error.
        std::fs::write(&elf, b"\x7fELF").unwrap();
        let images = Images::new(BTreeMap::from([(Arch::Aarch64, elf)]), run);
        let e = format!("{:#}", images.boot_file(&board).unwrap_err());
        assert!(e.contains("making an arm64 Image of"), "{e}");
    }

    #[test]
    fn image_env_splits_like_path() {
        let v = split_env(std::ffi::OsStr::new("/a/x86:/b/s390::"));
        assert_eq!(v, vec![PathBuf::from("/a/x86"), PathBuf::from("/b/s390")]);
    }
}
