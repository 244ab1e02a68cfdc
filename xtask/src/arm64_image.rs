//! The aarch64 agent as an arm64 Linux `Image` for `-kernel` on
//! `qemu-system-aarch64 -M virt`, and the bench's floor image for that board.
//!
//! QEMU's arm loader recognises an Image by its 64-byte header (magic
//! "ARM\x64" at byte 56), copies the file to the start of RAM plus the
//! header's `text_offset` and enters its first byte at EL1 with the MMU off
//! and x0 = the device tree's address. The agent's ELF is linked so that its
//! first byte (`__image_start`) is that address, 0x4008_0000 (virt's RAM
//! starts at 0x4000_0000), and begins with the header; `__file_end` marks
//! the end of its file-backed bytes. [`build`] lays out the ELF's PT_LOAD
//! file-backed bytes from `__image_start` to `__file_end` (gaps zero-filled)
//! and checks the header. The defmt table and decoding keep using the ELF.
//!
//! Header layout (Linux Documentation/arch/arm64/booting.rst), all
//! little-endian:
//!
//! ```text
//!  0  u32 code0        4  u32 code1        8  u64 text_offset
//! 16  u64 image_size  24  u64 flags       32  u64 res2, res3, res4
//! 56  u32 magic "ARM\x64"                 60  u32 res5 (PE/COFF offset)
//! ```

use anyhow::{Context, Result, bail, ensure};
use object::elf::PT_LOAD;
use object::read::elf::{ElfFile64, ProgramHeader};
use object::{Endianness, Object, ObjectSymbol};

/// Where virt's RAM starts.
pub const RAM_BASE: u64 = 0x4000_0000;
/// The header's `text_offset`: QEMU loads the Image at `RAM_BASE + TEXT_OFFSET`.
pub const TEXT_OFFSET: u64 = 0x8_0000;
/// Where the agent is linked (`__image_start`, linker-aarch64.ld).
pub const IMAGE_BASE: u64 = RAM_BASE + TEXT_OFFSET;
/// Size of the Image header.
pub const HEADER_LEN: usize = 64;
/// The header's magic, at byte [`MAGIC_OFFSET`].
pub const MAGIC: [u8; 4] = *b"ARM\x64";
const MAGIC_OFFSET: usize = 56;
/// A bound on the file-backed bytes (virt boards here have 128 MiB of RAM):
/// a `__file_end` beyond it is a broken link, not an image to allocate.
const MAX_LEN: u64 = 64 << 20;

/// Builds the flat Image from the aarch64 agent's ELF bytes.
pub fn build(elf: &[u8]) -> Result<Vec<u8>> {
    let file = ElfFile64::<Endianness>::parse(elf).context("parsing the agent image (a 64-bit ELF)")?;
    if file.architecture() != object::Architecture::Aarch64 {
        bail!("the image is an ELF for {:?}, not the aarch64 agent", file.architecture());
    }
    let symbol = |name: &str| -> Result<u64> {
        file.symbols()
            .find(|s| s.name() == Ok(name))
            .map(|s| s.address())
            .with_context(|| format!("the image has no symbol {name} (linker-aarch64.ld defines it)"))
    };
    let start = symbol("__image_start")?;
    let end = symbol("__file_end")?;
    ensure!(
        start == IMAGE_BASE,
        "__image_start is {start:#x}, but QEMU loads an Image at {IMAGE_BASE:#x} (RAM {RAM_BASE:#x} + \
         text_offset {TEXT_OFFSET:#x})"
    );
    ensure!(
        end >= start + HEADER_LEN as u64,
        "__file_end {end:#x} leaves no room for the {HEADER_LEN}-byte Image header after __image_start {start:#x}"
    );
    ensure!(end - start <= MAX_LEN, "__file_end {end:#x} is {} bytes after __image_start", end - start);
    let mut image = vec![0u8; usize::try_from(end - start)?];
    let endian = file.endian();
    for ph in file.elf_program_headers() {
        let filesz = ph.p_filesz(endian);
        if ph.p_type(endian) != PT_LOAD || filesz == 0 {
            continue;
        }
        let (vaddr, paddr) = (ph.p_vaddr(endian), ph.p_paddr(endian));
        // The Image is placed by physical address, the symbols are virtual
        // ones: with the MMU off at entry the two must agree.
        ensure!(
            vaddr == paddr,
            "a PT_LOAD segment is linked at {vaddr:#x} but loaded at {paddr:#x}; the flat Image needs them equal"
        );
        let seg_end = paddr.checked_add(filesz).context("a PT_LOAD segment wraps around")?;
        ensure!(
            paddr >= start && seg_end <= end,
            "a PT_LOAD segment has file-backed bytes at {paddr:#x}..{seg_end:#x}, outside __image_start..__file_end \
             ({start:#x}..{end:#x}); the Image would lose them"
        );
        let data = ph.data(endian, elf).map_err(|()| anyhow::anyhow!("a PT_LOAD segment lies outside the file"))?;
        let at = usize::try_from(paddr - start)?;
        image[at..at + data.len()].copy_from_slice(data);
    }
    check_header(&image)?;
    Ok(image)
}

/// Checks an Image's header against the file: the magic, `text_offset` and
/// an `image_size` that covers the file.
pub fn check_header(image: &[u8]) -> Result<()> {
    ensure!(image.len() >= HEADER_LEN, "{} bytes are too short for the {HEADER_LEN}-byte Image header", image.len());
    let magic = &image[MAGIC_OFFSET..MAGIC_OFFSET + 4];
    ensure!(
        magic == MAGIC,
        "no arm64 Image header: the bytes at {MAGIC_OFFSET} are {magic:02x?}, not \"ARM\\x64\" (does the image start \
         with the header at __image_start?)"
    );
    let u64_at = |i: usize| u64::from_le_bytes(image[i..i + 8].try_into().expect("8 bytes"));
    let text_offset = u64_at(8);
    ensure!(
        text_offset == TEXT_OFFSET,
        "the header's text_offset is {text_offset:#x}; the image is linked for {TEXT_OFFSET:#x}"
    );
    let image_size = u64_at(16);
    ensure!(
        image_size >= image.len() as u64,
        "the header's image_size {image_size:#x} is smaller than the file ({:#x} bytes): QEMU could place the \
         device tree over the image",
        image.len()
    );
    Ok(())
}

/// A header with `code0` as its first word (`code1` a nop), [`TEXT_OFFSET`],
/// `image_size` and flags 0 (little-endian, page size unspecified).
fn header(code0: u32, image_size: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..4].copy_from_slice(&code0.to_le_bytes());
    h[4..8].copy_from_slice(&NOP.to_le_bytes());
    h[8..16].copy_from_slice(&TEXT_OFFSET.to_le_bytes());
    h[16..24].copy_from_slice(&image_size.to_le_bytes());
    h[MAGIC_OFFSET..MAGIC_OFFSET + 4].copy_from_slice(&MAGIC);
    h
}

/// `nop`.
const NOP: u32 = 0xd503_201f;

/// The PCI slot of pvpanic-pci in the floor's (and the agent's) bench row:
/// `-device pvpanic-pci,addr=0x2` (boards/virt.toml).
pub const FLOOR_PCI_SLOT: u64 = 2;
/// virt's PCIe ECAM above 4 GiB (VIRT_HIGH_PCIE_ECAM, used with a CPU whose
/// physical addresses reach it, e.g. `-cpu max`): bus 0, device d, function 0
/// at + d << 15.
pub const FLOOR_ECAM: u64 = 0x40_1000_0000;
/// What the floor writes to BAR0: the start of virt's 32-bit PCI MMIO window
/// (0x1000_0000..0x3efe_ffff).
pub const FLOOR_BAR: u32 = 0x1000_0000;

/// The floor's machine code, after the header (at 0x4008_0040). QEMU enters
/// it at EL1, MMU off (every data access is Device-nGnRnE, in program order).
const FLOOR_CODE: [u32; 10] = [
    0xd2a2_0021, // movz x1, #0x1001, lsl #16   x1 = 0x1001_0000
    0xf2c0_0801, // movk x1, #0x40, lsl #32     x1 = 0x40_1001_0000: ECAM of bus 0, device 2
    0x52a2_0002, // movz w2, #0x1000, lsl #16   x2 = 0x1000_0000
    0xb900_1022, // str  w2, [x1, #0x10]        BAR0 = 0x1000_0000
    0x5280_0043, // movz w3, #2
    0x7900_0823, // strh w3, [x1, #4]           COMMAND = memory space enable
    0x5280_0024, // movz w4, #1
    0x3900_0044, // strb w4, [x2]               pvpanic: 1 = "panicked" → GUEST_PANICKED
    0xd503_207f, // 1: wfi
    0x17ff_ffff, // b 1b
];

/// `b` to the first instruction after the header (+64 bytes).
const BRANCH_OVER_HEADER: u32 = 0x1400_0000 | (HEADER_LEN as u32 / 4);

/// The floor image of virt's bench row: the smallest Image that makes
/// pvpanic-pci report "panicked". With no firmware in the way (`-kernel`
/// with an Image: QEMU's own few-instruction boot stub jumps to it) and no
/// BIOS to assign BARs, it programs pvpanic-pci itself through the ECAM
/// at the fixed slot [`FLOOR_PCI_SLOT`] (BAR0 = [`FLOOR_BAR`], then memory
/// decoding on) and writes 1 to the BAR: the header (its first word
/// branches over itself), ten instructions, 104 bytes. Nothing can reach
/// GUEST_PANICKED through pvpanic-pci sooner on that machine.
pub fn floor() -> Vec<u8> {
    let len = HEADER_LEN + 4 * FLOOR_CODE.len();
    let mut image = header(BRANCH_OVER_HEADER, len as u64).to_vec();
    for word in FLOOR_CODE {
        image.extend(word.to_le_bytes());
    }
    image
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A PT_LOAD segment of a test ELF.
    pub struct Seg {
        pub vaddr: u64,
        pub paddr: u64,
        pub data: Vec<u8>,
        pub memsz: u64,
    }

    impl Seg {
        pub fn at(addr: u64, data: Vec<u8>) -> Seg {
            let memsz = data.len() as u64;
            Seg { vaddr: addr, paddr: addr, data, memsz }
        }
    }

    /// A little-endian ELF64 executable for `machine` with `segs` (PT_LOAD)
    /// and absolute symbols `syms` (.symtab, .strtab, .shstrtab).
    pub fn elf(machine: u16, segs: &[Seg], syms: &[(&str, u64)]) -> Vec<u8> {
        let mut out = vec![0u8; 64 + 56 * segs.len()];
        let place = |out: &mut Vec<u8>, bytes: &[u8]| {
            while !out.len().is_multiple_of(16) {
                out.push(0);
            }
            let at = out.len() as u64;
            out.extend(bytes);
            at
        };
        let mut phdrs = Vec::new();
        for s in segs {
            let off = place(&mut out, &s.data);
            phdrs.extend(PT_LOAD.to_le_bytes());
            phdrs.extend(7u32.to_le_bytes()); // RWX
            for v in [off, s.vaddr, s.paddr, s.data.len() as u64, s.memsz, 16] {
                phdrs.extend(v.to_le_bytes());
            }
        }
        out[64..64 + phdrs.len()].copy_from_slice(&phdrs);
        let mut strtab = vec![0u8];
        let mut symtab = vec![0u8; 24];
        for (name, value) in syms {
            let n = strtab.len() as u32;
            strtab.extend(name.as_bytes());
            strtab.push(0);
            symtab.extend(n.to_le_bytes());
            symtab.push(0); // STB_LOCAL, STT_NOTYPE
            symtab.push(0);
            symtab.extend(0xfff1u16.to_le_bytes()); // SHN_ABS
            symtab.extend(value.to_le_bytes());
            symtab.extend(0u64.to_le_bytes());
        }
        let shstrtab = b"\0.symtab\0.strtab\0.shstrtab\0";
        let offs = [place(&mut out, &symtab), place(&mut out, &strtab), place(&mut out, shstrtab)];
        let shoff = place(&mut out, &[]);
        // (name, type, offset, size, link, info, entsize)
        let sections: [(u32, u32, u64, u64, u32, u32, u64); 4] = [
            (0, 0, 0, 0, 0, 0, 0),
            (1, 2, offs[0], symtab.len() as u64, 2, syms.len() as u32 + 1, 24),
            (9, 3, offs[1], strtab.len() as u64, 0, 0, 0),
            (17, 3, offs[2], shstrtab.len() as u64, 0, 0, 0),
        ];
        for (name, kind, offset, size, link, info, entsize) in sections {
            out.extend(name.to_le_bytes());
            out.extend(kind.to_le_bytes());
            out.extend(0u64.to_le_bytes()); // flags
            out.extend(0u64.to_le_bytes()); // addr
            out.extend(offset.to_le_bytes());
            out.extend(size.to_le_bytes());
            out.extend(link.to_le_bytes());
            out.extend(info.to_le_bytes());
            out.extend(8u64.to_le_bytes()); // addralign
            out.extend(entsize.to_le_bytes());
        }
        let mut h = vec![0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        h.extend(2u16.to_le_bytes()); // ET_EXEC
        h.extend(machine.to_le_bytes());
        h.extend(1u32.to_le_bytes());
        h.extend(IMAGE_BASE.to_le_bytes()); // entry
        h.extend(64u64.to_le_bytes()); // phoff
        h.extend(shoff.to_le_bytes());
        h.extend(0u32.to_le_bytes()); // flags
        h.extend(64u16.to_le_bytes()); // ehsize
        h.extend(56u16.to_le_bytes()); // phentsize
        h.extend((segs.len() as u16).to_le_bytes());
        h.extend(64u16.to_le_bytes()); // shentsize
        h.extend(4u16.to_le_bytes()); // shnum
        h.extend(3u16.to_le_bytes()); // shstrndx
        out[..64].copy_from_slice(&h);
        out
    }

    const EM_AARCH64: u16 = 183;

    /// An agent-like ELF: the header and code at the base, data after a gap,
    /// a .bss beyond `__file_end`.
    pub fn agent_like(image_size: u64) -> Vec<u8> {
        let mut text = header(BRANCH_OVER_HEADER, image_size).to_vec();
        text.extend([0xaa; 36]); // "code": 100 bytes in all
        let data = Seg { memsz: 0x1000, ..Seg::at(IMAGE_BASE + 0x1000, vec![0xdd; 8]) };
        elf(
            EM_AARCH64,
            &[Seg::at(IMAGE_BASE, text), data],
            &[("__image_start", IMAGE_BASE), ("__file_end", IMAGE_BASE + 0x1008)],
        )
    }

    #[test]
    fn lays_out_the_file_backed_bytes_from_the_base() {
        let image = build(&agent_like(0x2000)).unwrap();
        assert_eq!(image.len(), 0x1008);
        assert_eq!(&image[..4], &BRANCH_OVER_HEADER.to_le_bytes());
        assert_eq!(&image[56..60], b"ARM\x64");
        assert!(image[64..100].iter().all(|&b| b == 0xaa));
        assert!(image[100..0x1000].iter().all(|&b| b == 0), "the gap is zero-filled");
        assert_eq!(&image[0x1000..], &[0xdd; 8]);
    }

    #[test]
    fn checks_the_header_the_base_and_the_segments() {
        let err = |elf: &[u8]| format!("{:#}", build(elf).unwrap_err());
        let e = err(&agent_like(0x1007));
        assert!(e.contains("image_size 0x1007 is smaller than the file (0x1008 bytes)"), "{e}");
        // No magic: the header is not where QEMU looks.
        let bare = elf(
            EM_AARCH64,
            &[Seg::at(IMAGE_BASE, vec![0x11; 64])],
            &[("__image_start", IMAGE_BASE), ("__file_end", IMAGE_BASE + 64)],
        );
        assert!(err(&bare).contains("no arm64 Image header"), "{}", err(&bare));
        // Linked elsewhere.
        let low = elf(
            EM_AARCH64,
            &[Seg::at(RAM_BASE, floor())],
            &[("__image_start", RAM_BASE), ("__file_end", RAM_BASE + 104)],
        );
        assert!(
            err(&low).contains("__image_start is 0x40000000, but QEMU loads an Image at 0x40080000"),
            "{}",
            err(&low)
        );
        // File-backed bytes past __file_end would be lost.
        let past = elf(
            EM_AARCH64,
            &[Seg::at(IMAGE_BASE, floor())],
            &[("__image_start", IMAGE_BASE), ("__file_end", IMAGE_BASE + 96)],
        );
        assert!(err(&past).contains("outside __image_start..__file_end"), "{}", err(&past));
        // Virtual and physical addresses apart.
        let moved = elf(
            EM_AARCH64,
            &[Seg { paddr: IMAGE_BASE + 0x100_0000, ..Seg::at(IMAGE_BASE, floor()) }],
            &[("__image_start", IMAGE_BASE), ("__file_end", IMAGE_BASE + 104)],
        );
        assert!(err(&moved).contains("the flat Image needs them equal"), "{}", err(&moved));
        // Symbols, architecture, ELF.
        let nosym = elf(EM_AARCH64, &[Seg::at(IMAGE_BASE, floor())], &[("__image_start", IMAGE_BASE)]);
        assert!(err(&nosym).contains("no symbol __file_end"), "{}", err(&nosym));
        let x86 = elf(62, &[Seg::at(IMAGE_BASE, floor())], &[]);
        assert!(err(&x86).contains("not the aarch64 agent"), "{}", err(&x86));
        assert!(build(b"not an elf").is_err());
    }

    #[test]
    fn the_floor_is_a_header_and_ten_instructions() {
        let f = floor();
        assert_eq!(f.len(), 104);
        check_header(&f).unwrap();
        assert_eq!(u32::from_le_bytes(f[..4].try_into().unwrap()), 0x1400_0010, "b +64");
        // The immediates of the movz/movk pair and of the BAR value are the
        // documented constants (imm16 is bits 5..21, hw bits 21..23).
        let word = |i: usize| FLOOR_CODE[i];
        let imm16 = |w: u32| u64::from((w >> 5) & 0xffff) << (16 * ((w >> 21) & 3));
        assert_eq!(imm16(word(0)) | imm16(word(1)), FLOOR_ECAM + (FLOOR_PCI_SLOT << 15));
        assert_eq!(imm16(word(2)), u64::from(FLOOR_BAR));
        // str w2, [x1, #0x10] (imm12 scaled by 4) and strh w3, [x1, #4] (scaled by 2).
        assert_eq!((word(3) >> 10) & 0xfff, 0x10 / 4);
        assert_eq!((word(5) >> 10) & 0xfff, 4 / 2);
        assert_eq!(word(9), 0x1400_0000 | 0x3ff_ffff, "b -4: back to the wfi");
        // The floor is also what `build` accepts.
        let as_elf = elf(
            EM_AARCH64,
            &[Seg::at(IMAGE_BASE, f.clone())],
            &[("__image_start", IMAGE_BASE), ("__file_end", IMAGE_BASE + f.len() as u64)],
        );
        assert_eq!(build(&as_elf).unwrap(), f);
    }
}
