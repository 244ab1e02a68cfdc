//! The generic timer: the clock (the virtual counter, CNTVCT_EL0, at
//! CNTFRQ_EL0) and sleeps that wait with `wfi` for the virtual timer's
//! interrupt. Interrupts stay masked at the CPU (PSTATE.I): a pending one
//! still ends `wfi`, and is never taken; the GIC only has to forward it.

use super::devicetree::Gic;
use crate::clock::{Clock, delay_ns_via_sleep_us};
use core::arch::asm;

/// The virtual timer's interrupt: PPI 11, INTID 27.
const VTIMER_INTID: usize = 27;

fn counter() -> u64 {
    let value: u64;
    // SAFETY: reading the virtual counter (after an isb, so it is not read
    // early) has no side effects and is allowed at EL1.
    unsafe { asm!("isb", "mrs {}, cntvct_el0", out(reg) value, options(nomem, nostack)) };
    value
}

fn frequency() -> u64 {
    let value: u64;
    // SAFETY: reading CNTFRQ_EL0 has no side effects.
    unsafe { asm!("mrs {}, cntfrq_el0", out(reg) value, options(nomem, nostack)) };
    value
}

/// The agent's clock, and its sleeps.
pub struct Timer {
    hz: u64,
    /// The GIC forwards the timer's interrupt, so `wfi` can wait for it;
    /// without that, sleeps poll the counter.
    wakes: bool,
}

fn ticks_to_us(ticks: u64, hz: u64) -> u64 {
    (u128::from(ticks) * 1_000_000 / u128::from(hz)) as u64
}

impl Timer {
    /// Reads the counter's frequency and makes the GIC forward the timer.
    pub fn new(gic: Option<Gic>) -> Timer {
        let hz = frequency();
        let wakes = match gic {
            // SAFETY: the GIC the device tree names; only the virtual
            // timer's interrupt is set up, and it is never taken.
            Some(gic) => unsafe { forward_timer(gic) },
            None => false,
        };
        Timer { hz: hz.max(1), wakes }
    }

    pub fn hz(&self) -> u64 {
        self.hz
    }

    pub fn wakes(&self) -> bool {
        self.wakes
    }

    /// Waits `us` microseconds: `wfi` until the timer's deadline.
    pub fn sleep_us(&mut self, us: u64) {
        let ticks = (u128::from(us) * u128::from(self.hz)).div_ceil(1_000_000);
        let deadline = counter().saturating_add(u64::try_from(ticks).unwrap_or(u64::MAX));
        if self.wakes {
            // SAFETY: the virtual timer's compare value and control (enabled,
            // interrupt not masked at the timer); the interrupt is masked at
            // the CPU, so it only ends `wfi`.
            unsafe {
                asm!("msr cntv_cval_el0, {}", "msr cntv_ctl_el0, {}", "isb", in(reg) deadline, in(reg) 1u64, options(nomem, nostack))
            };
        }
        while counter() < deadline {
            if self.wakes {
                // SAFETY: waits for an interrupt (the timer's at the latest).
                unsafe { asm!("wfi", options(nomem, nostack)) };
            } else {
                core::hint::spin_loop();
            }
        }
        if self.wakes {
            // SAFETY: turns the timer off, which withdraws its interrupt.
            unsafe { asm!("msr cntv_ctl_el0, xzr", "isb", options(nomem, nostack)) };
        }
    }
}

impl Clock for Timer {
    fn now_us(&mut self) -> u64 {
        ticks_to_us(counter(), self.hz)
    }
}

delay_ns_via_sleep_us!(Timer);

/// Makes the GIC signal the virtual timer's interrupt to this CPU.
///
/// # Safety
///
/// `gic` must be the machine's GIC as the device tree describes it.
unsafe fn forward_timer(gic: Gic) -> bool {
    let write32 = |address: usize, value: u32| {
        // SAFETY: a register of the GIC (this function's contract).
        unsafe { core::ptr::write_volatile(address as *mut u32, value) }
    };
    let write8 = |address: usize, value: u8| {
        // SAFETY: as above (priority registers are byte-accessible).
        unsafe { core::ptr::write_volatile(address as *mut u8, value) }
    };
    let read32 = |address: usize| {
        // SAFETY: as above.
        unsafe { core::ptr::read_volatile(address as *const u32) }
    };
    match gic {
        Gic::V2 { distributor, cpu } => {
            write32(distributor, 1); // GICD_CTLR: forward
            write32(distributor + 0x100, 1 << VTIMER_INTID); // GICD_ISENABLER0
            write8(distributor + 0x400 + VTIMER_INTID, 0x80); // GICD_IPRIORITYR
            write32(cpu + 0x4, 0xff); // GICC_PMR: every priority
            write32(cpu, 1); // GICC_CTLR: signal
            true
        }
        Gic::V3 { distributor, redistributor } => {
            write32(distributor, 1 << 4 | 1 << 1); // GICD_CTLR: ARE, group 1
            // GICR_WAKER: wake this CPU's redistributor.
            let waker = redistributor + 0x14;
            write32(waker, read32(waker) & !(1 << 1));
            let mut tries = 0;
            while read32(waker) & 1 << 2 != 0 {
                tries += 1;
                if tries > 100_000 {
                    return false;
                }
            }
            let sgi = redistributor + 0x1_0000;
            write32(sgi + 0x80, read32(sgi + 0x80) | 1 << VTIMER_INTID); // GICR_IGROUPR0: group 1
            write8(sgi + 0x400 + VTIMER_INTID, 0x80); // GICR_IPRIORITYR
            write32(sgi + 0x100, 1 << VTIMER_INTID); // GICR_ISENABLER0
            // SAFETY: the CPU interface's system registers (ICC_SRE_EL1,
            // ICC_PMR_EL1, ICC_IGRPEN1_EL1): system-register access,
            // every priority, group 1 signalled.
            unsafe {
                asm!(
                    "mrs {t}, s3_0_c12_c12_5",
                    "orr {t}, {t}, #1",
                    "msr s3_0_c12_c12_5, {t}",
                    "isb",
                    "msr s3_0_c4_c6_0, {pmr}",
                    "msr s3_0_c12_c12_7, {one}",
                    "isb",
                    t = out(reg) _,
                    pmr = in(reg) 0xffu64,
                    one = in(reg) 1u64,
                    options(nomem, nostack)
                )
            };
            true
        }
    }
}
