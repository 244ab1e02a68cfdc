//! i6300esb (`-device i6300esb`): a PCI watchdog with two stages, two
//! prescalers, exact-width registers and an unlock sequence before every
//! protected write. QEMU fires WATCHDOG at the end of stage 2, i.e.
//! stage1 + stage2 after arming or feeding, then resets the device.

/// PCI IDs.
pub const PCI_VENDOR: u16 = 0x8086;
pub const PCI_DEVICE: u16 = 0x25ab;

/// Config register 0x60, 16-bit accesses only.
pub const CONFIG_REG: u8 = 0x60;
/// Config: 1 = do nothing at stage-2 expiry.
pub const CONFIG_REBOOT_DISABLE: u16 = 0x20;
/// Config: 1 = the 1 MHz prescaler.
pub const CONFIG_FREQ_1MHZ: u16 = 0x04;
/// Lock register 0x68, 8-bit accesses only.
pub const LOCK_REG: u8 = 0x68;
pub const LOCK_LOCKED: u8 = 0x01;
pub const LOCK_ENABLE: u8 = 0x02;
pub const LOCK_FREE_RUN: u8 = 0x04;

/// BAR0 registers.
pub const MMIO_TIMER1: usize = 0x00;
pub const MMIO_TIMER2: usize = 0x04;
pub const MMIO_RELOAD: usize = 0x0c;
/// The two unlock writes before each protected write.
pub const UNLOCK: [u8; 2] = [0x80, 0x86];
/// Reload register: restart stage 1.
pub const RELOAD_PET: u16 = 0x0100;
/// Reload register read: the previous reset was this watchdog's.
pub const RELOAD_PREVIOUS_REBOOT: u16 = 0x1200;

/// Preloads are 20 bits.
pub const MAX_PRELOAD: u32 = 0xf_ffff;
/// The largest error, relative to the requested duration, that arming
/// accepts (in parts per million).
pub const MAX_ERROR_PPM: u64 = 5_000;

/// The two prescalers of QEMU's model (33 MHz PCI clock, 30 ns a tick).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(target_os = "none", derive(defmt::Format))]
pub enum Prescaler {
    /// "1 kHz": a preload unit is 2^15 × 30 ns = 983.04 µs.
    Khz1,
    /// "1 MHz": a preload unit is 2^5 × 30 ns = 0.96 µs.
    Mhz1,
}

impl Prescaler {
    /// One preload unit in picoseconds.
    pub const fn unit_ps(self) -> u64 {
        match self {
            Prescaler::Khz1 => 983_040_000,
            Prescaler::Mhz1 => 960_000,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Prescaler::Khz1 => "1kHz",
            Prescaler::Mhz1 => "1MHz",
        }
    }

    /// The preload closest to `us` and its error in picoseconds, if in range.
    fn preload(self, us: u64) -> Option<(u32, u64)> {
        let ps = u128::from(us) * 1_000_000;
        let unit = u128::from(self.unit_ps());
        let units = (ps + unit / 2) / unit;
        if units > u128::from(MAX_PRELOAD) {
            return None;
        }
        let error = (units * unit).abs_diff(ps);
        Some((units as u32, error as u64))
    }
}

/// Everything needed to arm the device, chosen at parse time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(target_os = "none", derive(defmt::Format))]
pub struct Settings {
    pub prescaler: Prescaler,
    pub preload1: u32,
    pub preload2: u32,
    /// Act (fire WATCHDOG) at stage-2 expiry.
    pub reboot: bool,
    /// Restart stage 1 after stage 2.
    pub free_run: bool,
}

/// Why a pair of durations cannot be armed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArmError {
    /// Longer than the 1 kHz prescaler's 20-bit range (about 1030.8 s).
    TooLong,
    /// Both stages fit no single prescaler within [`MAX_ERROR_PPM`].
    Unrepresentable,
}

impl Settings {
    /// Picks the prescaler that represents both stages most exactly (both
    /// stages share it) and the preloads for it.
    pub fn new(stage1_us: u64, stage2_us: u64, reboot: bool, free_run: bool) -> Result<Self, ArmError> {
        let mut best: Option<(u64, Settings)> = None;
        let mut in_range = false;
        for prescaler in [Prescaler::Mhz1, Prescaler::Khz1] {
            let (Some((p1, e1)), Some((p2, e2))) = (prescaler.preload(stage1_us), prescaler.preload(stage2_us)) else {
                continue;
            };
            in_range = true;
            // Relative error of the worse stage, in ppm (exact durations
            // of 0 are exact with either prescaler).
            let ppm = |error: u64, us: u64| if error == 0 { 0 } else { error / us.max(1) };
            let score = ppm(e1, stage1_us).max(ppm(e2, stage2_us));
            if score <= MAX_ERROR_PPM && best.is_none_or(|(s, _)| score < s) {
                best = Some((score, Settings { prescaler, preload1: p1, preload2: p2, reboot, free_run }));
            }
        }
        match best {
            Some((_, settings)) => Ok(settings),
            None if in_range => Err(ArmError::Unrepresentable),
            None => Err(ArmError::TooLong),
        }
    }

    /// Time from arming (or feeding) to the WATCHDOG event, in microseconds.
    pub fn total_us(&self) -> u64 {
        (u64::from(self.preload1) + u64::from(self.preload2)) * self.prescaler.unit_ps() / 1_000_000
    }

    /// The value of config register 0x60.
    pub const fn config(&self) -> u16 {
        let mut value = 0;
        if !self.reboot {
            value |= CONFIG_REBOOT_DISABLE;
        }
        if matches!(self.prescaler, Prescaler::Mhz1) {
            value |= CONFIG_FREQ_1MHZ;
        }
        value
    }

    /// The value of lock register 0x68 that starts the watchdog.
    pub const fn enable(&self) -> u8 {
        if self.free_run { LOCK_ENABLE | LOCK_FREE_RUN } else { LOCK_ENABLE }
    }
}

#[cfg(target_os = "none")]
pub use hw::I6300Esb;

#[cfg(target_os = "none")]
mod hw {
    use super::*;
    use crate::pci::{self, Bdf};

    /// A found i6300esb with its BAR0 mapped.
    pub struct I6300Esb {
        bdf: Bdf,
        base: usize,
        /// The previous reset was caused by this watchdog.
        previous_reboot: bool,
    }

    impl I6300Esb {
        /// Finds the device on any PCI bus and maps BAR0.
        pub fn probe() -> Option<Self> {
            let bdf = pci::find(PCI_VENDOR, PCI_DEVICE)?;
            let bar = match pci::map_memory_bar(bdf, 0) {
                Ok(bar) => bar,
                Err(e) => {
                    defmt::warn!("i6300esb at {}: BAR0 unusable: {}", bdf, e);
                    return None;
                }
            };
            let mut esb = I6300Esb { bdf, base: bar.address as usize, previous_reboot: false };
            esb.previous_reboot = esb.read16(MMIO_RELOAD) & RELOAD_PREVIOUS_REBOOT == RELOAD_PREVIOUS_REBOOT;
            Some(esb)
        }

        pub fn bdf(&self) -> Bdf {
            self.bdf
        }

        pub fn address(&self) -> u64 {
            self.base as u64
        }

        /// The device says the last reset was its doing.
        pub fn previous_reboot(&self) -> bool {
            self.previous_reboot
        }

        fn locked(&self) -> bool {
            pci::read8(self.bdf, LOCK_REG) & LOCK_LOCKED != 0
        }

        fn read16(&self, offset: usize) -> u16 {
            // SAFETY: BAR0 of the i6300esb, identity mapped (0-4 GiB); a
            // 16-bit read of the reload register only reports the flags.
            unsafe { core::ptr::read_volatile((self.base + offset) as *const u16) }
        }

        fn unlock(&mut self) {
            for byte in UNLOCK {
                // SAFETY: the unlock writes to BAR0's reload register only
                // enable the next protected write.
                unsafe { core::ptr::write_volatile((self.base + MMIO_RELOAD) as *mut u8, byte) }
            }
        }

        /// Preloads are written 32 bits wide, each after an unlock.
        fn write_preload(&mut self, offset: usize, value: u32) {
            self.unlock();
            // SAFETY: a 32-bit write to a timer preload register of BAR0.
            unsafe { core::ptr::write_volatile((self.base + offset) as *mut u32, value) }
        }

        /// A pet is a 16-bit write to the reload register, after an unlock.
        fn pet(&mut self) {
            self.unlock();
            // SAFETY: a 16-bit write of the reload bit to BAR0's reload register.
            unsafe { core::ptr::write_volatile((self.base + MMIO_RELOAD) as *mut u16, RELOAD_PET) }
        }
    }

    impl crate::watchdog::Watchdog for I6300Esb {
        type Timeout = Settings;

        fn arm(&mut self, settings: &Settings) {
            // Disable first so that enabling is a 0→1 transition.
            pci::write8(self.bdf, LOCK_REG, 0);
            pci::write16(self.bdf, CONFIG_REG, settings.config());
            self.write_preload(MMIO_TIMER1, settings.preload1);
            self.write_preload(MMIO_TIMER2, settings.preload2);
            self.pet();
            pci::write8(self.bdf, LOCK_REG, settings.enable());
        }

        fn feed(&mut self) {
            self.pet();
        }

        fn stop(&mut self) -> bool {
            if self.locked() {
                return false;
            }
            pci::write8(self.bdf, LOCK_REG, 0);
            true
        }

        fn can_stop(&self) -> bool {
            !self.locked()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_second_stages_use_the_fast_prescaler() {
        let s = Settings::new(250_000, 250_000, true, false).unwrap();
        assert_eq!(s.prescaler, Prescaler::Mhz1);
        assert_eq!(s.preload1, 260_417);
        assert_eq!(s.total_us(), 500_000);
        assert_eq!(s.config(), CONFIG_FREQ_1MHZ);
        assert_eq!(s.enable(), LOCK_ENABLE);
    }

    #[test]
    fn long_stages_use_the_slow_prescaler() {
        let s = Settings::new(1_000_000, 2_000_000, false, true).unwrap();
        assert_eq!(s.prescaler, Prescaler::Khz1);
        assert_eq!((s.preload1, s.preload2), (1017, 2035));
        assert_eq!(s.config(), CONFIG_REBOOT_DISABLE);
        assert_eq!(s.enable(), LOCK_ENABLE | LOCK_FREE_RUN);
        // Within half a unit (0.49 ms) of each stage.
        assert!(s.total_us().abs_diff(3_000_000) < 1_000);
    }

    #[test]
    fn limits() {
        // 1 kHz range: 0xfffff × 983.04 µs ≈ 1030.79 s.
        assert!(Settings::new(1_030_000_000, 1_000_000, true, false).is_ok());
        assert_eq!(Settings::new(1_031_000_000, 1_000_000, true, false), Err(ArmError::TooLong));
        // 1 MHz range ends at ≈ 1.0066 s; 2 ms needs it, 100 s excludes it.
        assert_eq!(Settings::new(2_000, 100_000_000, true, false), Err(ArmError::Unrepresentable));
        assert_eq!(Settings::new(0, 0, true, false).unwrap().total_us(), 0);
    }
}
