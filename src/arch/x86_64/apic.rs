//! The local APIC, for two things: delivering NMIs (LINT1, through which
//! QEMU's watchdog action inject-nmi arrives) and a one-shot timer that
//! wakes the CPU from `hlt`, so a sleeping agent costs the host no CPU.

use core::sync::atomic::{AtomicBool, Ordering};
use x86_64::instructions::port::Port;

/// The local APIC's registers (identity mapped by the boot page tables).
const BASE: usize = 0xfee0_0000;
/// IA32_APIC_BASE: global enable, x2APIC mode, the base address bits.
const MSR_ENABLE: u64 = 1 << 11;
const MSR_X2APIC: u64 = 1 << 10;
const MSR_BASE_MASK: u64 = 0x000f_ffff_ffff_f000;
const EOI: usize = 0xb0;
const SPURIOUS: usize = 0xf0;
const LVT_TIMER: usize = 0x320;
const LVT_LINT0: usize = 0x350;
const LVT_LINT1: usize = 0x360;
const INITIAL_COUNT: usize = 0x380;
const CURRENT_COUNT: usize = 0x390;
const DIVIDE: usize = 0x3e0;

const MASKED: u32 = 1 << 16;
/// LVT timer mode 0b01: periodic.
const PERIODIC: u32 = 1 << 17;
const DELIVERY_NMI: u32 = 0b100 << 8;
const SOFTWARE_ENABLE: u32 = 1 << 8;
/// Divide configuration 0b1011: divide by 1.
const DIVIDE_BY_1: u32 = 0b1011;

/// `init` found the APIC decoding its registers at `BASE` (xAPIC mode);
/// until then, and if not, register accesses do nothing (reads give 0).
static AT_BASE: AtomicBool = AtomicBool::new(false);

fn read(register: usize) -> u32 {
    if !AT_BASE.load(Ordering::Acquire) {
        return 0;
    }
    // SAFETY: the local APIC answers at BASE (checked by `init`), which the
    // boot page tables identity map; `register` is one of the 32-bit
    // aligned offsets above, inside its 4 KiB page.
    unsafe { core::ptr::read_volatile((BASE + register) as *const u32) }
}

fn write(register: usize, value: u32) {
    if AT_BASE.load(Ordering::Acquire) {
        // SAFETY: the APIC answers at BASE (checked just above).
        unsafe { write_at_base(register, value) }
    }
}

/// Writes an APIC register without checking `AT_BASE` (for `init`, which
/// checks once and then writes its registers in one straight line).
///
/// # Safety
///
/// The local APIC must answer at `BASE` (what `init` checks before setting
/// `AT_BASE`).
unsafe fn write_at_base(register: usize, value: u32) {
    // SAFETY: the APIC decodes its registers at BASE (the caller's
    // contract), which the boot page tables identity map; `register` is
    // one of the 32-bit aligned offsets above, inside its 4 KiB page; the
    // values written are the architected ones, and the APIC's registers are
    // not memory anything else uses.
    unsafe { core::ptr::write_volatile((BASE + register) as *mut u32, value) }
}

/// The IA32_APIC_BASE MSR (base address, enable bit 11, x2APIC bit 10);
/// 0 when CPUID says the CPU has no APIC (and so no such MSR).
pub fn base_msr() -> u64 {
    const CPUID_EDX_APIC: u32 = 1 << 9;
    if super::cpu::cpuid(1)[3] & CPUID_EDX_APIC == 0 {
        return 0;
    }
    // SAFETY: the CPU has an APIC (CPUID.1:EDX bit 9), so IA32_APIC_BASE
    // exists; reading it has no side effect.
    unsafe { x86_64::registers::model_specific::Msr::new(0x1b).read() }
}

/// Enables the APIC with NMIs on LINT1 and the timer masked, and masks the
/// legacy PICs (firmware may have left their timer interrupt enabled, on
/// vectors that are CPU exceptions in long mode). An APIC that is absent,
/// disabled, in x2APIC mode or moved away from `BASE` is left alone: no
/// NMIs through LINT1, and sleeps spin (the timer reads 0).
///
/// Runs once, when something first needs it: the clock (its calibration
/// and sleeps enable interrupts), a script that waits (an NMI can come, on
/// LINT1), idling at the end (the power button's SCI, NMIs). A script that
/// only fires an event never pays for it before its first step; until then
/// interrupts stay off.
pub fn init() {
    static DONE: AtomicBool = AtomicBool::new(false);
    if DONE.swap(true, Ordering::AcqRel) {
        return;
    }
    // SAFETY: 0x21/0xa1 are the two 8259s' mask registers; masking every
    // line only stops legacy interrupts, which the agent never uses.
    unsafe {
        Port::<u8>::new(0x21).write(0xff);
        Port::<u8>::new(0xa1).write(0xff);
    }
    let msr = base_msr();
    let usable = msr & MSR_ENABLE != 0 && msr & MSR_X2APIC == 0 && msr & MSR_BASE_MASK == BASE as u64;
    AT_BASE.store(usable, Ordering::Release);
    if !usable {
        defmt::warn!("local APIC unusable (IA32_APIC_BASE {=u64:#x}): no NMIs on LINT1, sleeps will spin", msr);
        return;
    }
    // SAFETY: `usable` says the APIC answers at BASE.
    unsafe {
        write_at_base(SPURIOUS, SOFTWARE_ENABLE | u32::from(super::interrupts::SPURIOUS));
        write_at_base(LVT_LINT0, MASKED);
        write_at_base(LVT_LINT1, DELIVERY_NMI);
        write_at_base(LVT_TIMER, MASKED | u32::from(super::interrupts::TIMER));
        write_at_base(DIVIDE, DIVIDE_BY_1);
    }
}

/// Signals the end of the timer interrupt.
pub fn end_of_interrupt() {
    write(EOI, 0);
}

/// Starts a one-shot countdown of `ticks` that raises the timer vector.
pub fn start_one_shot(ticks: u32) {
    write(LVT_TIMER, u32::from(super::interrupts::TIMER));
    write(INITIAL_COUNT, ticks.max(1));
}

/// Stops the countdown (and masks the timer).
pub fn stop() {
    write(LVT_TIMER, MASKED | u32::from(super::interrupts::TIMER));
    write(INITIAL_COUNT, 0);
}

/// Whether `init` found the APIC usable: its timer counts (else reads give 0).
pub fn usable() -> bool {
    AT_BASE.load(Ordering::Acquire)
}

/// Starts a free countdown from the maximum, for calibration.
pub fn start_free() {
    write(LVT_TIMER, MASKED | u32::from(super::interrupts::TIMER));
    write(INITIAL_COUNT, u32::MAX);
}

/// Ticks counted since `start_free`.
pub fn elapsed() -> u32 {
    u32::MAX - read(CURRENT_COUNT)
}

/// Starts a countdown of `ticks` that raises the timer vector at each end
/// and starts again (periodic mode), for calibration windows spent halted.
pub fn start_periodic(ticks: u32) {
    write(LVT_TIMER, PERIODIC | u32::from(super::interrupts::TIMER));
    write(INITIAL_COUNT, ticks.max(1));
}

/// The countdown's current count.
pub fn current_count() -> u32 {
    read(CURRENT_COUNT)
}
