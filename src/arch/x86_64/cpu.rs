//! CPU set-up after the boot stub (GDT with a TSS, a stack guard page, the
//! double-fault stack), MSR writes that survive a #GP, and the faults the
//! script can cause on purpose.

use super::interrupts;
use crate::hyperv::{self, GeneralProtection};
use core::arch::asm;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use x86_64::VirtAddr;
use x86_64::instructions::segmentation::{CS, DS, ES, SS, Segment};
use x86_64::instructions::tables::load_tss;
use x86_64::registers::control::Cr3;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable};
use x86_64::structures::tss::TaskStateSegment;

/// The unmapped address `fault:pf` touches (CR2 in the log).
pub const PAGE_FAULT_ADDRESS: u64 = 0x00ba_dc0d_e000;
/// The non-canonical address `fault:gp` touches.
pub const GP_ADDRESS: u64 = 0x8000_0000_0000_0000;
/// The IST slot of the double-fault handler.
pub const DOUBLE_FAULT_IST: u8 = 1;

unsafe extern "C" {
    static boot_pd: UnsafeCell<[u64; 2048]>;
    static __stack_guard: u8;
}

#[repr(C, align(4096))]
struct PageTable([u64; 512]);

/// Statics written once by `init`, on the only CPU, before any other use.
struct Tables {
    gdt: GlobalDescriptorTable,
    tss: TaskStateSegment,
}

#[repr(C, align(16))]
struct Stack([u8; 8192]);

struct Cell<T>(UnsafeCell<T>);
// SAFETY: single CPU; these statics are private to this module and written
// only by the one call of `init` that `INITIALISED` lets through, before the
// CPU uses them (afterwards only the CPU reads them).
unsafe impl<T> Sync for Cell<T> {}

static TABLES: Cell<Tables> =
    Cell(UnsafeCell::new(Tables { gdt: GlobalDescriptorTable::new(), tss: TaskStateSegment::new() }));
/// Zero-initialised, so in `.bss` rather than in the image.
static GUARD_PT: Cell<PageTable> = Cell(UnsafeCell::new(PageTable([0; 512])));
static DOUBLE_FAULT_STACK: Cell<Stack> = Cell(UnsafeCell::new(Stack([0; 8192])));
/// `init` has run (it runs once).
static INITIALISED: AtomicBool = AtomicBool::new(false);

/// Where a #GP resumes while `try_wrmsr` has armed it; 0 = a #GP is a
/// crash. Private: only `try_wrmsr`'s own fix-up label is ever stored.
static FIXUP_RIP: AtomicU64 = AtomicU64::new(0);

/// For the #GP handler: the armed fix-up address, if any (disarmed by
/// taking it).
pub fn take_gp_fixup() -> Option<u64> {
    Some(FIXUP_RIP.swap(0, Ordering::Relaxed)).filter(|&rip| rip != 0)
}

/// The stack guard page's address.
pub fn stack_guard() -> u64 {
    (&raw const __stack_guard) as u64
}

/// Loads a GDT with a TSS (IST 1 = the double-fault stack) and unmaps the
/// page below the stack. Only the first call does anything: the tables
/// are never changed once the CPU uses them.
pub fn init() {
    if INITIALISED.swap(true, Ordering::AcqRel) {
        return;
    }
    // SAFETY: the swap above lets exactly one call get here; the GDT and
    // TSS are not loaded yet (the CPU still uses the boot GDT), and nothing
    // else in the agent can name these private statics.
    let tables = unsafe { &mut *TABLES.0.get() };
    let ist_top = DOUBLE_FAULT_STACK.0.get() as u64 + core::mem::size_of::<Stack>() as u64;
    tables.tss.interrupt_stack_table[usize::from(DOUBLE_FAULT_IST - 1)] = VirtAddr::new(ist_top);
    let code = tables.gdt.append(Descriptor::kernel_code_segment());
    let data = tables.gdt.append(Descriptor::kernel_data_segment());
    // SAFETY: the TSS is a static that lives (and stays put) forever.
    let tss = tables.gdt.append(unsafe { Descriptor::tss_segment_unchecked(&raw const tables.tss) });
    // SAFETY: the GDT is static; the selectors come from it; code and data
    // are flat 64-bit segments like the boot GDT's.
    unsafe {
        tables.gdt.load_unsafe();
        CS::set_reg(code);
        DS::set_reg(data);
        ES::set_reg(data);
        SS::set_reg(data);
        load_tss(tss);
    }

    // Split the 2 MiB page holding the guard into 4 KiB pages, identity
    // mapped like before, except the guard itself.
    let guard = stack_guard();
    let region = guard & !0x1f_ffff;
    // SAFETY: as for TABLES: one call, and the table is not in use yet.
    let guard_pt = unsafe { &mut *GUARD_PT.0.get() };
    for (i, entry) in guard_pt.0.iter_mut().enumerate() {
        let page = region + i as u64 * 4096;
        *entry = if page == guard { 0 } else { page | 0x3 };
    }
    // SAFETY: boot_pd is the boot stub's page directory (2048 entries for
    // 0-4 GiB); the new table maps the same addresses except the guard
    // page, which nothing uses; the CR3 reload flushes the old entry.
    unsafe {
        (*boot_pd.get())[(guard >> 21) as usize] = &raw const *guard_pt as u64 | 0x3;
        let (frame, flags) = Cr3::read();
        Cr3::write(frame, flags);
    }
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

/// `fault:stack-overflow`: recurse into the guard page. The #PF cannot be
/// delivered on the overflowed stack, so the CPU raises #DF, which runs on
/// its own IST stack. `init` first (a no-op if done), so that the guard
/// page is unmapped: without it the recursion would run on into `.bss`.
pub fn stack_overflow() -> ! {
    init();
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
