//! ib700 (`-device ib700`): ISA ports 0x441 (any write stops) and 0x443
//! (a write arms for `30 - 2·n` seconds, n = the value's low nibble).

/// Any write here stops the watchdog.
pub const STOP_PORT: u16 = 0x441;
/// A write here arms (or re-arms) it.
pub const ARM_PORT: u16 = 0x443;
/// The device's step and range, in microseconds.
pub const STEP_US: u64 = 2_000_000;
pub const MAX_US: u64 = 30_000_000;

/// An ib700 timeout: the nibble written to the arm port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(image, derive(defmt::Format))]
pub struct Timeout(u8);

impl Timeout {
    /// The timeout for a duration: only 0, 2, 4, … 30 s exist.
    pub const fn from_us(us: u64) -> Option<Self> {
        if !us.is_multiple_of(STEP_US) || us > MAX_US {
            return None;
        }
        Some(Timeout(((MAX_US - us) / STEP_US) as u8))
    }

    /// The value written to the arm port.
    pub const fn code(self) -> u8 {
        self.0
    }

    pub const fn us(self) -> u64 {
        MAX_US - self.0 as u64 * STEP_US
    }
}

/// The port writes the driver needs (a fake records them in tests).
pub trait PortBus {
    fn write8(&mut self, port: u16, value: u8);
}

/// The ib700 watchdog. Its ports are write-only, so it cannot be detected:
/// the agent assumes it is there when a script uses it.
pub struct Ib700<B> {
    bus: B,
    /// The timeout it was last armed with: feeding re-arms with it.
    armed: Option<Timeout>,
}

impl<B: PortBus> Ib700<B> {
    pub fn new(bus: B) -> Self {
        Ib700 { bus, armed: None }
    }
}

impl<B: PortBus> super::Watchdog for Ib700<B> {
    type Timeout = Timeout;

    fn arm(&mut self, timeout: &Timeout) {
        self.armed = Some(*timeout);
        self.bus.write8(ARM_PORT, timeout.code());
    }

    /// ib700 has no separate "pet": re-arming with the same timeout is how
    /// it is fed. Feeding a watchdog that was never armed does nothing.
    fn feed(&mut self) {
        if let Some(timeout) = self.armed {
            self.arm(&timeout);
        }
    }

    fn stop(&mut self) -> bool {
        self.bus.write8(STOP_PORT, 0);
        self.armed = None;
        true
    }

    fn can_stop(&mut self) -> bool {
        true
    }
}

#[cfg(all(image, target_arch = "x86_64"))]
pub use hw::IsaPorts;

#[cfg(all(image, target_arch = "x86_64"))]
mod hw {
    use x86_64::instructions::port::PortWriteOnly;

    /// ib700's ISA ports.
    pub struct IsaPorts;

    impl super::PortBus for IsaPorts {
        fn write8(&mut self, port: u16, value: u8) {
            debug_assert!(port == super::ARM_PORT || port == super::STOP_PORT);
            // SAFETY: the driver only writes ib700's arm (0x443) and stop
            // (0x441) ports; a write only (re)starts or deletes its timer.
            unsafe { PortWriteOnly::<u8>::new(port).write(value) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watchdog::Watchdog;
    extern crate std;
    use std::vec::Vec;

    #[derive(Default)]
    struct Recorder(Vec<(u16, u8)>);

    impl PortBus for &mut Recorder {
        fn write8(&mut self, port: u16, value: u8) {
            self.0.push((port, value));
        }
    }

    #[test]
    fn arm_feed_stop_write_the_right_ports() {
        let mut rec = Recorder::default();
        let mut wd = Ib700::new(&mut rec);
        wd.feed(); // never armed: nothing
        wd.arm(&Timeout::from_us(4_000_000).unwrap());
        wd.feed();
        assert!(wd.can_stop());
        assert!(wd.stop());
        wd.feed(); // stopped: nothing
        assert_eq!(rec.0, [(0x443, 13), (0x443, 13), (0x441, 0)]);
    }

    #[test]
    fn two_second_steps_only() {
        assert_eq!(Timeout::from_us(0).map(Timeout::code), Some(15));
        assert_eq!(Timeout::from_us(2_000_000).map(Timeout::code), Some(14));
        assert_eq!(Timeout::from_us(30_000_000).map(Timeout::code), Some(0));
        assert_eq!(Timeout::from_us(4_000_000).map(Timeout::us), Some(4_000_000));
        assert_eq!(Timeout::from_us(3_000_000), None);
        assert_eq!(Timeout::from_us(32_000_000), None);
        assert_eq!(Timeout::from_us(1_500), None);
    }
}
