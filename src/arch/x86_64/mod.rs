//! x86_64: PVH entry, 32→64-bit switch, and the boot information QEMU hands over.

mod boot;
pub mod cpu;
pub mod interrupts;
pub mod pvh;

/// Idles forever with interrupts off: QEMU then uses no CPU for the guest.
pub fn halt() -> ! {
    loop {
        ::x86_64::instructions::interrupts::disable();
        ::x86_64::instructions::hlt();
    }
}
