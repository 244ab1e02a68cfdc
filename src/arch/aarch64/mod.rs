//! aarch64 (`virt`): the arm64 Image entry, the device tree, the PL011
//! console, the generic timer, PSCI, semihosting, and the machine's
//! devices as the agent sees them. Devices are found from the device tree;
//! addresses are physical (an identity map, see `boot`).

mod boot;
mod devicetree;
mod machine;
mod pl011;
mod psci;
mod semihosting;
mod timer;

pub use machine::end_after_panic;
pub use pl011::Pl011 as Console;

/// Called by the entry on the agent's stack with what QEMU left in x0.
#[unsafe(no_mangle)]
extern "C" fn pvagent_main(dtb: usize, by_uefi: usize) -> ! {
    // SAFETY: x0 at entry, per the arm64 boot protocol QEMU follows for
    // an Image: the device tree's address.
    let platform = unsafe { devicetree::Platform::read(dtb) };
    if let Some(uart) = platform.uart {
        // SAFETY: the device tree's `arm,pl011` node.
        unsafe { pl011::set_base(uart) };
    }
    crate::log::init();
    crate::agent::run(&mut machine::Arm::new(platform, by_uefi != 0))
}

/// Idles forever with interrupts masked: QEMU then uses no CPU for the guest.
pub fn halt() -> ! {
    loop {
        // SAFETY: masks interrupts and waits; nothing is taken, so this
        // never returns to anything.
        unsafe { core::arch::asm!("msr daifset, #0xf", "wfi", options(nomem, nostack)) };
    }
}
