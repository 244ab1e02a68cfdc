//! The x86 clock: the TSC, calibrated against PIT channel 2.

use x86_64::instructions::port::Port;

/// PIT input clock, Hz.
const PIT_HZ: u64 = 1_193_182;
/// Calibration window: 5 ms of PIT ticks.
const CALIBRATION_US: u64 = 5_000;

/// The calibrated TSC.
#[derive(Clone, Copy)]
pub struct Tsc {
    ticks_per_ms: u64,
}

fn rdtsc() -> u64 {
    // SAFETY: RDTSC only reads the time-stamp counter; every x86_64 CPU
    // QEMU models has it and the agent never disables it (CR4.TSD = 0).
    unsafe { core::arch::x86_64::_rdtsc() }
}

impl Tsc {
    /// Measures the TSC rate against PIT channel 2 (5 ms, one-shot).
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
        Tsc { ticks_per_ms: (ticks * 1_000 / CALIBRATION_US).max(1) }
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

    fn sleep_us(&mut self, us: u64) {
        let ticks = u128::from(us) * u128::from(self.ticks_per_ms) / 1_000;
        let end = u128::from(rdtsc()) + ticks;
        while u128::from(rdtsc()) < end {
            core::hint::spin_loop();
        }
    }
}

impl embedded_hal::delay::DelayNs for Tsc {
    fn delay_ns(&mut self, ns: u32) {
        crate::agent::Clock::sleep_us(self, u64::from(ns).div_ceil(1_000));
    }
}
