//! s390x: the entry at 0x10000 (with QEMU's command-line area), the lowcore
//! new PSWs, the SCLP console, the TOD clock, diag288 and the wait PSWs that
//! QEMU turns into GUEST_PANICKED or a shutdown.

mod entry;
mod lowcore;
mod machine;
mod sclp;
mod tod;

pub use machine::end_after_panic;
pub use sclp::Console;

use crate::s390_psw as psw;

/// Called by the entry stub on the agent's own stack.
#[unsafe(no_mangle)]
extern "C" fn pvagent_main() -> ! {
    crate::log::init();
    crate::agent::run(&mut machine::S390::new())
}

/// The `core` of s390x-unknown-linux-gnu was built with unwinding; with
/// panic=abort nothing calls this, but the symbol must exist.
#[unsafe(no_mangle)]
extern "C" fn rust_eh_personality() {}

/// Loads a wait PSW: with `mask` a disabled wait, this ends the CPU (QEMU
/// reports GUEST_PANICKED, or a shutdown for addresses ending in 0xfff).
pub fn load_wait_psw(mask: u64, address: u64) -> ! {
    let psw = lowcore::Psw { mask, address };
    // SAFETY: LPSWE of a wait PSW stops this CPU for good; the operand is
    // an 8-byte aligned PSW on the stack.
    unsafe {
        core::arch::asm!(
            ".insn s,0xb2b20000,0({psw})",
            psw = in(reg_addr) &raw const psw,
            options(noreturn)
        )
    }
}

/// Idles forever without a crash event: an enabled wait whose only enabled
/// class, I/O, has no subclass enabled (CR6 = 0), so nothing wakes it but a
/// restart interrupt, whose handler returns here.
pub fn halt() -> ! {
    load_wait_psw(psw::WAIT | psw::IO | psw::EA | psw::BA, halt as *const () as u64)
}
