//! The agent as firmware: turns the x86_64 image (an ELF linked at 1 MiB)
//! into a `-bios` ROM. The ROM holds the image's file-backed bytes right
//! below the reset vector, which jumps to the agent's real-mode entry
//! (`pvagent_rom_entry`); that code copies the image to 1 MiB and starts it
//! as a PVH boot would, without SeaBIOS or qboot in between.

use anyhow::{Context, Result, bail, ensure};
use object::{Object, ObjectSegment, ObjectSymbol};

/// Where the image is linked (`linker.ld`).
pub const IMAGE_BASE: u64 = 0x10_0000;
/// QEMU maps a `-bios` image so that it ends at 4 GiB; its size must be a
/// multiple of 64 KiB.
pub const ROM_SIZE: usize = 64 * 1024;
/// The reset vector's offset in the ROM (linear 0xfffffff0).
const RESET_VECTOR: usize = ROM_SIZE - 16;

/// Builds the ROM from the image's ELF bytes.
pub fn build(elf: &[u8]) -> Result<Vec<u8>> {
    build_with_entry(elf).map(|(rom, _)| rom)
}

/// Builds the ROM and returns it with the offset of `pvagent_rom_entry` in
/// it (where the reset vector jumps; the disk's boot sector enters the ROM
/// there too, see `disk`).
pub fn build_with_entry(elf: &[u8]) -> Result<(Vec<u8>, u16)> {
    let file = object::File::parse(elf).context("parsing the agent image (ELF)")?;
    let symbol = |name: &str| -> Result<u64> {
        file.symbols()
            .find(|s| s.name() == Ok(name))
            .map(|s| s.address())
            .with_context(|| format!("the image has no symbol {name} (is it the x86_64 agent?)"))
    };
    let file_end = symbol("__file_end")?;
    let entry = symbol("pvagent_rom_entry")?;
    ensure!(file_end > IMAGE_BASE, "__file_end {file_end:#x} is below the image base");
    let len = usize::try_from(file_end - IMAGE_BASE)?;
    // The image sits right below the reset vector, 16-byte aligned, all of
    // it inside the last 64 KiB (the real-mode code segment at 0xffff0000).
    if len > RESET_VECTOR {
        bail!("the image's {len} file-backed bytes do not fit below the reset vector of a {ROM_SIZE}-byte ROM");
    }
    let offset = (RESET_VECTOR - len) & !0xf;
    let mut rom = vec![0u8; ROM_SIZE];
    for segment in file.segments() {
        let (start, size) = segment.file_range();
        let address = segment.address();
        if size == 0 || address < IMAGE_BASE || address >= file_end {
            continue;
        }
        let data = &elf[usize::try_from(start)?..usize::try_from(start + size)?];
        let at = usize::try_from(address - IMAGE_BASE)?;
        let n = data.len().min(len - at);
        rom[offset + at..offset + at + n].copy_from_slice(&data[..n]);
    }
    // jmp near rel16, from IP 0xfff0 (CS base 0xffff0000) to the entry.
    let target = offset + usize::try_from(entry - IMAGE_BASE)?;
    ensure!(target < RESET_VECTOR, "pvagent_rom_entry lies outside the image");
    let rel = (target as i64 - (RESET_VECTOR as i64 + 3)) as i16;
    rom[RESET_VECTOR] = 0xe9;
    rom[RESET_VECTOR + 1..RESET_VECTOR + 3].copy_from_slice(&rel.to_le_bytes());
    Ok((rom, u16::try_from(target)?))
}

/// The entry offset a ROM's reset vector jumps to (`jmp rel16` at 0xfff0:
/// `(0xfff3 + rel16) & 0xffff`); `None` when it is no such jump.
pub fn reset_vector_target(rom: &[u8]) -> Option<u16> {
    let jmp = rom.get(RESET_VECTOR..RESET_VECTOR + 3)?;
    (rom.len() == ROM_SIZE && jmp[0] == 0xe9)
        .then(|| (RESET_VECTOR as u16 + 3).wrapping_add(u16::from_le_bytes([jmp[1], jmp[2]])))
}

/// The floor image of the benchmark: a 64 KiB ROM whose reset vector
/// writes "panicked" (1) to the ISA pvpanic port 0x505 and halts. Nothing
/// can reach GUEST_PANICKED sooner on that machine.
pub fn floor() -> Vec<u8> {
    let mut rom = vec![0u8; ROM_SIZE];
    // mov al, 1; mov dx, 0x505; out dx, al; 1: hlt; jmp 1b
    let code = [0xb0, 0x01, 0xba, 0x05, 0x05, 0xee, 0xf4, 0xeb, 0xfd];
    rom[RESET_VECTOR..RESET_VECTOR + code.len()].copy_from_slice(&code);
    rom
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_is_a_reset_vector_and_nothing_else() {
        let rom = floor();
        assert_eq!(rom.len(), 65536);
        assert_eq!(&rom[0xfff0..0xfff9], &[0xb0, 0x01, 0xba, 0x05, 0x05, 0xee, 0xf4, 0xeb, 0xfd]);
        assert!(rom[..0xfff0].iter().all(|&b| b == 0));
    }

    #[test]
    fn rejects_what_is_not_an_elf() {
        assert!(build(b"not an elf").is_err());
    }
}
