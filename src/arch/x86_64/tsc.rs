//! The x86 clock: the TSC, calibrated against the PIT, and sleeps that
//! halt the CPU until the local APIC timer wakes it.

use super::{apic, pit};
use core::sync::atomic::{AtomicU64, Ordering};

/// Calibration window, in PIT ticks (about 5 ms); three windows, median.
const WINDOW_PIT_TICKS: u16 = 6_000;
/// Polls to wait for the PIT to move before concluding there is none. It
/// moves every 838 ns; one poll (three port accesses) takes longer than
/// that under TCG, in real and in virtual time alike, so a PIT that has not
/// moved in this many polls is not there (`-machine pit=off`). Polling for
/// long is what costs: under `-icount` each port access is an exit.
const PIT_POLLS: u32 = 2_000;
/// QEMU's local APIC timer runs at 1 GHz (divide by 1): the fallback
/// reference when there is no PIT, and the range a measurement must fall
/// in before sleeps trust the timer to wake them.
const APIC_KHZ_IN_QEMU: u64 = 1_000_000;
/// A rough window, in APIC timer ticks (20 µs at 1 GHz), spent polling:
/// only good enough to count the periods of a halted window.
const ROUGH_APIC_TICKS: u32 = 20_000;
/// A halted window: one period of the APIC timer (1 ms at 1 GHz), spent in
/// `hlt`. The CPU reads both counters before and right after; how late it
/// wakes only lengthens the window. In virtual time (`-icount
/// sleep=off`) the halt costs nothing: the clock jumps to the timer.
const PERIOD_APIC_TICKS: u32 = 1_000_000;

/// The calibrated TSC (and the APIC timer's rate, measured against it).
#[derive(Clone, Copy)]
pub struct Tsc {
    ticks_per_ms: u64,
    apic_ticks_per_ms: u64,
    reference: &'static str,
    /// The APIC timer's rate is plausible: sleeps halt until it fires
    /// (else they spin, rather than risk sleeping forever).
    halt_in_sleeps: bool,
}

/// Sleeps shorter than this spin: waking from `hlt` costs more.
const SPIN_BELOW_US: u64 = 50;

/// The calibrated rate (TSC ticks per millisecond; 0 = not calibrated),
/// for interrupt handlers, which cannot borrow the agent's [`Tsc`]: they
/// run on the same CPU, so they read the same TSC.
static TICKS_PER_MS: AtomicU64 = AtomicU64::new(0);

fn to_us(ticks: u64, ticks_per_ms: u64) -> u64 {
    (u128::from(ticks) * 1_000 / u128::from(ticks_per_ms)) as u64
}

/// The time as [`Tsc`]'s `now_us` gives it, from any context; `None`
/// before the clock is calibrated.
pub fn now_us() -> Option<u64> {
    let rate = TICKS_PER_MS.load(Ordering::Acquire);
    (rate != 0).then(|| to_us(rdtsc(), rate))
}

fn rdtsc() -> u64 {
    // SAFETY: RDTSC only reads the time-stamp counter; every x86_64 CPU
    // QEMU models has it and the agent never disables it (CR4.TSD = 0).
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// The median of three measurements: one window stretched by the host
/// descheduling the vCPU between a count and its TSC read cannot skew it.
fn median3(mut f: impl FnMut() -> Option<u64>) -> Option<u64> {
    let mut v = [f()?, f()?, f()?];
    v.sort_unstable();
    Some(v[1])
}

/// TSC ticks per millisecond over one window of PIT channel 0, read back
/// with the latch command: each end is a latched count and the TSC right
/// after it. `None` when no PIT counts.
fn pit_window() -> Option<u64> {
    pit::start_channel0();
    let first = pit::read_channel0();
    let mut polls = 0;
    let (start, t_start) = loop {
        let count = pit::read_channel0();
        if count != first {
            break (count, rdtsc());
        }
        polls += 1;
        if polls > PIT_POLLS {
            return None;
        }
    };
    loop {
        let count = pit::read_channel0();
        let t = rdtsc();
        let elapsed = start.wrapping_sub(count);
        if elapsed >= WINDOW_PIT_TICKS {
            return Some(((t - t_start) * pit::HZ / (u64::from(elapsed) * 1_000)).max(1));
        }
    }
}

/// TSC ticks per [`APIC_KHZ_IN_QEMU`] APIC timer ticks, roughly: over
/// [`ROUGH_APIC_TICKS`] of polling. `None` without a usable APIC timer.
fn rough_window() -> Option<u64> {
    if !apic::usable() {
        return None;
    }
    apic::start_free();
    let (e0, t0) = (apic::elapsed(), rdtsc());
    loop {
        let (e, t) = (apic::elapsed(), rdtsc());
        let apic_ticks = e.wrapping_sub(e0);
        if apic_ticks >= ROUGH_APIC_TICKS {
            apic::stop();
            return Some(((t - t0) * APIC_KHZ_IN_QEMU / u64::from(apic_ticks)).max(1));
        }
    }
}

/// TSC ticks per [`APIC_KHZ_IN_QEMU`] APIC timer ticks, exactly: over (at
/// least half) a period of the APIC timer spent in `hlt` (see
/// [`PERIOD_APIC_TICKS`]), the periods counted with `rough`.
fn halted_window(rough: u64) -> u64 {
    apic::start_periodic(PERIOD_APIC_TICKS);
    let (c0, t0) = (apic::current_count(), rdtsc());
    let (tsc, apic_ticks) = loop {
        // `sti; hlt` is atomic (the interrupt shadow of sti): the timer
        // cannot fire between the two. Whatever wakes the CPU (the timer,
        // an NMI), the counters read after it say how long it slept.
        x86_64::instructions::interrupts::enable_and_hlt();
        x86_64::instructions::interrupts::disable();
        let (c1, t1) = (apic::current_count(), rdtsc());
        let ticks = crate::clock::periodic_ticks(c0, c1, PERIOD_APIC_TICKS, t1 - t0, rough, APIC_KHZ_IN_QEMU);
        if ticks >= u64::from(PERIOD_APIC_TICKS / 2) {
            break (t1 - t0, ticks);
        }
    };
    apic::stop();
    (u128::from(tsc) * u128::from(APIC_KHZ_IN_QEMU) / u128::from(apic_ticks)).max(1) as u64
}

impl Tsc {
    /// Measures the TSC against the PIT (else against the APIC timer at
    /// QEMU's 1 GHz), and the APIC timer against the TSC; each the median
    /// of three windows. The APIC's windows are spent halted (no host CPU,
    /// and nothing at all in virtual time); the PIT's are polled.
    pub fn calibrate() -> Self {
        apic::init();
        let tsc_per_apic_mhz = median3(rough_window).and_then(|rough| median3(|| Some(halted_window(rough))));
        let (ticks_per_ms, reference) = match (median3(pit_window), tsc_per_apic_mhz) {
            (Some(rate), _) => (rate, "the PIT"),
            (None, Some(rate)) => (rate, "the APIC timer at QEMU's 1 GHz (no PIT)"),
            (None, None) => (1, "nothing (no PIT, no usable APIC timer)"),
        };
        let apic_ticks_per_ms = tsc_per_apic_mhz
            .map_or(0, |rate| (u128::from(ticks_per_ms) * u128::from(APIC_KHZ_IN_QEMU) / u128::from(rate)) as u64);
        let halt_in_sleeps = (APIC_KHZ_IN_QEMU / 2..=APIC_KHZ_IN_QEMU * 2).contains(&apic_ticks_per_ms);
        TICKS_PER_MS.store(ticks_per_ms, Ordering::Release);
        Tsc { ticks_per_ms, apic_ticks_per_ms, reference, halt_in_sleeps }
    }

    /// TSC ticks per millisecond.
    pub fn ticks_per_ms(&self) -> u64 {
        self.ticks_per_ms
    }

    /// What the TSC was calibrated against.
    pub fn reference(&self) -> &'static str {
        self.reference
    }

    /// Whether sleeps halt (the APIC timer's rate is plausible).
    pub fn halts_in_sleeps(&self) -> bool {
        self.halt_in_sleeps
    }

    /// Local APIC timer ticks per millisecond.
    pub fn apic_ticks_per_ms(&self) -> u64 {
        self.apic_ticks_per_ms
    }
}

impl crate::clock::Clock for Tsc {
    /// Microseconds since the TSC's reset.
    fn now_us(&mut self) -> u64 {
        to_us(rdtsc(), self.ticks_per_ms)
    }
}

// The agent's waits (`sleep:`, `feed:`'s pacing), through embedded-hal.
crate::clock::delay_ns_via_sleep_us!(Tsc);

impl Tsc {
    /// Halts until the APIC timer fires, as often as needed; the TSC
    /// decides when the sleep is over.
    fn sleep_us(&mut self, us: u64) {
        let ticks = u128::from(us) * u128::from(self.ticks_per_ms) / 1_000;
        let end = u128::from(rdtsc()) + ticks;
        loop {
            let now = u128::from(rdtsc());
            if now >= end {
                break;
            }
            let left_us = ((end - now) * 1_000 / u128::from(self.ticks_per_ms)) as u64;
            if left_us < SPIN_BELOW_US || !self.halt_in_sleeps {
                core::hint::spin_loop();
                continue;
            }
            // Aim a little early (the APIC's measured rate is only as good as
            // its 1 ms calibration); the loop sleeps again for the rest.
            let aim_us = left_us - left_us / 32;
            let apic = (u128::from(aim_us) * u128::from(self.apic_ticks_per_ms) / 1_000).min(u128::from(u32::MAX));
            apic::start_one_shot(apic as u32);
            // `sti; hlt` is atomic (the interrupt shadow of sti), so the
            // timer cannot fire between the two.
            x86_64::instructions::interrupts::enable_and_hlt();
            x86_64::instructions::interrupts::disable();
        }
        apic::stop();
    }
}
