//! The x86 clock: the TSC, calibrated against PIT channel 2, and sleeps
//! that halt the CPU until the local APIC timer wakes it.

use x86_64::instructions::port::Port;

/// PIT input clock, Hz.
const PIT_HZ: u64 = 1_193_182;
/// Calibration window: 20 ms of PIT ticks (the poll loop's exit latency
/// under TCG is tens of microseconds; over 20 ms that is < 0.3 %).
const CALIBRATION_US: u64 = 20_000;

/// The calibrated TSC (and the APIC timer's rate, measured against it).
#[derive(Clone, Copy)]
pub struct Tsc {
    ticks_per_ms: u64,
    apic_ticks_per_ms: u64,
}

/// Sleeps shorter than this spin: waking from `hlt` costs more.
const SPIN_BELOW_US: u64 = 50;

fn rdtsc() -> u64 {
    // SAFETY: RDTSC only reads the time-stamp counter; every x86_64 CPU
    // QEMU models has it and the agent never disables it (CR4.TSD = 0).
    unsafe { core::arch::x86_64::_rdtsc() }
}

impl Tsc {
    /// Measures the TSC rate against PIT channel 2 (one-shot).
    pub fn calibrate() -> Self {
        let count = (PIT_HZ * CALIBRATION_US / 1_000_000) as u16;
        let mut gate = Port::<u8>::new(0x61);
        let mut command = Port::<u8>::new(0x43);
        let mut channel2 = Port::<u8>::new(0x42);
        // SAFETY: ports 0x61 (speaker gate) and 0x42/0x43 (PIT) belong to the
        // PC platform devices; the agent uses channel 2 for nothing else and
        // keeps the speaker output disabled (bit 1 = 0).
        let ticks = unsafe {
            let g = gate.read() & !0x02;
            gate.write(g & !0x01);
            command.write(0b1011_0000); // channel 2, lo/hi byte, mode 0, binary
            channel2.write(count as u8);
            channel2.write((count >> 8) as u8);
            gate.write(g | 0x01); // start counting
            let start = rdtsc();
            while gate.read() & 0x20 == 0 {
                core::hint::spin_loop();
            }
            rdtsc() - start
        };
        let ticks_per_ms = (ticks * 1_000 / CALIBRATION_US).max(1);
        // The APIC timer against the TSC, over 1 ms.
        super::apic::start_free();
        let end = rdtsc() + ticks_per_ms;
        while rdtsc() < end {
            core::hint::spin_loop();
        }
        let apic_ticks_per_ms = u64::from(super::apic::elapsed()).max(1);
        super::apic::stop();
        Tsc { ticks_per_ms, apic_ticks_per_ms }
    }

    /// Local APIC timer ticks per millisecond.
    pub fn apic_ticks_per_ms(&self) -> u64 {
        self.apic_ticks_per_ms
    }

    /// TSC ticks per millisecond.
    pub fn ticks_per_ms(&self) -> u64 {
        self.ticks_per_ms
    }
}

impl crate::agent::Clock for Tsc {
    /// Microseconds since the TSC's reset.
    fn now_us(&mut self) -> u64 {
        (u128::from(rdtsc()) * 1_000 / u128::from(self.ticks_per_ms)) as u64
    }

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
            if left_us < SPIN_BELOW_US {
                core::hint::spin_loop();
                continue;
            }
            // Aim a little early (the APIC's measured rate is only as good as
            // its 1 ms calibration); the loop sleeps again for the rest.
            let aim_us = left_us - left_us / 32;
            let apic = (u128::from(aim_us) * u128::from(self.apic_ticks_per_ms) / 1_000).min(u128::from(u32::MAX));
            super::apic::start_one_shot(apic as u32);
            // `sti; hlt` is atomic (the interrupt shadow of sti), so the
            // timer cannot fire between the two.
            x86_64::instructions::interrupts::enable_and_hlt();
            x86_64::instructions::interrupts::disable();
        }
        super::apic::stop();
    }
}

impl embedded_hal::delay::DelayNs for Tsc {
    fn delay_ns(&mut self, ns: u32) {
        crate::agent::Clock::sleep_us(self, u64::from(ns).div_ceil(1_000));
    }
}
