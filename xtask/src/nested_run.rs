//! Boards that are more than "spawn QEMU here": the host requirements of a
//! board (`requires`, `instead_of`) and the nested Hyper-V board
//! (`kind = "nested-hyperv"`, see [`crate::nested`]) in the runner.
//!
//! The Hyper-V crash event (`GUEST_PANICKED` with `info.type = "hyper-v"`)
//! needs KVM with Hyper-V emulation. Two boards provide it:
//!
//! * a **direct** board: an ordinary board (`accel = "kvm"`,
//!   `cpu = "qemu64,hv-crash"`) with `requires = ["kvm-hyperv"]`: it runs
//!   where [`nested::direct_hyperv_available`] says the host's KVM has the
//!   crash MSRs, and is SKIPPED with that probe's reason elsewhere;
//! * a **nested** board (`kind = "nested-hyperv"`, `instead_of = "<direct>"`):
//!   the host QEMU runs a small Linux (L1) under TCG, which runs the same
//!   QEMU under its own KVM (L2) with the board's machine, cpu, memory,
//!   firmware and arguments. It runs only where the direct board cannot (and
//!   is SKIPPED naming the direct board elsewhere), and only where
//!   [`nested::probe`] finds what it needs.
//!
//! A nested run goes through the same runner code as every board (QMP
//! negotiation, `qmp_before_cont`, `cont`, the event matcher, `query-status`,
//! `quit`); the hooks here only
//!
//! * build L1's command line instead of QEMU's ([`l1_argv`]), with L1's
//!   boot allowed [`BOOT_ALLOWANCE`] on top of the row's `timeout`;
//! * move QMP timestamps from L1's clock to the host's ([`L1Clock`]);
//! * read L2's stderr from L1's console while waiting ([`live_stderr`]);
//! * afterwards ([`finish`]) take L2's exit status from the console (L1
//!   always exits 0), put L2's stderr into `stderr.txt` (L1's own goes to
//!   `l1-stderr.txt`) and explain L1 failures.
//!
//! Artifacts of a nested run, besides the usual ones: `console.txt` (L1's
//! console: kernel, `/init` status lines, L2's stdout/stderr),
//! `l1-stderr.txt` (the host QEMU's stderr), `l2-cmdline.txt` (L2's
//! command line inside L1; `cmdline.txt` is L1's).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Result, anyhow};

use crate::config::{Board, ScriptVia};
use crate::nested::{self, L1Env, NestedRun};
use crate::qmp::{Qmp, QmpEvent};
use crate::runner::{RunRecord, RunSpec};
use crate::util::{escape_qemu_opt, shell_join, unix_micros};

// The board-file data this module acts on (`kind`, `requires`,
// `instead_of`) is parsed and checked with the board (config/board.rs).
pub use crate::config::{BoardKind, HostFeature, Launch};

// ───────────────────────────── host probes ─────────────────────────────

static PROBES: Mutex<BTreeMap<String, std::result::Result<(), String>>> = Mutex::new(BTreeMap::new());

fn memo(key: String, f: impl FnOnce() -> std::result::Result<(), String>) -> std::result::Result<(), String> {
    let mut m = PROBES.lock().unwrap_or_else(|e| e.into_inner());
    m.entry(key).or_insert_with(f).clone()
}

/// Is `f` available on this host? (Memoized.)
pub fn feature_available(f: HostFeature) -> std::result::Result<(), String> {
    memo(format!("feature {}", f.name()), || match f {
        HostFeature::Kvm => std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .map(drop)
            .map_err(|e| format!("/dev/kvm is not usable: {e}")),
        HostFeature::KvmHyperv => nested::direct_hyperv_available(),
    })
}

fn all_available(req: &[HostFeature]) -> std::result::Result<(), String> {
    req.iter().try_for_each(|&f| feature_available(f).map_err(|e| format!("{}: {e}", f.name())))
}

/// Where the nested board's L1 kernel and initramfs are cached.
pub fn cache_root() -> PathBuf {
    crate::agent::target_dir(&crate::agent::workspace_root()).join("pvagent-nested")
}

/// Why `board` cannot run on this host (`None`: it can). Cheap after the
/// first call; never downloads.
pub fn host_skip_reason(board: &Board) -> Option<String> {
    let l = &board.launch;
    if let Some(other) = &l.instead_of
        && all_available(&l.instead_of_requires).is_ok()
    {
        return Some(format!(
            "board `{other}` runs these rows on this host ({} available); `{}` stands in only where it cannot",
            l.instead_of_requires.iter().map(|f| f.name()).collect::<Vec<_>>().join(", "),
            board.name
        ));
    }
    if let Err(e) = all_available(&l.requires) {
        return Some(format!("this host cannot run board `{}`: needs {e}", board.name));
    }
    if l.kind == BoardKind::NestedHyperv
        && let Err(e) = memo(format!("nested {}", board.binary), || nested::probe(&cache_root(), &board.binary))
    {
        return Some(format!("the nested board cannot run on this host: {e}"));
    }
    None
}

// ───────────────────────────── L1 environment ─────────────────────────────

static L1: Mutex<BTreeMap<String, std::result::Result<L1Env, String>>> = Mutex::new(BTreeMap::new());

/// L1's kernel and initramfs for `binary`, prepared (downloaded, built or
/// found in the cache) once per process; progress lines go to stderr.
pub fn l1_env(binary: &str) -> std::result::Result<L1Env, String> {
    let mut m = L1.lock().unwrap_or_else(|e| e.into_inner());
    m.entry(binary.to_string())
        .or_insert_with(|| {
            let started = Instant::now();
            let r = nested::prepare(&cache_root(), binary, &mut |line| eprintln!("{line}"))
                .map_err(|e| format!("preparing the nested board's L1 failed: {e:#}"));
            if let Ok(env) = &r
                && !env.cache_hit
            {
                eprintln!("nested: L1 initramfs {} ready in {:.1} s", env.key, started.elapsed().as_secs_f64());
            }
            r
        })
        .clone()
}

/// `cargo xtask setup` for the boards with host requirements or a nested
/// launch: probes them (printing why one will be SKIPPED) and prepares L1 so
/// that the first nested row does not pay for it. Never fails: a board that
/// cannot run here has its rows SKIPPED or FAILED with the reason.
pub fn setup(boards: &[&Board]) {
    for b in boards {
        let l = &b.launch;
        if l.requires.is_empty() && l.instead_of.is_none() && l.kind == BoardKind::Qemu {
            continue;
        }
        if let Some(why) = host_skip_reason(b) {
            eprintln!("setup: board {}: rows SKIPPED here: {why}", b.name);
            continue;
        }
        if l.kind == BoardKind::NestedHyperv {
            match l1_env(&b.binary) {
                Ok(env) => eprintln!(
                    "setup: board {}: L1 ready ({}, {}, initramfs {}{})",
                    b.name,
                    env.kernel_package,
                    env.busybox_package,
                    env.key,
                    if env.cache_hit { ", cached" } else { "" }
                ),
                Err(e) => eprintln!("setup: warning: board {}: {e}\nsetup: its rows will FAIL", b.name),
            }
        }
    }
}

// ───────────────────────────── runner hooks ─────────────────────────────

/// Extra time a nested run gets on top of the row's `timeout` for L1 to boot
/// (about 3 s on an idle host, much more on a loaded one) and to power off.
pub const BOOT_ALLOWANCE: Duration = Duration::from_secs(30);

/// Nice value of L1: it keeps a host CPU busy for its whole run, and must not
/// take it from the timing-sensitive TCG runs next to it.
pub const L1_NICE: i32 = 10;

/// How many nested runs may be under way at once: `PVAGENT_NESTED_JOBS`, else
/// one per 4 host CPUs, at least one. Each L1 keeps a CPU busy for seconds,
/// and the admission gate (which counts that as busy) holds every other case
/// back while the host has no spare CPU: on a 2-CPU host two L1s at once
/// stalled the whole matrix (+7 s), and letting the gate ignore niced L1s
/// overloaded the host (5 L1s at once, each row ~21 s, 6 timing rows out of
/// range).
pub fn max_nested_runs() -> usize {
    if let Some(n) = std::env::var("PVAGENT_NESTED_JOBS").ok().and_then(|v| v.trim().parse::<usize>().ok()) {
        return n.max(1);
    }
    std::thread::available_parallelism().map_or(1, |n| (usize::from(n) / 4).max(1))
}

static SLOTS: (Mutex<usize>, Condvar) = (Mutex::new(0), Condvar::new());

/// Held while a nested run is under way (see [`max_nested_runs`]).
pub struct NestedSlot(());

impl Drop for NestedSlot {
    fn drop(&mut self) {
        *SLOTS.0.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        SLOTS.1.notify_one();
    }
}

/// For a case on a nested board: waits for a free slot (before the case
/// passes the admission gate). Other boards: `None` at once.
pub fn nested_slot(board: &Board) -> Option<NestedSlot> {
    if !is_nested(board) {
        return None;
    }
    let max = max_nested_runs();
    let mut n = SLOTS.0.lock().unwrap_or_else(|e| e.into_inner());
    while *n >= max {
        n = SLOTS.1.wait(n).unwrap_or_else(|e| e.into_inner());
    }
    *n += 1;
    Some(NestedSlot(()))
}

pub fn is_nested(board: &Board) -> bool {
    board.launch.kind == BoardKind::NestedHyperv
}

/// How much longer than the row's `timeout` a run on `board` may take.
pub fn boot_allowance(board: &Board) -> Duration {
    if is_nested(board) { BOOT_ALLOWANCE } else { Duration::ZERO }
}

/// L2's own arguments (after machine, cpu, memory, firmware, QMP and serial,
/// which [`nested::l2_argv`] adds): the board's, the row's, the script.
fn l2_args(spec: &RunSpec) -> Vec<OsString> {
    let mut a: Vec<OsString> = spec.board.args.iter().chain(&spec.extra_args).map(OsString::from).collect();
    if let Some(s) = &spec.script {
        match spec.script_via {
            // Boards that run inside L1 refuse fw_cfg_file (config.rs):
            // the run directory is not there.
            ScriptVia::FwCfg | ScriptVia::FwCfgFile => {
                a.push("-fw_cfg".into());
                a.push(format!("name={},string={}", crate::agent::SCRIPT_FW_CFG_NAME, escape_qemu_opt(s)).into());
            }
            ScriptVia::Append => {
                a.push("-append".into());
                a.push(s.into());
            }
        }
    }
    a
}

/// The host command line of a nested run (L1, running L2 with the run's
/// board, arguments and script); writes `l2-cmdline.txt`. `image` is the
/// agent's ELF (a host path; L1 hands it to L2), `serial` receives
/// L2's guest serial, `qmp_socket` (already listening) L2's QMP.
pub fn l1_argv(spec: &RunSpec, image: &Path, dir: &Path, serial: &Path, qmp_socket: &Path) -> Result<Vec<String>> {
    let l1 = l1_env(&spec.board.binary).map_err(|e| anyhow!(e))?;
    let b = &spec.board;
    let mut run = NestedRun::new(image, qmp_socket, serial, &dir.join("console.txt"));
    run.l2_machine = b.machine.clone();
    run.l2_cpu = b.cpu.clone().unwrap_or_else(|| run.l2_cpu.clone());
    run.l2_memory = b.memory.clone();
    run.l2_bios = b.firmware.clone();
    run.l2_args = l2_args(spec);
    let l2: Vec<String> = nested::l2_argv(&l1, &run).iter().map(|a| a.to_string_lossy().into_owned()).collect();
    std::fs::write(dir.join("l2-cmdline.txt"), format!("{}\n", shell_join(&l2)))?;
    let mut argv: Vec<String> = Vec::new();
    if let Some(nice) = nested::find_in_path("nice") {
        argv.extend([nice.to_string_lossy().into_owned(), "-n".into(), L1_NICE.to_string()]);
    }
    for a in nested::command(&l1, &run)? {
        argv.push(a.into_string().map_err(|a| anyhow!("nested: non-UTF-8 argument {a:?}"))?);
    }
    Ok(argv)
}

/// QEMU's stderr so far: `stderr.txt`, or for a nested run L2's output in
/// L1's console.
pub fn live_stderr(board: &Board, dir: &Path) -> String {
    if is_nested(board) {
        nested::parse_console(&std::fs::read(dir.join("console.txt")).unwrap_or_default()).l2_output
    } else {
        std::fs::read_to_string(dir.join("stderr.txt")).unwrap_or_default()
    }
}

/// Last `n` non-empty lines of L1's console, for error messages.
fn console_tail(console: &[u8], n: usize) -> String {
    let text = String::from_utf8_lossy(console);
    let lines: Vec<&str> = text.lines().map(|l| l.trim_end_matches('\r')).filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// Moves QMP timestamps of a nested run from L1's clock (off from the
/// host's by up to ~1.5 s: L1 reads the RTC in whole seconds) to the host's:
/// every event gets the shift that makes the first timestamped event (the
/// RESUME answering `cont`) carry its host receive time. One shift for the
/// whole run keeps the events' spacing exactly as QEMU measured it.
#[derive(Debug, Default)]
pub struct L1Clock {
    enabled: bool,
    shift_us: Option<i128>,
}

impl L1Clock {
    /// Shifts timestamps on a nested board, leaves them alone elsewhere.
    pub fn for_board(board: &Board) -> L1Clock {
        L1Clock { enabled: is_nested(board), shift_us: None }
    }

    /// The event with its timestamp on the host's clock (the first one also
    /// leaves a note with the shift in the transcript).
    pub fn correct(&mut self, q: &mut Qmp, mut ev: QmpEvent) -> QmpEvent {
        if let (true, Some(ts)) = (self.enabled, ev.timestamp_us) {
            let shift = match self.shift_us {
                Some(s) => s,
                None => {
                    let s = unix_micros(SystemTime::now()) - ts;
                    self.shift_us = Some(s);
                    q.note(&format!(
                        "nested: QMP timestamps are L1's clock; event times in the results are timestamp {:+.3} ms \
                         (host receive time of this {} minus its timestamp)",
                        s as f64 / 1000.0,
                        ev.event
                    ));
                    s
                }
            };
            ev.timestamp_us = Some(ts + shift);
        }
        ev
    }
}

/// After a nested run: L2's exit status and stderr, L1 failures (see the
/// module docs).
pub fn finish(dir: &Path, rec: &mut RunRecord) {
    let console = std::fs::read(dir.join("console.txt")).unwrap_or_default();
    let report = nested::parse_console(&console);
    let _ = std::fs::rename(dir.join("stderr.txt"), dir.join("l1-stderr.txt"));
    let _ = std::fs::write(dir.join("stderr.txt"), &report.l2_output);
    rec.stderr = report.l2_output.clone();

    let l1_ended = rec.exit.is_some() && !rec.killed_by_us;
    let mut problem: Option<String> = None;
    match report.l2_exit {
        // L1 exits 0 whatever L2 did: the run's exit status is L2's.
        Some(code) if !rec.killed_by_us => rec.exit = Some(ExitStatus::from_raw((code & 0xff) << 8)),
        Some(_) => {}
        None if l1_ended => {
            problem = Some(match (&report.l1_error, report.init_reached, report.l2_started) {
                (Some(e), _, _) => format!("L1 failed: {e}"),
                (None, false, _) => format!("L1 ended before its /init ran: {}", console_tail(&console, 3)),
                (None, true, false) => format!("L1 ended before starting L2: {}", console_tail(&console, 3)),
                (None, true, true) => format!("L1 ended while L2 was running: {}", console_tail(&console, 3)),
            });
        }
        None if !report.l2_started => {
            problem = Some(match &report.l1_error {
                Some(e) => format!("L1 failed: {e}"),
                None => format!(
                    "L1 did not start L2 in time (console: {})",
                    if console.is_empty() { "empty".into() } else { console_tail(&console, 2) }
                ),
            });
        }
        None => {}
    }
    if let Some(e) = &mut rec.error {
        // The runner's "QEMU exit status" is L1's.
        *e = e.replace("; QEMU exit status", "; L1 exit status");
        if let Some(p) = &problem {
            e.push_str(&format!("; nested: {p}"));
        } else if let Some(code) = report.l2_exit {
            e.push_str(&format!("; nested: L2 exited with status {code}"));
        }
        let l2 = report.l2_output.lines().filter(|l| !l.trim().is_empty()).take(3).collect::<Vec<_>>().join(" | ");
        if !l2.is_empty() && !e.contains(&l2) {
            e.push_str(&format!("; L2 stderr: {l2}"));
        }
    } else if let Some(p) = problem {
        rec.error = Some(format!("nested: {p} (see console.txt)"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn l1_clock_shifts_by_the_first_event() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut q = Qmp::new(a, None);
        let ev = |t: Option<i128>| QmpEvent { event: "X".into(), data: serde_json::Value::Null, timestamp_us: t };
        let now = unix_micros(SystemTime::now());
        // L1's clock is 1.2 s ahead.
        let mut c = L1Clock { enabled: true, shift_us: None };
        let first = c.correct(&mut q, ev(Some(now + 1_200_000))).timestamp_us.unwrap();
        assert!((first - now).abs() < 100_000, "{}", first - now);
        let later = c.correct(&mut q, ev(Some(now + 1_500_000))).timestamp_us.unwrap();
        assert_eq!(later - first, 300_000);
        assert_eq!(c.correct(&mut q, ev(None)).timestamp_us, None);
        let mut off = L1Clock::default();
        assert_eq!(off.correct(&mut q, ev(Some(5))).timestamp_us, Some(5));
    }

    #[test]
    fn l2_exit_replaces_l1_exit() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("stderr.txt"), "l1 says\n").unwrap();
        std::fs::write(
            d.path().join("console.txt"),
            "pvagent-l1: init [1.0]\r\npvagent-l1: L2 start [2.0]\r\nqemu-system-x86_64: warning: w\r\n\
             pvagent-l1: L2 exit 1 [3.0]\r\n",
        )
        .unwrap();
        let mut rec = RunRecord { exit: Some(ExitStatus::from_raw(0)), ..Default::default() };
        finish(d.path(), &mut rec);
        assert_eq!(rec.exit.and_then(|s| s.code()), Some(1));
        assert_eq!(rec.stderr, "qemu-system-x86_64: warning: w\n");
        assert_eq!(std::fs::read_to_string(d.path().join("l1-stderr.txt")).unwrap(), "l1 says\n");
        assert!(rec.error.is_none());

        std::fs::write(d.path().join("console.txt"), "pvagent-l1: init\npvagent-l1: error: insmod kvm failed\n")
            .unwrap();
        let mut rec = RunRecord { exit: Some(ExitStatus::from_raw(0)), ..Default::default() };
        finish(d.path(), &mut rec);
        assert_eq!(rec.error.as_deref(), Some("nested: L1 failed: insmod kvm failed (see console.txt)"));
    }
}
