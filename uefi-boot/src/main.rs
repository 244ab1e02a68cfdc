//! The UEFI application that boots pvagent from a disk
//! (`\EFI\BOOT\BOOTX64.EFI`): it copies the x86_64 agent (embedded by
//! build.rs) to the address it is linked at, takes the SMBIOS entry point
//! from UEFI's configuration table, leaves boot services (which also ends
//! UEFI's watchdog timer) and enters the agent's 64-bit entry. From there
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
    use uefi::table::cfg::ConfigTableEntry;
    use uefi::{CStr16, Status, cstr16};

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
        // The agent is linked at a fixed address (1 MiB): those pages must
        // be free in the firmware's memory map.
        let pages = h.mem_len.div_ceil(4096);
        let Ok(memory) = boot::allocate_pages(AllocateType::Address(h.load), MemoryType::LOADER_DATA, pages) else {
            say(cstr16!("pvagent: error: the memory the agent is linked at (1 MiB) is not free\r\n"));
            return Status::OUT_OF_RESOURCES;
        };
        // SAFETY: the pages were just allocated for this, `mem_len` bytes
        // long, which holds the file's bytes (build.rs checks the layout).
        unsafe { core::ptr::copy_nonoverlapping(image.as_ptr(), memory.as_ptr(), image.len()) };
        let smbios = uefi::system::with_config_table(|tables| {
            let of = |guid| tables.iter().find(|t| t.guid == guid).map(|t| t.address as u64);
            of(ConfigTableEntry::SMBIOS3_GUID).or_else(|| of(ConfigTableEntry::SMBIOS_GUID)).unwrap_or(0)
        });
        // SAFETY: nothing of boot services is used after this (the memory
        // map it returns is dropped with the firmware's memory: the agent
        // never frees anything).
        let map = unsafe { boot::exit_boot_services(None) };
        core::mem::forget(map);
        // SAFETY: the agent's 64-bit entry, at the address it is linked at,
        // with boot services gone and interrupts off (see `enter`).
        unsafe { enter(h.entry, smbios) }
    }

    /// Enters the agent's `pvagent_entry64` (x86_64: long mode, RDI = the
    /// SMBIOS entry point's address); it never returns.
    ///
    /// # Safety
    ///
    /// `entry` must be the entry of an agent image copied where it is
    /// linked, after boot services ended.
    #[cfg(target_arch = "x86_64")]
    unsafe fn enter(entry: u64, smbios: u64) -> ! {
        // SAFETY: by this function's contract.
        unsafe { core::arch::asm!("cli", "jmp {entry}", entry = in(reg) entry, in("rdi") smbios, options(noreturn)) }
    }
}

#[cfg(not(target_os = "uefi"))]
fn main() {
    eprintln!("pvagent-uefi is a UEFI application: build it with `cargo xtask build` (target x86_64-unknown-uefi)");
    std::process::exit(2);
}
