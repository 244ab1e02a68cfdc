//! The nested Hyper-V board (`kind = "nested-hyperv"`): the host QEMU runs a
//! small Linux (L1, see [`crate::nested`]) under TCG, which runs the board's
//! QEMU under its own KVM (L2) with the run's command line.
//!
//! Next to a local run, a nested run
//!
//! * runs only where [`nested::probe`] finds what L1 needs, one at a time
//!   per 4 host CPUs ([`max_nested_runs`]), with L1 at nice [`L1_NICE`];
//! * gets [`BOOT_ALLOWANCE`] on top of the row's `timeout` for L1's boot;
//! * spawns L1, whose command line carries L2's (the run's [`QemuCmd`] with
//!   L1's paths: its QMP and serial on L1's serial ports, the agent as an L1
//!   file, qboot unless the board names a firmware);
//! * moves QMP timestamps from L1's clock to the host's ([`L1Clock`]);
//! * reads L2's stderr from L1's console while waiting;
//! * afterwards takes L2's exit status from the console (L1 always exits
//!   0), puts L2's stderr into `stderr.txt` (L1's own goes to
//!   `l1-stderr.txt`) and explains L1 failures.
//!
//! Artifacts of a nested run, besides the usual ones: `console.txt` (L1's
//! console: kernel, `/init` status lines, L2's stdout/stderr),
//! `l1-stderr.txt` (the host QEMU's stderr), `l2-cmdline.txt` (L2's
//! command line inside L1; `cmdline.txt` is L1's).

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Result, anyhow, bail};

use super::{Ending, EventClock, Guest, Launcher, Slot, Slots, host, start_here};
use crate::config::Board;
use crate::nested::{self, L1Env, NestedRun};
use crate::qemu::{QmpListener, Session};
use crate::qemu_cmd::{Chardev, Delivery, QemuCmd, Script};
use crate::qmp::{Qmp, QmpEvent};
use crate::util::{find_program, shell_join, unix_micros};

/// Extra time a nested run gets on top of the row's `timeout` for L1 to boot
/// (about 3 s on an idle host, much more on a loaded one) and to power off.
pub const BOOT_ALLOWANCE: Duration = Duration::from_secs(30);

/// Nice value of L1: it keeps a host CPU busy for its whole run, and must not
/// take it from the timing-sensitive TCG runs next to it.
pub const L1_NICE: i32 = 10;

/// L2's QMP monitor and guest serial inside L1: L1's second and third
/// serial ports (the host ends are in [`nested::command`]).
const L2_QMP_TTY: &str = "/dev/ttyS1";
const L2_SERIAL_TTY: &str = "/dev/ttyS2";

/// A board whose QEMU runs inside L1.
pub struct Nested<'a> {
    board: &'a Board,
}

impl<'a> Nested<'a> {
    pub fn new(board: &'a Board) -> Nested<'a> {
        Nested { board }
    }
}

/// Where the nested board's L1 kernel and initramfs are cached.
pub fn cache_root() -> PathBuf {
    crate::util::target_dir(&crate::agent::workspace_root()).join("pvagent-nested")
}

static L1: Mutex<BTreeMap<String, Result<L1Env, String>>> = Mutex::new(BTreeMap::new());

/// L1's kernel and initramfs for `binary`, prepared (downloaded, built or
/// found in the cache) once per process; progress lines go to stderr.
fn l1_env(binary: &str) -> Result<L1Env, String> {
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

static SLOTS: Slots = Slots::new();

/// L2's command line: the run's, with L1's paths.
fn l2_cmd(host: &QemuCmd, l1: &L1Env) -> Result<QemuCmd> {
    if let Some(Script { delivery: Delivery::FwCfgFile(_), .. }) = &host.script {
        // The board parser refuses this: the run directory is not in L1.
        bail!("nested: L2 cannot read a script file of the host (script_via = \"fw_cfg_file\")");
    }
    let firmware = host.firmware.clone().unwrap_or_else(|| l1.qboot.clone());
    if !l1.firmware.contains(&firmware) {
        bail!(
            "nested: L2 -bios {} is not inside L1 (available: {})",
            firmware.display(),
            l1.firmware.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        );
    }
    Ok(QemuCmd {
        binary: l1.qemu.to_string_lossy().into_owned(),
        firmware: Some(firmware),
        qmp: Some(Chardev::Tty(L2_QMP_TTY.into())),
        serial: Some(Chardev::Tty(L2_SERIAL_TTY.into())),
        image: nested::l2_file_path(nested::GUEST_FILE).into(),
        ..host.clone()
    })
}

impl Launcher for Nested<'_> {
    fn board(&self) -> &Board {
        self.board
    }

    fn skip_reason(&self) -> Option<String> {
        if let Some(why) = host::requirements_problem(self.board) {
            return Some(why);
        }
        let binary = &self.board.binary;
        host::memo(format!("nested {binary}"), || nested::probe(&cache_root(), binary))
            .err()
            .map(|e| format!("the nested board cannot run on this host: {e}"))
    }

    fn prepare(&self) -> Result<Option<String>, String> {
        let env = l1_env(&self.board.binary)?;
        Ok(Some(format!(
            "L1 ready ({}, {}, initramfs {}{})",
            env.kernel_package,
            env.busybox_package,
            env.key,
            if env.cache_hit { ", cached" } else { "" }
        )))
    }

    fn slot(&self) -> Option<Slot> {
        Some(SLOTS.acquire(max_nested_runs()))
    }

    fn boot_allowance(&self) -> Duration {
        BOOT_ALLOWANCE
    }

    fn start(
        &self,
        cmd: &QemuCmd,
        dir: &Path,
        limit: Duration,
        process: &mut Option<Box<dyn Guest>>,
        on_event: &mut dyn FnMut(&mut Qmp, QmpEvent),
    ) -> Result<Session> {
        let l1 = l1_env(&self.board.binary).map_err(|e| anyhow!(e))?;
        let Some(Chardev::File(serial)) = &cmd.serial else {
            bail!("nested: L2's serial port must go to a host file");
        };
        let l2 = l2_cmd(cmd, &l1)?.argv();
        std::fs::write(dir.join("l2-cmdline.txt"), format!("{}\n", shell_join(&l2)))?;
        let listener = QmpListener::new()?;
        let run = NestedRun {
            guest_image: cmd.image.clone(),
            qmp_socket: listener.path.clone(),
            serial: serial.clone(),
            console: dir.join("console.txt"),
            l2_argv: l2,
        };
        let mut argv: Vec<String> = Vec::new();
        if let Some(nice) = find_program("nice") {
            argv.extend([nice.to_string_lossy().into_owned(), "-n".into(), L1_NICE.to_string()]);
        }
        argv.extend(nested::command(&l1, &run)?);
        start_here(&argv, &listener, dir, limit, process, on_event)
    }

    fn clock(&self) -> Box<dyn EventClock> {
        Box::new(L1Clock::default())
    }

    fn live_stderr(&self, dir: &Path) -> String {
        nested::parse_console(&std::fs::read(dir.join("console.txt")).unwrap_or_default()).l2_output
    }

    fn finish(&self, dir: &Path, end: &mut Ending) {
        finish(dir, end)
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
    shift_us: Option<i128>,
}

impl EventClock for L1Clock {
    /// The first event also leaves a note with the shift in the transcript.
    fn correct(&mut self, q: &mut Qmp, mut ev: QmpEvent) -> QmpEvent {
        if let Some(ts) = ev.timestamp_us {
            let shift = *self.shift_us.get_or_insert_with(|| {
                let s = unix_micros(SystemTime::now()) - ts;
                q.note(&format!(
                    "nested: QMP timestamps are L1's clock; event times in the results are timestamp {:+.3} ms \
                     (host receive time of this {} minus its timestamp)",
                    s as f64 / 1000.0,
                    ev.event
                ));
                s
            });
            ev.timestamp_us = Some(ts + shift);
        }
        ev
    }
}

/// After a nested run: L2's exit status and stderr, L1 failures (see the
/// module docs).
fn finish(dir: &Path, end: &mut Ending) {
    let console = std::fs::read(dir.join("console.txt")).unwrap_or_default();
    let report = nested::parse_console(&console);
    let _ = std::fs::rename(dir.join("stderr.txt"), dir.join("l1-stderr.txt"));
    let _ = std::fs::write(dir.join("stderr.txt"), &report.l2_output);
    end.stderr = report.l2_output.clone();

    let l1_ended = end.exit.is_some() && !end.killed_by_us;
    let mut problem: Option<String> = None;
    match report.l2_exit {
        // L1 exits 0 whatever L2 did: the run's exit status is L2's.
        Some(code) if !end.killed_by_us => end.exit = Some(ExitStatus::from_raw((code & 0xff) << 8)),
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
    if let Some(e) = &mut end.error {
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
        end.error = Some(format!("nested: {p} (see console.txt)"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn board() -> Board {
        crate::config::parse_board(
            Path::new("boards/hv.toml"),
            "name = \"hv\"\ndescription = \"d\"\narch = \"x86_64\"\nbinary = \"qemu-system-x86_64\"\n\
             machine = \"pc\"\naccel = \"kvm\"\ncpu = \"qemu64,hv-crash\"\nmemory = \"32M\"\n\
             package = \"qemu-system-x86\"\nkind = \"nested-hyperv\"\n\
             args = [\"-device\", \"isa-debug-exit,iobase=0xf4,iosize=0x04\"]\n",
            Path::new("/w"),
        )
        .unwrap()
    }

    fn l1() -> L1Env {
        L1Env {
            qemu: "/usr/bin/qemu-system-x86_64".into(),
            kernel: "/c/kernel/vmlinuz".into(),
            initramfs: "/c/l1/k/initramfs.cpio".into(),
            key: "0".into(),
            kernel_package: String::new(),
            busybox_package: String::new(),
            firmware: vec!["/usr/share/qemu/qboot.rom".into(), "/usr/share/seabios/bios-256k.bin".into()],
            qboot: "/usr/share/qemu/qboot.rom".into(),
            cache_hit: true,
        }
    }

    #[test]
    fn l2_runs_the_runs_command_with_l1_paths() {
        let b = board();
        let host = QemuCmd::new(&b, Path::new("/host/a,b/pvagent"))
            .qmp(Chardev::Socket("/tmp/q.sock".into()))
            .serial_file(Path::new("/runs/x/serial.bin"))
            .args(&["-action", "panic=pause"])
            .script(Some("hv.crash:1,2,3,4,5"), Delivery::FwCfg);
        let a = l2_cmd(&host, &l1()).unwrap().argv();
        let s = shell_join(&a);
        assert!(s.starts_with("/usr/bin/qemu-system-x86_64 -nodefaults -no-user-config -display none -S "), "{s}");
        for want in [
            "-machine pc -accel kvm -m 32M -cpu qemu64,hv-crash -bios /usr/share/qemu/qboot.rom",
            "-chardev serial,id=qmp,path=/dev/ttyS1 -mon chardev=qmp,mode=control",
            "-chardev serial,id=serial0,path=/dev/ttyS2 -serial chardev:serial0",
            "-device isa-debug-exit,iobase=0xf4,iosize=0x04 -action panic=pause -kernel /run/l2/kernel",
            "-fw_cfg name=opt/pvagent/script,string=hv.crash:1,,2,,3,,4,,5",
        ] {
            assert!(s.contains(want), "{want}: {s}");
        }
        let mut other = host.clone();
        other.firmware = Some("/nonexistent.rom".into());
        assert!(l2_cmd(&other, &l1()).is_err());
        other.firmware = Some("/usr/share/seabios/bios-256k.bin".into());
        assert!(l2_cmd(&other, &l1()).unwrap().argv().windows(2).any(|w| w[1] == "/usr/share/seabios/bios-256k.bin"));
        let file = host.clone().script(Some("x"), Delivery::FwCfgFile("/runs/x/script.bin".into()));
        assert!(l2_cmd(&file, &l1()).is_err());
    }

    #[test]
    fn l1_clock_shifts_by_the_first_event() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut q = Qmp::new(a, None);
        let ev = |t: Option<i128>| QmpEvent { event: "X".into(), data: serde_json::Value::Null, timestamp_us: t };
        let now = unix_micros(SystemTime::now());
        // L1's clock is 1.2 s ahead.
        let mut c = L1Clock::default();
        let first = c.correct(&mut q, ev(Some(now + 1_200_000))).timestamp_us.unwrap();
        assert!((first - now).abs() < 100_000, "{}", first - now);
        let later = c.correct(&mut q, ev(Some(now + 1_500_000))).timestamp_us.unwrap();
        assert_eq!(later - first, 300_000);
        assert_eq!(c.correct(&mut q, ev(None)).timestamp_us, None);
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
        let mut end = Ending { exit: Some(ExitStatus::from_raw(0)), ..Default::default() };
        finish(d.path(), &mut end);
        assert_eq!(end.exit.and_then(|s| s.code()), Some(1));
        assert_eq!(end.stderr, "qemu-system-x86_64: warning: w\n");
        assert_eq!(std::fs::read_to_string(d.path().join("l1-stderr.txt")).unwrap(), "l1 says\n");
        assert!(end.error.is_none());

        std::fs::write(d.path().join("console.txt"), "pvagent-l1: init\npvagent-l1: error: insmod kvm failed\n")
            .unwrap();
        let mut end = Ending { exit: Some(ExitStatus::from_raw(0)), ..Default::default() };
        finish(d.path(), &mut end);
        assert_eq!(end.error.as_deref(), Some("nested: L1 failed: insmod kvm failed (see console.txt)"));
    }
}
