//! The hybrid disk: one image that both firmware kinds boot.
//!
//! ```text
//! LBA 0            protective MBR; its bootstrap code is the agent's boot
//!                  sector (.pvagent_mbr), which a legacy BIOS runs
//! LBA 1..33        primary GPT (header, 128 entries)
//! LBA 2048..4095   partition 1, BIOS boot (21686148-6449-6E6F-744E-656564454649):
//!                  the 64 KiB -bios ROM of the agent at its start; the boot
//!                  sector reads its 128 sectors to 0x10000 and enters it
//! LBA 4096..14335  partition 2, EFI System (C12A7328-F81F-11D2-BA4B-00A0C93EC93B):
//!                  FAT16 with \EFI\BOOT\BOOTX64.EFI, the UEFI loader
//!                  that embeds the agent
//! LBA 16351..16383 backup GPT
//! ```
//!
//! The aarch64 disk ([`build_uefi`]) boots under UEFI only (there is no
//! legacy BIOS on aarch64): no boot code, no BIOS boot partition.
//!
//! ```text
//! LBA 0            protective MBR (no boot code)
//! LBA 1..33        primary GPT (header, 128 entries)
//! LBA 2048..12287  partition 1, EFI System: FAT16 with \EFI\BOOT\BOOTAA64.EFI
//! LBA 16351..16383 backup GPT
//! ```
//!
//! 8 MiB in all (a few hundred KiB of it written: the raw file is sparse,
//! the qcow2 small). Every byte is a function of the agent's ELF and the
//! loader: the GUIDs, the FAT's volume id and its timestamps are fixed, so
//! the same build gives the same disk (and the same containerDisk digest).

use std::collections::BTreeMap;
use std::io::{Cursor, Read, Seek, SeekFrom, Write};

use anyhow::{Context, Result, bail, ensure};
use gpt::partition::Partition;
use gpt::partition_types;

use crate::arch::Arch;

/// Bytes per sector (the GPT's logical block).
pub const SECTOR: u64 = 512;
/// The whole disk.
pub const DISK_BYTES: u64 = 8 << 20;
/// Partition 1, the BIOS boot partition: first sector and length.
pub const BIOS_BOOT_LBA: u64 = 2048;
pub const BIOS_BOOT_SECTORS: u64 = 2048;
/// Partition 2, the EFI System Partition: first sector and length.
pub const ESP_LBA: u64 = 4096;
pub const ESP_SECTORS: u64 = 10240;
/// The UEFI-only disk's (aarch64) EFI System Partition, partition 1: its
/// first sector (its length is [`ESP_SECTORS`]).
pub const UEFI_ESP_LBA: u64 = 2048;
/// Where the UEFI loader is on the ESP: the removable-media path that
/// firmware boots without a boot entry, `\EFI\BOOT\` and the
/// architecture's name ([`loader_name`]).
pub const EFI_DIR: [&str; 2] = ["EFI", "BOOT"];
/// The x86_64 loader's path on the hybrid disk's ESP.
pub const EFI_PATH: [&str; 3] = ["EFI", "BOOT", "BOOTX64.EFI"];

/// The agent's boot sector code (`.pvagent_mbr`): the MBR's bootstrap area.
pub const BOOTSTRAP_LEN: usize = 0x1b8;
/// Where the boot sector keeps the LBA it reads the ROM from (u64 LE, the
/// DAP's LBA at 0x180 + 8) …
pub const MBR_LBA_AT: usize = 0x188;
/// … and the ROM's entry offset (u16 LE, the far pointer's offset at 0x190).
pub const MBR_ENTRY_AT: usize = 0x190;
/// The ROM's sectors (128: the boot sector reads 64 KiB).
pub const ROM_SECTORS: u64 = (crate::rom::ROM_SIZE as u64) / SECTOR;

/// The disk's GUID and the partitions' (fixed: reproducible images).
pub const DISK_GUID: uuid::Uuid = uuid::Uuid::from_u128(0x70766167_656e_7400_8000_000000000000);
pub const BIOS_BOOT_GUID: uuid::Uuid = uuid::Uuid::from_u128(0x70766167_656e_7400_8000_000000000001);
pub const ESP_GUID: uuid::Uuid = uuid::Uuid::from_u128(0x70766167_656e_7400_8000_000000000002);
/// The FAT volume's id and label.
pub const VOLUME_ID: u32 = 0x7076_6167;
pub const VOLUME_LABEL: [u8; 11] = *b"PVAGENT    ";

/// What goes on the disk: the boot sector, the ROM and the UEFI loader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parts {
    /// `.pvagent_mbr` of the x86_64 ELF, [`BOOTSTRAP_LEN`] bytes.
    pub boot_sector: Vec<u8>,
    /// The 64 KiB `-bios` ROM ([`crate::rom`]).
    pub rom: Vec<u8>,
    /// Offset of `pvagent_rom_entry` in the ROM.
    pub rom_entry: u16,
    /// `\EFI\BOOT\BOOTX64.EFI`.
    pub efi: Vec<u8>,
}

/// Writes the disk of `parts` (see the module's documentation).
pub fn build(parts: &Parts) -> Result<Vec<u8>> {
    ensure!(
        parts.boot_sector.len() == BOOTSTRAP_LEN,
        "the boot sector is {} bytes, the MBR's bootstrap area {BOOTSTRAP_LEN}",
        parts.boot_sector.len()
    );
    ensure!(parts.rom.len() as u64 == ROM_SECTORS * SECTOR, "the ROM is {} bytes, not 64 KiB", parts.rom.len());
    // The agent's boot sector, told where the ROM is.
    let mut code = [0u8; 440];
    code[..BOOTSTRAP_LEN].copy_from_slice(&parts.boot_sector);
    code[MBR_LBA_AT..MBR_LBA_AT + 8].copy_from_slice(&BIOS_BOOT_LBA.to_le_bytes());
    code[MBR_ENTRY_AT..MBR_ENTRY_AT + 2].copy_from_slice(&parts.rom_entry.to_le_bytes());
    gpt_disk(Some(Bios { code, rom: &parts.rom }), ESP_LBA, &parts.efi, EFI_PATH[2])
}

/// The name UEFI boots from `\EFI\BOOT\` on `arch` (`BOOTX64.EFI`,
/// `BOOTAA64.EFI`), or why there is none.
pub fn loader_name(arch: Arch) -> Result<&'static str> {
    match super::efi::uefi(arch) {
        Some((_, name)) => Ok(name),
        None => bail!("there is no UEFI on {arch}, so no disk of its agent"),
    }
}

/// The UEFI-only disk of the loader `efi` of `arch` (aarch64; see the
/// module's documentation): a protective MBR without boot code, a GPT with
/// one partition, the ESP with the loader at `\EFI\BOOT\<loader_name>`.
pub fn build_uefi(efi: &[u8], arch: Arch) -> Result<Vec<u8>> {
    gpt_disk(None, UEFI_ESP_LBA, efi, loader_name(arch)?)
}

/// The legacy BIOS's part of a disk: the MBR's boot code and the ROM it loads.
struct Bios<'a> {
    code: [u8; 440],
    rom: &'a [u8],
}

/// One GPT disk (fixed GUIDs: reproducible images): with `bios`, the
/// BIOS boot partition (1) holding its ROM and the boot code in the
/// protective MBR; the ESP (after it, or alone) at `esp_lba` holding the
/// loader `efi` at `\EFI\BOOT\<name>`.
fn gpt_disk(bios: Option<Bios<'_>>, esp_lba: u64, efi: &[u8], name: &str) -> Result<Vec<u8>> {
    let mut disk = Cursor::new(vec![0u8; DISK_BYTES as usize]);
    let mut gpt = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
        .create_from_device(&mut disk, Some(DISK_GUID))
        .context("creating the GPT")?;
    let mut partitions = BTreeMap::new();
    if bios.is_some() {
        partitions.insert(
            1,
            Partition {
                part_type_guid: partition_types::BIOS,
                part_guid: BIOS_BOOT_GUID,
                first_lba: BIOS_BOOT_LBA,
                last_lba: BIOS_BOOT_LBA + BIOS_BOOT_SECTORS - 1,
                flags: 0,
                name: "BIOS boot partition".into(),
            },
        );
    }
    partitions.insert(
        partitions.len() as u32 + 1,
        Partition {
            part_type_guid: partition_types::EFI,
            part_guid: ESP_GUID,
            first_lba: esp_lba,
            last_lba: esp_lba + ESP_SECTORS - 1,
            flags: 0,
            name: "EFI System Partition".into(),
        },
    );
    gpt.update_partitions(partitions).context("adding the partitions")?;
    gpt.write().context("writing the GPT")?;

    let mut mbr = gpt::mbr::ProtectiveMBR::with_lb_size(u32::try_from(DISK_BYTES / SECTOR - 1)?);
    if let Some(bios) = &bios {
        mbr.set_bootcode(bios.code);
    }
    mbr.set_disk_signature(VOLUME_ID.to_le_bytes());
    mbr.overwrite_lba0(&mut disk).context("writing the protective MBR")?;

    let mut disk = disk.into_inner();
    if let Some(bios) = &bios {
        let rom_at = (BIOS_BOOT_LBA * SECTOR) as usize;
        disk[rom_at..rom_at + bios.rom.len()].copy_from_slice(bios.rom);
    }
    let esp = esp_with(efi, name)?;
    let esp_at = (esp_lba * SECTOR) as usize;
    disk[esp_at..esp_at + esp.len()].copy_from_slice(&esp);
    Ok(disk)
}

/// The ESP's FAT16 volume with the loader at `\EFI\BOOT\<name>`.
fn esp_with(efi: &[u8], name: &str) -> Result<Vec<u8>> {
    let mut esp = Cursor::new(vec![0u8; (ESP_SECTORS * SECTOR) as usize]);
    let options = fatfs::FormatVolumeOptions::new()
        .fat_type(fatfs::FatType::Fat16)
        .bytes_per_cluster(512)
        .volume_id(VOLUME_ID)
        .volume_label(VOLUME_LABEL);
    fatfs::format_volume(&mut esp, options).context("formatting the ESP (FAT16)")?;
    let fs = fatfs::FileSystem::new(&mut esp, fatfs::FsOptions::new()).context("opening the new ESP")?;
    {
        let mut dir = fs.root_dir();
        for d in EFI_DIR {
            dir = dir.create_dir(d).with_context(|| format!("creating {d} on the ESP"))?;
        }
        let mut file = dir.create_file(name).context("creating the loader on the ESP")?;
        file.write_all(efi).context("writing the loader to the ESP")?;
        file.flush()?;
    }
    fs.unmount().context("closing the ESP")?;
    Ok(esp.into_inner())
}

/// The disk's partitions as read back from its GPT (primary header), by
/// number: (type, first LBA, last LBA).
pub fn partitions(disk: &[u8]) -> Result<BTreeMap<u32, (gpt::partition_types::Type, u64, u64)>> {
    let cursor = Cursor::new(disk.to_vec());
    let gpt = gpt::GptConfig::new()
        .writable(false)
        .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
        .open_from_device(cursor)
        .context("reading the disk's GPT")?;
    Ok(gpt.partitions().iter().map(|(n, p)| (*n, (p.part_type_guid.clone(), p.first_lba, p.last_lba))).collect())
}

/// The byte range of the disk's partition of type `ty` (exactly one).
fn partition_range(disk: &[u8], ty: &gpt::partition_types::Type, what: &str) -> Result<std::ops::Range<usize>> {
    let found: Vec<_> = partitions(disk)?.into_values().filter(|(t, _, _)| t == ty).collect();
    let [(_, first, last)] = found[..] else {
        bail!("the disk has {} {what} partitions, not one (is it a disk of `cargo xtask image`?)", found.len());
    };
    let (start, end) = (first * SECTOR, (last + 1) * SECTOR);
    ensure!(end as usize <= disk.len() && start < end, "the {what} partition lies outside the disk");
    Ok(start as usize..end as usize)
}

/// The bytes of the BIOS boot partition (the ROM at its start).
pub fn bios_boot_partition(disk: &mut [u8]) -> Result<&mut [u8]> {
    let r = partition_range(disk, &partition_types::BIOS, "BIOS boot")?;
    Ok(&mut disk[r])
}

/// The loader on an ESP: its path and the architecture its name is UEFI's
/// for (exactly one of `\EFI\BOOT\BOOTX64.EFI`, `…\BOOTAA64.EFI`).
fn find_loader<IO: fatfs::ReadWriteSeek>(fs: &fatfs::FileSystem<IO>) -> Result<(String, Arch)> {
    let dir = fs.root_dir().open_dir(&EFI_DIR.join("/")).context("opening \\EFI\\BOOT on the ESP")?;
    let names: Vec<String> = dir.iter().filter_map(|e| e.ok()).map(|e| e.file_name().to_uppercase()).collect();
    let found: Vec<(&str, Arch)> = Arch::ALL
        .into_iter()
        .filter_map(|a| Some((super::efi::uefi(a)?.1, a)))
        .filter(|(n, _)| names.iter().any(|x| x == n))
        .collect();
    match found[..] {
        [(name, arch)] => Ok((format!("{}/{name}", EFI_DIR.join("/")), arch)),
        [] => bail!("the ESP has no \\EFI\\BOOT\\BOOTX64.EFI or BOOTAA64.EFI (is it a disk of `cargo xtask image`?)"),
        _ => bail!("the ESP has a loader for more than one architecture"),
    }
}

/// Reads the loader from the disk's ESP.
pub fn read_efi(disk: &[u8]) -> Result<Vec<u8>> {
    let r = partition_range(disk, &partition_types::EFI, "EFI System")?;
    let mut esp = Cursor::new(disk[r].to_vec());
    let fs = fatfs::FileSystem::new(&mut esp, fatfs::FsOptions::new()).context("opening the ESP (FAT)")?;
    let (path, _) = find_loader(&fs)?;
    let mut file = fs.root_dir().open_file(&path).with_context(|| format!("opening {path} on the ESP"))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The architecture of the disk's agent: the one whose loader its ESP holds.
pub fn loader_arch(disk: &[u8]) -> Result<Arch> {
    let r = partition_range(disk, &partition_types::EFI, "EFI System")?;
    let mut esp = Cursor::new(disk[r].to_vec());
    let fs = fatfs::FileSystem::new(&mut esp, fatfs::FsOptions::new()).context("opening the ESP (FAT)")?;
    Ok(find_loader(&fs)?.1)
}

/// Changes the loader on the disk's ESP in place: `edit` gets its bytes and
/// may change them but not their length (the file keeps its clusters).
pub fn edit_efi(disk: &mut [u8], edit: impl FnOnce(&mut Vec<u8>) -> Result<()>) -> Result<()> {
    let r = partition_range(disk, &partition_types::EFI, "EFI System")?;
    let mut esp = Cursor::new(disk[r.clone()].to_vec());
    let fs = fatfs::FileSystem::new(&mut esp, fatfs::FsOptions::new()).context("opening the ESP (FAT)")?;
    {
        let (path, _) = find_loader(&fs)?;
        let mut file = fs.root_dir().open_file(&path).with_context(|| format!("opening {path} on the ESP"))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let len = bytes.len();
        edit(&mut bytes)?;
        ensure!(bytes.len() == len, "the loader's length changed");
        file.seek(SeekFrom::Start(0))?;
        file.write_all(&bytes)?;
        file.flush()?;
    }
    fs.unmount().context("closing the ESP")?;
    disk[r].copy_from_slice(&esp.into_inner());
    Ok(())
}

/// Writes `bytes` to `path` as a sparse file: runs of zeros become holes
/// (the 8 MiB disk takes a few hundred KiB).
pub fn write_sparse(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    const BLOCK: usize = 4096;
    let mut f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    // Compared with a block of zeros (a memcmp), not byte by byte: the
    // tool runs unoptimized, and every disk board's run writes its disk
    // through here (a byte loop took 8 % of the tool's CPU in a matrix).
    const ZEROS: [u8; BLOCK] = [0; BLOCK];
    for (i, chunk) in bytes.chunks(BLOCK).enumerate() {
        if chunk != &ZEROS[..chunk.len()] {
            f.seek(SeekFrom::Start((i * BLOCK) as u64))?;
            f.write_all(chunk).with_context(|| format!("writing {}", path.display()))?;
        }
    }
    f.set_len(bytes.len() as u64).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Copies `from` to `to`, leaving holes where `from` has 4 KiB blocks of
/// zeros: what a UEFI board's run copies its variable store with (AAVMF's
/// is 64 MiB of zeros; a plain copy wrote all of it, for every run).
pub fn copy_sparse(from: &std::path::Path, to: &std::path::Path) -> Result<()> {
    use std::io::Read;
    const BLOCK: usize = 4096;
    const ZEROS: [u8; BLOCK] = [0; BLOCK];
    let mut src = std::fs::File::open(from).with_context(|| format!("opening {}", from.display()))?;
    let mut dst = std::fs::File::create(to).with_context(|| format!("creating {}", to.display()))?;
    let mut buf = vec![0u8; 256 * BLOCK];
    let mut at: u64 = 0;
    loop {
        let n = src.read(&mut buf).with_context(|| format!("reading {}", from.display()))?;
        if n == 0 {
            break;
        }
        for (i, chunk) in buf[..n].chunks(BLOCK).enumerate() {
            if chunk != &ZEROS[..chunk.len()] {
                dst.seek(SeekFrom::Start(at + (i * BLOCK) as u64))?;
                dst.write_all(chunk).with_context(|| format!("writing {}", to.display()))?;
            }
        }
        at += n as u64;
    }
    dst.set_len(at).with_context(|| format!("writing {}", to.display()))?;
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Parts with recognisable contents: a boot sector of 0xb0, a ROM whose
    /// bytes count up, a loader of `len` bytes.
    pub(crate) fn parts(efi_len: usize) -> Parts {
        let mut rom: Vec<u8> = (0..crate::rom::ROM_SIZE).map(|i| (i % 251) as u8).collect();
        rom[0] = 0x5a;
        Parts {
            boot_sector: vec![0xb0; BOOTSTRAP_LEN],
            rom,
            rom_entry: 0xabcd,
            efi: (0..efi_len).map(|i| (i % 241) as u8 ^ 0x55).collect(),
        }
    }

    #[test]
    fn a_sparse_copy_has_the_same_bytes() {
        let d = tempfile::tempdir().unwrap();
        let mut bytes = vec![0u8; 300 * 4096 + 17];
        bytes[5] = 1;
        bytes[200 * 4096 + 3] = 0xff;
        *bytes.last_mut().unwrap() = 7;
        std::fs::write(d.path().join("a"), &bytes).unwrap();
        copy_sparse(&d.path().join("a"), &d.path().join("b")).unwrap();
        assert_eq!(std::fs::read(d.path().join("b")).unwrap(), bytes);
        std::fs::write(d.path().join("z"), vec![0u8; 8192]).unwrap();
        copy_sparse(&d.path().join("z"), &d.path().join("y")).unwrap();
        assert_eq!(std::fs::read(d.path().join("y")).unwrap(), vec![0u8; 8192]);
    }

    #[test]
    fn the_layout_of_the_hybrid_disk() {
        let p = parts(70_000);
        let disk = build(&p).unwrap();
        assert_eq!(disk.len() as u64, DISK_BYTES);
        // The MBR: our code, its two fields, one protective partition (0xEE
        // from LBA 1), the signature.
        assert_eq!(&disk[..0x180], &p.boot_sector[..0x180]);
        assert_eq!(u64::from_le_bytes(disk[MBR_LBA_AT..MBR_LBA_AT + 8].try_into().unwrap()), BIOS_BOOT_LBA);
        assert_eq!(u16::from_le_bytes(disk[MBR_ENTRY_AT..MBR_ENTRY_AT + 2].try_into().unwrap()), 0xabcd);
        assert_eq!(&disk[0x1b8..0x1bc], &VOLUME_ID.to_le_bytes());
        assert_eq!(disk[0x1be + 4], 0xee, "protective partition type");
        assert_eq!(u32::from_le_bytes(disk[0x1be + 8..0x1be + 12].try_into().unwrap()), 1, "starts at LBA 1");
        assert_eq!(&disk[510..512], &[0x55, 0xaa]);
        assert!(disk[0x1ce..510].iter().all(|&b| b == 0), "one MBR partition only");
        // The GPT, read back: the two partitions, their types and places.
        assert_eq!(&disk[512..520], b"EFI PART");
        assert_eq!(&disk[disk.len() - 512..disk.len() - 504], b"EFI PART", "backup header in the last sector");
        let parts_read = partitions(&disk).unwrap();
        assert_eq!(parts_read.len(), 2);
        assert_eq!(parts_read[&1], (partition_types::BIOS, BIOS_BOOT_LBA, BIOS_BOOT_LBA + BIOS_BOOT_SECTORS - 1));
        assert_eq!(parts_read[&2], (partition_types::EFI, ESP_LBA, ESP_LBA + ESP_SECTORS - 1));
        assert_eq!(partition_types::BIOS.guid.to_string().to_uppercase(), "21686148-6449-6E6F-744E-656564454649");
        // The ROM where the boot sector reads it, the loader on the ESP.
        let at = (BIOS_BOOT_LBA * SECTOR) as usize;
        assert_eq!(&disk[at..at + p.rom.len()], &p.rom[..]);
        assert_eq!(read_efi(&disk).unwrap(), p.efi);
        let esp = &disk[(ESP_LBA * SECTOR) as usize..];
        assert_eq!(&esp[0x36..0x3e], b"FAT16   ");
        assert_eq!(&esp[510..512], &[0x55, 0xaa]);
        // Reproducible: the same parts, the same bytes.
        assert!(build(&p).unwrap() == disk);
    }

    fn sha256(bytes: &[u8]) -> String {
        use sha2::Digest as _;
        sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The disks' bytes are pinned: the x86_64 hybrid disk is what it was
    /// before the aarch64 one existed, and neither changes by accident
    /// (a containerDisk's digest follows from them).
    #[test]
    fn the_disks_bytes_are_pinned() {
        assert_eq!(
            sha256(&build(&parts(70_000)).unwrap()),
            "e317ec2950bdafb8625f446a2e77289a67d3580b4baaec9163c43a4778b68b5f"
        );
        assert_eq!(
            sha256(&build_uefi(&parts(70_000).efi, Arch::Aarch64).unwrap()),
            "534a812f7b400cf31bad595becc6f6df848e683faba62da3c7f974dc8fe1b51a"
        );
    }

    /// The aarch64 disk: UEFI only, the loader as BOOTAA64.EFI on the one
    /// partition, the ESP; no boot code, no BIOS boot partition.
    #[test]
    fn the_layout_of_the_uefi_only_disk() {
        let p = parts(70_000);
        let disk = build_uefi(&p.efi, Arch::Aarch64).unwrap();
        assert_eq!(disk.len() as u64, DISK_BYTES);
        // The MBR: no boot code, the signature, one protective partition.
        assert!(disk[..0x1b8].iter().all(|&b| b == 0), "no boot code");
        assert_eq!(&disk[0x1b8..0x1bc], &VOLUME_ID.to_le_bytes());
        assert_eq!(disk[0x1be + 4], 0xee, "protective partition type");
        assert_eq!(u32::from_le_bytes(disk[0x1be + 8..0x1be + 12].try_into().unwrap()), 1, "starts at LBA 1");
        assert!(disk[0x1ce..510].iter().all(|&b| b == 0), "one MBR partition only");
        assert_eq!(&disk[510..512], &[0x55, 0xaa]);
        // The GPT: the ESP only.
        assert_eq!(&disk[512..520], b"EFI PART");
        assert_eq!(&disk[disk.len() - 512..disk.len() - 504], b"EFI PART");
        let read = partitions(&disk).unwrap();
        assert_eq!(read.len(), 1);
        assert_eq!(read[&1], (partition_types::EFI, UEFI_ESP_LBA, UEFI_ESP_LBA + ESP_SECTORS - 1));
        const { assert!(UEFI_ESP_LBA + ESP_SECTORS <= DISK_BYTES / SECTOR - 33, "the ESP ends before the backup GPT") };
        // The loader under UEFI's aarch64 name, and nothing else in \EFI\BOOT.
        let at = (UEFI_ESP_LBA * SECTOR) as usize;
        let esp = &disk[at..at + (ESP_SECTORS * SECTOR) as usize];
        assert_eq!(&esp[0x36..0x3e], b"FAT16   ");
        let mut cursor = Cursor::new(esp.to_vec());
        let fs = fatfs::FileSystem::new(&mut cursor, fatfs::FsOptions::new()).unwrap();
        let names: Vec<String> =
            fs.root_dir().open_dir("EFI/BOOT").unwrap().iter().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, [".", "..", "BOOTAA64.EFI"]);
        drop(fs);
        assert_eq!(read_efi(&disk).unwrap(), p.efi);
        assert_eq!(loader_arch(&disk).unwrap(), Arch::Aarch64);
        assert_eq!(loader_arch(&build(&p).unwrap()).unwrap(), Arch::X86_64);
        // No BIOS boot partition to put a ROM in.
        let mut d = disk.clone();
        let e = bios_boot_partition(&mut d).unwrap_err().to_string();
        assert!(e.contains("0 BIOS boot partitions"), "{e}");
        // Editing in place finds BOOTAA64.EFI too.
        edit_efi(&mut d, |b| {
            b[7] = 0xaa;
            Ok(())
        })
        .unwrap();
        assert_eq!(read_efi(&d).unwrap()[7], 0xaa);
        // Reproducible; s390x has no UEFI.
        assert!(build_uefi(&p.efi, Arch::Aarch64).unwrap() == disk);
        let e = build_uefi(&p.efi, Arch::S390x).unwrap_err().to_string();
        assert!(e.contains("no UEFI on s390x"), "{e}");
        assert_eq!(
            (loader_name(Arch::X86_64).unwrap(), loader_name(Arch::Aarch64).unwrap()),
            ("BOOTX64.EFI", "BOOTAA64.EFI")
        );
    }

    #[test]
    fn editing_the_loader_in_place() {
        let mut disk = build(&parts(5000)).unwrap();
        edit_efi(&mut disk, |b| {
            b[100] = 0xee;
            Ok(())
        })
        .unwrap();
        let efi = read_efi(&disk).unwrap();
        assert_eq!((efi.len(), efi[100], efi[99]), (5000, 0xee, parts(5000).efi[99]));
        let e = edit_efi(&mut disk, |b| {
            b.push(0);
            Ok(())
        })
        .unwrap_err();
        assert!(e.to_string().contains("length"), "{e}");
        assert_eq!(bios_boot_partition(&mut disk).unwrap().len() as u64, BIOS_BOOT_SECTORS * SECTOR);
        let e = read_efi(&vec![0u8; 1 << 20]).unwrap_err();
        assert!(format!("{e:#}").contains("GPT"), "{e:#}");
    }

    #[test]
    fn wrong_parts_are_refused() {
        let mut p = parts(10);
        p.boot_sector.push(0);
        assert!(build(&p).unwrap_err().to_string().contains("bootstrap area"));
        let mut p = parts(10);
        p.rom.truncate(100);
        assert!(build(&p).unwrap_err().to_string().contains("64 KiB"));
    }

    #[test]
    fn sparse_files_keep_their_bytes() {
        let tmp = tempfile::tempdir().unwrap();
        let disk = build(&parts(3000)).unwrap();
        let path = tmp.path().join("d.raw");
        write_sparse(&path, &disk).unwrap();
        assert!(std::fs::read(&path).unwrap() == disk);
    }
}
