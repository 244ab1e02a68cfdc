//! Semihosting (`hlt #0xf000`), for the error exits and `exit:`: QEMU
//! exits with the status the agent asks for when the machine runs with
//! `-semihosting-config enable=on,target=native`. Without it the
//! instruction is undefined: the probe catches that exception once and
//! the agent never uses semihosting again.

use core::sync::atomic::{AtomicBool, AtomicU8, Ordering};

const SYS_ERRNO: u64 = 0x13;
const SYS_EXIT: u64 = 0x18;
/// SYS_EXIT's reason "the application exited", with the status as subcode.
const ADP_STOPPED_APPLICATION_EXIT: u64 = 0x2_0026;

/// 0 not probed, 1 absent, 2 present.
static STATE: AtomicU8 = AtomicU8::new(0);
/// The probe is running: an undefined-instruction exception at it means
/// "no semihosting" (see [`catch_probe`]).
static PROBING: AtomicBool = AtomicBool::new(false);
/// The exception handler saw the probe's instruction refused.
static REFUSED: AtomicBool = AtomicBool::new(false);

/// One semihosting call.
///
/// # Safety
///
/// Semihosting must be enabled or the probe running (the instruction is
/// undefined otherwise); `arg` must be what `op` expects.
unsafe fn call(op: u64, arg: u64) -> u64 {
    let mut x0 = op;
    // SAFETY: by this function's contract.
    unsafe { core::arch::asm!("hlt #0xf000", inout("x0") x0, in("x1") arg, options(nostack)) };
    x0
}

/// Whether QEMU offers semihosting (asked once, with a harmless call).
pub fn available() -> bool {
    match STATE.load(Ordering::Acquire) {
        1 => false,
        2 => true,
        _ => {
            PROBING.store(true, Ordering::Release);
            // SAFETY: SYS_ERRNO only returns a number; the probe flag makes
            // the exception handler step over the instruction if it is
            // undefined (`catch_probe`).
            unsafe { call(SYS_ERRNO, 0) };
            PROBING.store(false, Ordering::Release);
            let present = !REFUSED.load(Ordering::Acquire);
            STATE.store(if present { 2 } else { 1 }, Ordering::Release);
            present
        }
    }
}

/// Called by the synchronous exception handler for an undefined
/// instruction: true (and the exception is over) when it was the probe's.
pub fn catch_probe() -> bool {
    if !PROBING.load(Ordering::Acquire) {
        return false;
    }
    REFUSED.store(true, Ordering::Release);
    true
}

/// Ends QEMU with `status`, if semihosting is there (else returns).
pub fn exit(status: u8) {
    if !available() {
        return;
    }
    let block = [ADP_STOPPED_APPLICATION_EXIT, u64::from(status)];
    // SAFETY: semihosting is available (above); SYS_EXIT takes the address
    // of its two-word parameter block on AArch64.
    unsafe { call(SYS_EXIT, block.as_ptr() as u64) };
}
