//! diag288 (`-device diag288`, s390x): the watchdog behind `DIAG 0x288`.
//! r1 (even) = function, r1+1 = timeout in seconds, r3 = action (must be 0).

/// Function codes.
pub const FUNC_INIT: u64 = 0;
pub const FUNC_CHANGE: u64 = 1;
pub const FUNC_CANCEL: u64 = 2;
/// QEMU refuses shorter timeouts (specification exception).
pub const MIN_SECONDS: u64 = 15;

/// A diag288 timeout: whole seconds, at least 15.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(image, derive(defmt::Format))]
pub struct Timeout(u32);

impl Timeout {
    pub const fn from_us(us: u64) -> Option<Self> {
        if !us.is_multiple_of(1_000_000) || us / 1_000_000 < MIN_SECONDS || us / 1_000_000 > u32::MAX as u64 {
            return None;
        }
        Some(Timeout((us / 1_000_000) as u32))
    }

    pub const fn seconds(self) -> u32 {
        self.0
    }
}

/// The instruction raised a program check (specification exception: no
/// device, or a request QEMU refuses).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refused;

/// One `DIAG 0x288` (a fake records them in tests).
pub trait DiagBus {
    fn diag288(&mut self, function: u64, seconds: u64) -> Result<(), Refused>;
}

/// The diag288 driver.
pub struct Diag288<B> {
    bus: B,
    armed: Option<Timeout>,
    /// The last request QEMU refused, for the log.
    pub refused: bool,
}

impl<B: DiagBus> Diag288<B> {
    pub fn new(bus: B) -> Self {
        Diag288 { bus, armed: None, refused: false }
    }

    /// Whether the device is there: an init with the shortest timeout, at
    /// once cancelled (QEMU refuses both without `-device diag288`). Only
    /// before arming: it leaves the watchdog stopped.
    pub fn probe(&mut self) -> bool {
        let present = self.bus.diag288(FUNC_INIT, MIN_SECONDS).is_ok();
        if present {
            let _ = self.bus.diag288(FUNC_CANCEL, 0);
        }
        present
    }

    fn call(&mut self, function: u64, seconds: u64) -> bool {
        let ok = self.bus.diag288(function, seconds).is_ok();
        self.refused = !ok;
        ok
    }
}

impl<B: DiagBus> super::Watchdog for Diag288<B> {
    type Timeout = Timeout;

    /// Init (or, when already armed, change) with the new timeout.
    fn arm(&mut self, timeout: &Timeout) {
        let function = if self.armed.is_some() { FUNC_CHANGE } else { FUNC_INIT };
        if self.call(function, u64::from(timeout.seconds())) {
            self.armed = Some(*timeout);
        }
    }

    /// A feed is a "change" with the same timeout: it restarts the countdown.
    fn feed(&mut self) {
        if let Some(timeout) = self.armed {
            self.call(FUNC_CHANGE, u64::from(timeout.seconds()));
        }
    }

    fn stop(&mut self) -> bool {
        if self.armed.take().is_none() {
            return true;
        }
        self.call(FUNC_CANCEL, 0)
    }

    fn can_stop(&mut self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watchdog::Watchdog;
    extern crate std;
    use std::vec::Vec;

    #[derive(Default)]
    struct Recorder {
        calls: Vec<(u64, u64)>,
        refuse: bool,
    }

    impl DiagBus for &mut Recorder {
        fn diag288(&mut self, function: u64, seconds: u64) -> Result<(), Refused> {
            self.calls.push((function, seconds));
            if self.refuse { Err(Refused) } else { Ok(()) }
        }
    }

    #[test]
    fn timeouts_are_whole_seconds_from_15() {
        assert_eq!(Timeout::from_us(15_000_000).map(Timeout::seconds), Some(15));
        assert_eq!(Timeout::from_us(120_000_000).map(Timeout::seconds), Some(120));
        assert_eq!(Timeout::from_us(14_000_000), None);
        assert_eq!(Timeout::from_us(15_500_000), None);
    }

    #[test]
    fn init_then_change_then_cancel() {
        let mut rec = Recorder::default();
        let mut wd = Diag288::new(&mut rec);
        wd.feed(); // not armed: nothing
        wd.arm(&Timeout::from_us(15_000_000).unwrap());
        wd.feed();
        wd.arm(&Timeout::from_us(20_000_000).unwrap());
        assert!(wd.stop());
        assert!(wd.stop()); // already stopped: nothing to cancel
        assert_eq!(rec.calls, [(FUNC_INIT, 15), (FUNC_CHANGE, 15), (FUNC_CHANGE, 20), (FUNC_CANCEL, 0)]);
    }

    #[test]
    fn probing_inits_and_cancels() {
        let mut rec = Recorder::default();
        assert!(Diag288::new(&mut rec).probe());
        assert_eq!(rec.calls, [(FUNC_INIT, 15), (FUNC_CANCEL, 0)]);
        let mut absent = Recorder { refuse: true, ..Default::default() };
        assert!(!Diag288::new(&mut absent).probe());
        assert_eq!(absent.calls, [(FUNC_INIT, 15)]);
    }

    #[test]
    fn a_refused_init_leaves_it_unarmed() {
        let mut rec = Recorder { refuse: true, ..Default::default() };
        let mut wd = Diag288::new(&mut rec);
        wd.arm(&Timeout::from_us(15_000_000).unwrap());
        assert!(wd.refused);
        wd.feed();
        assert_eq!(rec.calls, [(FUNC_INIT, 15)]);
    }
}
