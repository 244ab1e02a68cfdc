//! The CPU as the agent uses it after the boot stub (which set up the GDT,
//! the TSS with the double fault's stack and the stack's guard page: see
//! `boot.rs`), MSR writes that survive a #GP, and the faults the script can
//! cause on purpose.

use super::interrupts;
use crate::hyperv::{self, GeneralProtection};
use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering};

/// The unmapped address `fault:pf` touches (CR2 in the log).
pub const PAGE_FAULT_ADDRESS: u64 = 0x00ba_dc0d_e000;
/// The non-canonical address `fault:gp` touches.
pub const GP_ADDRESS: u64 = 0x8000_0000_0000_0000;
/// The IST slot of the double-fault handler (the boot stub's TSS sets it).
pub const DOUBLE_FAULT_IST: u8 = 1;

unsafe extern "C" {
    static __stack_guard: u8;
}

/// Where a #GP resumes while `try_wrmsr` has armed it; 0 = a #GP is a
/// crash. Private: only `try_wrmsr`'s own fix-up label is ever stored.
static FIXUP_RIP: AtomicU64 = AtomicU64::new(0);

/// For the #GP handler: the armed fix-up address, if any (disarmed by
/// taking it).
pub fn take_gp_fixup() -> Option<u64> {
    Some(FIXUP_RIP.swap(0, Ordering::Relaxed)).filter(|&rip| rip != 0)
}

/// The stack guard page's address (unmapped by the boot stub).
pub fn stack_guard() -> u64 {
    (&raw const __stack_guard) as u64
}

/// `cpuid` with ECX = 0.
pub fn cpuid(leaf: u32) -> [u32; 4] {
    let r = core::arch::x86_64::__cpuid_count(leaf, 0);
    [r.eax, r.ebx, r.ecx, r.edx]
}

/// `wrmsr` that reports a #GP instead of crashing: the #GP handler resumes
/// at the fix-up label when `FIXUP_RIP` is armed.
///
/// # Safety
///
/// Writing `value` to `msr` must not change anything the agent's memory
/// safety rests on (paging, segments, EFER, the APIC base, …): e.g. the
/// Hyper-V crash MSRs, which only report a crash.
unsafe fn try_wrmsr(msr: u32, value: u64) -> Result<(), GeneralProtection> {
    let faulted: u32;
    // SAFETY: the MSR write itself is harmless by this function's
    // contract; should it raise #GP, the handler resumes at label 2
    // instead. The fix-up address is armed only around the one instruction.
    unsafe {
        asm!(
            "lea {tmp}, [rip + 2f]",
            "mov qword ptr [rip + {fixup}], {tmp}",
            "wrmsr",
            "xor {faulted:e}, {faulted:e}",
            "jmp 3f",
            "2:",
            "mov {faulted:e}, 1",
            "3:",
            "mov qword ptr [rip + {fixup}], 0",
            tmp = out(reg) _,
            faulted = out(reg) faulted,
            fixup = sym FIXUP_RIP,
            in("ecx") msr,
            in("eax") value as u32,
            in("edx") (value >> 32) as u32,
        );
    }
    FIXUP_RIP.store(0, Ordering::Relaxed);
    if faulted == 0 { Ok(()) } else { Err(GeneralProtection) }
}

/// The CPU as the Hyper-V crash sequence sees it.
pub struct Cpu;

impl crate::hyperv::CpuAccess for Cpu {
    fn cpuid(&mut self, leaf: u32) -> [u32; 4] {
        cpuid(leaf)
    }

    /// Writes only the Hyper-V crash MSRs (P0..P4, CRASH_CTL); any other
    /// MSR is refused, as if it raised #GP, without being written.
    fn wrmsr(&mut self, msr: u32, value: u64) -> Result<(), GeneralProtection> {
        if !(hyperv::MSR_CRASH_P0..=hyperv::MSR_CRASH_CTL).contains(&msr) {
            return Err(GeneralProtection);
        }
        // SAFETY: a crash MSR (checked above): writing it only reports a
        // crash to the hypervisor.
        unsafe { try_wrmsr(msr, value) }
    }
}

/// `fault:ud`.
pub fn invalid_opcode() -> ! {
    // SAFETY: raises #UD on purpose; the exception handler never returns.
    unsafe { asm!("ud2", options(noreturn)) }
}

/// `fault:gp`: a load from a non-canonical address.
pub fn general_protection() -> ! {
    // SAFETY: raises #GP on purpose; the exception handler never returns.
    unsafe { asm!("mov rax, qword ptr [{addr}]", "2: jmp 2b", addr = in(reg) GP_ADDRESS, options(noreturn)) }
}

/// `fault:pf`: a load from an unmapped address.
pub fn page_fault() -> ! {
    // SAFETY: raises #PF on purpose (only 0-4 GiB are mapped); the
    // exception handler never returns.
    unsafe { asm!("mov rax, qword ptr [{addr}]", "2: jmp 2b", addr = in(reg) PAGE_FAULT_ADDRESS, options(noreturn)) }
}

/// `fault:de`: a division by zero.
pub fn divide_error() -> ! {
    // SAFETY: raises #DE on purpose; the exception handler never returns.
    unsafe { asm!("xor edx, edx", "xor eax, eax", "xor ecx, ecx", "div ecx", "2: jmp 2b", options(noreturn)) }
}

/// `fault:stack-overflow`: recurse into the guard page (unmapped by the
/// boot stub). The #PF cannot be delivered on the overflowed stack, so the
/// CPU raises #DF, which runs on its own IST stack.
pub fn stack_overflow() -> ! {
    #[allow(unconditional_recursion)]
    #[inline(never)]
    fn recurse(depth: u64) -> u64 {
        let frame = core::hint::black_box([depth; 32]);
        recurse(depth + 1) + core::hint::black_box(frame[0])
    }
    recurse(0);
    unreachable!("the recursion only ends in a double fault")
}

/// `fault:triple`: see `interrupts::triple_fault`.
pub fn triple_fault() -> ! {
    interrupts::triple_fault()
}
