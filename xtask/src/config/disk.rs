//! A board that boots the agent from a disk (`boot = "disk"`): how the disk
//! is attached (`[disk]`) and, for UEFI, the firmware in pflash (`[uefi]`).
//! The disk is the one `cargo xtask image` writes (xtask/src/disk/), made
//! per run; see boards/q35-ovmf.toml for the fields.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::arch::Arch;
use crate::error::Problem;

/// `[disk]` of a board file.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct DiskFile {
    bus: DiskBus,
}

/// `[uefi]` of a board file.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct UefiFile {
    code: String,
    vars: String,
    package: String,
    #[serde(default)]
    secure_boot: bool,
}

/// How the disk reaches the guest (`[disk] bus = …`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DiskBus {
    /// `-device virtio-blk-pci` (what libvirt, Nova and KubeVirt default to).
    VirtioBlk,
    /// `-device ide-hd` on the machine's own controller: PIIX IDE on `pc`,
    /// the ICH9 AHCI on `q35`.
    Ide,
}

impl DiskBus {
    pub fn name(self) -> &'static str {
        match self {
            DiskBus::VirtioBlk => "virtio-blk",
            DiskBus::Ide => "ide",
        }
    }

    /// The `-device` value for the drive `drive`, first in the boot order.
    pub fn device(self, drive: &str) -> String {
        match self {
            DiskBus::VirtioBlk => format!("virtio-blk-pci,drive={drive},bootindex=0"),
            DiskBus::Ide => format!("ide-hd,drive={drive},bus=ide.0,bootindex=0"),
        }
    }
}

/// UEFI firmware in pflash: the code read-only, the variables a per-run
/// copy of `vars`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uefi {
    /// The firmware's code (`OVMF_CODE_4M.fd`), pflash unit 0, read-only.
    pub code: PathBuf,
    /// The variable store's template (`OVMF_VARS_4M.fd`); every run boots
    /// its own copy (pflash unit 1), as libvirt's `<nvram template=…>`.
    pub vars: PathBuf,
    /// Debian package that provides both files (`cargo xtask setup`).
    pub package: String,
    /// `-global driver=cfi.pflash01,property=secure,value=on`: the flash
    /// is writable from SMM only, as a Secure Boot firmware needs (the
    /// machine needs `smm=on`).
    pub secure_boot: bool,
}

/// What a `boot = "disk"` board boots and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskBoot {
    pub bus: DiskBus,
    /// `None`: the legacy BIOS (QEMU's SeaBIOS, or the board's `firmware`)
    /// boots the disk's MBR.
    pub uefi: Option<Uefi>,
}

impl DiskBoot {
    /// What the boot goes through, for people: "UEFI (OVMF_CODE_4M.fd)" or
    /// "the legacy BIOS".
    pub fn firmware_name(&self) -> String {
        match &self.uefi {
            Some(u) => format!(
                "UEFI ({}{})",
                u.code.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                if u.secure_boot { ", Secure Boot" } else { "" }
            ),
            None => "the legacy BIOS".into(),
        }
    }
}

/// A board's `[disk]` and `[uefi]` against its `boot` (x86_64 and aarch64
/// only, checked before), `arch`, `machine` and `firmware`: `Some` for a
/// disk board, or the field and its problem.
pub(super) fn parse(
    disk: Option<&DiskFile>,
    uefi: Option<&UefiFile>,
    boots_disk: bool,
    arch: Arch,
    machine: &str,
    has_firmware: bool,
) -> Result<Option<DiskBoot>, (&'static str, Problem)> {
    let err = |field, msg: String, fix: &str| Err((field, Problem::new(msg, fix)));
    if !boots_disk {
        if disk.is_some() {
            return err(
                "disk",
                "is set but the board does not boot a disk".into(),
                "set boot = \"disk\", or remove [disk]",
            );
        }
        if uefi.is_some() {
            return err(
                "uefi",
                "is set but the board does not boot a disk (the agent is a UEFI application only on the disk)".into(),
                "set boot = \"disk\", or remove [uefi]",
            );
        }
        return Ok(None);
    }
    let Some(disk) = disk else {
        return err(
            "disk",
            "is missing; a board with boot = \"disk\" says how the disk is attached".into(),
            "add [disk] with bus = \"virtio-blk\" or \"ide\"",
        );
    };
    if arch == Arch::Aarch64 {
        if disk.bus == DiskBus::Ide {
            return err(
                "disk.bus",
                "is \"ide\", and aarch64's virt machine has no IDE controller".into(),
                "set bus = \"virtio-blk\"",
            );
        }
        if uefi.is_none() {
            return err(
                "uefi",
                "is missing; on aarch64 the disk boots under UEFI only (no legacy BIOS, no boot sector)".into(),
                "add [uefi] with AAVMF's files (see boards/virt-uefi.toml)",
            );
        }
    }
    let uefi = match uefi {
        None => None,
        Some(u) => {
            if has_firmware {
                return err(
                    "firmware",
                    "is a -bios image, and [uefi] puts the firmware in pflash".into(),
                    "remove `firmware` (or [uefi] for a legacy BIOS boot)",
                );
            }
            for (field, v) in [("uefi.code", &u.code), ("uefi.vars", &u.vars), ("uefi.package", &u.package)] {
                if v.trim().is_empty() {
                    return err(field, "is empty".into(), "give it a value (see boards/q35-ovmf.toml)");
                }
            }
            for (field, v) in [("uefi.code", &u.code), ("uefi.vars", &u.vars)] {
                if !Path::new(v).is_absolute() {
                    return err(
                        field,
                        format!("{v} is not an absolute path"),
                        "name the firmware file of the package by its absolute path, e.g. \
                         /usr/share/OVMF/OVMF_CODE_4M.fd",
                    );
                }
            }
            if u.secure_boot && !machine.split(',').any(|o| o == "smm=on") {
                return err(
                    "machine",
                    format!(
                        "is \"{machine}\", and a Secure Boot firmware (uefi.secure_boot) needs SMM for its \
                         variable store"
                    ),
                    "add smm=on, e.g. machine = \"q35,smm=on\"",
                );
            }
            Some(Uefi {
                code: PathBuf::from(&u.code),
                vars: PathBuf::from(&u.vars),
                package: u.package.clone(),
                secure_boot: u.secure_boot,
            })
        }
    };
    Ok(Some(DiskBoot { bus: disk.bus, uefi }))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{Boot, ScriptVia};

    const Q35: &str = "name = \"q\"\ndescription = \"d\"\narch = \"x86_64\"\nbinary = \"qemu-system-x86_64\"\n\
                       machine = \"q35\"\naccel = \"tcg\"\nmemory = \"128M\"\npackage = \"qemu-system-x86\"\n";
    const UEFI: &str = "[uefi]\ncode = \"/usr/share/OVMF/OVMF_CODE_4M.fd\"\nvars = \"/usr/share/OVMF/OVMF_VARS_4M.fd\"\n\
                        package = \"ovmf\"\n";

    fn parse(text: &str) -> Result<crate::config::Board, String> {
        crate::config::parse_board(Path::new("boards/q.toml"), text, Path::new("/w"))
    }

    #[test]
    fn a_disk_board() {
        let b = parse(&format!("{Q35}boot = \"disk\"\n[disk]\nbus = \"virtio-blk\"\n{UEFI}")).unwrap();
        assert_eq!((b.boot, b.script_via), (Boot::Disk, ScriptVia::FwCfg));
        let d = b.disk.as_ref().unwrap();
        assert_eq!(d.bus, super::DiskBus::VirtioBlk);
        let u = d.uefi.as_ref().unwrap();
        assert_eq!(
            (u.code.to_str().unwrap(), u.package.as_str(), u.secure_boot),
            ("/usr/share/OVMF/OVMF_CODE_4M.fd", "ovmf", false)
        );
        assert_eq!(d.firmware_name(), "UEFI (OVMF_CODE_4M.fd)");
        // Scripts: fw_cfg, smbios and image, not -append.
        for via in [ScriptVia::FwCfg, ScriptVia::FwCfgFile, ScriptVia::Smbios, ScriptVia::Image] {
            assert_eq!(b.script_via_problem(via), None, "{via:?}");
        }
        assert!(b.script_via_problem(ScriptVia::Append).unwrap().contains("boots a disk"));
        let bios = parse(&format!("{Q35}boot = \"disk\"\n[disk]\nbus = \"ide\"\n")).unwrap();
        assert_eq!(bios.disk.as_ref().unwrap().firmware_name(), "the legacy BIOS");
        assert_eq!(super::DiskBus::Ide.device("disk0"), "ide-hd,drive=disk0,bus=ide.0,bootindex=0");
        // Other boards: no image delivery; SMBIOS on x86_64 only.
        let kernel = parse(Q35).unwrap();
        assert!(kernel.disk.is_none());
        assert!(kernel.script_via_problem(ScriptVia::Image).unwrap().contains("boots no disk"));
        assert_eq!(kernel.script_via_problem(ScriptVia::Smbios), None);
        let virt = parse(&Q35.replace("x86_64", "aarch64")).unwrap();
        assert!(virt.script_via_problem(ScriptVia::Smbios).unwrap().contains("x86_64 only"));
    }

    #[test]
    fn disk_board_errors_name_the_field_and_the_fix() {
        let disk = "boot = \"disk\"\n[disk]\nbus = \"virtio-blk\"\n";
        for (text, want) in [
            (format!("{Q35}boot = \"disk\"\n"), "field `disk`: is missing"),
            (format!("{Q35}[disk]\nbus = \"ide\"\n"), "field `disk`: is set but the board does not boot a disk"),
            (format!("{Q35}{UEFI}"), "field `uefi`: is set but the board does not boot a disk"),
            (format!("{Q35}boot = \"disk\"\n[disk]\nbus = \"scsi\"\n"), "scsi"),
            (format!("{Q35}boot = \"disk\"\n[disk]\nbus = \"ide\"\nextra = 1\n"), "extra"),
            (format!("{Q35}firmware = \"/x.rom\"\n{disk}{UEFI}"), "field `firmware`: is a -bios image"),
            (
                format!("{Q35}{disk}{}", UEFI.replace("\"/usr/share/OVMF/OVMF_VARS_4M.fd\"", "\"OVMF_VARS.fd\"")),
                "field `uefi.vars`: OVMF_VARS.fd is not an absolute path",
            ),
            (
                format!("{Q35}{disk}{UEFI}secure_boot = true\n"),
                "field `machine`: is \"q35\", and a Secure Boot firmware",
            ),
            (
                format!("{}{disk}", Q35.replace("x86_64", "s390x")),
                "field `boot`: \"disk\" (the disk of `cargo xtask image`) exists for x86_64 and aarch64 only",
            ),
            (
                format!("{Q35}{disk}script_via = \"append\"\n").replace(
                    "[disk]\nbus = \"virtio-blk\"\nscript_via = \"append\"\n",
                    "script_via = \"append\"\n[disk]\nbus = \"virtio-blk\"\n",
                ),
                "field `script_via`: \"append\" is impossible here",
            ),
            (format!("{Q35}script_via = \"image\"\n"), "field `script_via`: \"image\" is impossible here"),
        ] {
            let e = parse(&text).unwrap_err();
            assert!(e.contains(want) && e.contains("boards/q.toml"), "{want}: {e}");
        }
        let sb =
            parse(&format!("{}{disk}{UEFI}secure_boot = true\n", Q35.replace("\"q35\"", "\"q35,smm=on\""))).unwrap();
        assert!(sb.disk.unwrap().uefi.unwrap().secure_boot);
    }

    /// aarch64 disk boards: UEFI only, virtio-blk only, scripts through
    /// fw_cfg (no SMBIOS, no baked script, no -append).
    #[test]
    fn an_aarch64_disk_board() {
        let virt = Q35.replace("x86_64", "aarch64").replace("qemu-system-x86\"", "qemu-system-arm\"");
        let aavmf =
            UEFI.replace("OVMF/OVMF_CODE_4M", "AAVMF/AAVMF_CODE").replace("OVMF/OVMF_VARS_4M", "AAVMF/AAVMF_VARS");
        let b = parse(&format!("{virt}boot = \"disk\"\n[disk]\nbus = \"virtio-blk\"\n{aavmf}")).unwrap();
        assert_eq!((b.arch, b.boot, b.script_via), (crate::arch::Arch::Aarch64, Boot::Disk, ScriptVia::FwCfg));
        assert_eq!(b.disk.as_ref().unwrap().firmware_name(), "UEFI (AAVMF_CODE.fd)");
        assert_eq!(b.script_via_problem(ScriptVia::FwCfgFile), None);
        assert!(b.script_via_problem(ScriptVia::Image).unwrap().contains("the aarch64 agent has no baked-script area"));
        assert!(b.script_via_problem(ScriptVia::Smbios).unwrap().contains("x86_64 only"));
        assert!(b.script_via_problem(ScriptVia::Append).unwrap().contains("boots a disk"));
        for (text, want) in [
            (format!("{virt}boot = \"disk\"\n[disk]\nbus = \"virtio-blk\"\n"), "field `uefi`: is missing; on aarch64"),
            (format!("{virt}boot = \"disk\"\n[disk]\nbus = \"ide\"\n{aavmf}"), "field `disk.bus`: is \"ide\""),
            (
                format!("{virt}boot = \"disk\"\nscript_via = \"image\"\n[disk]\nbus = \"virtio-blk\"\n{aavmf}"),
                "field `script_via`: \"image\" is impossible here: the aarch64 agent has no baked-script area",
            ),
        ] {
            let e = parse(&text).unwrap_err();
            assert!(e.contains(want) && e.contains("fix:"), "{want}: {e}");
        }
    }

    /// The workspace's disk boards: what the rows and the README rely on.
    #[test]
    fn the_workspace_disk_boards() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let boards = crate::config::load_boards(&root.join("boards"), root).unwrap();
        let board = |n: &str| boards.iter().find(|b| b.name == n).unwrap().clone();
        let ovmf = board("q35-ovmf");
        let u = ovmf.disk.as_ref().unwrap().uefi.clone().unwrap();
        assert_eq!(
            (u.code.to_str(), u.vars.to_str(), u.secure_boot),
            (Some("/usr/share/OVMF/OVMF_CODE_4M.fd"), Some("/usr/share/OVMF/OVMF_VARS_4M.fd"), false)
        );
        let pc = board("pc-disk");
        assert!(pc.disk.as_ref().unwrap().uefi.is_none() && pc.firmware.is_none(), "SeaBIOS");
        let sb = board("q35-ovmf-secureboot");
        let u = sb.disk.unwrap().uefi.unwrap();
        assert!(u.secure_boot && u.code.ends_with("OVMF_CODE_4M.secboot.fd") && u.vars.ends_with("OVMF_VARS_4M.ms.fd"));
        for b in [&ovmf, &pc] {
            assert_eq!(b.bench.len(), 1, "{}", b.name);
            assert!(b.groups.contains(&"disk".to_string()));
        }
        // virt-uefi: AAVMF, acpi=off (else no device tree), not in @disk
        // (whose rows are x86_64's), two bench rows (with and without the
        // boot-menu wait).
        let arm = board("virt-uefi");
        let u = arm.disk.as_ref().unwrap().uefi.clone().unwrap();
        assert_eq!(
            (u.code.to_str(), u.vars.to_str(), u.package.as_str(), u.secure_boot),
            (Some("/usr/share/AAVMF/AAVMF_CODE.fd"), Some("/usr/share/AAVMF/AAVMF_VARS.fd"), "qemu-efi-aarch64", false)
        );
        assert_eq!(
            (arm.arch, arm.machine.as_str(), arm.boot),
            (crate::arch::Arch::Aarch64, "virt,acpi=off", Boot::Disk)
        );
        assert_eq!(arm.groups, ["aarch64-uefi"]);
        assert!(arm.args.windows(2).any(|w| w == ["-boot", "menu=on,splash-time=0"]), "{:?}", arm.args);
        let rows: Vec<&str> = arm.bench.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(rows, ["virt-uefi", "virt-uefi-wait"]);
    }
}
