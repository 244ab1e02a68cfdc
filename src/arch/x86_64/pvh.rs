//! `struct hvm_start_info`, as QEMU's PVH boot hands it over.

/// Magic value of a valid `hvm_start_info`.
pub const START_INFO_MAGIC: u32 = 0x336e_c578;

/// How the agent was started.
#[derive(Clone, Copy)]
pub enum Boot {
    /// By QEMU's PVH boot (`-kernel`), with its start info.
    Pvh(BootInfo),
    /// As the firmware itself (`-bios`): no start info, no command line.
    Firmware,
    /// From a disk by a legacy BIOS (the image's boot sector): no start
    /// info, no command line.
    Disk,
    /// By UEFI (the loader `\EFI\BOOT\BOOTX64.EFI`), which found the
    /// SMBIOS entry point at this address (0: none).
    Uefi { smbios: u64 },
    /// EBX held no valid start info.
    Unknown,
}

impl Boot {
    /// What the entry stubs pass: the start info's address (EBX at the PVH
    /// entry), 1 for a firmware boot, 2 for a disk boot, 3 for UEFI (with
    /// the SMBIOS entry point's address).
    pub fn from_entry(ebx: u32, smbios: u64) -> Self {
        match ebx {
            1 => Boot::Firmware,
            2 => Boot::Disk,
            3 => Boot::Uefi { smbios },
            paddr => BootInfo::from_start_info(paddr).map_or(Boot::Unknown, Boot::Pvh),
        }
    }
}

/// What the agent uses of the start info.
#[derive(Clone, Copy)]
pub struct BootInfo {
    /// Physical address of the NUL-terminated `-append` string (0: none).
    cmdline: u64,
}

impl BootInfo {
    /// Reads the start info at the physical address QEMU passed in EBX.
    pub fn from_start_info(paddr: u32) -> Option<Self> {
        if paddr == 0 {
            return None;
        }
        let base = paddr as usize as *const u8;
        // SAFETY: QEMU's PVH boot passes a valid, identity-mapped
        // hvm_start_info; its layout is fixed (magic at 0, cmdline_paddr at 24).
        let (magic, cmdline) = unsafe {
            (core::ptr::read_unaligned(base as *const u32), core::ptr::read_unaligned(base.add(24) as *const u64))
        };
        (magic == START_INFO_MAGIC).then_some(BootInfo { cmdline })
    }

    /// Copies the command line into `buf`; returns its full length (which
    /// may exceed `buf`: then only the start was copied).
    pub fn copy_cmdline(&self, buf: &mut [u8]) -> usize {
        if self.cmdline == 0 || self.cmdline >= 1 << 32 {
            return 0;
        }
        let src = self.cmdline as usize as *const u8;
        // QEMU limits the command line well below this.
        for i in 0..64 * 1024 {
            // SAFETY: the command line is a NUL-terminated string in low
            // memory, identity mapped; we stop at its terminator.
            let byte = unsafe { core::ptr::read_volatile(src.add(i)) };
            if byte == 0 {
                return i;
            }
            if let Some(slot) = buf.get_mut(i) {
                *slot = byte;
            }
        }
        64 * 1024
    }
}
