//! End-to-end harness: one trial per board × scenario × variant of
//! `scenarios.toml`, named `<board>::<scenario-id>` (e.g.
//! `q35::panicked-pause/pvpanic-pci`), run with the same runner as
//! `cargo xtask qemu-run`.
//!
//! The image comes from `PVAGENT_IMAGE` or is built on first use. Scenarios
//! the local QEMU is too old for are reported as ignored with the reason.
//!
//! Trials run on libtest-mimic's worker threads, each trial's QEMU spawned,
//! watched and reaped on the same thread. The number of threads is
//! `--test-threads`, else `RUST_TEST_THREADS`, else `PVAGENT_JOBS`, else
//! [`runner::default_jobs`] (not the CPU count: most trials wait with a
//! halted guest). Trials are started longest first (by the previous run's
//! wall times), like `cargo xtask qemu-run`.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use libtest_mimic::{Arguments, Completion, Failed, Trial};

use xtask::config::{Case, expand_cases};
use xtask::runner::{self, RunEnv, Verdict};
use xtask::{Project, agent, artifacts, qemu};

/// Image and run directory, prepared once by the first trial that runs.
struct Shared {
    root: PathBuf,
    env: OnceLock<Result<RunEnv, String>>,
}

impl Shared {
    fn env(&self) -> Result<&RunEnv, Failed> {
        self.env
            .get_or_init(|| {
                let image = match std::env::var_os("PVAGENT_IMAGE") {
                    Some(p) if !p.is_empty() => PathBuf::from(p),
                    _ => agent::build_image(&self.root).map_err(|e| format!("{e:#}"))?,
                };
                if !image.is_file() {
                    return Err(format!("image {} does not exist", image.display()));
                }
                let runs = artifacts::runs_root(&agent::target_dir(&self.root));
                let run_dir = artifacts::new_run_dir(&runs).map_err(|e| format!("{e:#}"))?;
                eprintln!("e2e: image {}, artifacts in {}", image.display(), run_dir.display());
                Ok(RunEnv::new(image, run_dir))
            })
            .as_ref()
            .map_err(|e| Failed::from(e.as_str()))
    }
}

fn skip_reason(case: &Case) -> Option<String> {
    if let Err(e) = qemu::qemu_version(&case.board.binary) {
        return Some(format!("{e} (run `cargo xtask setup`)"));
    }
    runner::skip_reason(case)
}

fn run_trial(shared: &Shared, case: &Case) -> Result<Completion, Failed> {
    if let Some(reason) = skip_reason(case) {
        return Ok(Completion::ignored_with(reason));
    }
    let env = shared.env()?;
    let r = runner::run_case(case, env);
    // Requested vs measured time of every timing entry, passing or not.
    for t in &r.timing {
        eprintln!("e2e: {} {}", r.full_name(), t.note());
    }
    match r.verdict.clone() {
        Verdict::Pass => Ok(Completion::Completed),
        Verdict::Skipped(reason) => Ok(Completion::ignored_with(reason)),
        Verdict::Fail(reason) => {
            let dir = r.artifact_dir.as_ref().map(|d| d.display().to_string()).unwrap_or_default();
            Err(format!("{reason}\n  events: {}\n  artifacts: {dir}", r.events_summary()).into())
        }
    }
}

/// Worker threads when `--test-threads` is not given.
fn default_threads() -> usize {
    ["RUST_TEST_THREADS", "PVAGENT_JOBS"]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.trim().parse::<usize>().ok().filter(|&n| n > 0))
        .unwrap_or_else(runner::default_jobs)
}

fn main() {
    let mut args = Arguments::from_args();
    args.test_threads = args.test_threads.or_else(|| Some(default_threads()));
    qemu::install_ctrlc_handler();
    let root = agent::workspace_root();
    let shared = Arc::new(Shared { root: root.clone(), env: OnceLock::new() });
    let trials: Vec<Trial> = match Project::load(&root, None)
        .and_then(|p| expand_cases(&p.boards, &p.table, &[], &[]).map_err(anyhow::Error::msg))
    {
        Err(e) => {
            let msg = format!("{e:#}");
            vec![Trial::test("scenarios.toml", move || Err(msg.into()))]
        }
        Ok(cases) => {
            let runs = artifacts::runs_root(&agent::target_dir(&root));
            let mut slots: Vec<Option<Case>> = cases.iter().cloned().map(Some).collect();
            runner::longest_first(&cases, &runs)
                .into_iter()
                .filter_map(|i| slots[i].take())
                .map(|case| {
                    let skip = skip_reason(&case);
                    let name = case.full_name();
                    let shared = shared.clone();
                    let trial = Trial::ignorable_test(name, move || run_trial(&shared, &case));
                    if let Some(reason) = &skip
                        && !args.is_filtered_out(&trial)
                    {
                        eprintln!("e2e: SKIPPED {}: {reason}", trial.name());
                    }
                    trial.with_ignored_flag(skip.is_some())
                })
                .collect()
        }
    };
    libtest_mimic::run(&args, trials).exit();
}
