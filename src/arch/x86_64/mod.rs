//! x86_64: PVH entry, 32→64-bit switch, the CPU's tables, and the machine's
//! devices as the agent sees them.

mod acpi;
mod apic;
mod boot;
mod cmos;
pub mod cpu;
pub mod interrupts;
mod machine;
mod pit;
pub mod pvh;
mod serial;
mod tsc;

pub use machine::end_after_panic;
pub use serial::Serial as Console;

/// Called by the boot stub, in long mode, on the agent's own stack, with
/// what the entry left in EBX (see `pvh::Boot`).
#[unsafe(no_mangle)]
extern "C" fn pvagent_main(start_info: u32, smbios: u64) -> ! {
    let boot = pvh::Boot::from_entry(start_info, smbios);
    crate::log::init();
    crate::agent::run(&mut machine::X86::new(boot))
}

/// Idles forever, woken only by the ACPI SCI (the power button, when
/// `acpi::arm` routed it) and NMIs: QEMU uses no CPU for the guest. The
/// local APIC timer is stopped outside sleeps, so it never fires here.
pub fn idle() -> ! {
    apic::init();
    loop {
        ::x86_64::instructions::interrupts::enable_and_hlt();
    }
}

/// Idles forever with interrupts off: QEMU then uses no CPU for the guest.
pub fn halt() -> ! {
    loop {
        ::x86_64::instructions::interrupts::disable();
        ::x86_64::instructions::hlt();
    }
}
