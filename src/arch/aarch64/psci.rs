//! PSCI calls (power off, reset) through the conduit the device tree names.

use super::devicetree::Conduit;
use crate::script::Psci;

/// Makes a PSCI call; SYSTEM_OFF and SYSTEM_RESET do not return when they
/// work, so a return means the firmware refused (the value is PSCI's error).
pub fn call(conduit: Conduit, function: Psci) -> i64 {
    let mut x0 = u64::from(function.function_id());
    // SAFETY: a PSCI call with no arguments, as the device tree says to
    // make it: it powers off or resets the machine, or returns an error
    // in x0; x1-x3 are zero, and the firmware may clobber what the C ABI lets it.
    unsafe {
        match conduit {
            Conduit::Hvc => core::arch::asm!(
                "hvc #0",
                inout("x0") x0,
                in("x1") 0u64,
                in("x2") 0u64,
                in("x3") 0u64,
                clobber_abi("C"),
                options(nostack)
            ),
            Conduit::Smc => core::arch::asm!(
                "smc #0",
                inout("x0") x0,
                in("x1") 0u64,
                in("x2") 0u64,
                in("x3") 0u64,
                clobber_abi("C"),
                options(nostack)
            ),
        }
    }
    x0 as i64
}
