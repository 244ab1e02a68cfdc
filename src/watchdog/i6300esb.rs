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
#[cfg_attr(image, derive(defmt::Format))]
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
        // In picoseconds a u64 holds ~213 days: far beyond either range.
        let ps = us.checked_mul(1_000_000)?;
        let unit = self.unit_ps();
        let units = ps.checked_add(unit / 2)? / unit;
        if units > u64::from(MAX_PRELOAD) {
            return None;
        }
        Some((units as u32, (units * unit).abs_diff(ps)))
    }
}

/// Everything needed to arm the device, chosen at parse time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(image, derive(defmt::Format))]
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

/// The register accesses the driver needs, each with its exact width (a
/// fake records them in tests).
pub trait EsbBus {
    fn config_read8(&mut self, offset: u8) -> u8;
    fn config_write8(&mut self, offset: u8, value: u8);
    fn config_write16(&mut self, offset: u8, value: u16);
    fn mmio_read16(&mut self, offset: usize) -> u16;
    fn mmio_write8(&mut self, offset: usize, value: u8);
    fn mmio_write16(&mut self, offset: usize, value: u16);
    fn mmio_write32(&mut self, offset: usize, value: u32);
}

/// The i6300esb driver.
pub struct I6300Esb<B> {
    bus: B,
    /// The previous reset was caused by this watchdog.
    previous_reboot: bool,
}

impl<B: EsbBus> I6300Esb<B> {
    /// Takes over the device and reads its previous-reboot flag.
    pub fn new(mut bus: B) -> Self {
        let flags = bus.mmio_read16(MMIO_RELOAD);
        I6300Esb { bus, previous_reboot: flags & RELOAD_PREVIOUS_REBOOT == RELOAD_PREVIOUS_REBOOT }
    }

    pub fn bus(&self) -> &B {
        &self.bus
    }

    /// The device says the last reset was its doing.
    pub fn previous_reboot(&self) -> bool {
        self.previous_reboot
    }

    fn unlock(&mut self) {
        for byte in UNLOCK {
            self.bus.mmio_write8(MMIO_RELOAD, byte);
        }
    }

    /// Preloads are written 32 bits wide, each after an unlock.
    fn write_preload(&mut self, offset: usize, value: u32) {
        self.unlock();
        self.bus.mmio_write32(offset, value);
    }

    /// A pet is a 16-bit write to the reload register, after an unlock.
    fn pet(&mut self) {
        self.unlock();
        self.bus.mmio_write16(MMIO_RELOAD, RELOAD_PET);
    }
}

impl<B: EsbBus> super::Watchdog for I6300Esb<B> {
    type Timeout = Settings;

    fn arm(&mut self, settings: &Settings) {
        // Disable first so that enabling is a 0→1 transition.
        self.bus.config_write8(LOCK_REG, 0);
        self.bus.config_write16(CONFIG_REG, settings.config());
        self.write_preload(MMIO_TIMER1, settings.preload1);
        self.write_preload(MMIO_TIMER2, settings.preload2);
        self.pet();
        self.bus.config_write8(LOCK_REG, settings.enable());
    }

    fn feed(&mut self) {
        self.pet();
    }

    fn stop(&mut self) -> bool {
        if !self.can_stop() {
            return false;
        }
        self.bus.config_write8(LOCK_REG, 0);
        true
    }

    fn can_stop(&mut self) -> bool {
        self.bus.config_read8(LOCK_REG) & LOCK_LOCKED == 0
    }
}

#[cfg(all(image, any(target_arch = "x86_64", target_arch = "aarch64")))]
pub use hw::{PciEsbBus, probe};

#[cfg(all(image, any(target_arch = "x86_64", target_arch = "aarch64")))]
mod hw {
    use super::*;
    use crate::pci::{self, Bdf};
    use core::mem::size_of;

    /// The bytes of BAR0 the driver uses (TIMER1, TIMER2, the reload
    /// register): QEMU's BAR0 is exactly this big.
    const MMIO_SIZE: usize = 16;

    /// The device's PCI configuration space and its mapped BAR0. Only
    /// `probe` makes one (`size` is private), so `bdf` is an i6300esb and
    /// `base` its mapped BAR0; the accessors reach nothing else.
    pub struct PciEsbBus {
        pub bdf: Bdf,
        pub base: usize,
        /// BAR0's size, at least `MMIO_SIZE` (private: only `probe` makes one).
        size: usize,
    }

    /// Takes the device at `bdf` (found by `pci::find`; its IDs are checked
    /// again here) and maps BAR0.
    pub fn probe(bdf: Bdf) -> Option<I6300Esb<PciEsbBus>> {
        if !pci::has_ids(bdf, PCI_VENDOR, PCI_DEVICE) {
            defmt::warn!("{}: not an i6300esb", bdf);
            return None;
        }
        // SAFETY: `bdf` is an i6300esb (IDs checked above), a type-0
        // function whose one BAR is the memory BAR0.
        match unsafe { pci::map_memory_bar(bdf, 0) } {
            Ok(bar) if bar.size < MMIO_SIZE as u64 => {
                defmt::warn!(
                    "i6300esb at {}: BAR0 is {=u64} bytes, the registers need {=usize}: not used",
                    bdf,
                    bar.size,
                    MMIO_SIZE
                );
                None
            }
            Ok(bar) => Some(I6300Esb::new(PciEsbBus { bdf, base: bar.address as usize, size: bar.size as usize })),
            Err(e) => {
                defmt::warn!("i6300esb at {}: BAR0 unusable: {}", bdf, e);
                None
            }
        }
    }

    impl PciEsbBus {
        /// The address of the BAR0 register at `offset`, if a `T` there is
        /// aligned and inside the registers the driver uses.
        fn register<T>(&self, offset: usize) -> Option<*mut T> {
            let fits = offset.is_multiple_of(size_of::<T>()) && offset + size_of::<T>() <= MMIO_SIZE.min(self.size);
            fits.then(|| (self.base + offset) as *mut T)
        }
    }

    // Configuration writes go only to the watchdog's own registers (config
    // 0x60, 16-bit; lock 0x68, 8-bit), MMIO only to BAR0's first 16 bytes:
    // anything else is ignored (the driver never asks for it).
    impl EsbBus for PciEsbBus {
        fn config_read8(&mut self, offset: u8) -> u8 {
            pci::read8(self.bdf, offset)
        }

        fn config_write8(&mut self, offset: u8, value: u8) {
            if offset == LOCK_REG {
                // SAFETY: the lock register of an i6300esb (see the type):
                // it starts, stops and locks the watchdog, and maps nothing.
                unsafe { pci::write8(self.bdf, offset, value) }
            }
        }

        fn config_write16(&mut self, offset: u8, value: u16) {
            if offset == CONFIG_REG {
                // SAFETY: the config register of an i6300esb: prescaler and
                // expiry action; it maps nothing.
                unsafe { pci::write16(self.bdf, offset, value) }
            }
        }

        fn mmio_read16(&mut self, offset: usize) -> u16 {
            // SAFETY: a register of the i6300esb's BAR0, which `probe`
            // mapped within the agent's reach, aligned
            // (`register`); the driver only reads the reload register's flags.
            self.register(offset).map_or(0, |register| unsafe { core::ptr::read_volatile(register) })
        }

        fn mmio_write8(&mut self, offset: usize, value: u8) {
            if let Some(register) = self.register(offset) {
                // SAFETY: as above; byte writes are the unlock sequence.
                unsafe { core::ptr::write_volatile(register, value) }
            }
        }

        fn mmio_write16(&mut self, offset: usize, value: u16) {
            if let Some(register) = self.register(offset) {
                // SAFETY: as above; the 16-bit write is the pet.
                unsafe { core::ptr::write_volatile(register, value) }
            }
        }

        fn mmio_write32(&mut self, offset: usize, value: u32) {
            if let Some(register) = self.register(offset) {
                // SAFETY: as above; 32-bit writes are the timer preloads.
                unsafe { core::ptr::write_volatile(register, value) }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watchdog::Watchdog;
    extern crate std;
    use std::vec::Vec;

    /// One register access, with its width.
    #[derive(Debug, PartialEq, Eq)]
    enum Access {
        CfgRead8(u8),
        CfgWrite8(u8, u8),
        CfgWrite16(u8, u16),
        MmioRead16(usize),
        MmioWrite8(usize, u8),
        MmioWrite16(usize, u16),
        MmioWrite32(usize, u32),
    }
    use Access::*;

    #[derive(Default)]
    struct Recorder {
        log: Vec<Access>,
        reload: u16,
        lock: u8,
    }

    impl EsbBus for Recorder {
        fn config_read8(&mut self, offset: u8) -> u8 {
            self.log.push(CfgRead8(offset));
            self.lock
        }
        fn config_write8(&mut self, offset: u8, value: u8) {
            self.log.push(CfgWrite8(offset, value));
        }
        fn config_write16(&mut self, offset: u8, value: u16) {
            self.log.push(CfgWrite16(offset, value));
        }
        fn mmio_read16(&mut self, offset: usize) -> u16 {
            self.log.push(MmioRead16(offset));
            self.reload
        }
        fn mmio_write8(&mut self, offset: usize, value: u8) {
            self.log.push(MmioWrite8(offset, value));
        }
        fn mmio_write16(&mut self, offset: usize, value: u16) {
            self.log.push(MmioWrite16(offset, value));
        }
        fn mmio_write32(&mut self, offset: usize, value: u32) {
            self.log.push(MmioWrite32(offset, value));
        }
    }

    const UNLOCK_SEQ: [Access; 2] = [MmioWrite8(0x0c, 0x80), MmioWrite8(0x0c, 0x86)];

    #[test]
    fn arming_uses_exact_widths_and_unlocks_before_each_protected_write() {
        let mut esb = I6300Esb::new(Recorder::default());
        assert!(!esb.previous_reboot());
        let settings = Settings::new(250_000, 100_000, true, false).unwrap();
        esb.bus.log.clear();
        esb.arm(&settings);
        let mut expected = std::vec![CfgWrite8(0x68, 0x00), CfgWrite16(0x60, 0x04)];
        expected.extend(UNLOCK_SEQ);
        expected.push(MmioWrite32(0x00, 260_417));
        expected.extend(UNLOCK_SEQ);
        expected.push(MmioWrite32(0x04, 104_167));
        expected.extend(UNLOCK_SEQ);
        expected.push(MmioWrite16(0x0c, 0x0100));
        expected.push(CfgWrite8(0x68, 0x02));
        assert_eq!(esb.bus.log, expected);
    }

    #[test]
    fn no_reboot_free_run_and_slow_prescaler_bits() {
        let mut esb = I6300Esb::new(Recorder::default());
        esb.arm(&Settings::new(2_000_000, 2_000_000, false, true).unwrap());
        assert_eq!(esb.bus.log[2], CfgWrite16(0x60, 0x20));
        assert_eq!(esb.bus.log.last(), Some(&CfgWrite8(0x68, 0x06)));
    }

    #[test]
    fn feed_is_an_unlocked_16_bit_pet_and_stop_clears_enable() {
        let mut esb = I6300Esb::new(Recorder::default());
        esb.bus.log.clear();
        esb.feed();
        assert!(esb.stop());
        let mut expected = std::vec::Vec::from(UNLOCK_SEQ);
        expected.push(MmioWrite16(0x0c, 0x0100));
        expected.push(CfgRead8(0x68));
        expected.push(CfgWrite8(0x68, 0x00));
        assert_eq!(esb.bus.log, expected);
    }

    #[test]
    fn a_locked_device_cannot_be_stopped() {
        let mut esb = I6300Esb::new(Recorder { lock: LOCK_LOCKED | LOCK_ENABLE, ..Default::default() });
        esb.bus.log.clear();
        assert!(!esb.stop());
        assert_eq!(esb.bus.log, [CfgRead8(0x68)]);
    }

    #[test]
    fn previous_reboot_flag() {
        let esb = I6300Esb::new(Recorder { reload: 0x1200, ..Default::default() });
        assert!(esb.previous_reboot());
        assert_eq!(esb.bus.log, [MmioRead16(0x0c)]);
    }

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
