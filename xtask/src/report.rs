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

fn xml_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            c if (c as u32) < 0x20 && !matches!(c, '\n' | '\t' | '\r') => o.push(' '),
            c => o.push(c),
        }
    }
    o
}

/// The `<system-out>` of a test case: its timing notes, if any.
fn junit_system_out(r: &CaseResult) -> String {
    if r.timing.is_empty() {
        return String::new();
    }
    let notes: Vec<String> = r.timing.iter().map(|t| xml_escape(&t.note())).collect();
    format!("      <system-out>{}</system-out>\n", notes.join("\n"))
}

/// A JUnit XML document (one testsuite per board); `wall` is the whole
/// run's wall time (cases may overlap, so it is not their sum).
pub fn junit(results: &[CaseResult], wall: std::time::Duration) -> String {
    let mut boards: BTreeMap<&str, Vec<&CaseResult>> = BTreeMap::new();
    for r in results {
        boards.entry(&r.board).or_default().push(r);
    }
    let (_, f, s) = counts(results);
    let total_s = wall.as_secs_f64();
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        x,
        "<testsuites name=\"pvagent\" tests=\"{}\" failures=\"{f}\" skipped=\"{s}\" time=\"{total_s:.3}\">",
        results.len()
    );
    for (board, rs) in boards {
        let (_, bf, bs) = counts(&rs.iter().map(|r| (*r).clone()).collect::<Vec<_>>());
        let t: f64 = rs.iter().map(|r| r.wall_ms as f64 / 1000.0).sum();
        let _ = writeln!(
            x,
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{bf}\" skipped=\"{bs}\" time=\"{t:.3}\">",
            xml_escape(board),
            rs.len()
        );
        for r in rs {
            let _ = write!(
                x,
                "    <testcase classname=\"{}\" name=\"{}\" time=\"{:.3}\"",
                xml_escape(board),
                xml_escape(&r.id),
                r.wall_ms as f64 / 1000.0
            );
            let out = junit_system_out(r);
            match &r.verdict {
                Verdict::Pass if out.is_empty() => x.push_str("/>\n"),
                Verdict::Pass => {
                    let _ = write!(x, ">\n{out}    </testcase>\n");
                }
                Verdict::Fail(reason) => {
                    let dir = r.artifact_dir.as_deref().map(|d| d.display().to_string()).unwrap_or_default();
                    let _ = writeln!(
                        x,
                        ">\n      <failure message=\"{}\">events: {}\nartifacts: {}</failure>\n{out}    </testcase>",
                        xml_escape(reason),
                        xml_escape(&r.events_summary()),
                        xml_escape(&dir)
                    );
                }
                Verdict::Skipped(reason) => {
                    let _ = writeln!(x, ">\n      <skipped message=\"{}\"/>\n    </testcase>", xml_escape(reason));
                }
            }
        }
        x.push_str("  </testsuite>\n");
    }
    x.push_str("</testsuites>\n");
    x
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
        assert!(j.contains("tests=\"4\" failures=\"1\" skipped=\"2\" time=\"2.500\""), "{j}");
        assert!(j.contains("bad &lt;thing&gt;"), "{j}");
        assert!(j.contains("<testsuite name=\"q35\""), "{j}");
        let w = widths(rs.iter().map(|r| (r.board.as_str(), r.id.clone())));
        let line = row(&rs[1], w);
        assert!(line.contains("FAIL") && line.contains("reason: bad <thing>") && line.contains("artifacts:"), "{line}");
        assert!(row(&rs[0], w).contains("   101  -"), "{}", row(&rs[0], w));
    }
}
