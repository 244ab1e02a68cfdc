//! The UEFI application that boots pvagent from a disk
//! (`\EFI\BOOT\BOOTX64.EFI`, `\EFI\BOOT\BOOTAA64.EFI`): it copies the
//! agent (embedded by build.rs) to the address it is linked at, takes what
//! the agent needs from UEFI's configuration table (x86_64: the SMBIOS
//! entry point; aarch64: the device tree), leaves boot services (which also
//! ends UEFI's watchdog timer) and enters the agent's UEFI entry. From there
//! the agent is the same as on every other boot path; it reads its script
//! from fw_cfg, the SMBIOS OEM strings, or the image itself.
//!
//! What is UEFI's is generic here (allocation, configuration table, exit);
//! the hand-over (`enter`) is the only architecture-specific part.
#![cfg_attr(target_os = "uefi", no_std, no_main)]

#[cfg(target_os = "uefi")]
mod uefi_app {
    use uefi::boot::{self, AllocateType, MemoryType};
    use uefi::proto::console::text::Output;
    #[cfg(target_arch = "x86_64")]
    use uefi::table::cfg::ConfigTableEntry;
    use uefi::{CStr16, Guid, Status, cstr16, guid};

    /// The device tree's configuration table (EFI_DTB_TABLE_GUID).
    #[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
    const DEVICE_TREE_GUID: Guid = guid!("b1b621d5-f19c-41a5-830b-d9152c69aae0");

    static PAYLOAD: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/payload.bin"));

    /// The payload's header (see build.rs).
    struct Header {
        load: u64,
        file_len: usize,
        mem_len: usize,
        entry: u64,
    }

    fn header() -> Option<Header> {
        let word = |i: usize| -> Option<u32> {
            Some(u32::from_le_bytes(PAYLOAD.get(16 + 4 * i..20 + 4 * i)?.try_into().ok()?))
        };
        if PAYLOAD.get(..16)? != b"PVAGENT:PAYLOAD1" {
            return None;
        }
        Some(Header {
            load: u64::from(word(0)?),
            file_len: word(1)? as usize,
            mem_len: word(2)? as usize,
            entry: u64::from(word(3)?),
        })
    }

    fn say(text: &CStr16) {
        uefi::system::with_stdout(|out: &mut Output| {
            let _ = out.output_string(text);
        });
    }

    #[uefi::entry]
    fn main() -> Status {
        let Some(h) = header() else {
            say(cstr16!("pvagent: error: this loader holds no agent image\r\n"));
            return Status::LOAD_ERROR;
        };
        let Some(image) = PAYLOAD.get(32..32 + h.file_len) else {
            say(cstr16!("pvagent: error: the embedded agent image is cut short\r\n"));
            return Status::LOAD_ERROR;
        };
        // The agent is linked at a fixed address (x86_64: 1 MiB; aarch64:
        // RAM base + 0x80000): those pages must be free in the firmware's
        // memory map.
        let pages = h.mem_len.div_ceil(4096);
        let Ok(memory) = boot::allocate_pages(AllocateType::Address(h.load), MemoryType::LOADER_DATA, pages) else {
            say(cstr16!("pvagent: error: the memory the agent is linked at is not free\r\n"));
            return Status::OUT_OF_RESOURCES;
        };
        // SAFETY: the pages were just allocated for this, `mem_len` bytes
        // long, which holds the file's bytes (build.rs checks the layout).
        unsafe { core::ptr::copy_nonoverlapping(image.as_ptr(), memory.as_ptr(), image.len()) };
        let table = |guids: &[Guid]| {
            uefi::system::with_config_table(|tables| {
                guids.iter().find_map(|g| tables.iter().find(|t| t.guid == *g)).map_or(0, |t| t.address as u64)
            })
        };
        // What the agent's UEFI entry takes in its first argument register.
        #[cfg(target_arch = "x86_64")]
        let argument = table(&[ConfigTableEntry::SMBIOS3_GUID, ConfigTableEntry::SMBIOS_GUID]);
        #[cfg(target_arch = "aarch64")]
        let argument = {
            let dtb = table(&[DEVICE_TREE_GUID]);
            if dtb == 0 {
                say(cstr16!("pvagent: error: UEFI offers no device tree (QEMU: -M virt,acpi=off)\r\n"));
                return Status::UNSUPPORTED;
            }
            dtb
        };
        // SAFETY: nothing of boot services is used after this (the memory
        // map it returns is dropped with the firmware's memory: the agent
        // never frees anything).
        let map = unsafe { boot::exit_boot_services(None) };
        core::mem::forget(map);
        // SAFETY: the agent's UEFI entry, at the address it is linked at,
        // with boot services gone (see `enter`).
        unsafe { enter(h.entry, argument, memory.as_ptr() as u64, h.mem_len) }
    }

    /// Enters the agent's `pvagent_entry64` (x86_64: long mode, RDI = the
    /// SMBIOS entry point's address); it never returns.
    ///
    /// # Safety
    ///
    /// `entry` must be the entry of an agent image copied where it is
    /// linked, after boot services ended.
    #[cfg(target_arch = "x86_64")]
    unsafe fn enter(entry: u64, smbios: u64, _image: u64, _len: usize) -> ! {
        // SAFETY: by this function's contract.
        unsafe { core::arch::asm!("cli", "jmp {entry}", entry = in(reg) entry, in("rdi") smbios, options(noreturn)) }
    }

    /// Enters the agent's `pvagent_entry_uefi` (aarch64: x0 = the device
    /// tree), interrupts masked, after cleaning the copied image to the
    /// point of coherency: the agent turns the MMU and caches off and on
    /// again on its own tables.
    ///
    /// # Safety
    ///
    /// As for x86_64; `[image, image + len)` is the agent's memory.
    #[cfg(target_arch = "aarch64")]
    unsafe fn enter(entry: u64, dtb: u64, image: u64, len: usize) -> ! {
        let mut line = image & !63;
        while line < image + len as u64 {
            // SAFETY: cleans (writes back) one cache line of the agent's
            // memory; no data changes.
            unsafe { core::arch::asm!("dc cvac, {}", in(reg) line, options(nostack)) };
            line += 64;
        }
        // SAFETY: by this function's contract; `ic iallu` drops stale
        // instructions, the barriers order it all before the jump.
        unsafe {
            core::arch::asm!(
                "dsb sy",
                "ic iallu",
                "dsb sy",
                "isb",
                "msr daifset, #0xf",
                "br {entry}",
                entry = in(reg) entry,
                in("x0") dtb,
                options(noreturn)
            )
        }
    }
}

#[cfg(not(target_os = "uefi"))]
fn main() {
    eprintln!(
        "pvagent-uefi is a UEFI application: build it with `cargo xtask build` (target x86_64-unknown-uefi or aarch64-unknown-uefi)"
    );
    std::process::exit(2);
}
