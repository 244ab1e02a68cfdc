//! The TOD clock (bit 51 = 1 µs). Sleeps wait enabled for the clock
//! comparator, so a sleeping guest costs the host no CPU.

use crate::s390_psw as psw;

/// CR0 bits: AFP registers, clock-comparator subclass.
const CR0_AFP: u64 = 0x40000;
const CR0_CLOCK_COMPARATOR: u64 = 0x800;

/// The TOD clock.
pub struct Tod;

fn stck() -> u64 {
    let mut value = 0u64;
    // SAFETY: STCK stores the 8-byte TOD clock at the given address.
    unsafe { core::arch::asm!("stck 0({p})", p = in(reg_addr) &raw mut value) };
    value
}

fn load_cr0(value: u64) {
    // SAFETY: CR0 holds only the AFP bit and the external subclass masks;
    // the agent enables the clock comparator alone, and only to end a sleep.
    unsafe { core::arch::asm!("lctlg %c0, %c0, 0({p})", p = in(reg_addr) &raw const value) };
}

impl crate::clock::Clock for Tod {
    fn now_us(&mut self) -> u64 {
        stck() >> 12
    }
}

// The agent's waits (`sleep:`, `feed:`'s pacing), through embedded-hal.
crate::clock::delay_ns_via_sleep_us!(Tod);

impl Tod {
    /// Waits, enabled for the clock comparator alone, until the TOD clock
    /// reaches now + `us`.
    fn sleep_us(&mut self, us: u64) {
        let target = stck().saturating_add(us.saturating_mul(1 << 12));
        while stck() < target {
            let mut psw = super::lowcore::Psw { mask: psw::WAIT | psw::EXT | psw::EA | psw::BA, address: 0 };
            load_cr0(CR0_AFP | CR0_CLOCK_COMPARATOR);
            // SAFETY: sets the clock comparator to the target and waits,
            // enabled for external interrupts only (and of those only the
            // clock comparator, per CR0). The external handler resumes at
            // label 1 with EXT and WAIT cleared.
            unsafe {
                core::arch::asm!(
                    "sckc 0({target})",
                    "larl {tmp}, 1f",
                    "stg {tmp}, 8({psw})",
                    "lpswe 0({psw})",
                    "1:",
                    target = in(reg_addr) &raw const target,
                    psw = in(reg_addr) &raw mut psw,
                    tmp = out(reg) _,
                )
            }
            load_cr0(CR0_AFP);
        }
    }
}
