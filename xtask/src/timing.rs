//! Timing assertions between QMP events (`timing = [...]` in scenarios.toml).
//!
//! Every QMP event carries QEMU's own timestamp (host realtime, µs), taken
//! when the event is created. That is what is measured here, never the time
//! the host tool read the event: a `WATCHDOG` held back by QEMU's 1 s rate
//! limit arrives up to a second late but keeps its original timestamp.
//!
//! Here too: the validation of a row's `timing` entries
//! ([`validate_timing`]).

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use crate::error::{ConfigError, Place};
use crate::matcher::{ExpectEntry, WATCHED_EVENTS};
use crate::util::parse_duration;

/// `NAME` or `NAME#N`: the N-th (1-based) watched event called NAME, in
/// timestamp order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventRef {
    pub event: String,
    pub occurrence: u32,
}

impl EventRef {
    pub fn parse(s: &str) -> Result<EventRef, String> {
        let (name, n) = match s.split_once('#') {
            None => (s, 1),
            Some((name, n)) => {
                let n: u32 = n
                    .parse()
                    .ok()
                    .filter(|&n| n >= 1)
                    .ok_or_else(|| format!("`{s}`: the occurrence after `#` must be a number ≥ 1"))?;
                (name, n)
            }
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_') {
            return Err(format!("`{s}` is not an event reference (write \"WATCHDOG\" or \"WATCHDOG#2\")"));
        }
        Ok(EventRef { event: name.to_string(), occurrence: n })
    }
}

impl fmt::Display for EventRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.occurrence == 1 { write!(f, "{}", self.event) } else { write!(f, "{}#{}", self.event, self.occurrence) }
    }
}

/// Allowed deviation: `percent` of the expected time plus `abs`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tolerance {
    pub percent: f64,
    pub abs: Duration,
}

/// The tolerance when a timing entry gives none.
pub const DEFAULT_TOLERANCE: Tolerance = Tolerance { percent: 5.0, abs: Duration::from_millis(20) };

impl Tolerance {
    /// Parses `"5%+20ms"`, `"20ms"`, `"2.5%"`, `"1s+1%"`.
    pub fn parse(s: &str) -> Result<Tolerance, String> {
        let bad = || format!("`{s}` is not a tolerance (write e.g. \"5%+20ms\", \"50ms\" or \"2%\")");
        let (mut percent, mut abs) = (None, None);
        for term in s.split('+').map(str::trim) {
            if let Some(p) = term.strip_suffix('%') {
                let ok = !p.is_empty()
                    && p.chars().all(|c| c.is_ascii_digit() || c == '.')
                    && !p.starts_with('.')
                    && !p.ends_with('.');
                let v: f64 = p.parse().ok().filter(|_| ok).ok_or_else(bad)?;
                if percent.replace(v).is_some() || v > 100.0 {
                    return Err(bad());
                }
            } else {
                let d = parse_duration(term).map_err(|e| format!("{}: {e}", bad()))?;
                if abs.replace(d).is_some() {
                    return Err(bad());
                }
            }
        }
        Ok(Tolerance { percent: percent.unwrap_or(0.0), abs: abs.unwrap_or(Duration::ZERO) })
    }

    /// The allowed deviation from `expect`, in ms.
    pub fn allowed_ms(&self, expect: Duration) -> f64 {
        expect.as_secs_f64() * 1000.0 * self.percent / 100.0 + self.abs.as_secs_f64() * 1000.0
    }
}

impl fmt::Display for Tolerance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.percent, self.abs.is_zero()) {
            (p, true) => write!(f, "{p}%"),
            (0.0, false) => write!(f, "{}ms", self.abs.as_millis()),
            (p, false) => write!(f, "{p}%+{}ms", self.abs.as_millis()),
        }
    }
}

/// What the measured time must be.
#[derive(Clone, Debug, PartialEq)]
pub enum Bound {
    /// `expect` ± tolerance.
    Around { expect: Duration, tolerance: Tolerance },
    /// At least `min` and/or at most `max`.
    Range { min: Option<Duration>, max: Option<Duration> },
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl Bound {
    /// Inclusive limits in ms.
    pub fn limits_ms(&self) -> (f64, f64) {
        match self {
            Bound::Around { expect, tolerance } => {
                let dev = tolerance.allowed_ms(*expect);
                (ms(*expect) - dev, ms(*expect) + dev)
            }
            Bound::Range { min, max } => (min.map_or(f64::NEG_INFINITY, ms), max.map_or(f64::INFINITY, ms)),
        }
    }
}

/// One validated timing entry.
#[derive(Clone, Debug, PartialEq)]
pub struct TimingCheck {
    pub from: EventRef,
    pub to: EventRef,
    pub bound: Bound,
}

/// The outcome of one timing entry in one run.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct TimingResult {
    pub from: String,
    pub to: String,
    /// Requested time (`expect`), in ms; absent for min/max entries.
    pub expect_ms: Option<f64>,
    /// Allowed deviation from `expect_ms`, in ms.
    pub tolerance_ms: Option<f64>,
    /// Inclusive limits actually applied, in ms (`null` = unbounded).
    pub min_ms: Option<f64>,
    pub max_ms: Option<f64>,
    /// `to` − `from`, from QEMU's event timestamps; absent when an event is missing.
    pub measured_ms: Option<f64>,
    /// Within the limits; `None` when the entry was not judged (see
    /// `not_judged`).
    pub ok: Option<bool>,
    /// Why nothing was measured.
    pub problem: Option<String>,
    /// Why the entry was not judged: a run in virtual time (QMP timestamps
    /// are host time, the guest's are not).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_judged: Option<String>,
}

/// Why a QMP `timing` entry of a run in virtual time is not judged.
pub const NOT_JUDGED_VIRTUAL: &str = "not judged under virtual time (QMP timestamps are host time)";

impl TimingResult {
    /// The requested time, e.g. `500ms`, `≥2900ms`, `100ms..300ms`.
    pub fn requested(&self) -> String {
        match (self.expect_ms, self.min_ms, self.max_ms) {
            (Some(e), _, _) => format!("{e:.0}ms"),
            (None, Some(lo), Some(hi)) => format!("{lo:.0}ms..{hi:.0}ms"),
            (None, Some(lo), None) => format!("≥{lo:.0}ms"),
            (None, None, Some(hi)) => format!("≤{hi:.0}ms"),
            (None, None, None) => "any".into(),
        }
    }

    /// Whether the entry was judged and is out of its limits.
    pub fn failed(&self) -> bool {
        self.ok == Some(false)
    }

    /// The entry, marked as not judged for `why` (it keeps what was
    /// measured, for information).
    pub fn not_judged(self, why: &str) -> TimingResult {
        TimingResult { ok: None, not_judged: Some(why.to_string()), ..self }
    }

    /// `timing GUEST_CRASHLOADED→WATCHDOG 500ms → 500.8ms (±45ms)`.
    pub fn note(&self) -> String {
        if let Some(why) = &self.not_judged {
            let host = self.measured_ms.map(|m| format!("; host time {m:.1}ms")).unwrap_or_default();
            return format!("timing {}→{} {} → {why}{host}", self.from, self.to, self.requested());
        }
        let tol = self.tolerance_ms.map(|t| format!(" (±{t:.0}ms)")).unwrap_or_default();
        let got = match (self.measured_ms, &self.problem) {
            (Some(m), _) => format!("{m:.1}ms"),
            (None, Some(p)) => format!("not measured: {p}"),
            (None, None) => "not measured".into(),
        };
        let verdict = if self.failed() { "  OUT OF RANGE" } else { "" };
        let verdict = if self.measured_ms.is_none() { "" } else { verdict };
        format!("timing {}→{} {} → {got}{tol}{verdict}", self.from, self.to, self.requested())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TimingDef {
    from: String,
    to: String,
    expect: Option<String>,
    tolerance: Option<String>,
    min: Option<String>,
    max: Option<String>,
}

/// How many events called `event` a passing run can have: the sum of the
/// `max` of its `expect` entries; `None` = unbounded (the event is ignored).
/// Timing counts the RESUME answering the runner's `cont` as `RESUME#1`.
fn capacity(event: &str, expect: &[ExpectEntry], ignore: &[String]) -> Option<u32> {
    if ignore.iter().any(|i| i == event) {
        return None;
    }
    let cont = u32::from(event == "RESUME");
    Some(cont + expect.iter().filter(|e| e.event == event).map(|e| e.max).sum::<u32>())
}

const TIMING_FIX: &str = "write { from = \"EVENT[#N]\", to = \"EVENT[#N]\", expect = \"500ms\", tolerance = \"5%+20ms\" } \
     (tolerance optional, default 5%+20ms), or min = \"…\" and/or max = \"…\" instead of expect";

/// Validates a row's `timing` entries (`row` is the scenario's place)
/// against its validated `expect` and `ignore`: every event reference must
/// be an event a passing run has. The valid checks are returned, the errors
/// pushed to `errors`.
pub fn validate_timing(
    row: &Place,
    defs: Vec<toml::Value>,
    expect: &[ExpectEntry],
    ignore: &[String],
    errors: &mut Vec<ConfigError>,
) -> Vec<TimingCheck> {
    let mut out = Vec::new();
    for (i, v) in defs.into_iter().enumerate() {
        let at = row.within(format!("field `timing` entry {}", i + 1));
        let d: TimingDef = match at.deserialize(v, TIMING_FIX) {
            Ok(d) => d,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        let before = errors.len();
        let mut event_ref = |key: &str, text: &str| -> Option<EventRef> {
            let at = at.within(format!("`{key}`"));
            let r = match EventRef::parse(text) {
                Ok(r) => r,
                Err(e) => {
                    errors.push(at.error(e, TIMING_FIX));
                    return None;
                }
            };
            if !WATCHED_EVENTS.contains(&r.event.as_str()) {
                errors.push(at.error(
                    format!("`{}` is not a watched event", r.event),
                    format!("use one of: {}", WATCHED_EVENTS.join(", ")),
                ));
                return None;
            }
            match capacity(&r.event, expect, ignore) {
                Some(0) => {
                    errors.push(at.error(
                        format!("`{}` is neither in `expect` nor in `ignore`, so a passing run never has it", r.event),
                        "refer to an expected event",
                    ));
                    None
                }
                Some(n) if r.occurrence > n => {
                    errors.push(at.error(
                        format!(
                            "`{r}` asks for occurrence {} but `expect` allows at most {n} {}",
                            r.occurrence, r.event
                        ),
                        format!("use an occurrence from 1 to {n}"),
                    ));
                    None
                }
                _ => Some(r),
            }
        };
        let from = event_ref("from", &d.from);
        let to = event_ref("to", &d.to);
        let mut dur = |key: &str, v: &Option<String>| -> Option<Duration> {
            let s = v.as_ref()?;
            match parse_duration(s) {
                Ok(d) => Some(d),
                Err(e) => {
                    errors.push(at.within(format!("`{key}`")).error(e, "write e.g. \"500ms\" or \"2s\""));
                    None
                }
            }
        };
        let (expect_d, min, max) = (dur("expect", &d.expect), dur("min", &d.min), dur("max", &d.max));
        let bound = match (&d.expect, &d.min, &d.max) {
            (Some(_), None, None) => {
                let tolerance = match d.tolerance.as_deref().map(Tolerance::parse).transpose() {
                    Ok(t) => t.unwrap_or(DEFAULT_TOLERANCE),
                    Err(e) => {
                        errors.push(at.within("`tolerance`").error(e, TIMING_FIX));
                        DEFAULT_TOLERANCE
                    }
                };
                expect_d.map(|expect| Bound::Around { expect, tolerance })
            }
            (None, lo, hi) if lo.is_some() || hi.is_some() => {
                if d.tolerance.is_some() {
                    errors.push(
                        at.error("`tolerance` only goes with `expect`", "remove it, or use expect instead of min/max"),
                    );
                }
                if let (Some(a), Some(b)) = (min, max)
                    && a > b
                {
                    errors.push(at.error("`min` is greater than `max`", "swap them"));
                }
                Some(Bound::Range { min, max })
            }
            _ => {
                errors.push(at.error(
                    "needs either `expect` (with an optional `tolerance`) or `min`/`max`, not both or neither",
                    TIMING_FIX,
                ));
                None
            }
        };
        if let (Some(f), Some(t)) = (&from, &to)
            && f == t
        {
            errors.push(at.error("`from` and `to` are the same event", "measure between two events"));
        }
        if let (Some(from), Some(to), Some(bound), true) = (from, to, bound, errors.len() == before) {
            out.push(TimingCheck { from, to, bound });
        }
    }
    out
}

/// A timestamped event as the runner saw it (timestamp order).
pub struct Stamped<'a> {
    pub event: &'a str,
    /// ms since QEMU's spawn, from QEMU's timestamp.
    pub ms: Option<f64>,
}

fn find(events: &[Stamped<'_>], r: &EventRef) -> Result<f64, String> {
    let hit = events.iter().filter(|e| e.event == r.event).nth(r.occurrence as usize - 1);
    match hit {
        None => Err(format!("no {r}")),
        Some(Stamped { ms: None, .. }) => Err(format!("{r} has no timestamp")),
        Some(Stamped { ms: Some(ms), .. }) => Ok(*ms),
    }
}

/// Measures every check against `events` (watched events, timestamp order).
pub fn measure(checks: &[TimingCheck], events: &[Stamped<'_>]) -> Vec<TimingResult> {
    checks
        .iter()
        .map(|c| {
            let (lo, hi) = c.bound.limits_ms();
            let (expect_ms, tolerance_ms) = match &c.bound {
                Bound::Around { expect, tolerance } => (Some(ms(*expect)), Some(tolerance.allowed_ms(*expect))),
                Bound::Range { .. } => (None, None),
            };
            let measured = find(events, &c.from).and_then(|a| find(events, &c.to).map(|b| b - a));
            let (measured_ms, problem) = match measured {
                // Timestamps are whole µs: keep the difference free of f64 noise.
                Ok(m) => (Some((m * 1000.0).round() / 1000.0), None),
                Err(p) => (None, Some(p)),
            };
            TimingResult {
                from: c.from.to_string(),
                to: c.to.to_string(),
                expect_ms,
                tolerance_ms,
                min_ms: lo.is_finite().then_some(lo),
                max_ms: hi.is_finite().then_some(hi),
                ok: Some(measured_ms.is_some_and(|m| m >= lo && m <= hi)),
                measured_ms,
                problem,
                not_judged: None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_refs() {
        assert_eq!(EventRef::parse("WATCHDOG").unwrap(), EventRef { event: "WATCHDOG".into(), occurrence: 1 });
        assert_eq!(EventRef::parse("WATCHDOG#2").unwrap().occurrence, 2);
        assert_eq!(EventRef::parse("WATCHDOG#2").unwrap().to_string(), "WATCHDOG#2");
        assert_eq!(EventRef::parse("WATCHDOG#1").unwrap().to_string(), "WATCHDOG");
        assert!(EventRef::parse("WATCHDOG#0").is_err());
        assert!(EventRef::parse("WATCHDOG#").is_err());
        assert!(EventRef::parse("watchdog").is_err());
        assert!(EventRef::parse("#1").is_err());
        assert!(EventRef::parse("").is_err());
    }

    #[test]
    fn tolerances() {
        let t = Tolerance::parse("5%+20ms").unwrap();
        assert_eq!(t, DEFAULT_TOLERANCE);
        assert!((t.allowed_ms(Duration::from_secs(4)) - 220.0).abs() < 1e-9);
        assert_eq!(t.to_string(), "5%+20ms");
        assert_eq!(Tolerance::parse("20ms + 2.5%").unwrap().percent, 2.5);
        assert_eq!(Tolerance::parse("50ms").unwrap().to_string(), "50ms");
        assert_eq!(Tolerance::parse("1%").unwrap().to_string(), "1%");
        for bad in ["", "5", "%", "5%+6%", "1ms+2ms", "five%", ".5%", "101%", "5%+x"] {
            assert!(Tolerance::parse(bad).is_err(), "{bad}");
        }
    }

    fn ev(event: &str, ms: f64) -> Stamped<'_> {
        Stamped { event, ms: Some(ms) }
    }

    #[test]
    fn measuring() {
        let events = [ev("GUEST_CRASHLOADED", 80.0), ev("WATCHDOG", 580.5), ev("WATCHDOG", 900.0)];
        let around = |from: &str, to: &str, expect: u64| TimingCheck {
            from: EventRef::parse(from).unwrap(),
            to: EventRef::parse(to).unwrap(),
            bound: Bound::Around { expect: Duration::from_millis(expect), tolerance: DEFAULT_TOLERANCE },
        };
        let r = measure(&[around("GUEST_CRASHLOADED", "WATCHDOG", 500)], &events);
        assert_eq!(r[0].ok, Some(true));
        assert_eq!(r[0].measured_ms, Some(500.5));
        assert_eq!(r[0].tolerance_ms, Some(45.0));
        assert_eq!(r[0].note(), "timing GUEST_CRASHLOADED→WATCHDOG 500ms → 500.5ms (±45ms)");
        let r = measure(&[around("WATCHDOG", "WATCHDOG#2", 200)], &events);
        assert!(r[0].failed());
        assert!(r[0].note().ends_with("319.5ms (±30ms)  OUT OF RANGE"), "{}", r[0].note());
        let r = measure(&[around("WATCHDOG", "WATCHDOG#3", 200)], &events);
        assert!(r[0].failed() && r[0].measured_ms.is_none());
        assert!(r[0].note().contains("not measured: no WATCHDOG#3"), "{}", r[0].note());
        let range = TimingCheck {
            from: EventRef::parse("GUEST_CRASHLOADED").unwrap(),
            to: EventRef::parse("WATCHDOG#2").unwrap(),
            bound: Bound::Range { min: Some(Duration::from_millis(800)), max: None },
        };
        let r = measure(&[range], &events);
        assert_eq!(r[0].ok, Some(true));
        assert_eq!(r[0].requested(), "≥800ms");
        assert_eq!((r[0].min_ms, r[0].max_ms), (Some(800.0), None));
        // Not judged (virtual time): no verdict, what was measured is kept.
        let r = measure(&[around("WATCHDOG", "WATCHDOG#2", 200)], &events).remove(0).not_judged(NOT_JUDGED_VIRTUAL);
        assert!(!r.failed() && r.ok.is_none());
        assert_eq!(
            r.note(),
            "timing WATCHDOG→WATCHDOG#2 200ms → not judged under virtual time (QMP timestamps are host time); \
             host time 319.5ms"
        );
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!((j["ok"].clone(), j["measured_ms"].clone()), (serde_json::Value::Null, serde_json::json!(319.5)));
        assert!(j["not_judged"].as_str().unwrap().starts_with("not judged under virtual time"));
    }
}
