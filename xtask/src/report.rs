//! Result table, summary line, JSON and JUnit output.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

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

/// One table row (also printed live, one per finished case).
pub fn row(r: &CaseResult, widths: (usize, usize)) -> String {
    let ms = r.first_event_ms.map(|m| format!("{m:.0}")).unwrap_or_else(|| "-".into());
    let mut s = format!(
        "{:<bw$}  {:<sw$}  {:<7}  {:>6}  {}",
        r.board,
        r.id,
        r.verdict.label(),
        ms,
        r.events_summary(),
        bw = widths.0,
        sw = widths.1,
    );
    for t in &r.timing {
        let _ = write!(s, "\n    {}", t.note());
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
    format!("{:<bw$}  {:<sw$}  {:<7}  {:>6}  EVENTS", "BOARD", "SCENARIO", "RESULT", "MS", bw = widths.0, sw = widths.1)
}

/// Column widths for a set of (board, id) names.
pub fn widths<'a>(names: impl Iterator<Item = (&'a str, String)>) -> (usize, usize) {
    names.fold((5, 8), |(b, s), (bn, id)| (b.max(bn.len()), s.max(id.len())))
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
/// timing notes are a case's `<system-out>`.
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
            if !r.timing.is_empty() && !matches!(r.verdict, Verdict::Skipped(_)) {
                case.set_system_out(r.timing.iter().map(|t| t.note()).collect::<Vec<_>>().join("\n"));
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
            ok: true,
            problem: None,
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
        let w = widths(rs.iter().map(|r| (r.board.as_str(), r.id.clone())));
        let line = row(&rs[1], w);
        assert!(line.contains("FAIL") && line.contains("reason: bad <thing>") && line.contains("artifacts:"), "{line}");
        assert!(row(&rs[0], w).contains("   101  -"), "{}", row(&rs[0], w));
    }
}
