//! Running one board × scenario × variant (or an ad-hoc boot) under QEMU and
//! judging it.
//!
//! Each run is self-contained (own QEMU, own socket dir, own artifact dir),
//! so several can run in parallel threads (the scheduler, `schedule.rs`,
//! runs many).
//! How the board's QEMU is started is its launcher's business
//! ([`crate::launch`]): the runner builds the run's command line, asks the
//! launcher for the session, watches the events and judges.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, anyhow};
use serde_json::Value;

use crate::agent;
use crate::cases::Case;
use crate::clock::Clock;
use crate::config::{Board, End, HostAction, HostStep, LibvirtChecks, QmpCommand, ScriptVia};
use crate::defmt_log::{self, LogTable};
use crate::guest_timing::{self, GuestTimingCheck, GuestTimingResult};
use crate::images::{AgentImage, Arch, Images};
use crate::launch::{self, Ended, Ending, EventClock, Guest, Launcher, LibvirtRun};
use crate::libvirt::bridge::Record as LibvirtRecord;
use crate::matcher::{self, ExpectEntry, Progress, WATCHED_EVENTS};
use crate::qemu::{self, first_lines};
use crate::qemu_cmd::{Delivery, QemuCmd};
use crate::qmp::{Message, Polled, Qmp, QmpEvent};
use crate::timing::{self, Stamped, TimingCheck, TimingResult};
use crate::util::{Version, fmt_duration, fmt_min_version, unix_micros};

/// What every run shares: the images (one per architecture, see
/// [`crate::images`]) and where artifacts go.
#[derive(Clone)]
pub struct RunEnv {
    pub images: Arc<Images>,
    /// `target/pvagent-runs/<run-id>`.
    pub run_dir: PathBuf,
}

impl RunEnv {
    /// Several images (architecture → ELF); `-bios` ROMs go to the run dir.
    pub fn with_images(images: BTreeMap<Arch, PathBuf>, run_dir: PathBuf) -> RunEnv {
        RunEnv { images: Arc::new(Images::new(images, run_dir.clone())), run_dir }
    }

    /// The defmt table of `board`'s image.
    fn table(&self, board: &Board) -> Option<&LogTable> {
        self.images.for_board(board).ok().and_then(AgentImage::table)
    }
}

/// Outcome of a case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail(String),
    Skipped(String),
}

impl Verdict {
    pub fn label(&self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Fail(_) => "FAIL",
            Verdict::Skipped(_) => "SKIPPED",
        }
    }
}

/// An event as seen in a run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SeenEvent {
    pub event: String,
    pub data: Value,
    /// ms from QEMU spawn to the event's QMP timestamp.
    pub ms: Option<f64>,
    /// ms from QEMU spawn to when the host read the event (later than `ms`
    /// by up to 1 s for a WATCHDOG held back by QEMU's rate limit).
    pub arrived_ms: f64,
    /// Watched and not the RESUME answering our `cont`.
    pub watched: bool,
    /// Listed in the scenario's `ignore`.
    pub ignored: bool,
}

impl SeenEvent {
    fn relevant(&self) -> bool {
        self.watched && !self.ignored
    }

    pub fn short(&self) -> String {
        QmpEvent { event: self.event.clone(), data: self.data.clone(), timestamp_us: None }.short()
    }
}

/// Everything known about one finished case.
#[derive(Clone, Debug)]
pub struct CaseResult {
    pub board: String,
    pub id: String,
    pub verdict: Verdict,
    pub events: Vec<SeenEvent>,
    pub first_event_ms: Option<f64>,
    pub exit: Option<String>,
    pub status: Option<String>,
    pub artifact_dir: Option<PathBuf>,
    pub qemu_version: Option<Version>,
    pub wall_ms: u128,
    /// One entry per `timing` check of the scenario.
    pub timing: Vec<TimingResult>,
    /// One entry per `guest_timing` check of the scenario.
    pub guest_timing: Vec<GuestTimingResult>,
    /// The clock the case ran on.
    pub clock: Clock,
    /// Why that is not the clock asked for (see [`Case::clock_note`]).
    pub clock_note: Option<String>,
    /// CPU time of its QEMU process (user + system, all threads; for a
    /// nested board: L1's), in ms.
    pub qemu_cpu_ms: Option<f64>,
    /// What libvirt reported (libvirt boards).
    pub libvirt: Option<LibvirtRecord>,
}

impl CaseResult {
    pub fn full_name(&self) -> String {
        format!("{}::{}", self.board, self.id)
    }

    /// Watched events for the table: `GUEST_PANICKED(pause) STOP`; ignored
    /// ones in brackets.
    pub fn events_summary(&self) -> String {
        let v: Vec<String> = self
            .events
            .iter()
            .filter(|e| e.watched)
            .map(|e| if e.ignored { format!("[{}]", e.short()) } else { e.short() })
            .collect();
        let qmp = if v.is_empty() { "-".into() } else { v.join(" ") };
        match &self.libvirt {
            Some(l) => {
                let judged = l.judged();
                let events = if judged.is_empty() { "-".to_string() } else { judged.join(" ") };
                format!("{qmp} | libvirt: {events} → {}", l.state.as_deref().unwrap_or("?"))
            }
            None => qmp,
        }
    }

    pub fn to_json(&self) -> Value {
        let (result, reason) = match &self.verdict {
            Verdict::Pass => ("pass", None),
            Verdict::Fail(r) => ("fail", Some(r.clone())),
            Verdict::Skipped(r) => ("skipped", Some(r.clone())),
        };
        serde_json::json!({
            "board": self.board,
            "scenario": self.id,
            "name": self.full_name(),
            "result": result,
            "reason": reason,
            "events": self.events,
            "first_event_ms": self.first_event_ms,
            "exit": self.exit,
            "status": self.status,
            "artifact_dir": self.artifact_dir,
            "qemu_version": self.qemu_version.map(|v| v.to_string()),
            "wall_ms": self.wall_ms as u64,
            "clock": self.clock,
            "clock_note": self.clock_note,
            "qemu_cpu_ms": self.qemu_cpu_ms,
            "timing": self.timing,
            "guest_timing": self.guest_timing,
            "libvirt": self.libvirt,
        })
    }
}

/// The checks of a scenario run (absent for ad-hoc boots).
#[derive(Clone, Debug)]
pub struct Checks {
    pub expect: Vec<ExpectEntry>,
    pub ignore: Vec<String>,
    pub settle: Duration,
    pub end: End,
    pub log_contains: Vec<String>,
    pub stderr_contains: Vec<String>,
    pub timing: Vec<TimingCheck>,
    pub guest_timing: Vec<GuestTimingCheck>,
    /// The run's clock: QMP `timing` is not judged in virtual time, and
    /// `guest_timing`'s default tolerance depends on it.
    pub clock: Clock,
    /// Substrings of the agent's plain-text console lines.
    pub console_contains: Vec<String>,
    /// What libvirt must report (libvirt boards).
    pub libvirt: Option<LibvirtChecks>,
}

/// QEMU lets one WATCHDOG event out per second; later ones inside the
/// window are coalesced and sent when it ends (with their own timestamps).
pub const WATCHDOG_RATE_LIMIT: Duration = Duration::from_millis(1000);
/// Slack on top of [`WATCHDOG_RATE_LIMIT`] for QEMU's main loop and ours.
pub const RATE_LIMIT_MARGIN: Duration = Duration::from_millis(250);

/// One boot.
#[derive(Clone, Debug)]
pub struct RunSpec {
    pub board: Board,
    pub extra_args: Vec<String>,
    pub script: Option<String>,
    pub script_via: ScriptVia,
    pub qmp_before_cont: Vec<QmpCommand>,
    pub timeout: Duration,
    pub checks: Option<Checks>,
    /// Print events as they arrive (ad-hoc mode).
    pub live: bool,
    /// The guest's clock.
    pub clock: Clock,
    /// What the domain gets (libvirt boards).
    pub libvirt: Option<LibvirtRun>,
    /// What the host does once the agent's log shows a line.
    pub host_actions: Vec<HostAction>,
}

/// What a boot produced.
#[derive(Debug, Default)]
pub struct RunRecord {
    pub events: Vec<SeenEvent>,
    pub exit: Option<ExitStatus>,
    pub killed_by_us: bool,
    pub status: Option<String>,
    pub timed_out: bool,
    pub error: Option<String>,
    pub progress: Option<Progress>,
    pub agent_log: String,
    /// QEMU's stderr (stderr.txt).
    pub stderr: String,
    pub qemu_version: Option<Version>,
    /// CPU time of the QEMU process (see [`CaseResult::qemu_cpu_ms`]).
    pub qemu_cpu: Option<Duration>,
    /// The agent's plain-text console lines (`pvagent: …`).
    pub console: Vec<String>,
    /// The runner ended the guest (`quit`) after watching it.
    pub quit_sent: bool,
    /// Host actions that did not run, and why.
    pub host_action_problems: Vec<String>,
    /// What libvirt reported (libvirt boards).
    pub libvirt: Option<LibvirtRecord>,
}

struct Observer<'a> {
    spawn_us: i128,
    events: Vec<SeenEvent>,
    resume_dropped: bool,
    ignore: &'a [String],
    live: bool,
    shutdown_seen: bool,
    stop_after_shutdown: bool,
    /// Events after our `quit` are recorded but not judged.
    judging: bool,
    /// When the last WATCHDOG arrived: QEMU may hold back another one (the
    /// rate limit) until [`WATCHDOG_RATE_LIMIT`] after it.
    last_watchdog: Option<Instant>,
    /// Maps QMP timestamps to the host's clock (the launcher's).
    clock: Box<dyn EventClock>,
}

impl Observer<'_> {
    fn on_event(&mut self, q: &mut Qmp, ev: QmpEvent) {
        let ev = self.clock.correct(q, ev);
        let ms = ev.timestamp_us.map(|t| (t - self.spawn_us) as f64 / 1000.0);
        let arrived_ms = (unix_micros(SystemTime::now()) - self.spawn_us) as f64 / 1000.0;
        let mut watched = self.judging && WATCHED_EVENTS.contains(&ev.event.as_str());
        if watched && ev.event == "RESUME" && !self.resume_dropped {
            self.resume_dropped = true;
            watched = false;
        }
        if self.judging {
            if ev.event == "SHUTDOWN" {
                self.shutdown_seen = true;
                q.no_more_commands = true;
            } else if ev.event == "STOP" && self.shutdown_seen {
                self.stop_after_shutdown = true;
            } else if ev.event == "WATCHDOG" {
                self.last_watchdog = Some(Instant::now());
            }
        }
        if self.live {
            let data = if ev.data.is_null() { String::new() } else { format!(" {}", ev.data) };
            let late = match ms {
                Some(ms) if arrived_ms - ms > 100.0 && ev.event == "WATCHDOG" => {
                    format!("  (arrived at {arrived_ms:.1} ms: QMP rate limit)")
                }
                Some(ms) if arrived_ms - ms > 100.0 => format!("  (arrived at {arrived_ms:.1} ms)"),
                _ => String::new(),
            };
            match ms {
                Some(ms) => println!("{ms:>9.1} ms  {}{data}{late}", ev.event),
                None => println!("        ? ms  {}{data}", ev.event),
            }
        }
        let ignored = self.ignore.contains(&ev.event);
        insert_in_time_order(
            &mut self.events,
            SeenEvent { event: ev.event, data: ev.data, ms, arrived_ms, watched, ignored },
        );
    }

    /// Until when QEMU may still send a WATCHDOG it is holding back.
    fn rate_limit_horizon(&self) -> Option<Instant> {
        self.last_watchdog.map(|t| t + WATCHDOG_RATE_LIMIT + RATE_LIMIT_MARGIN)
    }

    fn relevant(&self) -> Vec<(&str, &Value)> {
        self.events.iter().filter(|e| e.relevant()).map(|e| (e.event.as_str(), &e.data)).collect()
    }

    fn progress(&self, expect: &[ExpectEntry]) -> Progress {
        matcher::evaluate(expect, &self.relevant())
    }
}

/// Inserts `ev` after every event with an earlier or equal QMP timestamp, so
/// that the list stays in QEMU's timestamp order (a rate-limited WATCHDOG
/// arrives after events that happened later). Events without a timestamp
/// go last.
fn insert_in_time_order(events: &mut Vec<SeenEvent>, ev: SeenEvent) {
    let at = match ev.ms {
        Some(m) => events.iter().rposition(|e| e.ms.is_none_or(|x| x <= m)).map_or(0, |i| i + 1),
        None => events.len(),
    };
    events.insert(at, ev);
}

fn log_missing<'a>(needles: &'a [String], log: &str) -> Vec<&'a String> {
    needles.iter().filter(|n| !log.contains(n.as_str())).collect()
}

/// Boots once and records everything into `dir`.
pub fn execute(spec: &RunSpec, env: &RunEnv, dir: &Path) -> RunRecord {
    let mut rec = RunRecord::default();
    if let Err(e) = std::fs::create_dir_all(dir) {
        rec.error = Some(format!("cannot create {}: {e}", dir.display()));
        return rec;
    }
    let serial = dir.join("serial.bin");
    let _ = std::fs::remove_file(&serial);
    let checks = spec.checks.clone();
    let ignore: Vec<String> = checks.as_ref().map(|c| c.ignore.clone()).unwrap_or_default();
    let launcher = launch::for_run(&spec.board, spec.libvirt.as_ref());
    let mut obs = Observer {
        spawn_us: 0,
        events: Vec::new(),
        resume_dropped: false,
        ignore: &ignore,
        live: spec.live,
        shutdown_seen: false,
        stop_after_shutdown: false,
        judging: true,
        last_watchdog: None,
        clock: launcher.clock(),
    };
    let mut qemu: Option<Box<dyn Guest>> = None;
    let result = boot(spec, env, &*launcher, dir, &serial, &mut obs, &mut rec, &mut qemu);
    if let Err(e) = result {
        rec.error = Some(format!("{e:#}"));
    }
    // Whatever happened: make sure QEMU is gone.
    if let Some(mut p) = qemu.take() {
        // On an error path QEMU may be on its way out: give it a moment.
        let grace = if rec.error.is_some() { Duration::from_millis(500) } else { Duration::ZERO };
        match p.wait_until(Instant::now() + grace) {
            Ok(Some(Ended(st))) => rec.exit = rec.exit.or(st),
            _ => {
                rec.killed_by_us = true;
                rec.exit = p.kill().ok().and_then(|Ended(st)| st);
            }
        }
        rec.qemu_cpu = p.cpu_time();
    }
    if let Some(e) = &mut rec.error {
        if let Some(st) = rec.exit.filter(|_| !rec.killed_by_us) {
            let status = qemu::describe_status(st);
            if !e.contains(&status) {
                e.push_str(&format!("; QEMU {status}"));
            }
        }
        let stderr = first_lines(&dir.join("stderr.txt"));
        if !e.contains(&stderr) && stderr != "(no stderr)" {
            e.push_str(&format!("; stderr: {stderr}"));
        }
    }
    rec.stderr = std::fs::read_to_string(dir.join("stderr.txt")).unwrap_or_default();
    let image = env.images.for_board(&spec.board);
    let elf = image.as_ref().map(|i| i.elf.clone()).unwrap_or_default();
    let table_problem = match &image {
        Ok(i) => i.log_table.as_ref().err().cloned(),
        Err(e) => Some(format!("{e:#}")),
    };
    // QEMU creates serial.bin when it opens its chardevs; one that failed
    // earlier (a bad option, a missing binary) never did.
    if !serial.exists() {
        let _ = std::fs::write(dir.join("agent.log"), no_serial_note(dir, rec.error.is_some()));
    } else if let Some(e) = table_problem {
        let _ = std::fs::write(
            dir.join("agent.log"),
            format!("defmt decoding failed: {e}\nraw output kept in serial.bin\n"),
        );
    } else {
        rec.agent_log = defmt_log::write_agent_log(env.table(&spec.board), &serial, &dir.join("agent.log"), &elf);
    }
    if let Some(c) = &checks {
        rec.progress = Some(obs.progress(&c.expect));
    }
    rec.console = read_console(&serial);
    rec.events = obs.events;
    // The launcher's say on how it ended (and its artifacts).
    let mut end = Ending {
        exit: rec.exit,
        killed_by_us: rec.killed_by_us,
        error: rec.error.take(),
        stderr: rec.stderr.clone(),
        libvirt: None,
    };
    launcher.finish(dir, &mut end);
    rec.exit = end.exit;
    rec.killed_by_us = end.killed_by_us;
    rec.error = end.error;
    rec.stderr = end.stderr;
    rec.libvirt = end.libvirt;
    rec
}

/// The agent's plain-text console lines, with their `pvagent: ` prefix.
fn read_console(serial: &Path) -> Vec<String> {
    let bytes = std::fs::read(serial).unwrap_or_default();
    defmt_log::console_lines(&bytes).into_iter().map(|l| format!("{}{l}", defmt_log::SAY_PREFIX)).collect()
}

#[allow(clippy::too_many_arguments)]
fn boot(
    spec: &RunSpec,
    env: &RunEnv,
    launcher: &dyn Launcher,
    dir: &Path,
    serial: &Path,
    obs: &mut Observer<'_>,
    rec: &mut RunRecord,
    process: &mut Option<Box<dyn Guest>>,
) -> Result<()> {
    let image = env.images.boot_file(&spec.board)?;
    let cmd = QemuCmd::new(&spec.board, &image)
        .files_in(dir)
        .clock(spec.clock)
        .serial_file(serial)
        .args(&spec.extra_args)
        .script(spec.script.as_deref(), Delivery::of(spec.script_via, dir));
    let limit = spec.timeout + launcher.boot_allowance();
    // (QMP sends no event before capabilities are negotiated; should one
    // come with the answer, it is observed once the spawn time is known.)
    let mut early = Vec::new();
    let session = launcher.start(&cmd, dir, limit, process, &mut |_, ev| early.push(ev))?;
    let (mut q, overall) = (session.qmp, session.deadline);
    obs.spawn_us = unix_micros(process.as_ref().expect("spawned").spawned_at());
    rec.qemu_version = crate::qmp::greeting_version(&session.greeting);
    for ev in early {
        obs.on_event(&mut q, ev);
    }
    {
        let mut on_ev = |q: &mut Qmp, ev: QmpEvent| obs.on_event(q, ev);
        for c in &spec.qmp_before_cont {
            q.execute(&c.execute, c.arguments.as_ref(), overall, &mut on_ev)?;
        }
        // A guest can end QEMU before QEMU answers `cont` (an agent that
        // exits at once, through semihosting or isa-debug-exit, without
        // firmware in front of it): then QMP closes, and the exit status
        // is what the row judges.
        if let Err(e) = q.execute("cont", None, overall, &mut on_ev) {
            if !q.is_eof() {
                return Err(e);
            }
            q.note("QEMU closed QMP before answering `cont`: the guest ended QEMU at once");
        }
    }

    // Watch.
    let mut complete_at: Option<Instant> = None;
    let mut mismatch_at: Option<Instant> = None;
    let mut last_len = usize::MAX;
    let mut actions = spec.host_actions.iter().peekable();
    loop {
        let now = Instant::now();
        if now >= overall {
            rec.timed_out = true;
            break;
        }
        if q.is_eof() {
            break;
        }
        let mut until = overall;
        // The next host action, once the agent's log shows its line.
        if let Some(a) = actions.peek() {
            if read_log(env, &spec.board, serial).contains(&a.after_log) {
                let r = match &a.step {
                    HostStep::Virsh(args) => {
                        launcher.host_action(args).map(|out| q.note(&format!("host action {a}: {}", out.trim())))
                    }
                    HostStep::Qmp(c) => {
                        let mut on_ev = |q: &mut Qmp, ev: QmpEvent| obs.on_event(q, ev);
                        q.execute(&c.execute, c.arguments.as_ref(), overall, &mut on_ev).map(drop)
                    }
                };
                if let Err(e) = r {
                    rec.host_action_problems.push(format!("host action {a} failed: {e:#}"));
                }
                actions.next();
                continue;
            }
            until = until.min(now + Duration::from_millis(50));
        }
        if let Some(c) = &spec.checks {
            let n = obs.relevant().len();
            if n != last_len {
                last_len = n;
                match obs.progress(&c.expect) {
                    Progress::Complete => {
                        complete_at = Some(now);
                        mismatch_at = None;
                    }
                    Progress::Mismatch { .. } => {
                        complete_at = None;
                        mismatch_at.get_or_insert(now);
                    }
                    Progress::Incomplete { .. } => {
                        // (Incomplete after a mismatch: a late WATCHDOG
                        // was sorted in before the mismatching event.)
                        complete_at = None;
                        mismatch_at = None;
                    }
                }
            }
            // Never conclude while QEMU may still be holding back a
            // WATCHDOG: it could complete the list, reorder it or be one too many.
            let horizon = obs.rate_limit_horizon();
            let not_before = |t: Instant| horizon.map_or(t, |h| t.max(h));
            if let Some(t) = mismatch_at {
                let give_up = not_before(t + c.settle);
                if now >= give_up {
                    break;
                }
                until = until.min(give_up);
            } else if let (Some(t), End::Status(_)) = (complete_at, &c.end) {
                let settled = not_before(t + c.settle);
                if now >= settled {
                    // Wait (polling) for the required log, console and stderr
                    // lines, libvirt's events and the host actions.
                    let log = read_log(env, &spec.board, serial);
                    let stderr = launcher.live_stderr(dir);
                    let console = read_console(serial).join("\n");
                    if log_missing(&c.log_contains, &log).is_empty()
                        && guest_timing::complete(&c.guest_timing, &log)
                        && log_missing(&c.stderr_contains, &stderr).is_empty()
                        && log_missing(&c.console_contains, &console).is_empty()
                        && !launcher.waiting(c.libvirt.as_ref())
                        && actions.peek().is_none()
                    {
                        break;
                    }
                    until = until.min(now + Duration::from_millis(50));
                } else {
                    until = until.min(settled);
                }
            }
        }
        match q.poll(until)? {
            Polled::Msg(Message::Event(ev)) => obs.on_event(&mut q, ev),
            Polled::Msg(_) | Polled::Timeout => {}
            Polled::Eof => break,
        }
    }

    // Finish.
    let paused_after_shutdown = obs.shutdown_seen && obs.stop_after_shutdown;
    if !q.is_eof() && (!obs.shutdown_seen || paused_after_shutdown) {
        q.no_more_commands = false;
        let d = Instant::now() + Duration::from_secs(2);
        let answer = q.execute("query-status", None, d, &mut |q, ev| obs.on_event(q, ev));
        match answer {
            Ok(v) => rec.status = v.get("status").and_then(|s| s.as_str()).map(String::from),
            Err(e) => q.note(&format!("query-status failed: {e:#}")),
        }
        obs.judging = false;
        if !q.no_more_commands {
            rec.quit_sent = q.send("quit", None).is_ok();
        }
        q.no_more_commands = true;
    }
    obs.judging = obs.judging && !rec.timed_out;
    let d = Instant::now() + Duration::from_secs(3);
    q.drain_to_eof(d, &mut |q, ev| obs.on_event(q, ev));
    let qemu = process.as_mut().expect("spawned");
    match qemu.wait_until(Instant::now() + Duration::from_secs(3))? {
        Some(Ended(st)) => rec.exit = st,
        None => {
            q.note("QEMU did not exit: killed");
            rec.killed_by_us = true;
            rec.exit = qemu.kill()?.0;
        }
    }
    Ok(())
}

/// `agent.log` of a run whose QEMU never created `serial.bin`: says so and
/// names the artifacts that do exist in `dir`.
fn no_serial_note(dir: &Path, failed: bool) -> String {
    let has = |name: &str| std::fs::metadata(dir.join(name)).is_ok_and(|m| m.len() > 0);
    let mut see: Vec<&str> = Vec::new();
    if has("cmdline.txt") {
        see.push("the command line in cmdline.txt");
    }
    if has("stderr.txt") {
        see.push("QEMU's stderr in stderr.txt");
    }
    format!(
        "(no agent output: {} before QEMU created serial.bin{})\n",
        if failed { "the run failed" } else { "the run ended" },
        if see.is_empty() { String::new() } else { format!("; see {}", see.join(" and ")) }
    )
}

fn read_log(env: &RunEnv, board: &Board, serial: &Path) -> String {
    match (env.table(board), std::fs::read(serial)) {
        (Some(t), Ok(bytes)) => t.decode(&bytes).join("\n"),
        _ => String::new(),
    }
}

fn describe_exit(rec: &RunRecord) -> Option<String> {
    rec.exit.map(|st| {
        if rec.killed_by_us {
            "killed (did not exit)".to_string()
        } else {
            match st.code() {
                Some(c) => c.to_string(),
                None => qemu::describe_status(st),
            }
        }
    })
}

/// Measures the checks' `timing` entries on the run's watched events.
/// The RESUME answering the runner's `cont` (not a watched event) counts as
/// `RESUME#1`: rows with no guest-made marker (s390x) time from it. In
/// virtual time they are measured (host time, for information) but not
/// judged.
pub fn measure_timing(checks: &Checks, rec: &RunRecord) -> Vec<TimingResult> {
    let cont = rec.events.iter().position(|e| e.event == "RESUME" && !e.watched);
    let stamped: Vec<Stamped<'_>> = rec
        .events
        .iter()
        .enumerate()
        .filter(|&(i, e)| e.watched || Some(i) == cont)
        .map(|(_, e)| Stamped { event: &e.event, ms: e.ms })
        .collect();
    let results = timing::measure(&checks.timing, &stamped);
    match checks.clock {
        Clock::Real => results,
        Clock::Virtual => results.into_iter().map(|t| t.not_judged(timing::NOT_JUDGED_VIRTUAL)).collect(),
    }
}

/// Judges the checks' `guest_timing` entries on the run's agent log.
pub fn measure_guest_timing(checks: &Checks, rec: &RunRecord) -> Vec<GuestTimingResult> {
    guest_timing::measure(&checks.guest_timing, &rec.agent_log, checks.clock)
}

/// Judges a finished run against its checks.
pub fn judge(checks: &Checks, timeout: Duration, rec: &RunRecord) -> Verdict {
    if let Some(e) = &rec.error {
        return Verdict::Fail(e.clone());
    }
    let mut reasons: Vec<String> = Vec::new();
    let relevant: Vec<&SeenEvent> = rec.events.iter().filter(|e| e.relevant()).collect();
    let exit_code = if rec.killed_by_us { None } else { rec.exit.and_then(|s| s.code()) };
    let how_ended = match (rec.killed_by_us, exit_code) {
        (true, _) => "QEMU kept running".to_string(),
        (false, Some(c)) => format!("QEMU exited with status {c}{}", agent::explain_exit(c)),
        (false, None) => match rec.exit {
            // Killed by a signal that was not ours (OOM killer, a user, a crash).
            Some(st) => format!("QEMU was {}", qemu::describe_status(st)),
            None => "QEMU ended".to_string(),
        },
    };
    match rec.progress.clone() {
        Some(Progress::Complete) | None => {}
        Some(Progress::Mismatch { index, expected }) => {
            let ev = relevant[index];
            let data = if ev.data.is_null() { String::new() } else { ev.data.to_string() };
            reasons.push(format!(
                "unexpected {}{data} (event #{}; expected {})",
                ev.event,
                index + 1,
                expected.join(" or ")
            ));
        }
        Some(Progress::Incomplete { waiting_for }) => {
            let what = waiting_for.join(", ");
            if rec.timed_out {
                reasons.push(format!("timed out after {} waiting for {what}", fmt_duration(timeout)));
            } else {
                reasons.push(format!("missing {what} ({how_ended})"));
            }
        }
    }
    match &checks.end {
        End::Exit(want) => {
            if exit_code != Some(*want) {
                if rec.timed_out && reasons.is_empty() {
                    reasons.push(format!(
                        "timed out after {} waiting for QEMU to exit with status {want}",
                        fmt_duration(timeout)
                    ));
                } else if !rec.timed_out {
                    reasons.push(format!("{how_ended}, expected exit status {want}{}", agent::explain_exit(*want)));
                }
            }
        }
        End::Status(want) => match &rec.status {
            Some(s) if s == want => {}
            Some(s) => reasons.push(format!("status {s}, expected {want}")),
            None => reasons.push(format!("{how_ended}, expected it to stay up with status {want}")),
        },
        End::Stopped => {
            if rec.timed_out && reasons.is_empty() {
                reasons
                    .push(format!("timed out after {} waiting for libvirt to stop the domain", fmt_duration(timeout)));
            } else if !rec.timed_out && (rec.quit_sent || rec.killed_by_us) {
                reasons.push(format!(
                    "the domain kept running{} and the harness destroyed it; expected libvirt to stop it",
                    rec.status.as_ref().map(|s| format!(" (status {s})")).unwrap_or_default()
                ));
            }
        }
    }
    let console = rec.console.join("\n");
    let missing = log_missing(&checks.console_contains, &console);
    if !missing.is_empty() {
        let list: Vec<String> = missing.iter().map(|m| format!("{m:?}")).collect();
        reasons.push(format!("the agent's console lacks {}", list.join(", ")));
    }
    reasons.extend(rec.host_action_problems.iter().cloned());
    if let Some(c) = &checks.libvirt {
        reasons.extend(judge_libvirt(c, &checks.console_contains, rec.libvirt.as_ref()));
    }
    let missing = log_missing(&checks.log_contains, &rec.agent_log);
    if !missing.is_empty() {
        let list: Vec<String> = missing.iter().map(|m| format!("{m:?}")).collect();
        reasons.push(format!("agent log lacks {}", list.join(", ")));
    }
    let missing = log_missing(&checks.stderr_contains, &rec.stderr);
    if !missing.is_empty() {
        let list: Vec<String> = missing.iter().map(|m| format!("{m:?}")).collect();
        reasons.push(format!("QEMU's stderr lacks {}", list.join(", ")));
    }
    // Timing is judged on a complete event list only (otherwise the event
    // reason above says what is wrong).
    if matches!(rec.progress, Some(Progress::Complete) | None) {
        for t in measure_timing(checks, rec).iter().filter(|t| t.failed()) {
            reasons.push(t.note());
        }
    }
    // The agent's own measurement: its line is there or the row fails.
    for g in measure_guest_timing(checks, rec).iter().filter(|g| !g.ok) {
        reasons.push(g.note());
    }
    if reasons.is_empty() { Verdict::Pass } else { Verdict::Fail(reasons.join("; ")) }
}

/// What is wrong with libvirt's report (see [`LibvirtChecks`]).
fn judge_libvirt(c: &LibvirtChecks, console_contains: &[String], rec: Option<&LibvirtRecord>) -> Vec<String> {
    let Some(r) = rec else { return vec!["libvirt: no record of the domain (the run failed before it)".into()] };
    let mut reasons = Vec::new();
    let null = Value::Null;
    let seen: Vec<&str> =
        r.events.iter().filter(|e| e.judged && !c.ignore.contains(&e.name)).map(|e| e.name.as_str()).collect();
    let pairs: Vec<(&str, &Value)> = seen.iter().map(|n| (*n, &null)).collect();
    let list = if seen.is_empty() { "none".to_string() } else { seen.join(", ") };
    match matcher::evaluate(&c.events, &pairs) {
        Progress::Complete => {}
        Progress::Mismatch { index, expected } => reasons.push(format!(
            "libvirt: unexpected event {} (#{}; expected {}; libvirt's events: {list})",
            seen[index],
            index + 1,
            expected.join(" or ")
        )),
        Progress::Incomplete { waiting_for } => {
            reasons.push(format!("libvirt: missing event {} (libvirt's events: {list})", waiting_for.join(", ")))
        }
    }
    match &r.state {
        Some(s) if *s == c.state => {}
        Some(s) => reasons.push(format!("libvirt: domain state {s}, expected {}", c.state)),
        None => reasons.push(format!("libvirt: the domain's state was never taken, expected {}", c.state)),
    }
    let cores = r.core_dumps.iter().filter(|d| d.elf_core).count();
    if r.core_dumps.len() as u32 != c.core_dumps || cores != r.core_dumps.len() {
        let found: Vec<String> = r
            .core_dumps
            .iter()
            .map(|d| {
                format!(
                    "{} ({} bytes{})",
                    d.path.display(),
                    d.bytes,
                    if d.elf_core { ", ELF core" } else { ", not an ELF core" }
                )
            })
            .collect();
        reasons.push(format!(
            "libvirt: {} core dump(s){}, expected {} ELF core(s)",
            r.core_dumps.len(),
            if found.is_empty() { String::new() } else { format!(": {}", found.join(", ")) },
            c.core_dumps
        ));
    }
    if c.virsh_console {
        let shown = r.virsh_console.as_deref().unwrap_or_default();
        let missing = log_missing(console_contains, shown);
        if !missing.is_empty() {
            let list: Vec<String> = missing.iter().map(|m| format!("{m:?}")).collect();
            reasons.push(format!("libvirt: `virsh console` did not show {}", list.join(", ")));
        }
    }
    reasons
}

/// Where a case's artifacts go: `<run dir>/<board>/<id with / → __>`.
pub fn case_dir(run_dir: &Path, case: &Case) -> PathBuf {
    run_dir.join(&case.board.name).join(case.id().replace('/', "__"))
}

/// Checks whether a case can run on this host; `Some(reason)` = skip.
pub fn skip_reason(case: &Case) -> Option<String> {
    if let Some(why) = launch::for_board(&case.board).skip_reason() {
        return Some(why);
    }
    let min = case.min_qemu()?;
    match qemu::qemu_version(&case.board.binary) {
        Ok(have) if have < min => Some(format!("needs QEMU ≥ {}, have {have}", fmt_min_version(min))),
        _ => None,
    }
}

/// Is this a CI run? `CI` set to `true`, `1` or `yes` (any case), as CI
/// services set it.
pub fn is_ci(value: Option<&str>) -> bool {
    value.is_some_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "true" | "1" | "yes"))
}

/// What the e2e harness does with a case whose QEMU is missing (or fails
/// its version probe).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QemuUnavailable {
    /// Report the case as ignored with this reason (a developer's machine).
    Ignore(String),
    /// Fail the case with this message: under CI a missing QEMU must not
    /// turn the matrix into ignored tests and a green run.
    Fail(String),
}

/// The decision for a case on `board` when its QEMU cannot run (`problem`,
/// the probe's error), `ci` from [`is_ci`].
pub fn qemu_unavailable(board: &Board, problem: &str, ci: bool) -> QemuUnavailable {
    if !ci {
        return QemuUnavailable::Ignore(format!("{problem} (run `cargo xtask setup`)"));
    }
    QemuUnavailable::Fail(format!(
        "{problem}. Under CI (CI=true) the end-to-end matrix does not skip a missing QEMU; set it up with\n  \
         cargo xtask setup --board {}\n\
         (as root it installs {}; otherwise it prints the commands to run), or run the whole matrix with \
         `cargo xtask test`, which sets up first",
        board.name, board.package
    ))
}

/// Runs one case end to end (skip check, boot, verdict, result.json).
/// `admit` is called with the board's launcher once the case is known to
/// run, right before its QEMU starts, and may wait; what it returns is held
/// until the case is done (a concurrency slot, an admission ticket: see
/// `schedule.rs`). The wall time counts from its return.
pub fn run_case<G>(case: &Case, env: &RunEnv, admit: impl FnOnce(&dyn Launcher) -> G) -> CaseResult {
    let mut res = CaseResult {
        board: case.board.name.clone(),
        id: case.id(),
        verdict: Verdict::Pass,
        events: Vec::new(),
        first_event_ms: None,
        exit: None,
        status: None,
        artifact_dir: None,
        qemu_version: qemu::qemu_version(&case.board.binary).ok(),
        wall_ms: 0,
        timing: Vec::new(),
        guest_timing: Vec::new(),
        clock: case.clock,
        clock_note: case.clock_note.clone(),
        qemu_cpu_ms: None,
        libvirt: None,
    };
    if let Some(reason) = skip_reason(case) {
        res.verdict = Verdict::Skipped(reason);
        return res;
    }
    if let Err(e) = qemu::qemu_version(&case.board.binary) {
        res.verdict = Verdict::Fail(format!("cannot run {}: {e} (run `cargo xtask setup`)", case.board.binary));
        return res;
    }
    let s = &case.scenario;
    let checks = Checks {
        expect: s.expect.clone(),
        ignore: s.ignore.clone(),
        settle: s.settle,
        end: s.end.clone(),
        log_contains: s.log_contains.clone(),
        stderr_contains: s.stderr_contains.clone(),
        timing: s.timing.clone(),
        guest_timing: s.guest_timing.clone(),
        clock: case.clock,
        console_contains: s.console_contains.clone(),
        libvirt: s.libvirt.as_ref().map(|l| l.checks.clone()),
    };
    let spec = RunSpec {
        board: (*case.board).clone(),
        extra_args: case.extra_args(),
        script: s.script.clone(),
        script_via: case.script_via(),
        qmp_before_cont: s.qmp_before_cont.clone(),
        timeout: s.timeout,
        checks: Some(checks.clone()),
        live: false,
        clock: case.clock,
        libvirt: s.libvirt.as_ref().map(|l| LibvirtRun {
            settings: l.settings.clone(),
            virsh_console: l.checks.virsh_console,
            label: case.id(),
        }),
        host_actions: s.host_actions.clone(),
    };
    let dir = case_dir(&env.run_dir, case);
    let _admitted = admit(&*launch::for_board(&case.board));
    let started = Instant::now();
    let rec = execute(&spec, env, &dir);
    res.verdict = judge(&checks, s.timeout, &rec);
    res.timing = measure_timing(&checks, &rec);
    res.guest_timing = measure_guest_timing(&checks, &rec);
    res.qemu_cpu_ms = rec.qemu_cpu.map(|d| (d.as_secs_f64() * 1e6).round() / 1e3);
    res.first_event_ms =
        if s.expect.is_empty() { None } else { rec.events.iter().find(|e| e.relevant()).and_then(|e| e.ms) };
    res.exit = describe_exit(&rec);
    res.status = rec.status.clone();
    res.libvirt = rec.libvirt.clone();
    res.events = rec.events;
    res.qemu_version = rec.qemu_version.or(res.qemu_version);
    // Only a directory that exists is pointed at (it may not, if creating it failed).
    res.artifact_dir = dir.is_dir().then(|| dir.clone());
    res.wall_ms = started.elapsed().as_millis();
    let _ = std::fs::write(
        dir.join("result.json"),
        serde_json::to_string_pretty(&res.to_json()).unwrap_or_default() + "\n",
    );
    res
}

/// What is going on in a table run, for a progress display.
pub struct Status<'a> {
    /// The cases running now, in the order they started.
    pub running: Vec<&'a Case>,
    pub finished: usize,
    pub total: usize,
}

/// Ad-hoc boot: prints events live, then the agent log and how QEMU ended.
/// Returns QEMU's exit code, 128 + the signal when something else killed it
/// (as a shell reports it), or `None` when it was stopped by us.
pub fn run_adhoc(spec: &RunSpec, env: &RunEnv, dir: &Path) -> Result<Option<i32>> {
    println!(
        "booting {} on {} (timeout {}), artifacts in {}",
        env.images.boot_file(&spec.board)?.display(),
        spec.board.name,
        fmt_duration(spec.timeout),
        dir.display()
    );
    let rec = execute(spec, env, dir);
    println!("--- agent log ---");
    print!("{}", std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default());
    println!("-----------------");
    if let Some(e) = &rec.error {
        return Err(anyhow!("{e}")).context(format!("see {}", dir.display()));
    }
    if let Some(s) = &rec.status {
        println!("QEMU still running at timeout, status {s}: quit");
    }
    match rec.exit {
        Some(st) if !rec.killed_by_us && rec.status.is_none() => {
            use std::os::unix::process::ExitStatusExt;
            let code = st.code();
            println!("QEMU {}{}", qemu::describe_status(st), code.map(agent::explain_exit).unwrap_or_default());
            Ok(code.or(st.signal().map(|s| 128 + s)))
        }
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    fn board() -> Board {
        crate::config::parse_board(
            Path::new("boards/pc.toml"),
            r#"name = "pc"
description = "d"
arch = "x86_64"
binary = "qemu-system-x86_64"
machine = "pc"
accel = "tcg"
memory = "128M"
args = ["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]
package = "qemu-system-x86"
"#,
            Path::new("/w"),
        )
        .unwrap()
    }

    fn ev(name: &str, data: Value) -> SeenEvent {
        SeenEvent { event: name.into(), data, ms: Some(1.0), arrived_ms: 1.0, watched: true, ignored: false }
    }

    fn checks(end: End) -> Checks {
        Checks {
            expect: vec![ExpectEntry::new("GUEST_PANICKED"), ExpectEntry::new("SHUTDOWN")],
            ignore: vec!["STOP".into()],
            settle: Duration::from_millis(1),
            end,
            log_contains: vec!["hello".into()],
            stderr_contains: vec![],
            timing: vec![],
            guest_timing: vec![],
            clock: Clock::Real,
            console_contains: vec![],
            libvirt: None,
        }
    }

    fn record(events: Vec<SeenEvent>, code: i32, c: &Checks) -> RunRecord {
        let mut r = RunRecord {
            events,
            exit: Some(ExitStatus::from_raw(code << 8)),
            agent_log: "INFO hello".into(),
            ..Default::default()
        };
        let rel: Vec<(&str, &Value)> =
            r.events.iter().filter(|e| e.relevant()).map(|e| (e.event.as_str(), &e.data)).collect();
        r.progress = Some(matcher::evaluate(&c.expect, &rel));
        r
    }

    #[test]
    fn late_events_are_sorted_in_by_timestamp() {
        let mut evs = Vec::new();
        for (name, ms) in [("GUEST_CRASHLOADED", 80.0), ("WATCHDOG", 280.0), ("GUEST_CRASHLOADED", 700.0)] {
            insert_in_time_order(&mut evs, SeenEvent { ms: Some(ms), arrived_ms: ms, ..ev(name, Value::Null) });
        }
        // The coalesced WATCHDOG: happened at 596 ms, arrived at 1280 ms.
        insert_in_time_order(
            &mut evs,
            SeenEvent { ms: Some(596.0), arrived_ms: 1280.0, ..ev("WATCHDOG", Value::Null) },
        );
        // Equal timestamps keep arrival order.
        insert_in_time_order(&mut evs, SeenEvent { ms: Some(700.0), ..ev("RESET", Value::Null) });
        let order: Vec<(&str, f64)> = evs.iter().map(|e| (e.event.as_str(), e.ms.unwrap())).collect();
        assert_eq!(
            order,
            [
                ("GUEST_CRASHLOADED", 80.0),
                ("WATCHDOG", 280.0),
                ("WATCHDOG", 596.0),
                ("GUEST_CRASHLOADED", 700.0),
                ("RESET", 700.0)
            ]
        );
    }

    #[test]
    fn judge_stderr_and_timing() {
        let mut c = checks(End::Exit(0));
        c.stderr_contains = vec!["watchdog: timer fired".into()];
        c.timing = vec![TimingCheck {
            from: timing::EventRef::parse("GUEST_PANICKED").unwrap(),
            to: timing::EventRef::parse("SHUTDOWN").unwrap(),
            bound: timing::Bound::Around { expect: Duration::from_millis(500), tolerance: timing::DEFAULT_TOLERANCE },
        }];
        let evs = vec![
            SeenEvent { ms: Some(100.0), ..ev("GUEST_PANICKED", Value::Null) },
            SeenEvent { ms: Some(640.0), ..ev("SHUTDOWN", Value::Null) },
        ];
        let mut r = record(evs, 0, &c);
        r.stderr = "qemu: watchdog: timer fired\n".into();
        assert_eq!(judge(&c, Duration::from_secs(1), &r), Verdict::Pass);
        assert_eq!(measure_timing(&c, &r)[0].measured_ms, Some(540.0));
        r.events[1].ms = Some(700.0);
        r.stderr.clear();
        match judge(&c, Duration::from_secs(1), &r) {
            Verdict::Fail(m) => {
                assert!(m.contains("QEMU's stderr lacks \"watchdog: timer fired\""), "{m}");
                assert!(m.contains("timing GUEST_PANICKED→SHUTDOWN 500ms → 600.0ms (±45ms)  OUT OF RANGE"), "{m}");
            }
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn judge_in_virtual_time() {
        let mut c = checks(End::Exit(0));
        c.log_contains.clear();
        c.clock = Clock::Virtual;
        c.timing = vec![TimingCheck {
            from: timing::EventRef::parse("GUEST_PANICKED").unwrap(),
            to: timing::EventRef::parse("SHUTDOWN").unwrap(),
            bound: timing::Bound::Around { expect: Duration::from_secs(30), tolerance: timing::DEFAULT_TOLERANCE },
        }];
        c.guest_timing = vec![GuestTimingCheck {
            watchdog: pvagent::watchdog::Model::Ib700,
            occurrence: 1,
            since: guest_timing::Since::Arm,
            expect: Duration::from_secs(30),
            tolerance: None,
        }];
        let evs = vec![
            SeenEvent { ms: Some(100.0), ..ev("GUEST_PANICKED", Value::Null) },
            SeenEvent { ms: Some(104.0), ..ev("SHUTDOWN", Value::Null) },
        ];
        let mut r = record(evs, 0, &c);
        // The QMP timing (4 ms of host time for 30 s) is not judged; the guest's is.
        r.agent_log = "INFO  watchdog timing: ib700 expired 30000030us after its last arm\n".into();
        assert_eq!(judge(&c, Duration::from_secs(1), &r), Verdict::Pass);
        let t = measure_timing(&c, &r);
        assert_eq!((t[0].ok, t[0].measured_ms), (None, Some(4.0)));
        assert!(measure_guest_timing(&c, &r)[0].ok);
        // Out of ±1 ms, or no line at all: the row fails, naming it.
        r.agent_log = "INFO  watchdog timing: ib700 expired 30001500us after its last arm\n".into();
        match judge(&c, Duration::from_secs(1), &r) {
            Verdict::Fail(m) => assert!(m.contains("30001.500ms (±1ms)  OUT OF RANGE"), "{m}"),
            v => panic!("{v:?}"),
        }
        r.agent_log = "INFO  NMI received\n".into();
        match judge(&c, Duration::from_secs(1), &r) {
            Verdict::Fail(m) => assert!(
                m.contains("not measured: the agent log has no \"watchdog timing: ib700 expired <N>us after its last arm\" line"),
                "{m}"
            ),
            v => panic!("{v:?}"),
        }
        // In real time the same QMP timing is judged (and fails).
        c.clock = Clock::Real;
        r.agent_log = "INFO  watchdog timing: ib700 expired 30001500us after its last arm\n".into();
        match judge(&c, Duration::from_secs(1), &r) {
            Verdict::Fail(m) => assert!(m.contains("OUT OF RANGE") && !m.contains("guest timing"), "{m}"),
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn judge_pass_and_failures() {
        let c = checks(End::Exit(0));
        let mut stop = ev("STOP", Value::Null);
        stop.ignored = true;
        let evs = vec![ev("GUEST_PANICKED", Value::Null), stop, ev("SHUTDOWN", Value::Null)];
        assert_eq!(judge(&c, Duration::from_secs(1), &record(evs.clone(), 0, &c)), Verdict::Pass);
        match judge(&c, Duration::from_secs(1), &record(evs.clone(), 1, &c)) {
            Verdict::Fail(r) => assert!(r.contains("status 1, expected exit status 0"), "{r}"),
            v => panic!("{v:?}"),
        }
        let mut r = record(evs[..1].to_vec(), 227, &c);
        r.agent_log.clear();
        match judge(&c, Duration::from_secs(1), &r) {
            Verdict::Fail(r) => {
                assert!(r.contains("missing SHUTDOWN"), "{r}");
                assert!(r.contains("agent log lacks \"hello\""), "{r}");
                assert!(r.contains("missing device"), "{r}");
            }
            v => panic!("{v:?}"),
        }
        let evs2 = vec![ev("SHUTDOWN", Value::Null)];
        match judge(&c, Duration::from_secs(1), &record(evs2, 0, &c)) {
            Verdict::Fail(r) => assert!(r.contains("unexpected SHUTDOWN"), "{r}"),
            v => panic!("{v:?}"),
        }
        let cs = checks(End::Status("running".into()));
        let mut r = record(evs.clone(), 0, &cs);
        r.status = Some("running".into());
        assert_eq!(judge(&cs, Duration::from_secs(1), &r), Verdict::Pass);
        r.status = Some("paused".into());
        assert!(matches!(judge(&cs, Duration::from_secs(1), &r), Verdict::Fail(m) if m.contains("status paused")));
    }

    #[test]
    fn a_missing_qemu_fails_under_ci_only() {
        for ci in ["true", "TRUE", "1", "yes", " true\n"] {
            assert!(is_ci(Some(ci)), "{ci:?}");
        }
        for not in [None, Some(""), Some("false"), Some("0"), Some("no")] {
            assert!(!is_ci(not), "{not:?}");
        }
        let problem = "qemu-system-x86_64 not found in PATH";
        assert_eq!(
            qemu_unavailable(&board(), problem, false),
            QemuUnavailable::Ignore("qemu-system-x86_64 not found in PATH (run `cargo xtask setup`)".into())
        );
        match qemu_unavailable(&board(), problem, true) {
            QemuUnavailable::Fail(m) => {
                assert!(m.starts_with(problem), "{m}");
                assert!(m.contains("\n  cargo xtask setup --board pc\n"), "{m}");
                assert!(m.contains("qemu-system-x86"), "{m}");
            }
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn a_qemu_killed_by_a_signal_is_named() {
        let c = checks(End::Exit(0));
        let mut r = record(vec![ev("GUEST_PANICKED", Value::Null)], 0, &c);
        r.exit = Some(ExitStatus::from_raw(libc::SIGKILL));
        match judge(&c, Duration::from_secs(1), &r) {
            Verdict::Fail(m) => {
                assert!(m.contains("missing SHUTDOWN (QEMU was killed by signal 9 (SIGKILL))"), "{m}");
                assert!(m.contains("QEMU was killed by signal 9 (SIGKILL), expected exit status 0"), "{m}");
            }
            v => panic!("{v:?}"),
        }
        r.killed_by_us = false;
        assert_eq!(describe_exit(&r).as_deref(), Some("killed by signal 9 (SIGKILL)"));
        r.killed_by_us = true;
        assert_eq!(describe_exit(&r).as_deref(), Some("killed (did not exit)"));
    }

    #[test]
    fn the_note_of_a_missing_serial_names_only_what_exists() {
        let tmp = tempfile::tempdir().unwrap();
        let n = no_serial_note(tmp.path(), true);
        assert_eq!(n, "(no agent output: the run failed before QEMU created serial.bin)\n");
        std::fs::write(tmp.path().join("cmdline.txt"), "qemu-system-x86_64 -bogus\n").unwrap();
        std::fs::write(tmp.path().join("stderr.txt"), "").unwrap();
        let n = no_serial_note(tmp.path(), true);
        assert!(n.contains("see the command line in cmdline.txt)") && !n.contains("stderr.txt"), "{n}");
        std::fs::write(tmp.path().join("stderr.txt"), "qemu-system-x86_64: -bogus: invalid option\n").unwrap();
        let n = no_serial_note(tmp.path(), true);
        assert!(n.contains("cmdline.txt and QEMU's stderr in stderr.txt"), "{n}");
        assert!(!n.contains("kept in"), "{n}");
    }

    /// A QEMU that fails before opening its chardevs: the error and
    /// agent.log point at what exists, never at a serial.bin that does not.
    #[test]
    fn an_early_qemu_failure_points_at_existing_artifacts() {
        let tmp = tempfile::tempdir().unwrap();
        let bin = crate::qemu::tests::fake_binary(
            tmp.path(),
            "qemu-system-x86_64",
            "echo \"qemu-system-x86_64: -bogus: invalid option\" >&2\nexit 1\n",
        );
        let mut b = board();
        b.binary = bin.to_string_lossy().into_owned();
        let image = tmp.path().join("image");
        std::fs::write(&image, b"not an ELF").unwrap();
        let env = RunEnv::with_images(BTreeMap::from([(Arch::X86_64, image)]), tmp.path().join("run"));
        let spec = RunSpec {
            board: b,
            extra_args: vec![],
            script: None,
            script_via: ScriptVia::FwCfg,
            qmp_before_cont: vec![],
            timeout: Duration::from_secs(5),
            checks: None,
            live: false,
            clock: Clock::Real,
            libvirt: None,
            host_actions: vec![],
        };
        let dir = tmp.path().join("run/pc/adhoc");
        let rec = execute(&spec, &env, &dir);
        let e = rec.error.expect("an error");
        assert!(e.contains("QEMU exited before connecting to QMP (exit status 1)"), "{e}");
        assert_eq!(e.matches("exit status 1").count(), 1, "{e}");
        assert!(!dir.join("serial.bin").exists());
        let log = std::fs::read_to_string(dir.join("agent.log")).unwrap();
        assert!(!log.contains("kept in"), "{log}");
        assert!(log.contains("before QEMU created serial.bin") && log.contains("stderr.txt"), "{log}");
        assert!(dir.join("stderr.txt").exists() && dir.join("cmdline.txt").exists());
    }

    #[test]
    fn libvirts_report_is_judged() {
        use crate::libvirt::bridge::{CoreDump, LibvirtEvent};
        let ev =
            |name: &str, judged: bool| LibvirtEvent { name: name.into(), text: String::new(), arrived_ms: 1.0, judged };
        let c = LibvirtChecks {
            events: vec![
                ExpectEntry { min: 0, ..ExpectEntry::new("suspended:paused") },
                ExpectEntry::new("crashed:panicked"),
            ],
            ignore: vec!["reboot".into()],
            state: "crashed:panicked".into(),
            core_dumps: 1,
            virsh_console: true,
        };
        let mut r = LibvirtRecord {
            events: vec![
                ev("metadata-change", false),
                ev("resumed:unpaused", false),
                ev("reboot", true),
                ev("crashed:panicked", true),
            ],
            state: Some("crashed:panicked".into()),
            core_dumps: vec![CoreDump { path: "/d/1-x-t".into(), bytes: 9, elf_core: true }],
            virsh_console: Some("pvagent: log: hi\n".into()),
            ..Default::default()
        };
        let console = ["pvagent: log: hi".to_string()];
        assert!(judge_libvirt(&c, &console, Some(&r)).is_empty());
        r.events.push(ev("stopped:crashed", true));
        r.state = Some("gone".into());
        r.core_dumps[0].elf_core = false;
        r.virsh_console = Some(String::new());
        let why = judge_libvirt(&c, &console, Some(&r)).join("; ");
        for want in [
            "libvirt: unexpected event stopped:crashed (#2; expected no further event; libvirt's events: crashed:panicked, stopped:crashed)",
            "libvirt: domain state gone, expected crashed:panicked",
            "1 core dump(s): /d/1-x-t (9 bytes, not an ELF core), expected 1 ELF core(s)",
            "libvirt: `virsh console` did not show \"pvagent: log: hi\"",
        ] {
            assert!(why.contains(want), "{want}: {why}");
        }
        r.events.truncate(3);
        let why = judge_libvirt(&c, &console, Some(&r)).join("; ");
        assert!(why.contains("libvirt: missing event crashed:panicked (libvirt's events: none)"), "{why}");
        assert!(judge_libvirt(&c, &console, None)[0].contains("no record"));
    }

    #[test]
    fn timing_from_the_cont_resume() {
        let mut c = checks(End::Status("running".into()));
        c.expect = vec![ExpectEntry::new("WATCHDOG")];
        c.ignore.clear();
        c.log_contains.clear();
        c.timing = vec![TimingCheck {
            from: timing::EventRef::parse("RESUME").unwrap(),
            to: timing::EventRef::parse("WATCHDOG").unwrap(),
            bound: timing::Bound::Around { expect: Duration::from_secs(15), tolerance: timing::DEFAULT_TOLERANCE },
        }];
        // The cont's RESUME is recorded but not watched.
        let evs = vec![
            SeenEvent { ms: Some(30.0), watched: false, ..ev("RESUME", Value::Null) },
            SeenEvent { ms: Some(15_040.5), ..ev("WATCHDOG", Value::Null) },
        ];
        let mut r = record(evs, 0, &c);
        r.status = Some("running".into());
        assert_eq!(measure_timing(&c, &r)[0].measured_ms, Some(15_010.5));
        assert_eq!(judge(&c, Duration::from_secs(20), &r), Verdict::Pass);
    }
}
