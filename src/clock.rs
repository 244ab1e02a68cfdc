//! The agent's clock: a monotonic time and the waits, which go through
//! embedded-hal's [`DelayNs`] (each architecture's clock implements it:
//! the TSC with the local APIC timer on x86_64, the TOD clock and clock
//! comparator on s390x).

use embedded_hal::delay::DelayNs;

/// A monotonic clock that can wait.
pub trait Clock: DelayNs {
    /// Microseconds since an arbitrary start.
    fn now_us(&mut self) -> u64;
}

/// Waits `us` microseconds (any duration a script allows, up to
/// [`crate::script::MAX_DURATION_US`] and beyond). `DelayNs` takes `u32`
/// counts, so a wait of more than `u32::MAX` µs (about 71 minutes) is
/// given as whole milliseconds, then the rest in microseconds.
pub fn wait_us(delay: &mut impl DelayNs, us: u64) {
    if let Ok(us) = u32::try_from(us) {
        delay.delay_us(us);
        return;
    }
    let mut ms = us / 1_000;
    while ms > 0 {
        let chunk = u32::try_from(ms).unwrap_or(u32::MAX);
        delay.delay_ms(chunk);
        ms -= u64::from(chunk);
    }
    let rest = (us % 1_000) as u32;
    if rest > 0 {
        delay.delay_us(rest);
    }
}

/// Implements [`DelayNs`] for an architecture's clock through its own
/// `fn sleep_us(&mut self, us: u64)`: one definition for every clock.
#[cfg(image)]
macro_rules! delay_ns_via_sleep_us {
    ($clock:ty) => {
        impl embedded_hal::delay::DelayNs for $clock {
            fn delay_ns(&mut self, ns: u32) {
                self.sleep_us(u64::from(ns).div_ceil(1_000));
            }

            fn delay_us(&mut self, us: u32) {
                self.sleep_us(u64::from(us));
            }

            fn delay_ms(&mut self, ms: u32) {
                self.sleep_us(u64::from(ms) * 1_000);
            }
        }
    };
}
#[cfg(image)]
pub(crate) use delay_ns_via_sleep_us;

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use std::vec::Vec;

    /// Records the calls; the sum of what it was asked to wait, in ns.
    #[derive(Default)]
    struct Recorder {
        calls: Vec<(&'static str, u32)>,
        total_ns: u128,
    }

    impl DelayNs for Recorder {
        fn delay_ns(&mut self, ns: u32) {
            self.calls.push(("ns", ns));
            self.total_ns += u128::from(ns);
        }
        fn delay_us(&mut self, us: u32) {
            self.calls.push(("us", us));
            self.total_ns += u128::from(us) * 1_000;
        }
        fn delay_ms(&mut self, ms: u32) {
            self.calls.push(("ms", ms));
            self.total_ns += u128::from(ms) * 1_000_000;
        }
    }

    fn waits(us: u64) -> Recorder {
        let mut r = Recorder::default();
        wait_us(&mut r, us);
        assert_eq!(r.total_ns, u128::from(us) * 1_000, "{us} us");
        r
    }

    #[test]
    fn a_wait_that_fits_is_one_call() {
        assert_eq!(waits(0).calls, [("us", 0)]);
        assert_eq!(waits(10_000).calls, [("us", 10_000)]);
        assert_eq!(waits(u64::from(u32::MAX)).calls, [("us", u32::MAX)]);
    }

    #[test]
    fn longer_waits_are_milliseconds_then_the_rest() {
        let past = u64::from(u32::MAX) + 1;
        assert_eq!(waits(past).calls, [("ms", 4_294_967), ("us", 296)]);
        let limit = crate::script::MAX_DURATION_US;
        assert_eq!(waits(limit).calls, [("ms", 1_000_000_000)]);
        assert_eq!(waits(limit + 7).calls, [("ms", 1_000_000_000), ("us", 7)]);
        // Beyond what a u32 of milliseconds holds: several calls, nothing lost.
        let r = waits(u64::from(u32::MAX) * 3_000 + 5);
        assert_eq!(r.calls, [("ms", u32::MAX), ("ms", u32::MAX), ("ms", u32::MAX), ("us", 5)]);
    }
}
