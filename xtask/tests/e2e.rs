//! End-to-end harness: one trial per board × scenario × variant of
//! `scenarios.toml`, named `<board>::<scenario-id>` (e.g.
//! `q35::panicked-pause/pvpanic-pci`), run with the same runner as
//! `cargo xtask qemu-run`.
//!
//! The images come from `PVAGENT_IMAGE` (`:`-separated, one per
//! architecture) or are built on first use: those of the architectures of
//! the trials that are not filtered out, and only those. Scenarios the
//! local QEMU is too old for are reported as ignored with the reason. So
//! are those of a board whose QEMU is missing, except under CI (`CI=true`):
//! there they fail with the set-up command to type, so that a CI machine
//! without QEMU cannot pass by ignoring the whole matrix.
//!
//! Every trial runs on its row's clock (else its board's); `PVAGENT_CLOCK`
//! (`real` or `virtual`, what `cargo xtask test --clock` sets) forces one.
//!
//! Trials on libvirt boards need libvirt on `qemu:///system`: when one of
//! them will run and none answers, the harness starts virtlogd and libvirtd
//! itself and stops them when it ends (`xtask::libvirt::daemons`); under
//! `cargo xtask test` the set-up before it has started them already.
//!
//! Trials run on libtest-mimic's worker threads, each trial's QEMU spawned,
//! watched and reaped on the same thread. The number of threads is
//! `--test-threads`, else `RUST_TEST_THREADS`, else `PVAGENT_JOBS`, else
//! [`schedule::default_jobs`] (not the CPU count: most trials wait with a
//! halted guest). Trials are started longest first (by the previous run's
//! wall times), like `cargo xtask qemu-run`.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use libtest_mimic::{Arguments, Completion, Failed, Trial};

use xtask::cases::{Case, expand_cases};
use xtask::images::{self, Arch};
use xtask::runner::{self, RunEnv, Verdict};
use xtask::{Project, agent, artifacts, clock, qemu, schedule, util};

/// Images and run directory, prepared once by the first trial that runs.
struct Shared {
    root: PathBuf,
    /// Architectures of the trials that will run.
    arches: OnceLock<BTreeSet<Arch>>,
    /// Whether a trial on a libvirt board will run.
    libvirt: OnceLock<bool>,
    env: OnceLock<Result<RunEnv, String>>,
}

impl Shared {
    fn env(&self) -> Result<&RunEnv, Failed> {
        self.env
            .get_or_init(|| {
                let given = std::env::var_os(images::IMAGE_ENV).map(|v| images::split_env(&v)).unwrap_or_default();
                for p in &given {
                    util::image_file(p.clone()).map_err(|e| format!("{}: {e}", images::IMAGE_ENV))?;
                }
                let arches = self.arches.get().cloned().unwrap_or_default();
                let imgs = images::resolve(&self.root, &given, &arches).map_err(|e| format!("{e:#}"))?;
                let runs = artifacts::runs_root(&agent::target_dir(&self.root));
                let run_dir = artifacts::new_run_dir(&runs).map_err(|e| format!("{e:#}"))?;
                let shown: Vec<String> = imgs.values().map(|p| p.display().to_string()).collect();
                eprintln!("e2e: images {}, artifacts in {}", shown.join(", "), run_dir.display());
                if *self.libvirt.get().unwrap_or(&false) {
                    // The libvirt boards' daemons (started here when none answers) and versions.
                    match xtask::libvirt::daemons::ensure().and_then(|line| Ok((line, xtask::libvirt::versions()?))) {
                        Ok((line, (lib, qemu))) => eprintln!("e2e: {line}; libvirt {lib}, QEMU {qemu}"),
                        Err(e) => eprintln!("e2e: libvirt: {e}"),
                    }
                }
                Ok(RunEnv::with_images(imgs, run_dir))
            })
            .as_ref()
            .map_err(|e| Failed::from(e.as_str()))
    }
}

/// What happens to a case before it boots.
enum Precheck {
    Run,
    Ignore(String),
    Fail(String),
}

fn precheck(case: &Case) -> Precheck {
    if let Err(e) = qemu::qemu_version(&case.board.binary) {
        let ci = runner::is_ci(std::env::var("CI").ok().as_deref());
        return match runner::qemu_unavailable(&case.board, &e, ci) {
            runner::QemuUnavailable::Ignore(reason) => Precheck::Ignore(reason),
            runner::QemuUnavailable::Fail(message) => Precheck::Fail(message),
        };
    }
    match runner::skip_reason(case) {
        Some(reason) => Precheck::Ignore(reason),
        None => Precheck::Run,
    }
}

fn run_trial(shared: &Shared, case: &Case) -> Result<Completion, Failed> {
    match precheck(case) {
        Precheck::Run => {}
        Precheck::Ignore(reason) => return Ok(Completion::ignored_with(reason)),
        Precheck::Fail(message) => return Err(message.into()),
    }
    let env = shared.env()?;
    let r = schedule::run_case(case, env);
    // The clock, requested vs measured time of every timing entry, passing or not.
    for n in xtask::report::notes(&r) {
        eprintln!("e2e: {} [{}] {n}", r.full_name(), r.clock);
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
        .unwrap_or_else(schedule::default_jobs)
}

fn main() {
    let mut args = Arguments::from_args();
    args.test_threads = args.test_threads.or_else(|| Some(default_threads()));
    qemu::install_signal_handlers();
    let root = agent::workspace_root();
    let shared = Arc::new(Shared {
        root: root.clone(),
        arches: OnceLock::new(),
        libvirt: OnceLock::new(),
        env: OnceLock::new(),
    });
    let trials: Vec<Trial> = match clock::forced_from_env()
        .map_err(anyhow::Error::msg)
        .and_then(|forced| Ok((Project::load(&root, None)?, forced)))
        .and_then(|(p, forced)| expand_cases(&p.boards, &p.table, &[], &[], forced).map_err(anyhow::Error::msg))
    {
        Err(e) => {
            let msg = format!("{e:#}");
            // Also here: a libtest filter may leave the failing trial out.
            eprintln!("e2e: {msg}");
            vec![Trial::test("scenarios.toml", move || Err(msg.into()))]
        }
        Ok(cases) => {
            let runs = artifacts::runs_root(&agent::target_dir(&root));
            let mut slots: Vec<Option<Case>> = cases.iter().cloned().map(Some).collect();
            let mut arches = BTreeSet::new();
            let mut libvirt = false;
            let trials = schedule::longest_first(&cases, &runs)
                .into_iter()
                .filter_map(|i| slots[i].take())
                .map(|case| {
                    let pre = precheck(&case);
                    let name = case.full_name();
                    let shared = shared.clone();
                    let arch = Arch::of(&case.board).ok();
                    let on_libvirt = case.board.launch.kind == xtask::config::BoardKind::Libvirt;
                    let trial = Trial::ignorable_test(name, move || run_trial(&shared, &case));
                    if !args.is_filtered_out(&trial) {
                        match &pre {
                            Precheck::Ignore(reason) => eprintln!("e2e: SKIPPED {}: {reason}", trial.name()),
                            Precheck::Fail(_) => {}
                            Precheck::Run => {
                                arches.extend(arch);
                                libvirt |= on_libvirt;
                            }
                        }
                    }
                    trial.with_ignored_flag(matches!(pre, Precheck::Ignore(_)))
                })
                .collect();
            let _ = shared.arches.set(arches);
            let _ = shared.libvirt.set(libvirt);
            trials
        }
    };
    let conclusion = libtest_mimic::run(&args, trials);
    // The libvirt daemons this harness started for the libvirt boards, if any.
    xtask::libvirt::daemons::stop();
    conclusion.exit();
}
