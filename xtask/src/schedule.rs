//! Running many cases: how many at once ([`default_jobs`]), in which order
//! ([`longest_first`], from the previous run's wall times), and when each
//! may start (its launcher's slot, then the CPU admission gate of
//! [`crate::admission`]); results come back in case order ([`run_all`]).

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::admission::ADMISSION;
use crate::cases::Case;
use crate::runner::{self, CaseResult, RunEnv, Status};

/// Runs one case (see [`runner::run_case`]) once it may start: after its
/// launcher's slot (a nested board: a few at a time) and the admission
/// gate (a CPU to spare). `started` is called right before QEMU starts,
/// for progress displays.
pub fn run_case_started(case: &Case, env: &RunEnv, started: impl FnOnce()) -> CaseResult {
    runner::run_case(case, env, |launcher| {
        let slot = launcher.slot();
        let ticket = ADMISSION.enter();
        started();
        (slot, ticket)
    })
}

/// [`run_case_started`] without a progress display.
pub fn run_case(case: &Case, env: &RunEnv) -> CaseResult {
    run_case_started(case, env, || {})
}

/// How many cases may run at once by default: 16 per CPU, at most 32.
///
/// Most of a watchdog case is spent waiting with the guest halted, which
/// costs almost no CPU, so the cap is well above the CPU count; booting and
/// the agent's `sleep`/`feed` steps do cost CPU, and [`crate::admission`]
/// holds new cases back while the host has no CPU to spare. Measured on a
/// 2-CPU host with the full matrix (136 runs, about 160 s one by one): 16
/// jobs with the CPU gate 21-24 s; 8 jobs 29-30 s; 32 jobs no faster; no
/// failure in 36 gated runs, the worst timing deviation 0.28 of its
/// tolerance. Without the gate 16 jobs take 13 s and 32 jobs 9 s, but
/// marker→WATCHDOG drifted by up to 36 ms (3 failures in 1 of 3 runs at 32
/// jobs), and with the earlier agent (one 5 ms TSC calibration) every
/// ungated run at 8-16 jobs had 1-6 failures.
///
/// With s390x and the fast boards (369 runs, 10 s390x rows of 15-36 s that
/// hold a slot each with a halted guest) 16 jobs left too few slots for the
/// rest: 63-68 s; 32 jobs with the gate's 50 ms window 38-51 s (4 runs, two
/// of them next to another full matrix), no failure, the worst timing
/// deviation 0.75 of its tolerance (0.47 without the other matrix).
pub fn default_jobs() -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    (16 * cpus).min(32)
}

/// The order in which to start `cases` so that the long ones do not end up
/// last: longest first, by each case's wall time in the newest earlier run
/// that has a `results.json`; a case that run does not know counts with its
/// `timeout` (an upper bound: 10 s by default, more for the long rows), ties
/// in table order. Only the start order changes, never the reported order.
pub fn longest_first(cases: &[Case], runs_root: &Path) -> Vec<usize> {
    let previous = previous_wall_times(runs_root);
    let estimate =
        |c: &Case| previous.get(&c.full_name()).copied().unwrap_or_else(|| c.scenario.timeout.as_millis() as u64);
    let mut order: Vec<usize> = (0..cases.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(estimate(&cases[i])));
    order
}

/// `board::id` → wall ms, from the newest run directory with a results.json.
fn previous_wall_times(runs_root: &Path) -> std::collections::HashMap<String, u64> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(runs_root)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    dirs.retain(|d| {
        d.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(|c: char| c.is_ascii_digit()))
    });
    dirs.sort();
    for d in dirs.iter().rev() {
        let Ok(text) = std::fs::read_to_string(d.join("results.json")) else { continue };
        let Ok(v) = serde_json::from_str::<Value>(&text) else { continue };
        let Some(results) = v.get("results").and_then(Value::as_array) else { continue };
        return results
            .iter()
            .filter_map(|r| Some((r.get("name")?.as_str()?.to_string(), r.get("wall_ms")?.as_u64()?)))
            .collect();
    }
    Default::default()
}

/// Runs `cases`, `jobs` at a time, and reports each result to `on_done` in
/// case order (a finished case waits until all cases before it are
/// reported), and every start and finish to `on_status`. Each case runs
/// entirely on one worker thread: QEMU is spawned, watched and reaped there
/// (its PR_SET_PDEATHSIG is tied to that thread). `order` is the order in
/// which cases are started (indices into `cases`; empty = case order).
pub fn run_all(
    cases: &[Case],
    env: &RunEnv,
    jobs: usize,
    order: &[usize],
    mut on_done: impl FnMut(&CaseResult),
    mut on_status: impl FnMut(Status<'_>),
) -> Vec<CaseResult> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;

    enum Msg {
        Started(usize),
        Done(usize, Box<CaseResult>),
    }

    let n = cases.len();
    let is_permutation = {
        let mut sorted = order.to_vec();
        sorted.sort_unstable();
        sorted.iter().copied().eq(0..n)
    };
    let order: Vec<usize> = if is_permutation { order.to_vec() } else { (0..n).collect() };
    let jobs = jobs.clamp(1, n.max(1));
    let next = AtomicUsize::new(0);
    let mut slots: Vec<Option<CaseResult>> = vec![None; n];
    let (tx, rx) = mpsc::channel::<Msg>();
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            let tx = tx.clone();
            let (next, order) = (&next, &order);
            scope.spawn(move || {
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&i) = order.get(k) else { break };
                    let result = run_case_started(&cases[i], env, || {
                        let _ = tx.send(Msg::Started(i));
                    });
                    if tx.send(Msg::Done(i, Box::new(result))).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        let mut reported = 0;
        let mut running: Vec<usize> = Vec::new();
        let mut finished = 0;
        for msg in rx {
            match msg {
                Msg::Started(i) => running.push(i),
                Msg::Done(i, r) => {
                    running.retain(|&j| j != i);
                    finished += 1;
                    slots[i] = Some(*r);
                    while let Some(Some(r)) = slots.get(reported) {
                        on_done(r);
                        reported += 1;
                    }
                }
            }
            on_status(Status { running: running.iter().map(|&i| &cases[i]).collect(), finished, total: n });
        }
    });
    slots.into_iter().map(|r| r.expect("every case ran")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn board() -> crate::config::Board {
        crate::config::parse_board(
            Path::new("boards/pc.toml"),
            "name = \"pc\"\ndescription = \"d\"\narch = \"x86_64\"\nbinary = \"qemu-system-x86_64\"\n\
             machine = \"pc\"\naccel = \"tcg\"\nmemory = \"128M\"\npackage = \"qemu-system-x86\"\n",
            Path::new("/w"),
        )
        .unwrap()
    }

    #[test]
    fn longest_first_uses_the_newest_results() {
        let table = crate::config::parse_scenarios(
            Path::new("scenarios.toml"),
            "[[scenario]]\nname = \"a\"\nend = { exit = 0 }\n[[scenario]]\nname = \"b\"\nend = { exit = 0 }\n\
             [[scenario]]\nname = \"c\"\nend = { exit = 0 }\n",
            &[board()],
        )
        .unwrap();
        let cases = crate::cases::expand_cases(&[board()], &table, &[], &[], None).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(longest_first(&cases, tmp.path()), [0, 1, 2]);
        let write = |dir: &str, body: &str| {
            std::fs::create_dir_all(tmp.path().join(dir)).unwrap();
            std::fs::write(tmp.path().join(dir).join("results.json"), body).unwrap();
        };
        write(
            "20260101-000000-1",
            r#"{"results": [{"name": "pc::a", "wall_ms": 9000}, {"name": "pc::b", "wall_ms": 1}, {"name": "pc::c", "wall_ms": 2}]}"#,
        );
        // Newer: b is long, c is unknown (goes first), a is short.
        write(
            "20260102-000000-1",
            r#"{"results": [{"name": "pc::a", "wall_ms": 100}, {"name": "pc::b", "wall_ms": 5000}]}"#,
        );
        // The newest run dir has no results.json yet (the current run): skipped.
        std::fs::create_dir_all(tmp.path().join("20260103-000000-1")).unwrap();
        assert_eq!(longest_first(&cases, tmp.path()), [2, 1, 0]);
    }

    #[test]
    fn unknown_cases_count_with_their_timeout() {
        let table = crate::config::parse_scenarios(
            Path::new("scenarios.toml"),
            "[[scenario]]\nname = \"a\"\nend = { exit = 0 }\n[[scenario]]\nname = \"b\"\nend = { exit = 0 }\n\
             [[scenario]]\nname = \"long\"\ntimeout = \"50s\"\nend = { exit = 0 }\n",
            &[board()],
        )
        .unwrap();
        let cases = crate::cases::expand_cases(&[board()], &table, &[], &[], None).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        // Nothing known: by timeout (50 s first), ties in table order.
        assert_eq!(longest_first(&cases, tmp.path()), [2, 0, 1]);
        std::fs::create_dir_all(tmp.path().join("20260101-000000-1")).unwrap();
        std::fs::write(
            tmp.path().join("20260101-000000-1/results.json"),
            r#"{"results": [{"name": "pc::a", "wall_ms": 12000}, {"name": "pc::b", "wall_ms": 60000}]}"#,
        )
        .unwrap();
        // b (60 s, known) > long (unknown: its 50 s timeout) > a (12 s, known).
        assert_eq!(longest_first(&cases, tmp.path()), [1, 2, 0]);
    }
}
