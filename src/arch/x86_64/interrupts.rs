//! The IDT: an entry stub for each CPU exception (naked functions: stable
//! Rust has no `x86-interrupt` ABI), one common path that saves the
//! registers, and a dispatcher into the agent.

use core::arch::naked_asm;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};
use x86_64::VirtAddr;
use x86_64::instructions::tables::lidt;
use x86_64::structures::DescriptorTablePointer;

/// Vector of the non-maskable interrupt.
pub const NMI: u8 = 2;
/// Vector of the double fault.
pub const DOUBLE_FAULT: u8 = 8;
/// Vector of the general-protection fault.
pub const GENERAL_PROTECTION: u8 = 13;
/// Vector of the page fault.
pub const PAGE_FAULT: u8 = 14;

/// Vector of the local APIC timer (used to wake from `hlt` in sleeps).
pub const TIMER: u8 = 0x40;
/// The ACPI SCI (the power button), routed by the IOAPIC (`acpi`).
pub const SCI: u8 = 0x41;
/// The local APIC's spurious-interrupt vector.
pub const SPURIOUS: u8 = 0xff;

/// The registers the common entry saves, then what the CPU pushed.
#[repr(C)]
pub struct Frame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rax: u64,
    pub vector: u64,
    /// The CPU's error code, or 0 for vectors without one.
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

/// One 16-byte interrupt gate.
#[derive(Clone, Copy)]
#[repr(C)]
struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    attributes: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

impl Gate {
    const MISSING: Gate =
        Gate { offset_low: 0, selector: 0, ist: 0, attributes: 0, offset_mid: 0, offset_high: 0, reserved: 0 };

    fn interrupt(handler: usize, ist: u8) -> Gate {
        Gate {
            offset_low: handler as u16,
            selector: 0x08, // the kernel code segment (the boot stub's GDT)
            ist,
            attributes: 0x8e, // present, DPL 0, 64-bit interrupt gate
            offset_mid: (handler >> 16) as u16,
            offset_high: (handler >> 32) as u32,
            reserved: 0,
        }
    }
}

#[repr(C, align(16))]
struct Idt(UnsafeCell<[Gate; 256]>);

// SAFETY: written only by the one call of `init` that `INSTALLED` lets
// through, before the table is loaded; afterwards only the CPU reads it.
unsafe impl Sync for Idt {}

static IDT: Idt = Idt(UnsafeCell::new([Gate::MISSING; 256]));
/// `init` has run (it runs once).
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// The exception and NMI handlers the agent supplies.
pub struct Handlers {
    pub nmi: fn(),
    pub sci: fn(),
    pub exception: fn(&Frame) -> !,
}

struct HandlerCell(UnsafeCell<Option<Handlers>>);
// SAFETY: written only by the one call of `init` that `INSTALLED` lets
// through, before the IDT is loaded (so before `dispatch` can read it);
// read-only afterwards.
unsafe impl Sync for HandlerCell {}
static HANDLERS: HandlerCell = HandlerCell(UnsafeCell::new(None));

/// Installs the IDT: vectors 0–31 (exceptions), the local APIC timer, the
/// ACPI SCI and the APIC's spurious vector. Other vectors stay absent (never enabled).
/// The double-fault gate uses IST 1, which the boot stub's TSS provides.
/// Only the first call does anything: the IDT and the handlers are never
/// changed once the CPU uses them.
pub fn init(handlers: Handlers) {
    if INSTALLED.swap(true, Ordering::AcqRel) {
        return;
    }
    // SAFETY: the swap above lets exactly one call get here, and it runs
    // before the IDT is loaded: nothing else (neither the CPU nor
    // `dispatch`) uses these statics yet, and no other reference exists.
    let gates = unsafe {
        *HANDLERS.0.get() = Some(handlers);
        &mut *IDT.0.get()
    };
    // A plain indexed loop without branches in its body: under TCG every
    // branch of code run for the first time costs a translation.
    for (vector, stub) in STUBS.iter().enumerate() {
        let ist = u8::from(vector == usize::from(DOUBLE_FAULT)) * super::cpu::DOUBLE_FAULT_IST;
        gates[vector] = Gate::interrupt(*stub as usize, ist);
    }
    gates[usize::from(TIMER)] = Gate::interrupt(timer_stub as *const () as usize, 0);
    gates[usize::from(SCI)] = Gate::interrupt(sci_stub as *const () as usize, 0);
    gates[usize::from(SPURIOUS)] = Gate::interrupt(spurious_stub as *const () as usize, 0);
    let pointer = DescriptorTablePointer {
        limit: (core::mem::size_of::<[Gate; 256]>() - 1) as u16,
        // The IDT is in the image, below 4 GiB: canonical.
        base: VirtAddr::new_truncate(IDT.0.get() as u64),
    };
    // SAFETY: the table is static, fully initialised, and its gates point
    // at the stubs below with the boot GDT's code selector.
    unsafe { lidt(&pointer) };
}

/// `fault:triple`: loads an IDT with no entries, then a breakpoint: #BP
/// cannot be delivered, nor the #GP nor the #DF that follow: the CPU shuts
/// down, which QEMU turns into a reset.
pub fn triple_fault() -> ! {
    let pointer = DescriptorTablePointer { limit: 0, base: VirtAddr::new(0) };
    // SAFETY: leaves the CPU without handlers on purpose; the int3 right
    // after (nothing runs in between) shuts it down, and nothing returns.
    unsafe {
        lidt(&pointer);
        core::arch::asm!("int3", "2: jmp 2b", options(noreturn))
    }
}

/// Called by the common entry with the saved frame.
extern "C" fn dispatch(frame: &mut Frame) {
    // SAFETY: HANDLERS was set before the IDT was loaded and is never
    // written again.
    let Some(handlers) = (unsafe { &*HANDLERS.0.get() }) else { return };
    if frame.vector == u64::from(GENERAL_PROTECTION)
        && let Some(fixup) = super::cpu::take_gp_fixup()
    {
        frame.rip = fixup;
        return;
    }
    if frame.vector == u64::from(TIMER) {
        super::apic::end_of_interrupt();
    } else if frame.vector == u64::from(SCI) {
        // Level-triggered: the handler clears the cause before the EOI.
        (handlers.sci)();
        super::apic::end_of_interrupt();
    } else if frame.vector == u64::from(SPURIOUS) {
        // A spurious interrupt needs no end-of-interrupt.
    } else if frame.vector == u64::from(NMI) {
        // Returns to the interrupted code: if that was logging, the
        // handler's lines are dropped (and counted) by the logger.
        (handlers.nmi)();
    } else {
        // SAFETY: the exception handler returns `!`: the interrupted code
        // (and any handler it interrupted) never runs again.
        unsafe { crate::log::abandon_interrupted_frame() };
        (handlers.exception)(frame);
    }
}

/// Saves every general register, calls `dispatch(&mut Frame)`, restores
/// them, drops the vector and error code, and returns from the interrupt.
#[unsafe(naked)]
extern "C" fn common_entry() {
    naked_asm!(
        "push rax", "push rcx", "push rdx", "push rbx", "push rbp", "push rsi", "push rdi",
        "push r8", "push r9", "push r10", "push r11", "push r12", "push r13", "push r14", "push r15",
        "mov rdi, rsp",
        "call {dispatch}",
        "pop r15", "pop r14", "pop r13", "pop r12", "pop r11", "pop r10", "pop r9", "pop r8",
        "pop rdi", "pop rsi", "pop rbp", "pop rbx", "pop rdx", "pop rcx", "pop rax",
        "add rsp, 16",
        "iretq",
        dispatch = sym dispatch,
    )
}

/// One stub per vector: pushes a dummy error code where the CPU pushes
/// none, then the vector, and joins the common entry.
macro_rules! stubs {
    ($($name:ident = $vector:literal $($error:ident)?;)*) => {
        $(
            #[unsafe(naked)]
            extern "C" fn $name() {
                naked_asm!(
                    stubs!(@dummy $($error)?),
                    concat!("push ", $vector),
                    "jmp {common}",
                    common = sym common_entry,
                )
            }
        )*
    };
    (@dummy error) => { "" };
    (@dummy) => { "push 0" };
}

stubs! {
    timer_stub = 0x40;
    sci_stub = 0x41;
    spurious_stub = 0xff;
}

stubs! {
    vector0 = 0; vector1 = 1; vector2 = 2; vector3 = 3; vector4 = 4; vector5 = 5; vector6 = 6; vector7 = 7;
    vector8 = 8 error; vector9 = 9; vector10 = 10 error; vector11 = 11 error; vector12 = 12 error;
    vector13 = 13 error; vector14 = 14 error; vector15 = 15; vector16 = 16; vector17 = 17 error;
    vector18 = 18; vector19 = 19; vector20 = 20; vector21 = 21 error; vector22 = 22; vector23 = 23;
    vector24 = 24; vector25 = 25; vector26 = 26; vector27 = 27; vector28 = 28; vector29 = 29 error;
    vector30 = 30 error; vector31 = 31;
}

const STUBS: [extern "C" fn(); 32] = [
    vector0, vector1, vector2, vector3, vector4, vector5, vector6, vector7, vector8, vector9, vector10, vector11,
    vector12, vector13, vector14, vector15, vector16, vector17, vector18, vector19, vector20, vector21, vector22,
    vector23, vector24, vector25, vector26, vector27, vector28, vector29, vector30, vector31,
];

/// Whether the CPU pushes an error code for this exception vector.
pub fn has_error_code(vector: u64) -> bool {
    matches!(vector, 8 | 10..=14 | 17 | 21 | 29 | 30)
}

/// The mnemonic of an exception vector.
pub fn vector_name(vector: u64) -> &'static str {
    const NAMES: [&str; 32] = [
        "#DE divide error",
        "#DB debug",
        "NMI",
        "#BP breakpoint",
        "#OF overflow",
        "#BR bound range",
        "#UD invalid opcode",
        "#NM device not available",
        "#DF double fault",
        "coprocessor segment overrun",
        "#TS invalid TSS",
        "#NP segment not present",
        "#SS stack-segment fault",
        "#GP general protection",
        "#PF page fault",
        "reserved",
        "#MF x87 floating-point",
        "#AC alignment check",
        "#MC machine check",
        "#XM SIMD floating-point",
        "#VE virtualization",
        "#CP control protection",
        "reserved",
        "reserved",
        "reserved",
        "reserved",
        "reserved",
        "reserved",
        "#HV hypervisor injection",
        "#VC VMM communication",
        "#SX security",
        "reserved",
    ];
    NAMES.get(vector as usize).copied().unwrap_or("unknown")
}

/// The faulting address of the last page fault.
pub fn cr2() -> u64 {
    x86_64::registers::control::Cr2::read_raw()
}
