//! How a board's QEMU is launched: one [`Launcher`] per board kind, behind
//! one interface, so that the runner never knows which kind it runs.
//!
//! * [`Local`]: the board's QEMU runs on this host (`kind = "qemu"`).
//! * [`Nested`]: the board's QEMU runs under KVM inside a small Linux (L1)
//!   that the host QEMU runs under TCG (`kind = "nested-hyperv"`).
//! * [`Libvirt`]: libvirt runs the board's QEMU for a transient domain of
//!   the harness (`kind = "libvirt"`).
//!
//! A new kind is a new module here implementing [`Launcher`], one arm in
//! [`for_run`], and its `kind` value in the board parser.
//!
//! The runner asks the launcher for: whether the board can run on this host
//! ([`Launcher::skip_reason`]), a concurrency slot ([`Launcher::slot`]), the
//! allowance on top of a row's timeout ([`Launcher::boot_allowance`]), the
//! guest process and its negotiated QMP session ([`Launcher::start`], from
//! the host-side [`QemuCmd`] of the run), the clock that puts QMP timestamps
//! on the host's ([`Launcher::clock`]), QEMU's stderr while it runs
//! ([`Launcher::live_stderr`]), the host actions of a row
//! ([`Launcher::host_action`]), whether its own checks still wait
//! ([`Launcher::waiting`]) and, afterwards, the exit status and the
//! artifacts ([`Launcher::finish`]).

mod host;
mod libvirt;
mod local;
mod nested;

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Result, bail};

pub use libvirt::{Libvirt, LibvirtRun};
use local::Local;
use nested::Nested;

use crate::config::{Board, BoardKind, LibvirtChecks};
use crate::qemu::{self, QemuProcess, QmpListener, Session, Start};
use crate::qemu_cmd::QemuCmd;
use crate::qmp::{Qmp, QmpEvent};
use crate::util::shell_join;

/// The launcher of `board`'s kind, for probes and set-up (no run).
pub fn for_board(board: &Board) -> Box<dyn Launcher + '_> {
    for_run(board, None)
}

/// The launcher of one run on `board` (`libvirt`: what a run on a libvirt
/// board asks of its domain; `None` elsewhere, or an empty domain).
pub fn for_run<'a>(board: &'a Board, libvirt: Option<&LibvirtRun>) -> Box<dyn Launcher + 'a> {
    match board.launch.kind {
        BoardKind::Qemu => Box::new(Local::new(board)),
        BoardKind::NestedHyperv => Box::new(Nested::new(board)),
        BoardKind::Libvirt => Box::new(Libvirt::new(board, libvirt.cloned().unwrap_or_default())),
    }
}

/// How a run's guest process ended: its exit status when this host saw it
/// (`None`: a libvirt domain, whose QEMU is libvirtd's child).
#[derive(Clone, Copy, Debug)]
pub struct Ended(pub Option<ExitStatus>);

/// What the runner holds of a run's guest while it runs: a QEMU (or L1)
/// process of ours, or a libvirt domain.
pub trait Guest {
    /// When it was started (the QEMU spawn, the `virsh create`).
    fn spawned_at(&self) -> SystemTime;
    /// Waits until it has ended, or `deadline` (`None`: still running).
    fn wait_until(&mut self, deadline: Instant) -> Result<Option<Ended>>;
    /// Ends it (SIGKILL, `virsh destroy`).
    fn kill(&mut self) -> Result<Ended>;
    /// Its CPU time (user + system), once known.
    fn cpu_time(&self) -> Option<Duration>;
}

impl Guest for QemuProcess {
    fn spawned_at(&self) -> SystemTime {
        self.spawned_at
    }

    fn wait_until(&mut self, deadline: Instant) -> Result<Option<Ended>> {
        Ok(QemuProcess::wait_until(self, deadline)?.map(|st| Ended(Some(st))))
    }

    fn kill(&mut self) -> Result<Ended> {
        Ok(Ended(Some(QemuProcess::kill(self)?)))
    }

    fn cpu_time(&self) -> Option<Duration> {
        QemuProcess::cpu_time(self)
    }
}

/// How a run ended as the runner saw it; [`Launcher::finish`] may correct it.
#[derive(Debug, Default)]
pub struct Ending {
    /// The process's exit status.
    pub exit: Option<ExitStatus>,
    /// We killed it (it did not exit).
    pub killed_by_us: bool,
    /// Why the run failed, if it did.
    pub error: Option<String>,
    /// QEMU's stderr (`stderr.txt`).
    pub stderr: String,
    /// What libvirt said (libvirt boards).
    pub libvirt: Option<crate::libvirt::bridge::Record>,
}

/// Maps the QMP timestamps of a run to the host's clock.
pub trait EventClock {
    /// The event with its timestamp on the host's clock (`q`: for a note in
    /// the transcript).
    fn correct(&mut self, q: &mut Qmp, ev: QmpEvent) -> QmpEvent;
}

/// QEMU runs on this host: its timestamps are the host's.
pub struct HostClock;

impl EventClock for HostClock {
    fn correct(&mut self, _: &mut Qmp, ev: QmpEvent) -> QmpEvent {
        ev
    }
}

/// One way of launching a board's QEMU.
pub trait Launcher {
    /// The board.
    fn board(&self) -> &Board;

    /// Why the board cannot run on this host (`None`: it can): its
    /// `requires` and `instead_of`. Cheap after the first call; never
    /// downloads.
    fn skip_reason(&self) -> Option<String> {
        host::requirements_problem(self.board())
    }

    /// Prepares what every run needs (`cargo xtask setup`), once per
    /// process: a line to show (`Ok(None)`: nothing to say), or why the
    /// board's rows will fail.
    fn prepare(&self) -> std::result::Result<Option<String>, String> {
        Ok(None)
    }

    /// Waits until one more run may start (held for the run). `None`: no
    /// limit of its own.
    fn slot(&self) -> Option<Slot> {
        None
    }

    /// How much longer than the row's `timeout` a run may take.
    fn boot_allowance(&self) -> Duration {
        Duration::ZERO
    }

    /// Starts the guest for `cmd` (the run's QEMU as on this host; its
    /// serial port and files are in `dir`) into `process`, and returns its
    /// negotiated QMP session; all within `limit` of the start. Writes
    /// `cmdline.txt`, `stderr.txt` and the QMP transcript `qmp.jsonl` into
    /// `dir`.
    fn start(
        &self,
        cmd: &QemuCmd,
        dir: &Path,
        limit: Duration,
        process: &mut Option<Box<dyn Guest>>,
        on_event: &mut dyn FnMut(&mut Qmp, QmpEvent),
    ) -> Result<Session>;

    /// Runs a row's host action `virsh <args[0]> <domain> <args[1..]>`;
    /// its output.
    fn host_action(&self, args: &[String]) -> Result<String> {
        bail!("`virsh {}` needs a libvirt board (board {} is not one)", args.join(" "), self.board().name)
    }

    /// Whether the launcher's own checks (a libvirt row's events) still wait
    /// for something that may yet come.
    fn waiting(&self, _checks: Option<&LibvirtChecks>) -> bool {
        false
    }

    /// The clock of the run's QMP timestamps.
    fn clock(&self) -> Box<dyn EventClock> {
        Box::new(HostClock)
    }

    /// QEMU's stderr so far.
    fn live_stderr(&self, dir: &Path) -> String {
        std::fs::read_to_string(dir.join("stderr.txt")).unwrap_or_default()
    }

    /// After the run: the exit status, the stderr and the artifacts of this
    /// kind, and what went wrong in the launch itself.
    fn finish(&self, _dir: &Path, _end: &mut Ending) {}
}

/// Spawns `argv` on this host and starts its session: `cmdline.txt`,
/// `stderr.txt`, `qmp.jsonl` in `dir`.
fn start_here(
    argv: &[String],
    listener: &QmpListener,
    dir: &Path,
    limit: Duration,
    process: &mut Option<Box<dyn Guest>>,
    on_event: &mut dyn FnMut(&mut Qmp, QmpEvent),
) -> Result<Session> {
    std::fs::write(dir.join("cmdline.txt"), format!("{}\n", shell_join(argv)))?;
    let stderr_file = dir.join("stderr.txt");
    let stderr = std::fs::File::create(&stderr_file)?;
    let start = Start {
        argv,
        listener,
        stderr: Stdio::from(stderr),
        limit,
        transcript: Some(&dir.join("qmp.jsonl")),
        stderr_file: Some(&stderr_file),
    };
    // The process is the caller's even when the start fails (it reaps it).
    let mut spawned: Option<QemuProcess> = None;
    let session = qemu::start_session(start, &mut spawned, on_event);
    *process = spawned.map(|p| Box::new(p) as Box<dyn Guest>);
    session
}

/// Runs of one kind under way at once: at most a given number.
pub struct Slots {
    taken: Mutex<usize>,
    freed: Condvar,
}

impl Slots {
    pub const fn new() -> Slots {
        Slots { taken: Mutex::new(0), freed: Condvar::new() }
    }

    /// Waits until fewer than `max` are taken, then takes one.
    pub fn acquire(&'static self, max: usize) -> Slot {
        let mut n = self.taken.lock().unwrap_or_else(|e| e.into_inner());
        while *n >= max {
            n = self.freed.wait(n).unwrap_or_else(|e| e.into_inner());
        }
        *n += 1;
        Slot(self)
    }
}

impl Default for Slots {
    fn default() -> Self {
        Slots::new()
    }
}

/// One taken [`Slots`] place, given back on drop.
pub struct Slot(&'static Slots);

impl Drop for Slot {
    fn drop(&mut self) {
        *self.0.taken.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        self.0.freed.notify_one();
    }
}

/// `cargo xtask setup` for `boards`: says which boards cannot run here (their
/// rows will be SKIPPED) and prepares the others' launchers, so that the
/// first row does not pay for it. Never fails: a board that cannot run has
/// its rows SKIPPED or FAILED with the reason.
pub fn setup(boards: &[&Board]) {
    for b in boards {
        let launcher = for_board(b);
        if let Some(why) = launcher.skip_reason() {
            eprintln!("setup: board {}: rows SKIPPED here: {why}", b.name);
            continue;
        }
        match launcher.prepare() {
            Ok(Some(note)) => eprintln!("setup: board {}: {note}", b.name),
            Ok(None) => {}
            Err(e) => eprintln!("setup: warning: board {}: {e}\nsetup: its rows will FAIL", b.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static TEST_SLOTS: Slots = Slots::new();

    #[test]
    fn slots_limit_the_holders() {
        let a = TEST_SLOTS.acquire(2);
        let b = TEST_SLOTS.acquire(2);
        let waiter = std::thread::spawn(|| {
            let _c = TEST_SLOTS.acquire(2);
        });
        std::thread::sleep(Duration::from_millis(50));
        assert!(!waiter.is_finished(), "a third holder got in");
        drop(a);
        waiter.join().unwrap();
        drop(b);
        assert_eq!(*TEST_SLOTS.taken.lock().unwrap(), 0);
    }
}
