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
#[cfg_attr(target_os = "none", derive(defmt::Format))]
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

#[cfg(target_os = "none")]
pub use hw::Ib700;

#[cfg(target_os = "none")]
mod hw {
    use super::*;
    use x86_64::instructions::port::PortWriteOnly;

    /// The ib700 watchdog. Its ports are write-only, so it cannot be
    /// detected: the agent assumes it is there when a script uses it.
    #[derive(Default)]
    pub struct Ib700 {
        /// The timeout it was last armed with: feeding re-arms with it.
        armed: Option<Timeout>,
    }

    impl super::super::Watchdog for Ib700 {
        type Timeout = Timeout;

        fn arm(&mut self, timeout: &Timeout) {
            self.armed = Some(*timeout);
            // SAFETY: 0x443 is ib700's arm port; a write only (re)starts its timer.
            unsafe { PortWriteOnly::<u8>::new(ARM_PORT).write(timeout.code()) }
        }

        /// ib700 has no separate "pet": re-arming with the same timeout is
        /// how it is fed. Feeding a watchdog that was never armed does nothing.
        fn feed(&mut self) {
            if let Some(timeout) = self.armed {
                self.arm(&timeout);
            }
        }

        fn stop(&mut self) -> bool {
            // SAFETY: 0x441 is ib700's stop port; a write only deletes its timer.
            unsafe { PortWriteOnly::<u8>::new(STOP_PORT).write(0) };
            self.armed = None;
            true
        }

        fn can_stop(&self) -> bool {
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
