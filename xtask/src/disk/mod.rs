//! `cargo xtask image`: the agent as a bootable disk, the way OpenStack,
//! KubeVirt, Proxmox or oVirt boot a guest. The x86_64 disk is one hybrid
//! that boots under both firmware kinds ([`layout`]): a legacy BIOS runs
//! the protective MBR's boot code, which loads the agent's ROM from the
//! BIOS boot partition; UEFI runs `\EFI\BOOT\BOOTX64.EFI` from the EFI
//! System Partition, which embeds the agent ([`efi`]). The aarch64 disk
//! (`--arch aarch64`) is UEFI only: `\EFI\BOOT\BOOTAA64.EFI` on the ESP.
//! `--script` bakes a script into both copies of the x86_64 agent
//! ([`baked`]; the aarch64 agent has no area for it). `--format qcow2`
//! converts with `qemu-img`; `--containerdisk` also writes a KubeVirt
//! containerDisk ([`oci`]).
//!
//! The disk boards (`boot = "disk"`) boot the same disk: made once per run
//! of the tool from the image under test ([`crate::images`]), copied into
//! every run's directory (with the row's script baked in for `script_via =
//! "image"`) by [`crate::qemu_cmd::QemuCmd::write_files`].

pub mod baked;
pub mod efi;
pub mod layout;
pub mod oci;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use object::{Object, ObjectSection};

pub use layout::Parts;

use crate::arch::Arch;

/// The boot sector's section in the x86_64 ELF.
pub const MBR_SECTION: &str = ".pvagent_mbr";

impl Parts {
    /// The parts of the agent `elf` and the loader `efi` (which must embed
    /// that ELF, see [`efi::check_embeds`]).
    pub fn new(elf: &[u8], efi: Vec<u8>) -> Result<Parts> {
        let file = object::File::parse(elf).context("parsing the agent image (ELF)")?;
        let section = file
            .section_by_name(MBR_SECTION)
            .with_context(|| format!("the image has no {MBR_SECTION} section (is it the x86_64 agent?)"))?;
        let boot_sector = section.data().context("reading the boot sector section")?.to_vec();
        ensure!(
            boot_sector.len() == layout::BOOTSTRAP_LEN,
            "{MBR_SECTION} is {} bytes, the MBR's bootstrap area {}",
            boot_sector.len(),
            layout::BOOTSTRAP_LEN
        );
        let (rom, rom_entry) = crate::rom::build_with_entry(elf)?;
        efi::check_embeds(&efi, elf).context("the UEFI loader does not embed this agent")?;
        Ok(Parts { boot_sector, rom, rom_entry, efi })
    }
}

/// The disk of the agent `elf` with no script: builds the UEFI loader of
/// its architecture around it (cargo) and lays them out: the x86_64 hybrid
/// disk, the aarch64 UEFI-only one.
pub fn make(root: &Path, elf: &Path, quiet: bool) -> Result<Vec<u8>> {
    let bytes = std::fs::read(elf).with_context(|| format!("reading {}", elf.display()))?;
    let arch =
        crate::images::arch_of_elf(&bytes).with_context(|| format!("{} is not an agent image", elf.display()))?;
    layout::loader_name(arch)?;
    let efi = efi::build(root, arch, elf, quiet)?;
    match arch {
        Arch::X86_64 => layout::build(&Parts::new(&bytes, efi)?),
        _ => layout::build_uefi(&efi, arch),
    }
}

/// Writes the disk of the agent `elf` to `out` (raw, sparse): what a disk
/// board's runs copy.
pub fn write(elf: &Path, out: &Path) -> Result<()> {
    let disk = make(&crate::agent::workspace_root(), elf, true)?;
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    layout::write_sparse(out, &disk)
}

/// Why a script cannot be baked into a disk of `arch`'s agent (`None`: it
/// can): only the x86_64 agent has the area.
pub fn bake_problem(arch: Arch) -> Option<String> {
    (arch != Arch::X86_64).then(|| {
        format!(
            "the {arch} agent has no baked-script area (it is x86_64's: the ROM and BOOTX64.EFI); under UEFI \
             on {arch} the script comes from fw_cfg only (-fw_cfg name=opt/pvagent/script,string=…)"
        )
    })
}

/// Bakes `script` into both copies of the agent on `disk` (the ROM in the
/// BIOS boot partition, the loader on the ESP); an empty script empties
/// them. A disk of another architecture than x86_64 has nothing to bake
/// into: an error, but for the empty script.
pub fn bake(disk: &mut [u8], script: &str) -> Result<()> {
    if let Some(p) = baked::problem(script) {
        bail!("{p}");
    }
    if let Some(p) = bake_problem(layout::loader_arch(disk)?) {
        if script.is_empty() {
            return Ok(());
        }
        bail!("{p}");
    }
    let rom = &mut layout::bios_boot_partition(disk)?[..crate::rom::ROM_SIZE];
    baked::patch(rom, script, "the ROM in the BIOS boot partition")?;
    layout::edit_efi(disk, |efi| baked::patch(efi, script, "the UEFI loader (\\EFI\\BOOT\\BOOTX64.EFI)"))
}

/// The scripts baked into the disk's two copies of the agent (ROM, loader).
pub fn baked_scripts(disk: &mut [u8]) -> Result<(Option<String>, Option<String>)> {
    let rom = baked::read(&layout::bios_boot_partition(disk)?[..crate::rom::ROM_SIZE])?;
    let efi = baked::read(&layout::read_efi(disk)?)?;
    Ok((rom, efi))
}

/// A run's copy of the disk `base` at `out`, with `script` baked in (`None`:
/// as it is).
pub fn write_run_copy(base: &Path, script: Option<&str>, out: &Path) -> Result<()> {
    let mut disk = std::fs::read(base).with_context(|| format!("reading the disk {}", base.display()))?;
    if let Some(s) = script {
        bake(&mut disk, s).with_context(|| format!("baking the script into {}", out.display()))?;
    }
    layout::write_sparse(out, &disk)
}

/// `qemu-img convert -O qcow2 raw out`.
pub fn convert_qcow2(raw: &Path, out: &Path) -> Result<()> {
    let Some(qemu_img) = crate::util::find_program("qemu-img") else {
        bail!("qemu-img is not installed (Debian: apt-get install qemu-utils; `cargo xtask setup` does it)");
    };
    let st = Command::new(qemu_img)
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(raw)
        .arg(out)
        .status()
        .context("running qemu-img")?;
    ensure!(st.success(), "qemu-img convert -f raw -O qcow2 {} {} failed ({st})", raw.display(), out.display());
    Ok(())
}

/// The disk's format (`--format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Raw,
    Qcow2,
}

/// `cargo xtask image`.
#[derive(clap::Args, Debug, Clone)]
#[command(after_help = "The x86_64 disk boots under UEFI (\\EFI\\BOOT\\BOOTX64.EFI on its EFI System Partition) and \
    under a legacy BIOS (the protective MBR's boot code loads the agent from the BIOS boot partition). The agent \
    takes its script from fw_cfg opt/pvagent/script, else an SMBIOS OEM string pvagent:script=<script>, else the \
    script baked in here.\n\nThe aarch64 disk (--arch aarch64) boots under UEFI only \
    (\\EFI\\BOOT\\BOOTAA64.EFI; QEMU: -M virt,acpi=off with AAVMF), and its agent takes its script from fw_cfg \
    only (no --script).\n\nExamples:\n  cargo xtask image\n  cargo xtask image --script 'pvpanic.panicked' \
    --format qcow2 -o pvagent.qcow2\n  cargo xtask image --containerdisk pvagent-containerdisk.tar\n  \
    cargo xtask image --arch aarch64 --format qcow2 -o pvagent-aarch64.qcow2")]
pub struct ImageArgs {
    /// The agent's architecture: x86_64 (a hybrid UEFI and BIOS disk) or aarch64 (UEFI only)
    #[arg(long, value_enum, default_value = "x86_64")]
    pub arch: ImageArch,
    /// Bake this script into the disk (at most 1024 bytes; x86_64 only); fw_cfg and SMBIOS still win over it
    #[arg(long)]
    pub script: Option<String>,
    /// The disk's format
    #[arg(long, value_enum, default_value = "raw")]
    pub format: Format,
    /// Where to write the disk [default: target/pvagent.raw or target/pvagent.qcow2; aarch64:
    /// target/pvagent-aarch64.raw or .qcow2]
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Also write a KubeVirt containerDisk to FILE: an OCI image archive with /disk/pvagent.qcow2
    /// (UID/GID 107), for `skopeo copy oci-archive:FILE docker://…` or `podman load -i FILE`
    #[arg(long, value_name = "FILE")]
    pub containerdisk: Option<PathBuf>,
    /// The agent image (ELF) to put on the disk, of --arch's architecture (not built) [default: built, in
    /// the target dir]
    #[arg(long, value_name = "PATH")]
    pub image: Option<PathBuf>,
}

/// `--arch`: the architectures that have a disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ImageArch {
    #[value(name = "x86_64")]
    X86_64,
    Aarch64,
}

impl From<ImageArch> for Arch {
    fn from(a: ImageArch) -> Arch {
        match a {
            ImageArch::X86_64 => Arch::X86_64,
            ImageArch::Aarch64 => Arch::Aarch64,
        }
    }
}

/// The disk's file name in the target dir when `-o` is not given:
/// `pvagent.raw` (x86_64), `pvagent-aarch64.raw`, or `.qcow2`.
pub fn default_name(arch: Arch, format: Format) -> String {
    let ext = match format {
        Format::Raw => "raw",
        Format::Qcow2 => "qcow2",
    };
    match arch {
        Arch::X86_64 => format!("pvagent.{ext}"),
        other => format!("pvagent-{other}.{ext}"),
    }
}

/// `cargo xtask image`: builds what is needed and writes the disk (and the
/// containerDisk); returns what was written, for the caller to print.
pub fn run(root: &Path, args: &ImageArgs) -> Result<Vec<String>> {
    let arch = Arch::from(args.arch);
    let script = args.script.as_deref().unwrap_or("");
    if let Some(p) = baked::problem(script) {
        bail!("--script: {p}");
    }
    if let (Some(p), Some(_)) = (bake_problem(arch), &args.script) {
        bail!("--script: {p}");
    }
    let elf = match &args.image {
        Some(p) => {
            let p = crate::util::image_file(p.clone()).map_err(anyhow::Error::msg)?;
            let of = crate::images::arch_of_file(&p)?;
            ensure!(of == arch, "--image {} is the {of} agent, and the disk is {arch}'s (--arch {arch})", p.display());
            p
        }
        None => {
            let arches = [arch].into_iter().collect();
            crate::images::build(root, &arches)?.remove(&arch).with_context(|| format!("no {arch} image"))?
        }
    };
    let mut disk = make(root, &elf, false)?;
    bake(&mut disk, script)?;
    let target = crate::util::target_dir(root);
    let output = args.output.clone().unwrap_or_else(|| target.join(default_name(arch, args.format)));
    if let Some(dir) = output.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = tempfile::tempdir().context("creating a temporary directory")?;
    let what = if arch != Arch::X86_64 {
        format!(
            "{arch}, UEFI only (\\EFI\\BOOT\\{}): the agent takes its script from fw_cfg, else halts after its inventory",
            layout::loader_name(arch)?
        )
    } else if script.is_empty() {
        "no script: the agent takes it from fw_cfg or an SMBIOS OEM string, else halts after its inventory".into()
    } else {
        format!("script baked in: {script}")
    };
    let mut lines = Vec::new();
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let raw = match args.format {
        Format::Raw => output.clone(),
        Format::Qcow2 => tmp.path().join("pvagent.raw"),
    };
    layout::write_sparse(&raw, &disk)?;
    if args.format == Format::Qcow2 {
        convert_qcow2(&raw, &output)?;
    }
    lines.push(format!(
        "{} ({}, {} bytes, {} MiB disk; {what})",
        output.display(),
        match args.format {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
        },
        size(&output),
        layout::DISK_BYTES >> 20
    ));
    if let Some(archive) = &args.containerdisk {
        let qcow2 = if args.format == Format::Qcow2 {
            output.clone()
        } else {
            let q = tmp.path().join("pvagent.qcow2");
            convert_qcow2(&raw, &q)?;
            q
        };
        let bytes = std::fs::read(&qcow2).with_context(|| format!("reading {}", qcow2.display()))?;
        let summary = oci::write_archive(&bytes, arch, archive)?;
        lines.push(format!(
            "{} (KubeVirt containerDisk, OCI image archive, {} bytes: /disk/{} owned by {}:{}; manifest {})",
            archive.display(),
            size(archive),
            oci::DISK_NAME,
            oci::QEMU_UID,
            oci::QEMU_UID,
            summary.manifest_digest
        ));
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Baking reaches both copies of the agent, and only them.
    #[test]
    fn baking_reaches_the_rom_and_the_loader() {
        let mut p = layout::tests::parts(20_000);
        let area = baked::tests::with_area(baked::AREA_LEN, 0);
        p.rom[0x8000..0x8000 + area.len()].copy_from_slice(&area);
        p.efi[7000..7000 + area.len()].copy_from_slice(&area);
        let mut disk = layout::build(&p).unwrap();
        let before = disk.clone();
        assert_eq!(baked_scripts(&mut disk).unwrap(), (None, None));
        bake(&mut disk, "log:baked; pvpanic.panicked").unwrap();
        let s = Some("log:baked; pvpanic.panicked".to_string());
        assert_eq!(baked_scripts(&mut disk).unwrap(), (s.clone(), s));
        let changed: Vec<usize> = (0..disk.len()).filter(|&i| disk[i] != before[i]).collect();
        assert!(changed.len() <= 2 * 27 + 8, "{} bytes changed", changed.len());
        // Too long: refused before anything is written, naming the limit.
        let e = bake(&mut disk, &"x".repeat(1025)).unwrap_err().to_string();
        assert!(e.contains("at most 1024"), "{e}");
        // A disk whose agent has no area (an older build): says which copy.
        let mut old = layout::build(&layout::tests::parts(100)).unwrap();
        let e = bake(&mut old, "halt").unwrap_err().to_string();
        assert!(e.contains("the ROM in the BIOS boot partition has no baked-script area"), "{e}");
    }

    /// An aarch64 disk has no baked-script area: baking a script is an
    /// error that says where its script comes from instead; the empty
    /// script (nothing to bake) is fine, and a run's copy without a script
    /// is the disk as it is.
    #[test]
    fn an_aarch64_disk_takes_no_baked_script() {
        let p = layout::tests::parts(9000);
        let mut disk = layout::build_uefi(&p.efi, Arch::Aarch64).unwrap();
        let before = disk.clone();
        let e = bake(&mut disk, "pvpanic.panicked").unwrap_err().to_string();
        assert!(e.contains("the aarch64 agent has no baked-script area") && e.contains("fw_cfg only"), "{e}");
        bake(&mut disk, "").unwrap();
        assert!(disk == before);
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("base.raw");
        layout::write_sparse(&base, &disk).unwrap();
        let out = tmp.path().join("run.raw");
        write_run_copy(&base, None, &out).unwrap();
        assert!(std::fs::read(&out).unwrap() == disk);
        let e = write_run_copy(&base, Some("halt"), &out).unwrap_err();
        assert!(format!("{e:#}").contains("no baked-script area"), "{e:#}");
        assert_eq!(bake_problem(Arch::X86_64), None);
    }

    /// `cargo xtask image --arch aarch64`: what does not apply is refused
    /// before anything is built, naming why.
    #[test]
    fn image_options_that_do_not_apply_to_aarch64() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            image: ImageArgs,
        }
        let parse = |args: &[&str]| Cli::try_parse_from([&["image"], args].concat()).map(|c| c.image);
        assert_eq!(parse(&[]).unwrap().arch, ImageArch::X86_64);
        assert_eq!(default_name(Arch::X86_64, Format::Qcow2), "pvagent.qcow2");
        assert_eq!(default_name(Arch::Aarch64, Format::Raw), "pvagent-aarch64.raw");
        assert_eq!(Arch::from(parse(&["--arch", "aarch64"]).unwrap().arch), Arch::Aarch64);
        assert!(parse(&["--arch", "s390x"]).is_err());
        let root = Path::new("/nonexistent");
        let e = run(root, &parse(&["--arch", "aarch64", "--script", "halt"]).unwrap()).unwrap_err().to_string();
        assert!(e.starts_with("--script: the aarch64 agent has no baked-script area"), "{e}");
        // An image of the other architecture.
        let tmp = tempfile::tempdir().unwrap();
        let elf = tmp.path().join("pvagent");
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        (h[4], h[5], h[18]) = (2, 1, 62);
        std::fs::write(&elf, &h).unwrap();
        let args = parse(&["--arch", "aarch64", "--image", elf.to_str().unwrap()]).unwrap();
        let e = run(root, &args).unwrap_err().to_string();
        assert!(e.contains("is the x86_64 agent, and the disk is aarch64's (--arch aarch64)"), "{e}");
    }

    #[test]
    fn a_run_copy_is_the_base_with_the_script() {
        let tmp = tempfile::tempdir().unwrap();
        let mut p = layout::tests::parts(9000);
        let area = baked::tests::with_area(baked::AREA_LEN, 0);
        p.rom[..area.len()].copy_from_slice(&area);
        p.efi[..area.len()].copy_from_slice(&area);
        let base = tmp.path().join("base.raw");
        layout::write_sparse(&base, &layout::build(&p).unwrap()).unwrap();
        let out = tmp.path().join("run.raw");
        write_run_copy(&base, Some("halt"), &out).unwrap();
        let mut d = std::fs::read(&out).unwrap();
        assert_eq!(baked_scripts(&mut d).unwrap().0.as_deref(), Some("halt"));
        write_run_copy(&base, None, &out).unwrap();
        assert!(std::fs::read(&out).unwrap() == std::fs::read(&base).unwrap());
        let e = write_run_copy(&tmp.path().join("nope"), None, &out).unwrap_err();
        assert!(format!("{e:#}").contains("reading the disk"), "{e:#}");
    }
}

/// A disk board's command line and run files ([`crate::qemu_cmd`]).
#[cfg(test)]
mod run_tests {
    use std::path::Path;

    use crate::qemu_cmd::{Delivery, QemuCmd};

    fn board(extra: &str) -> crate::config::Board {
        crate::config::parse_board(
            Path::new("boards/q.toml"),
            &format!(
                "name = \"q\"\ndescription = \"d\"\narch = \"x86_64\"\nbinary = \"qemu-system-x86_64\"\n\
                 machine = \"q35,smm=on\"\naccel = \"tcg\"\nmemory = \"128M\"\npackage = \"qemu-system-x86\"\n\
                 boot = \"disk\"\n{extra}"
            ),
            Path::new("/w"),
        )
        .unwrap()
    }

    const UEFI: &str = "[disk]\nbus = \"virtio-blk\"\n[uefi]\ncode = \"/fw/CODE.fd\"\nvars = \"/fw/VARS,x.fd\"\n\
                        package = \"ovmf\"\nsecure_boot = true\n";

    #[test]
    fn the_command_line_of_a_disk_board() {
        let a = QemuCmd::new(&board(UEFI), Path::new("/run/pvagent-x86_64.disk.raw"))
            .files_in(Path::new("/r/case"))
            .script(Some("log:a,b; pvpanic.panicked"), Delivery::Smbios)
            .argv();
        let at = |x: &str| a.iter().position(|y| y == x).unwrap_or_else(|| panic!("{x} in {a:?}"));
        assert_eq!(a[at("if=pflash,format=raw,unit=0,readonly=on,file=/fw/CODE.fd") - 1], "-drive");
        at("if=pflash,format=raw,unit=1,file=/r/case/uefi-vars.fd");
        assert_eq!(a[at("driver=cfi.pflash01,property=secure,value=on") - 1], "-global");
        let drive = at("if=none,id=disk0,format=raw,file=/r/case/disk.raw");
        assert_eq!(a[drive + 2], "virtio-blk-pci,drive=disk0,bootindex=0");
        assert!(!a.iter().any(|x| x == "-kernel" || x == "-bios" || x.contains("pvagent-x86_64.disk.raw")), "{a:?}");
        assert_eq!(a[a.len() - 2..], ["-smbios", "type=11,value=pvagent:script=log:a,,b; pvpanic.panicked"]);
        // Baked into the disk: no argument at all.
        let b = QemuCmd::new(&board(UEFI), Path::new("/d")).script(Some("halt"), Delivery::Image).argv();
        assert!(!b.iter().any(|x| x.contains("halt")), "{b:?}");
        // The legacy BIOS: no pflash; ide.
        let c = QemuCmd::new(&board("[disk]\nbus = \"ide\"\n"), Path::new("/d")).argv();
        assert!(!c.iter().any(|x| x.contains("pflash")), "{c:?}");
        assert!(c.iter().any(|x| x == "ide-hd,drive=disk0,bus=ide.0,bootindex=0"), "{c:?}");
    }

    /// Each run writes its own disk (the script baked in for `image`) and
    /// its own copy of the UEFI variables; a missing template is an error
    /// naming the package.
    #[test]
    fn each_run_writes_its_disk_and_variables() {
        let tmp = tempfile::tempdir().unwrap();
        let mut p = super::layout::tests::parts(4000);
        let area = super::baked::tests::with_area(super::baked::AREA_LEN, 0);
        p.rom[..area.len()].copy_from_slice(&area);
        p.efi[..area.len()].copy_from_slice(&area);
        let base = tmp.path().join("base.raw");
        super::layout::write_sparse(&base, &super::layout::build(&p).unwrap()).unwrap();
        let vars = tmp.path().join("VARS.fd");
        std::fs::write(&vars, b"vars").unwrap();
        let uefi = format!(
            "[disk]\nbus = \"virtio-blk\"\n[uefi]\ncode = \"/fw/CODE.fd\"\nvars = \"{}\"\npackage = \"ovmf\"\n",
            vars.display()
        );
        let run = tmp.path().join("run");
        std::fs::create_dir(&run).unwrap();
        let cmd = QemuCmd::new(&board(&uefi), &base).files_in(&run).script(Some("pvpanic.panicked"), Delivery::Image);
        cmd.write_files().unwrap();
        let mut disk = std::fs::read(run.join("disk.raw")).unwrap();
        let s = Some("pvpanic.panicked".to_string());
        assert_eq!(super::baked_scripts(&mut disk).unwrap(), (s.clone(), s));
        assert_eq!(std::fs::read(run.join("uefi-vars.fd")).unwrap(), b"vars");
        // Another delivery: the disk as it is.
        let cmd = QemuCmd::new(&board(&uefi), &base).files_in(&run).script(Some("x"), Delivery::FwCfg);
        cmd.write_files().unwrap();
        assert!(std::fs::read(run.join("disk.raw")).unwrap() == std::fs::read(&base).unwrap());
        let gone = uefi.replace(&vars.display().to_string(), "/nonexistent/VARS.fd");
        let e = QemuCmd::new(&board(&gone), &base).files_in(&run).write_files().unwrap_err();
        assert!(format!("{e:#}").contains("package ovmf"), "{e:#}");
        // A baked script over the limit fails the run's set-up, naming it.
        let long = "x".repeat(1025);
        let cmd = QemuCmd::new(&board(&uefi), &base).files_in(&run).script(Some(&long), Delivery::Image);
        assert!(format!("{:#}", cmd.write_files().unwrap_err()).contains("at most 1024"));
    }

    /// What `cargo xtask setup` installs for the disk boards: the firmware
    /// files' package, qemu-utils and skopeo, and the loader's Rust target.
    #[test]
    fn setup_of_the_disk_boards() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let boards = crate::config::load_boards(&root.join("boards"), root).unwrap();
        let pick = |names: &[&str]| -> Vec<&crate::config::Board> {
            boards.iter().filter(|b| names.contains(&b.name.as_str())).collect()
        };
        let want = crate::setup::disk_packages(&pick(&["q35-ovmf", "pc-disk", "q35-ovmf-secureboot"]));
        let pkgs: Vec<(&str, &str)> = want.iter().map(|(w, p)| (w.as_str(), p.as_str())).collect();
        for w in [
            ("/usr/share/OVMF/OVMF_CODE_4M.fd", "ovmf"),
            ("/usr/share/OVMF/OVMF_VARS_4M.ms.fd", "ovmf"),
            ("qemu-img", "qemu-utils"),
            ("skopeo", "skopeo"),
        ] {
            assert!(pkgs.contains(&w), "{w:?} in {pkgs:?}");
        }
        assert!(crate::setup::disk_packages(&pick(&["pc", "q35"])).is_empty());
        assert!(crate::setup::rust_targets(&pick(&["pc-disk"])).contains(&"x86_64-unknown-uefi"));
        assert!(!crate::setup::rust_targets(&pick(&["pc"])).contains(&"x86_64-unknown-uefi"));
        // virt-uefi: AAVMF's package, and the aarch64 loader's target (not x86_64's).
        let want = crate::setup::disk_packages(&pick(&["virt-uefi"]));
        let pkgs: Vec<(&str, &str)> = want.iter().map(|(w, p)| (w.as_str(), p.as_str())).collect();
        for w in [
            ("/usr/share/AAVMF/AAVMF_CODE.fd", "qemu-efi-aarch64"),
            ("/usr/share/AAVMF/AAVMF_VARS.fd", "qemu-efi-aarch64"),
            ("qemu-img", "qemu-utils"),
        ] {
            assert!(pkgs.contains(&w), "{w:?} in {pkgs:?}");
        }
        assert_eq!(
            crate::setup::rust_targets(&pick(&["virt-uefi", "virt"])),
            ["aarch64-unknown-none", "aarch64-unknown-uefi"]
        );
        let both = crate::setup::rust_targets(&pick(&["virt-uefi", "q35-ovmf"]));
        assert!(both.contains(&"aarch64-unknown-uefi") && both.contains(&"x86_64-unknown-uefi"), "{both:?}");
    }

    /// An aarch64 disk board: AAVMF in pflash, the disk on virtio-blk, the
    /// script through fw_cfg, no -kernel.
    #[test]
    fn the_command_line_of_the_aarch64_disk_board() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let boards = crate::config::load_boards(&root.join("boards"), root).unwrap();
        let board = boards.iter().find(|b| b.name == "virt-uefi").unwrap();
        let a = QemuCmd::new(board, Path::new("/run/pvagent-aarch64.disk.raw"))
            .files_in(Path::new("/r/case"))
            .script(Some("pvpanic.panicked"), Delivery::of(board.script_via, Path::new("/r/case")))
            .argv();
        assert_eq!(a[0], "qemu-system-aarch64");
        assert!(a.windows(2).any(|w| w == ["-machine", "virt,acpi=off"]), "{a:?}");
        assert!(a.iter().any(|x| x == "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/AAVMF/AAVMF_CODE.fd"));
        assert!(a.iter().any(|x| x == "if=pflash,format=raw,unit=1,file=/r/case/uefi-vars.fd"));
        assert!(a.windows(2).any(|w| w == ["-device", "virtio-blk-pci,drive=disk0,bootindex=0"]), "{a:?}");
        assert!(!a.iter().any(|x| x == "-kernel" || x == "-append" || x == "-global"), "{a:?}");
        assert_eq!(a[a.len() - 2..], ["-fw_cfg", "name=opt/pvagent/script,string=pvpanic.panicked"]);
    }
}
