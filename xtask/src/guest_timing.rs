//! Guest-time assertions (`guest_timing = [...]` in scenarios.toml): how long
//! a watchdog ran in the guest's own time, from the agent's log.
//!
//! When a watchdog expires and the guest survives it (QEMU's action
//! `inject-nmi`: an NMI on x86_64 with ib700 or i6300esb, a restart
//! interrupt on s390x with diag288), the agent logs one line
//!
//! ```text
//! watchdog timing: <model> expired <N>us after its last <arm|feed>
//! ```
//!
//! with N in microseconds of guest time (its calibrated TSC on x86_64, the
//! TOD clock on s390x). In virtual time (`-icount`) that is QEMU's virtual
//! clock, exact to a few µs and the same on every host; QMP timestamps
//! cannot measure it (they are host time). Here: the entries' validation,
//! the log's parsing and the judging.

use std::fmt;
use std::time::Duration;

use pvagent::watchdog::Model;
use serde::Deserialize;

use crate::arch::Arch;
use crate::clock::Clock;
use crate::error::{ConfigError, Place};
use crate::timing::Tolerance;
use crate::util::{fmt_duration, parse_duration};

/// What the agent writes before the fields of an expiry line.
pub const LINE_PREFIX: &str = "watchdog timing: ";

/// The default tolerance in virtual time: the guest's clocks are QEMU's
/// virtual clock, so only the agent's own interrupt entry separates the
/// expiry from its reading (a few µs).
pub const VIRTUAL_TOLERANCE: Tolerance = Tolerance { percent: 0.0, abs: Duration::from_millis(1) };

/// The default tolerance in real time (as QMP `timing`): the host may
/// deschedule the vCPU around the expiry.
pub const REAL_TOLERANCE: Tolerance = crate::timing::DEFAULT_TOLERANCE;

/// The default tolerance of a run on `clock`.
pub fn default_tolerance(clock: Clock) -> Tolerance {
    match clock {
        Clock::Real => REAL_TOLERANCE,
        Clock::Virtual => VIRTUAL_TOLERANCE,
    }
}

const MODELS: [Model; 3] = [Model::Ib700, Model::I6300Esb, Model::Diag288];

fn model_named(name: &str) -> Option<Model> {
    MODELS.into_iter().find(|m| m.name() == name)
}

/// Whether a watchdog model exists on `arch`.
pub fn model_exists_on(model: Model, arch: Arch) -> bool {
    model.archs().iter().any(|a| a.name() == arch.as_str())
}

/// What started the countdown the expiry ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Since {
    Arm,
    Feed,
}

impl Since {
    pub const fn as_str(self) -> &'static str {
        match self {
            Since::Arm => "arm",
            Since::Feed => "feed",
        }
    }

    fn parse(s: &str) -> Option<Since> {
        [Since::Arm, Since::Feed].into_iter().find(|x| x.as_str() == s)
    }
}

/// One expiry line of the agent's log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expiry {
    pub model: Model,
    pub after_us: u64,
    pub since: Since,
}

impl Expiry {
    /// The fields after [`LINE_PREFIX`]: `<model> expired <N>us after its
    /// last <arm|feed>` exactly (`None`: not such a line).
    pub fn parse(fields: &str) -> Option<Expiry> {
        let (model, rest) = fields.split_once(" expired ")?;
        let (us, rest) = rest.split_once("us after its last ")?;
        if us.is_empty() || !us.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(Expiry { model: model_named(model)?, after_us: us.parse().ok()?, since: Since::parse(rest.trim_end())? })
    }
}

/// Every expiry line of a decoded agent log, in log order. A log line
/// carries a level prefix (`INFO  …`); the line is found by
/// [`LINE_PREFIX`] anywhere in it.
pub fn expiries(log: &str) -> Vec<Expiry> {
    log.lines()
        .filter_map(|l| l.find(LINE_PREFIX).map(|i| &l[i + LINE_PREFIX.len()..]))
        .filter_map(Expiry::parse)
        .collect()
}

/// One validated `guest_timing` entry.
#[derive(Clone, Debug, PartialEq)]
pub struct GuestTimingCheck {
    pub watchdog: Model,
    /// Which expiry line of that watchdog (1 = its first).
    pub occurrence: u32,
    pub since: Since,
    pub expect: Duration,
    /// `None`: the run's clock's default ([`default_tolerance`]).
    pub tolerance: Option<Tolerance>,
}

impl GuestTimingCheck {
    /// `ib700` or `ib700#2`.
    pub fn watchdog_ref(&self) -> String {
        if self.occurrence == 1 {
            self.watchdog.name().to_string()
        } else {
            format!("{}#{}", self.watchdog.name(), self.occurrence)
        }
    }

    /// The line the agent must log, for messages.
    pub fn wanted_line(&self) -> String {
        format!("{LINE_PREFIX}{} expired <N>us after its last {}", self.watchdog.name(), self.since.as_str())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GuestTimingDef {
    watchdog: String,
    since: String,
    expect: String,
    tolerance: Option<String>,
}

const FIX: &str = "write { watchdog = \"ib700\", since = \"arm\", expect = \"30s\", tolerance = \"1ms\" } \
     (watchdog: ib700, i6300esb or diag288, \"#N\" for its N-th expiry; since: arm or feed; tolerance \
     optional: 1ms in virtual time, 5%+20ms in real time)";

/// Validates a row's `guest_timing` entries (`row`: the scenario's place).
/// The valid checks are returned, the errors pushed to `errors`. Whether
/// the row's boards have the watchdog and whether the row makes the guest
/// survive the expiry (`inject-nmi`) is checked with its boards and
/// variants (`config::scenario`).
pub fn validate_guest_timing(
    row: &Place,
    defs: Vec<toml::Value>,
    errors: &mut Vec<ConfigError>,
) -> Vec<GuestTimingCheck> {
    let mut out = Vec::new();
    for (i, v) in defs.into_iter().enumerate() {
        let at = row.within(format!("field `guest_timing` entry {}", i + 1));
        let d: GuestTimingDef = match at.deserialize(v, FIX) {
            Ok(d) => d,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        let before = errors.len();
        let (name, occurrence) = match d.watchdog.split_once('#') {
            None => (d.watchdog.as_str(), Some(1)),
            Some((n, k)) => (n, k.parse::<u32>().ok().filter(|&k| k >= 1)),
        };
        let model = model_named(name);
        if model.is_none() {
            errors.push(at.within("`watchdog`").error(
                format!("\"{name}\" is not a watchdog the agent times"),
                "use \"ib700\", \"i6300esb\" or \"diag288\"",
            ));
        }
        if occurrence.is_none() {
            errors.push(at.within("`watchdog`").error(
                format!("`{}`: the occurrence after `#` must be a number ≥ 1", d.watchdog),
                "write e.g. \"ib700\" or \"ib700#2\" (its second expiry line)",
            ));
        }
        let since = Since::parse(&d.since);
        if since.is_none() {
            errors.push(at.within("`since`").error(
                format!("\"{}\" is not what starts a countdown", d.since),
                "use \"arm\" or \"feed\" (the agent's line says which)",
            ));
        }
        let expect = match parse_duration(&d.expect) {
            Ok(e) => Some(e),
            Err(e) => {
                errors.push(at.within("`expect`").error(e, "write e.g. \"30s\" or \"500ms\""));
                None
            }
        };
        let tolerance = match d.tolerance.as_deref().map(Tolerance::parse).transpose() {
            Ok(t) => t,
            Err(e) => {
                errors.push(at.within("`tolerance`").error(e, FIX));
                None
            }
        };
        if let (Some(watchdog), Some(occurrence), Some(since), Some(expect), true) =
            (model, occurrence, since, expect, errors.len() == before)
        {
            out.push(GuestTimingCheck { watchdog, occurrence, since, expect, tolerance });
        }
    }
    out
}

/// The outcome of one `guest_timing` entry in one run.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct GuestTimingResult {
    /// `ib700`, `ib700#2`.
    pub watchdog: String,
    /// `arm` or `feed`.
    pub since: String,
    pub expect_ms: f64,
    /// Allowed deviation from `expect_ms`, in ms.
    pub tolerance_ms: f64,
    /// The tolerance as written (or the clock's default), e.g. `1ms`.
    pub tolerance: String,
    /// The agent's measurement, in ms (µs precision); absent when its line is.
    pub measured_ms: Option<f64>,
    pub ok: bool,
    /// Why nothing (or something else) was measured.
    pub problem: Option<String>,
}

impl GuestTimingResult {
    /// `guest timing ib700 arm→expiry 30s → 30000.090ms (±1ms)`.
    pub fn note(&self) -> String {
        let expect = fmt_duration(Duration::from_micros((self.expect_ms * 1000.0).round() as u64));
        let tol = fmt_ms(self.tolerance_ms);
        let got = match (self.measured_ms, &self.problem) {
            (Some(m), None) => format!("{m:.3}ms"),
            (Some(m), Some(p)) => format!("{m:.3}ms ({p})"),
            (None, Some(p)) => format!("not measured: {p}"),
            (None, None) => "not measured".into(),
        };
        let verdict = if self.ok || self.measured_ms.is_none() { "" } else { "  OUT OF RANGE" };
        format!("guest timing {} {}→expiry {expect} → {got} (±{tol}){verdict}", self.watchdog, self.since)
    }
}

/// `1ms`, `0.5ms`, `120ms`.
fn fmt_ms(ms: f64) -> String {
    if (ms - ms.round()).abs() < 1e-9 { format!("{ms:.0}ms") } else { format!("{ms:.3}ms") }
}

/// Judges every check against the decoded agent log of a run on `clock`.
pub fn measure(checks: &[GuestTimingCheck], log: &str, clock: Clock) -> Vec<GuestTimingResult> {
    let lines = expiries(log);
    checks
        .iter()
        .map(|c| {
            let tolerance = c.tolerance.unwrap_or_else(|| default_tolerance(clock));
            let expect_ms = c.expect.as_secs_f64() * 1000.0;
            let tolerance_ms = tolerance.allowed_ms(c.expect);
            let hit = lines.iter().filter(|e| e.model == c.watchdog).nth(c.occurrence as usize - 1);
            let (measured_ms, problem) = match hit {
                None => (None, Some(missing(c, lines.iter().filter(|e| e.model == c.watchdog).count()))),
                Some(e) => {
                    let m = e.after_us as f64 / 1000.0;
                    let p = (e.since != c.since).then(|| {
                        format!("the line says after its last {}, expected {}", e.since.as_str(), c.since.as_str())
                    });
                    (Some(m), p)
                }
            };
            let ok = problem.is_none() && measured_ms.is_some_and(|m| (m - expect_ms).abs() <= tolerance_ms + 1e-9);
            GuestTimingResult {
                watchdog: c.watchdog_ref(),
                since: c.since.as_str().into(),
                expect_ms,
                tolerance_ms,
                tolerance: tolerance.to_string(),
                measured_ms,
                ok,
                problem,
            }
        })
        .collect()
}

fn missing(c: &GuestTimingCheck, have: usize) -> String {
    let which = match c.occurrence {
        1 => String::new(),
        n => format!(" (its expiry #{n}; the log has {have})"),
    };
    format!("the agent log has no \"{}\" line{which}", c.wanted_line())
}

/// Whether `log` already has every line the checks measure (a run that
/// stays up waits for them, like `log_contains`).
pub fn complete(checks: &[GuestTimingCheck], log: &str) -> bool {
    let lines = expiries(log);
    checks.iter().all(|c| lines.iter().filter(|e| e.model == c.watchdog).count() >= c.occurrence as usize)
}

impl fmt::Display for Since {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "INFO  step 2: ib700.arm:30s\n\
        WARN  NMI received (QEMU's watchdog action inject-nmi sends one)\n\
        INFO  watchdog timing: ib700 expired 30000090us after its last arm\n\
        INFO  watchdog timing: i6300esb expired 2000003us after its last feed\n\
        INFO  watchdog timing: ib700 expired 1999990us after its last arm\n\
        INFO  watchdog timing: ib700 expired 12xus after its last arm\n\
        INFO  watchdog timing: ib9000 expired 1us after its last arm\n";

    fn check(watchdog: Model, occurrence: u32, since: Since, expect_ms: u64, tol: Option<&str>) -> GuestTimingCheck {
        GuestTimingCheck {
            watchdog,
            occurrence,
            since,
            expect: Duration::from_millis(expect_ms),
            tolerance: tol.map(|t| Tolerance::parse(t).unwrap()),
        }
    }

    #[test]
    fn lines_are_parsed_exactly() {
        let e = expiries(LOG);
        assert_eq!(e.len(), 3, "{e:?}");
        assert_eq!(e[0], Expiry { model: Model::Ib700, after_us: 30_000_090, since: Since::Arm });
        assert_eq!(e[1], Expiry { model: Model::I6300Esb, after_us: 2_000_003, since: Since::Feed });
        for bad in [
            "ib700 expired us after its last arm",
            "ib700 expired 5us after its first arm",
            "ib700 expired 5 us after its last arm",
            "ib700 expired 5us after its last reset",
            "diag288 expired 99999999999999999999999us after its last arm",
        ] {
            assert_eq!(Expiry::parse(bad), None, "{bad}");
        }
        assert_eq!(
            Expiry::parse("diag288 expired 15000004us after its last feed"),
            Some(Expiry { model: Model::Diag288, after_us: 15_000_004, since: Since::Feed })
        );
    }

    #[test]
    fn judging_in_virtual_and_real_time() {
        let c = [check(Model::Ib700, 1, Since::Arm, 30_000, None)];
        let r = measure(&c, LOG, Clock::Virtual);
        assert!(r[0].ok, "{r:?}");
        assert_eq!((r[0].measured_ms, r[0].tolerance_ms), (Some(30_000.09), 1.0));
        assert_eq!(r[0].note(), "guest timing ib700 arm→expiry 30s → 30000.090ms (±1ms)");
        // The second ib700 line is 2 s: 10 µs off is inside ±1 ms.
        let r = measure(&[check(Model::Ib700, 2, Since::Arm, 2_000, None)], LOG, Clock::Virtual);
        assert!(r[0].ok && r[0].watchdog == "ib700#2", "{r:?}");
        // Real time: 5 % + 20 ms by default.
        let r = measure(&[check(Model::Ib700, 1, Since::Arm, 29_000, None)], LOG, Clock::Real);
        assert!(r[0].ok && r[0].tolerance == "5%+20ms" && r[0].tolerance_ms == 1470.0, "{r:?}");
        let r = measure(&[check(Model::Ib700, 1, Since::Arm, 29_000, None)], LOG, Clock::Virtual);
        assert!(!r[0].ok);
        assert!(r[0].note().ends_with("→ 30000.090ms (±1ms)  OUT OF RANGE"), "{}", r[0].note());
        // An explicit tolerance wins over the clock's.
        let r = measure(&[check(Model::Ib700, 1, Since::Arm, 29_997, Some("2ms"))], LOG, Clock::Virtual);
        assert!(!r[0].ok && r[0].note().contains("29997ms → 30000.090ms (±2ms)"), "{}", r[0].note());
        let r = measure(&[check(Model::Ib700, 1, Since::Arm, 29_997, Some("4ms"))], LOG, Clock::Virtual);
        assert!(r[0].ok, "{}", r[0].note());
    }

    #[test]
    fn a_missing_or_different_line_fails_naming_it() {
        let r = measure(&[check(Model::Diag288, 1, Since::Arm, 15_000, None)], LOG, Clock::Virtual);
        assert!(!r[0].ok && r[0].measured_ms.is_none());
        assert_eq!(
            r[0].note(),
            "guest timing diag288 arm→expiry 15s → not measured: the agent log has no \
             \"watchdog timing: diag288 expired <N>us after its last arm\" line (±1ms)"
        );
        let r = measure(&[check(Model::Ib700, 3, Since::Arm, 2_000, None)], LOG, Clock::Virtual);
        assert!(r[0].problem.as_deref().unwrap().contains("(its expiry #3; the log has 2)"), "{r:?}");
        let r = measure(&[check(Model::I6300Esb, 1, Since::Arm, 2_000, None)], LOG, Clock::Virtual);
        assert!(!r[0].ok, "{r:?}");
        assert!(r[0].note().contains("2000.003ms (the line says after its last feed, expected arm)"), "{r:?}");
        assert!(complete(&[check(Model::Ib700, 2, Since::Arm, 1, None)], LOG));
        assert!(!complete(&[check(Model::Ib700, 3, Since::Arm, 1, None)], LOG));
        assert!(complete(&[], ""));
    }

    #[test]
    fn entries_are_validated() {
        let row = Place::new("scenarios.toml").within("scenario `w`");
        let parse = |t: &str| {
            let v: toml::Value = toml::from_str(&format!("x = [{t}]")).unwrap();
            let mut errors = Vec::new();
            let out = validate_guest_timing(&row, v["x"].as_array().unwrap().clone(), &mut errors);
            (out, crate::error::join(&errors))
        };
        let (ok, e) = parse(r#"{ watchdog = "ib700#2", since = "feed", expect = "2s", tolerance = "1ms" }"#);
        assert!(e.is_empty(), "{e}");
        assert_eq!(ok, [check(Model::Ib700, 2, Since::Feed, 2_000, Some("1ms"))]);
        for (entry, want) in [
            (r#"{ watchdog = "ib701", since = "arm", expect = "2s" }"#, "\"ib701\" is not a watchdog"),
            (r#"{ watchdog = "ib700#0", since = "arm", expect = "2s" }"#, "number ≥ 1"),
            (r#"{ watchdog = "ib700", since = "boot", expect = "2s" }"#, "\"boot\" is not what starts"),
            (r#"{ watchdog = "ib700", since = "arm", expect = "2h" }"#, "`expect`: `2h` has unknown unit"),
            (r#"{ watchdog = "ib700", since = "arm", expect = "2s", tolerance = "x" }"#, "not a tolerance"),
            (r#"{ watchdog = "ib700", expect = "2s" }"#, "missing field `since`"),
            (r#"{ watchdog = "ib700", since = "arm", expect = "2s", min = "1s" }"#, "unknown field `min`"),
        ] {
            let (out, e) = parse(entry);
            assert!(out.is_empty(), "{entry}");
            assert!(e.contains("scenario `w`: field `guest_timing` entry 1") && e.contains(want), "{entry}: {e}");
            assert!(e.contains("fix:"), "{e}");
        }
    }
}
