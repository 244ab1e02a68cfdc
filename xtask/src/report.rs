//! Result table, summary line, JSON and JUnit output.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use crate::clock::Clock;
use crate::runner::{CaseResult, Verdict};

/// Counts (passed, failed, skipped).
pub fn counts(results: &[CaseResult]) -> (usize, usize, usize) {
    let mut c = (0, 0, 0);
    for r in results {
        match r.verdict {
            Verdict::Pass => c.0 += 1,
            Verdict::Fail(_) => c.1 += 1,
            Verdict::Skipped(_) => c.2 += 1,
        }
    }
    c
}

fn rel(p: &Path) -> String {
    let cwd = std::env::current_dir().ok();
    match cwd.as_deref().and_then(|c| p.strip_prefix(c).ok()) {
        Some(r) => r.display().to_string(),
        None => p.display().to_string(),
    }
}

/// The lines printed under a case: its clock's note, then one per timing
/// and guest-timing entry (also a JUnit case's `<system-out>`).
pub fn notes(r: &CaseResult) -> Vec<String> {
    let mut out: Vec<String> = r.clock_note.iter().map(|n| format!("clock {}: {n}", r.clock)).collect();
    out.extend(r.timing.iter().map(|t| t.note()));
    out.extend(r.guest_timing.iter().map(|g| g.note()));
    out
}

/// One table row (also printed live, one per finished case).
pub fn row(r: &CaseResult, widths: (usize, usize)) -> String {
    let ms = r.first_event_ms.map(|m| format!("{m:.0}")).unwrap_or_else(|| "-".into());
    let mut s = format!(
        "{:<bw$}  {:<sw$}  {:<7}  {:<7}  {:>6}  {}",
        r.board,
        r.id,
        r.verdict.label(),
        r.clock,
        ms,
        r.events_summary(),
        bw = widths.0,
        sw = widths.1,
    );
    for n in notes(r) {
        let _ = write!(s, "\n    {n}");
    }
    match &r.verdict {
        Verdict::Fail(reason) => {
            let _ = write!(s, "\n    reason: {reason}");
            if let Some(d) = &r.artifact_dir {
                let _ = write!(s, "\n    artifacts: {}", rel(d));
            }
        }
        Verdict::Skipped(reason) => {
            let _ = write!(s, "\n    {reason}");
        }
        Verdict::Pass => {}
    }
    s
}

pub fn header(widths: (usize, usize)) -> String {
    format!(
        "{:<bw$}  {:<sw$}  {:<7}  {:<7}  {:>6}  EVENTS",
        "BOARD",
        "SCENARIO",
        "RESULT",
        "CLOCK",
        "MS",
        bw = widths.0,
        sw = widths.1
    )
}

/// Column widths for a set of (board, id) names.
pub fn widths<'a>(names: impl Iterator<Item = (&'a str, String)>) -> (usize, usize) {
    names.fold((5, 8), |(b, s), (bn, id)| (b.max(bn.len()), s.max(id.len())))
}

/// How many cases ran in virtual time, and how many QMP timing entries
/// were therefore not judged: `212 of 574 ran in virtual time (-icount
/// shift=0,sleep=off); 3 QMP timing entries not judged`.
pub fn clock_line(results: &[CaseResult]) -> String {
    let ran: Vec<&CaseResult> = results.iter().filter(|r| !matches!(r.verdict, Verdict::Skipped(_))).collect();
    let virt = ran.iter().filter(|r| r.clock == Clock::Virtual).count();
    let guest = ran.iter().map(|r| r.guest_timing.len()).sum::<usize>();
    let not_judged = ran.iter().flat_map(|r| &r.timing).filter(|t| t.not_judged.is_some()).count();
    let mut s = format!(
        "{virt} of {} ran in virtual time ({} {}), {} in real time; {guest} guest timing entr{}",
        ran.len(),
        Clock::ICOUNT[0],
        Clock::ICOUNT[1],
        ran.len() - virt,
        if guest == 1 { "y" } else { "ies" }
    );
    if not_judged > 0 {
        let _ = write!(
            s,
            "; {not_judged} QMP timing entr{} not judged (virtual time)",
            if not_judged == 1 { "y" } else { "ies" }
        );
    }
    s
}

/// Where the CPU went: `CPU time: QEMU 95.3 s (real-time rows 60.2 s,
/// virtual-time rows 35.1 s), this tool 10.2 s; on 2 CPUs that alone takes
/// ≥ 52.8 s`. `own`: this process's CPU time.
pub fn cpu_line(results: &[CaseResult], own: std::time::Duration, cpus: usize) -> String {
    let sum = |clock: Clock| -> f64 {
        // (An empty f64 sum is -0.0.)
        results.iter().filter(|r| r.clock == clock).filter_map(|r| r.qemu_cpu_ms).fold(0.0, |a, b| a + b) / 1000.0
    };
    let (real, virt) = (sum(Clock::Real), sum(Clock::Virtual));
    let unknown = results
        .iter()
        .filter(|r| r.qemu_cpu_ms.is_none() && r.artifact_dir.is_some() && !matches!(r.verdict, Verdict::Skipped(_)))
        .count();
    let own = own.as_secs_f64();
    let mut s = format!(
        "CPU time: QEMU {:.1}s (real-time rows {real:.1}s, virtual-time rows {virt:.1}s), this tool {own:.1}s",
        real + virt
    );
    if unknown > 0 {
        let _ = write!(s, " ({unknown} QEMU{} not measured)", if unknown == 1 { "" } else { "s" });
    }
    let _ = write!(
        s,
        "; on {cpus} CPU{} that alone takes ≥ {:.1}s",
        if cpus == 1 { "" } else { "s" },
        (real + virt + own) / cpus.max(1) as f64
    );
    s
}

/// Skip reasons with their counts, then `N passed, N failed, N skipped`.
pub fn summary(results: &[CaseResult]) -> String {
    let (p, f, s) = counts(results);
    let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
    for r in results {
        if let Verdict::Skipped(why) = &r.verdict {
            *reasons.entry(why).or_default() += 1;
        }
    }
    let mut out = String::new();
    for (why, n) in reasons {
        let _ = writeln!(out, "skipped ({n}): {why}");
    }
    let failed: Vec<&CaseResult> = results.iter().filter(|r| matches!(r.verdict, Verdict::Fail(_))).collect();
    if !failed.is_empty() {
        let _ = writeln!(out, "failed:");
        for r in failed {
            let dir = r.artifact_dir.as_deref().map(rel).unwrap_or_default();
            let _ = writeln!(out, "  {}  {dir}", r.full_name());
        }
    }
    let _ = write!(out, "{p} passed, {f} failed, {s} skipped");
    out
}

/// The progress display of a table run, on stderr: one status line,
/// redrawn in place on a terminal; elsewhere (CI logs) a line every 10 s.
pub struct Progress {
    tty: bool,
    shown: bool,
    last: Option<std::time::Instant>,
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress {
    pub fn new() -> Self {
        use std::io::IsTerminal;
        Progress { tty: std::io::stderr().is_terminal(), shown: false, last: None }
    }

    /// The status text: counts, then what is running (longest-running first).
    pub fn text(status: &crate::runner::Status<'_>, width: usize) -> String {
        let mut text = format!("[{}/{} finished, {} running]", status.finished, status.total, status.running.len());
        for (k, case) in status.running.iter().enumerate() {
            let name = format!(" {}::{}", case.board.name, case.id());
            if text.len() + name.len() + 12 > width {
                text.push_str(&format!(" (+{} more)", status.running.len() - k));
                break;
            }
            text.push_str(&name);
        }
        text
    }

    pub fn show(&mut self, status: &crate::runner::Status<'_>) {
        use std::io::Write;
        if self.tty {
            let text = Self::text(status, 150);
            eprint!("\r\x1b[2K{text}");
            let _ = std::io::stderr().flush();
            self.shown = true;
        } else if self.last.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(10)) {
            self.last = Some(std::time::Instant::now());
            eprintln!("{}", Self::text(status, 400));
        }
    }

    /// Removes the status line before the table prints a row.
    pub fn clear(&mut self) {
        if self.tty && self.shown {
            eprint!("\r\x1b[2K");
            self.shown = false;
        }
    }
}

/// Total wall time and concurrency of a table run.
#[derive(Clone, Copy, Debug)]
pub struct RunStats {
    pub wall: std::time::Duration,
    pub jobs: usize,
}

impl std::fmt::Display for RunStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "wall time {:.1}s ({} job{})",
            self.wall.as_secs_f64(),
            self.jobs,
            if self.jobs == 1 { "" } else { "s" }
        )
    }
}

pub fn to_json(results: &[CaseResult], qemu: &BTreeMap<String, String>, stats: RunStats) -> serde_json::Value {
    let (p, f, s) = counts(results);
    serde_json::json!({
        "passed": p,
        "failed": f,
        "skipped": s,
        "wall_ms": stats.wall.as_millis() as u64,
        "jobs": stats.jobs,
        "qemu": qemu,
        "results": results.iter().map(|r| r.to_json()).collect::<Vec<_>>(),
    })
}

/// A JUnit XML document (one testsuite per board, the cases in table
/// order); `wall` is the whole run's wall time (cases may overlap, so it is
/// not their sum). A failure's message is the reason, its text the events
/// and the artifact directory; a skipped case's message is the reason; the
/// notes (clock, timing, guest timing) are a case's `<system-out>`, its
/// clock a property `clock`.
pub fn junit(results: &[CaseResult], wall: std::time::Duration) -> String {
    use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
    use std::time::Duration;

    let wall_of = |r: &CaseResult| Duration::from_millis(u64::try_from(r.wall_ms).unwrap_or(u64::MAX));
    let mut boards: BTreeMap<&str, Vec<&CaseResult>> = BTreeMap::new();
    for r in results {
        boards.entry(&r.board).or_default().push(r);
    }
    let mut report = Report::new("pvagent");
    report.set_time(wall);
    for (board, rs) in boards {
        let mut suite = TestSuite::new(board);
        suite.set_time(rs.iter().map(|r| wall_of(r)).sum());
        for r in rs {
            let status = match &r.verdict {
                Verdict::Pass => TestCaseStatus::success(),
                Verdict::Fail(reason) => {
                    let dir = r.artifact_dir.as_deref().map(|d| d.display().to_string()).unwrap_or_default();
                    let mut st = TestCaseStatus::non_success(NonSuccessKind::Failure);
                    st.set_message(reason.as_str())
                        .set_description(format!("events: {}\nartifacts: {dir}", r.events_summary()));
                    st
                }
                Verdict::Skipped(reason) => {
                    let mut st = TestCaseStatus::skipped();
                    st.set_message(reason.as_str());
                    st
                }
            };
            let mut case = TestCase::new(r.id.as_str(), status);
            case.set_classname(board).set_time(wall_of(r));
            case.add_property(quick_junit::Property::new("clock", r.clock.as_str()));
            if let Some(v) = r.libvirt.as_ref().and_then(|l| l.version.as_deref()) {
                case.add_property(quick_junit::Property::new("libvirt", v));
            }
            let notes = notes(r);
            if !notes.is_empty() && !matches!(r.verdict, Verdict::Skipped(_)) {
                case.set_system_out(notes.join("\n"));
            }
            suite.add_test_case(case);
        }
        report.add_test_suite(suite);
    }
    // Serializing into memory fails only on an I/O error of the writer.
    report.to_string().unwrap_or_else(|e| format!("<!-- JUnit serialization failed: {e} -->\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn res(board: &str, id: &str, v: Verdict) -> CaseResult {
        CaseResult {
            board: board.into(),
            id: id.into(),
            verdict: v,
            events: vec![],
            first_event_ms: Some(101.4),
            exit: None,
            status: None,
            artifact_dir: Some(PathBuf::from("/runs/x")),
            qemu_version: None,
            wall_ms: 120,
            timing: vec![],
            guest_timing: vec![],
            clock: Clock::Real,
            clock_note: None,
            qemu_cpu_ms: Some(50.0),
            libvirt: None,
        }
    }

    #[test]
    fn summary_and_junit() {
        let rs = vec![
            res("pc", "a/isa", Verdict::Pass),
            res("pc", "b", Verdict::Fail("bad <thing>".into())),
            res("q35", "c", Verdict::Skipped("needs QEMU ≥ 9.1, have 7.2.0".into())),
            res("q35", "d", Verdict::Skipped("needs QEMU ≥ 9.1, have 7.2.0".into())),
        ];
        let s = summary(&rs);
        assert!(s.ends_with("1 passed, 1 failed, 2 skipped"), "{s}");
        assert!(s.contains("skipped (2): needs QEMU ≥ 9.1, have 7.2.0"), "{s}");
        let j = junit(&rs, std::time::Duration::from_millis(2500));
        assert!(j.contains("tests=\"4\" skipped=\"2\" failures=\"1\" errors=\"0\" time=\"2.500\""), "{j}");
        assert!(j.contains("bad &lt;thing&gt;"), "{j}");
        assert!(j.contains("<testsuite name=\"q35\""), "{j}");
        // What a CI reads back: messages, the failure's text, timing notes.
        let mut timed = res("q35", "t", Verdict::Pass);
        timed.timing = vec![crate::timing::TimingResult {
            from: "GUEST_CRASHLOADED".into(),
            to: "WATCHDOG".into(),
            expect_ms: Some(200.0),
            tolerance_ms: Some(30.0),
            min_ms: Some(170.0),
            max_ms: Some(230.0),
            measured_ms: Some(201.1),
            ok: Some(true),
            problem: None,
            not_judged: None,
        }];
        let back =
            quick_junit::Report::deserialize_from_str(&junit(&[rs[1].clone(), timed], Default::default())).unwrap();
        let case = |suite: usize| &back.test_suites[suite].test_cases[0];
        assert_eq!((back.test_suites[0].name.as_str(), case(0).name.as_str()), ("pc", "b"));
        assert_eq!(case(0).classname.as_ref().map(|c| c.as_str()), Some("pc"));
        match &case(0).status {
            quick_junit::TestCaseStatus::NonSuccess { message, description, .. } => {
                assert_eq!(message.as_ref().map(|m| m.as_str()), Some("bad <thing>"));
                assert_eq!(description.as_ref().map(|d| d.as_str()), Some("events: -\nartifacts: /runs/x"));
            }
            s => panic!("{s:?}"),
        }
        assert_eq!(
            case(1).system_out.as_ref().map(|o| o.as_str()),
            Some("timing GUEST_CRASHLOADED→WATCHDOG 200ms → 201.1ms (±30ms)")
        );
        assert_eq!(back.test_suites[1].test_cases[0].properties[0].name.as_str(), "clock");
        let w = widths(rs.iter().map(|r| (r.board.as_str(), r.id.clone())));
        let line = row(&rs[1], w);
        assert!(line.contains("FAIL") && line.contains("reason: bad <thing>") && line.contains("artifacts:"), "{line}");
        assert!(row(&rs[0], w).contains("PASS     real        101  -"), "{}", row(&rs[0], w));
    }

    #[test]
    fn virtual_time_in_the_table_json_and_junit() {
        let mut r = res("pc-fast", "ib700-timing-30s/pvpanic-isa", Verdict::Pass);
        r.clock = Clock::Virtual;
        r.guest_timing = crate::guest_timing::measure(
            &[crate::guest_timing::GuestTimingCheck {
                watchdog: pvagent::watchdog::Model::Ib700,
                occurrence: 1,
                since: crate::guest_timing::Since::Arm,
                expect: std::time::Duration::from_secs(30),
                tolerance: None,
            }],
            "INFO  watchdog timing: ib700 expired 30000030us after its last arm",
            Clock::Virtual,
        );
        r.timing = vec![
            crate::timing::TimingResult {
                from: "GUEST_CRASHLOADED".into(),
                to: "WATCHDOG".into(),
                expect_ms: Some(2000.0),
                tolerance_ms: Some(120.0),
                min_ms: Some(1880.0),
                max_ms: Some(2120.0),
                measured_ms: Some(5.0),
                ok: Some(false),
                problem: None,
                not_judged: None,
            }
            .not_judged(crate::timing::NOT_JUDGED_VIRTUAL),
        ];
        let w = widths([("pc-fast", r.id.clone())].into_iter());
        let line = row(&r, w);
        assert!(line.contains("PASS     virtual"), "{line}");
        assert!(
            line.contains("\n    timing GUEST_CRASHLOADED→WATCHDOG 2000ms → not judged under virtual time"),
            "{line}"
        );
        assert!(line.ends_with("\n    guest timing ib700 arm→expiry 30s → 30000.030ms (±1ms)"), "{line}");
        assert!(header(w).contains("RESULT   CLOCK        MS  EVENTS"), "{}", header(w));
        let j = r.to_json();
        assert_eq!(j["clock"], "virtual");
        assert_eq!(j["guest_timing"][0]["measured_ms"], 30000.03);
        assert_eq!((j["timing"][0]["ok"].is_null(), j["guest_timing"][0]["ok"].as_bool()), (true, Some(true)));
        let mut forced = res("hyperv", "x", Verdict::Pass);
        forced.clock_note = Some("real time: board hyperv cannot run in virtual time (…)".into());
        assert!(row(&forced, w).contains("\n    clock real: real time: board hyperv"), "{}", row(&forced, w));
        let cpu = cpu_line(&[r.clone(), forced.clone()], std::time::Duration::from_millis(900), 2);
        assert_eq!(
            cpu,
            "CPU time: QEMU 0.1s (real-time rows 0.1s, virtual-time rows 0.1s), this tool 0.9s; on 2 CPUs that \
             alone takes ≥ 0.5s"
        );
        assert!(cpu_line(&[], std::time::Duration::ZERO, 2).contains("virtual-time rows 0.0s"));
        let line = clock_line(&[r.clone(), forced, res("q35", "s", Verdict::Skipped("old".into()))]);
        assert_eq!(
            line,
            "1 of 2 ran in virtual time (-icount shift=0,sleep=off), 1 in real time; 1 guest timing entry; \
             1 QMP timing entry not judged (virtual time)"
        );
        let back = quick_junit::Report::deserialize_from_str(&junit(&[r], Default::default())).unwrap();
        let case = &back.test_suites[0].test_cases[0];
        assert_eq!(case.properties[0].value.as_str(), "virtual");
        let out = case.system_out.as_ref().unwrap().as_str();
        assert!(out.contains("not judged under virtual time") && out.contains("guest timing ib700"), "{out}");
    }
}
