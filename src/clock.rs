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

/// Ticks of a periodic countdown of `period` ticks between two reads of
/// its count, `c0` then `c1`, during which a reference clock advanced
/// `reference` ticks; `rough` is the reference's ticks per `per` countdown
/// ticks, roughly. The counts give the ticks modulo the period, the rough
/// rate how many whole periods went by (right while its error over the
/// window stays under half a period). x86_64 calibrates the TSC against
/// the local APIC timer this way, halted between the reads.
pub fn periodic_ticks(c0: u32, c1: u32, period: u32, reference: u64, rough: u64, per: u64) -> u64 {
    let period = u64::from(period.max(1));
    let within = (u64::from(c0) % period + period - u64::from(c1) % period) % period;
    let expected = u128::from(reference) * u128::from(per) / u128::from(rough.max(1));
    let expected = u64::try_from(expected).unwrap_or(u64::MAX);
    let periods = expected.saturating_sub(within).saturating_add(period / 2) / period;
    within.saturating_add(periods.saturating_mul(period))
}

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

    #[test]
    fn periodic_ticks_counts_the_periods_from_the_rough_rate() {
        const P: u32 = 1_000_000;
        // No expiry: the count went down from 900 000 to 400 000.
        assert_eq!(periodic_ticks(900_000, 400_000, P, 500_000, 1_000_000, 1_000_000), 500_000);
        // One expiry: 900 000 ticks to 0, then 1 000 000 → 950 000.
        assert_eq!(periodic_ticks(900_000, 950_000, P, 950_000, 1_000_000, 1_000_000), 950_000);
        // Three expiries, the rough rate 20 % off (TSC at 2.5 per tick,
        // guessed 3): still 2 950 000 ticks.
        assert_eq!(periodic_ticks(900_000, 950_000, P, 7_375_000, 3_000_000, 1_000_000), 2_950_000);
        // Exact, in virtual time: 1:1.
        assert_eq!(periodic_ticks(999_990, 999_990, P, 1_000_000, 1_000_000, 1_000_000), 1_000_000);
        // Degenerate inputs neither panic nor overflow.
        assert_eq!(periodic_ticks(0, 0, 0, u64::MAX, 0, u64::MAX), u64::MAX);
        assert_eq!(periodic_ticks(5, 7, 1, 0, 1, 1), 0);
    }
}
