//! The agent's watchdog abstraction (embedded-hal 1.0 has none) and its
//! models: ib700 and i6300esb on x86, diag288 on s390x.

pub mod diag288;
pub mod i6300esb;
pub mod ib700;

pub use {diag288::Diag288, i6300esb::I6300Esb, ib700::Ib700};

use core::sync::atomic::{AtomicU64, Ordering};

/// Which watchdog a step addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(image, derive(defmt::Format))]
pub enum Model {
    Ib700,
    I6300Esb,
    Diag288,
}

impl Model {
    pub const fn name(self) -> &'static str {
        match self {
            Model::Ib700 => "ib700",
            Model::I6300Esb => "i6300esb",
            Model::Diag288 => "diag288",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        [Model::Ib700, Model::I6300Esb, Model::Diag288].into_iter().find(|m| crate::script::same(m.name(), name))
    }

    /// The architectures the device exists on (i6300esb is a PCI device:
    /// QEMU offers it on x86 and on aarch64's `virt`).
    pub const fn archs(self) -> crate::Archs {
        use crate::{Arch, Archs};
        match self {
            Model::Ib700 => Archs::of(Arch::X86_64),
            Model::I6300Esb => Archs::of(Arch::X86_64).and(Arch::Aarch64),
            Model::Diag288 => Archs::of(Arch::S390x),
        }
    }
}

/// How a watchdog is armed; computed (and checked) when the script is parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timeout {
    Ib700(ib700::Timeout),
    I6300Esb(i6300esb::Settings),
    Diag288(diag288::Timeout),
}

impl Timeout {
    /// The watchdog the timeout is for.
    pub const fn model(self) -> Model {
        match self {
            Timeout::Ib700(_) => Model::Ib700,
            Timeout::I6300Esb(_) => Model::I6300Esb,
            Timeout::Diag288(_) => Model::Diag288,
        }
    }

    /// Whether the device acts when it expires (an i6300esb armed with
    /// `no-reboot` does nothing).
    pub fn acts(self) -> bool {
        match self {
            Timeout::I6300Esb(s) => s.reboot,
            Timeout::Ib700(_) | Timeout::Diag288(_) => true,
        }
    }

    /// Time from arming to the device's expiry, in microseconds (for the
    /// i6300esb: stage 1 + stage 2, when the watchdog acts).
    pub fn us(self) -> u64 {
        match self {
            Timeout::Ib700(t) => t.us(),
            Timeout::I6300Esb(s) => s.total_us(),
            Timeout::Diag288(t) => u64::from(t.seconds()) * 1_000_000,
        }
    }
}

/// Whether a watchdog's countdown last started with an arm or a feed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    Arm,
    Feed,
}

impl Start {
    pub const fn name(self) -> &'static str {
        match self {
            Start::Arm => "arm",
            Start::Feed => "feed",
        }
    }
}

/// A watchdog expiry as the guest timed it (see [`Countdowns`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expiry {
    pub model: Model,
    /// Guest time from the countdown's start to the interrupt.
    pub after_us: u64,
    pub since: Start,
}

/// When each watchdog's countdown started (guest clock, microseconds), so
/// that the interrupt a watchdog raises when it expires (QEMU's action
/// `inject-nmi`: an NMI on x86_64, a restart interrupt on s390x) can say
/// how long the guest saw it run. Written by the agent when it arms, feeds
/// or stops a watchdog, read by the interrupt handler on the same CPU:
/// atomics only, so neither side ever holds a reference into the other's
/// data.
pub struct Countdowns {
    /// Per [`Model`]: 0 = not counting down; else bit 63 set, bit 62 = the
    /// last start was a feed, the rest the start time.
    started: [AtomicU64; 3],
    /// Per [`Model`]: the timeout of the last arm, microseconds.
    timeout_us: [AtomicU64; 3],
}

const COUNTING: u64 = 1 << 63;
const FED: u64 = 1 << 62;
const TIME_MASK: u64 = FED - 1;

fn slot(model: Model) -> usize {
    match model {
        Model::Ib700 => 0,
        Model::I6300Esb => 1,
        Model::Diag288 => 2,
    }
}

impl Countdowns {
    pub const fn new() -> Self {
        Countdowns {
            started: [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)],
            timeout_us: [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)],
        }
    }

    /// The watchdog was armed at `now_us` and acts `timeout_us` later.
    pub fn armed(&self, model: Model, now_us: u64, timeout_us: u64) {
        self.timeout_us[slot(model)].store(timeout_us, Ordering::Relaxed);
        self.started[slot(model)].store(COUNTING | (now_us & TIME_MASK), Ordering::Release);
    }

    /// The watchdog was fed at `now_us`: its countdown restarted (only if it
    /// was counting down: feeding a stopped watchdog starts nothing).
    pub fn fed(&self, model: Model, now_us: u64) {
        // One atomic update: a watchdog interrupt that lands in the middle
        // and ends the countdown is never overwritten by this feed.
        let _ = self.started[slot(model)].fetch_update(Ordering::AcqRel, Ordering::Acquire, |started| {
            (started & COUNTING != 0).then_some(COUNTING | FED | (now_us & TIME_MASK))
        });
    }

    /// The watchdog was stopped (or will never act).
    pub fn stopped(&self, model: Model) {
        self.started[slot(model)].store(0, Ordering::Release);
    }

    /// At a watchdog's interrupt, `now_us`: the counting watchdog whose
    /// expiry (start + timeout) is nearest to now, and the time since its
    /// start. It stops counting: ib700, i6300esb and diag288 all act once
    /// per arm or feed. `None` when no watchdog counts down (an NMI or
    /// restart from elsewhere, e.g. QMP `inject-nmi`).
    pub fn expired(&self, now_us: u64) -> Option<Expiry> {
        let mut best: Option<(u64, Expiry)> = None;
        for model in [Model::Ib700, Model::I6300Esb, Model::Diag288] {
            let started = self.started[slot(model)].load(Ordering::Acquire);
            if started & COUNTING == 0 {
                continue;
            }
            let at = started & TIME_MASK;
            let due = at.saturating_add(self.timeout_us[slot(model)].load(Ordering::Relaxed));
            let distance = due.abs_diff(now_us);
            let since = if started & FED != 0 { Start::Feed } else { Start::Arm };
            let expiry = Expiry { model, after_us: now_us.saturating_sub(at), since };
            if best.is_none_or(|(d, _)| distance < d) {
                best = Some((distance, expiry));
            }
        }
        let (_, expiry) = best?;
        self.stopped(expiry.model);
        Some(expiry)
    }
}

impl Default for Countdowns {
    fn default() -> Self {
        Self::new()
    }
}

/// What every watchdog driver offers.
pub trait Watchdog {
    /// The device's own representation of a timeout.
    type Timeout;
    /// Starts (or restarts) the countdown.
    fn arm(&mut self, timeout: &Self::Timeout);
    /// Restarts the countdown of an armed watchdog.
    fn feed(&mut self);
    /// Stops the countdown; false if the device cannot be stopped.
    fn stop(&mut self) -> bool;
    /// Whether `stop` can work (an i6300esb whose lock bit is set cannot
    /// be stopped until the machine resets).
    fn can_stop(&mut self) -> bool;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_in_microseconds() {
        assert_eq!(Timeout::Ib700(ib700::Timeout::from_us(30_000_000).unwrap()).us(), 30_000_000);
        assert_eq!(Timeout::Diag288(diag288::Timeout::from_us(15_000_000).unwrap()).us(), 15_000_000);
        let esb = i6300esb::Settings::new(1_000_000, 1_000_000, true, false).unwrap();
        assert_eq!(Timeout::I6300Esb(esb).us(), esb.total_us());
    }

    #[test]
    fn an_expiry_is_timed_from_the_last_arm_or_feed() {
        let c = Countdowns::new();
        assert_eq!(c.expired(5), None);
        c.armed(Model::Ib700, 1_000, 30_000_000);
        assert_eq!(
            c.expired(30_001_123),
            Some(Expiry { model: Model::Ib700, after_us: 30_000_123, since: Start::Arm })
        );
        // Once per arm: the same watchdog does not expire twice.
        assert_eq!(c.expired(30_002_000), None);
        c.armed(Model::Diag288, 10, 15_000_000);
        c.fed(Model::Diag288, 2_000_010);
        let e = c.expired(17_000_011).unwrap();
        assert_eq!((e.model, e.after_us, e.since), (Model::Diag288, 15_000_001, Start::Feed));
    }

    #[test]
    fn feeding_or_stopping_a_stopped_watchdog_starts_nothing() {
        let c = Countdowns::new();
        c.fed(Model::I6300Esb, 7);
        assert_eq!(c.expired(10), None);
        c.armed(Model::I6300Esb, 0, 500_000);
        c.stopped(Model::I6300Esb);
        assert_eq!(c.expired(500_000), None);
    }

    #[test]
    fn with_two_counting_the_nearest_expiry_is_the_one() {
        let c = Countdowns::new();
        c.armed(Model::Ib700, 0, 30_000_000);
        c.armed(Model::I6300Esb, 100, 2_000_000);
        let first = c.expired(2_000_150).unwrap();
        assert_eq!((first.model, first.after_us), (Model::I6300Esb, 2_000_050));
        let second = c.expired(30_000_300).unwrap();
        assert_eq!((second.model, second.after_us), (Model::Ib700, 30_000_300));
    }
}
