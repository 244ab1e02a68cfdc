//! One run's domain between libvirt and the runner.
//!
//! The runner speaks QMP to QEMU. Under libvirt QEMU's monitor is libvirt's,
//! so the bridge gives the runner a QMP connection of its own (one end of a
//! socket pair) and serves it from libvirt:
//!
//! * events: what `virsh qemu-monitor-event --domain D --loop` prints (the
//!   QMP events libvirt passes through, with QEMU's own timestamps), sent on
//!   as QMP events;
//! * `qmp_capabilities`: answered here; `cont`: `virsh resume` (the domain
//!   was created paused, `virsh create --paused`, the analogue of `-S`);
//!   `quit`: `virsh destroy`; every other command (a row's
//!   `qmp_before_cont`, `query-status`) through `virsh qemu-monitor-command`;
//! * EOF when the domain is gone (libvirt stopped it, or the bridge
//!   destroyed it).
//!
//! Next to it the bridge records libvirt's own events (`virsh event --domain
//! D --all --loop --timestamp`: lifecycle, watchdog, reboot, …) and the
//! domain's state (`virsh domstate --reason`) when the runner asks for
//! QEMU's (`query-status`) or quits, or `gone` when the domain went away by
//! itself. libvirt's events count from the `virsh resume` on (the first
//! `resumed:unpaused`, its answer, is recorded but not judged, as the
//! runner's RESUME) until that state is taken.
//!
//! Neither watcher says when it has registered with libvirt, and an event
//! that comes before that is lost; so before the domain is resumed the
//! bridge makes one event of each kind and waits for it: a title change
//! (`virsh desc --live --title`: libvirt's `metadata-change`, registered
//! after the lifecycle and watchdog events by `virsh event --all`) and a
//! 4 KiB `dump-guest-memory` to /dev/null (QEMU's `DUMP_COMPLETED`, which is
//! not passed on). Both are recorded, neither is judged.

use std::io::{BufRead, BufReader, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{ChildStdout, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde_json::{Value, json};

use super::events::{self, EventLine, GONE};
use super::{VIRSH_TIMEOUT, is_no_domain, virsh};
use crate::qemu::QemuProcess;
use crate::util::unix_micros;

/// How long after libvirt's `stopped` event the QMP watcher may still be
/// printing what QEMU said last (both come from libvirtd, on two
/// connections).
const GONE_GRACE: Duration = Duration::from_millis(300);
/// How long the bridge waits for libvirt's `stopped` event after its own
/// `virsh destroy` returned.
const DESTROY_GRACE: Duration = Duration::from_secs(5);

/// A libvirt event as a run saw it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LibvirtEvent {
    /// The short name (`crashed:panicked`, see [`events`]).
    pub name: String,
    /// The line virsh printed.
    pub text: String,
    /// ms from the run's start (`virsh create`) to when the host read it.
    pub arrived_ms: f64,
    /// Between the `virsh resume` and the final state, and not the
    /// `resumed:unpaused` answering that resume.
    pub judged: bool,
}

/// A core file libvirt wrote for the domain.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CoreDump {
    pub path: PathBuf,
    pub bytes: u64,
    /// Starts like an ELF core file (`e_type` ET_CORE).
    pub elf_core: bool,
}

/// What libvirt said about one run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Record {
    pub domain: String,
    /// libvirt's version (`virsh version`).
    pub version: Option<String>,
    pub events: Vec<LibvirtEvent>,
    /// `virsh domstate --reason` as `state:reason`, or [`GONE`].
    pub state: Option<String>,
    /// Core files libvirt wrote for the domain (removed after the run).
    pub core_dumps: Vec<CoreDump>,
    /// What `virsh console` showed, when the row attached it.
    pub virsh_console: Option<String>,
}

impl Record {
    /// The judged events' names.
    pub fn judged(&self) -> Vec<&str> {
        self.events.iter().filter(|e| e.judged).map(|e| e.name.as_str()).collect()
    }
}

/// What the bridge and the launcher share.
#[derive(Default)]
pub struct Shared {
    pub record: Mutex<Record>,
    /// The domain no longer exists.
    pub gone: AtomicBool,
    /// Lines virsh wrote on stderr, and commands that failed (`stderr.txt`).
    pub errors: Mutex<Vec<String>>,
    /// The domain's QEMU (libvirt's pid file), 0: unknown.
    pub qemu_pid: std::sync::atomic::AtomicI32,
    /// QEMU's CPU time at its last sample (it is libvirtd's child: its
    /// final counters are not ours to read once it has exited).
    pub cpu: Mutex<Option<Duration>>,
}

impl Shared {
    /// Reads QEMU's CPU time now (kept when QEMU is gone).
    pub fn sample_cpu(&self) {
        let pid = self.qemu_pid.load(Ordering::Relaxed);
        if pid <= 0 {
            return;
        }
        if let Some(t) =
            std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().and_then(|s| crate::qemu::cpu_of_stat(&s))
        {
            *self.cpu.lock().unwrap_or_else(|e| e.into_inner()) = Some(t);
        }
    }

    pub fn note_error(&self, e: impl Into<String>) {
        self.errors.lock().unwrap_or_else(|e| e.into_inner()).push(e.into());
    }
}

/// What reaches the bridge.
enum Input {
    /// A line of `virsh event`, with when it was read.
    Libvirt(String, SystemTime),
    /// A line of `virsh qemu-monitor-event`.
    Qmp(String),
    /// A watcher ended (`virsh` exits when libvirtd goes away).
    WatcherEnded(&'static str),
    /// A line from the runner.
    Command(String),
    /// The runner closed its end.
    RunnerGone,
}

/// One domain's bridge: the watchers, the runner's socket, the record.
pub struct Bridge {
    name: String,
    spawned_at: SystemTime,
    shared: Arc<Shared>,
    rx: Receiver<Input>,
    tx: Sender<Input>,
    watchers: Vec<QemuProcess>,
    /// Raw watcher output, for the artifacts.
    libvirt_log: Option<std::fs::File>,
    qmp_log: Option<std::fs::File>,
    runner: Option<UnixStream>,
    resumed: bool,
    judging: bool,
    answer_dropped: bool,
    libvirt_probed: bool,
    qmp_probed: bool,
    gone_at: Option<Instant>,
}

/// Reads `out` line by line into `tx` as `wrap(line)`; says when it ends.
fn pump(out: ChildStdout, tx: Sender<Input>, what: &'static str, wrap: fn(String) -> Input) {
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(wrap(line)).is_err() {
                return;
            }
        }
        let _ = tx.send(Input::WatcherEnded(what));
    });
}

impl Bridge {
    /// Attaches both watchers to the (paused) domain `name`; their raw
    /// output goes to `virsh-event.txt` and `qemu-monitor-event.txt` in
    /// `dir`, their stderr to `*.stderr` next to them.
    pub fn attach(name: &str, dir: &Path, spawned_at: SystemTime, shared: Arc<Shared>) -> Result<Bridge> {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut b = Bridge {
            name: name.to_string(),
            spawned_at,
            shared,
            rx,
            tx: tx.clone(),
            watchers: Vec::new(),
            libvirt_log: std::fs::File::create(dir.join("virsh-event.txt")).ok(),
            qmp_log: std::fs::File::create(dir.join("qemu-monitor-event.txt")).ok(),
            runner: None,
            resumed: false,
            judging: false,
            answer_dropped: false,
            libvirt_probed: false,
            qmp_probed: false,
            gone_at: None,
        };
        let watch = |args: &[&str], err: &str| -> Result<QemuProcess> {
            let mut argv: Vec<String> = vec!["virsh".into(), "-c".into(), super::URI.into()];
            argv.extend(args.iter().map(|s| s.to_string()));
            let stderr = std::fs::File::create(dir.join(err))?;
            QemuProcess::spawn_piped(&argv, Stdio::from(stderr), &[("LC_ALL", "C")])
        };
        let mut lv = watch(&["event", "--domain", name, "--all", "--loop", "--timestamp"], "virsh-event.stderr")?;
        pump(lv.take_stdout().context("virsh event's stdout")?, tx.clone(), "virsh event", |l| {
            Input::Libvirt(l, SystemTime::now())
        });
        b.watchers.push(lv);
        let mut qm = watch(&["qemu-monitor-event", "--domain", name, "--loop"], "qemu-monitor-event.stderr")?;
        pump(
            qm.take_stdout().context("virsh qemu-monitor-event's stdout")?,
            tx,
            "virsh qemu-monitor-event",
            Input::Qmp,
        );
        b.watchers.push(qm);
        Ok(b)
    }

    fn ms(&self, t: SystemTime) -> f64 {
        (unix_micros(t) - unix_micros(self.spawned_at)) as f64 / 1000.0
    }

    /// Makes an event of each watcher's kind until each has printed one
    /// (see the module docs), before `deadline`.
    pub fn probe(&mut self, deadline: Instant) -> Result<()> {
        let mut round = 0;
        while !(self.libvirt_probed && self.qmp_probed) {
            if Instant::now() >= deadline {
                bail!(
                    "libvirt's event watchers did not report the probe events in time (lifecycle watcher {}, \
                     QMP watcher {})",
                    if self.libvirt_probed { "ready" } else { "silent" },
                    if self.qmp_probed { "ready" } else { "silent" }
                );
            }
            round += 1;
            if !self.libvirt_probed {
                virsh(&["desc", &self.name, "--live", "--title", &format!("pvagent probe {round}")], VIRSH_TIMEOUT)
                    .context("probing the lifecycle watcher")?;
            }
            if !self.qmp_probed {
                let dump = json!({"execute": "dump-guest-memory", "arguments": {
                    "paging": false, "protocol": "file:/dev/null", "begin": 0, "length": 4096}});
                virsh(&["qemu-monitor-command", &self.name, &dump.to_string()], VIRSH_TIMEOUT)
                    .context("probing the QMP watcher")?;
            }
            let until = (Instant::now() + Duration::from_millis(250)).min(deadline);
            while !(self.libvirt_probed && self.qmp_probed) {
                match self.rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
                    Ok(input) => self.take(input),
                    Err(_) => break,
                }
            }
        }
        Ok(())
    }

    /// Serves the runner on `runner` from a thread of its own, greeting it
    /// with `greeting`, until the domain is gone or the runner closes its
    /// end.
    pub fn serve(mut self, runner: UnixStream, greeting: Value) -> Result<std::thread::JoinHandle<()>> {
        let reader = runner.try_clone()?;
        let tx = self.tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(reader).lines() {
                let Ok(line) = line else { break };
                if tx.send(Input::Command(line)).is_err() {
                    return;
                }
            }
            let _ = tx.send(Input::RunnerGone);
        });
        self.runner = Some(runner);
        self.send(&greeting);
        Ok(std::thread::Builder::new().name(format!("bridge {}", self.name)).spawn(move || self.run())?)
    }

    fn run(mut self) {
        loop {
            let wait = match self.gone_at {
                Some(t) => t.saturating_duration_since(Instant::now()),
                None => Duration::from_secs(3600),
            };
            match self.rx.recv_timeout(wait) {
                Ok(Input::RunnerGone) => break,
                Ok(input) => self.take(input),
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if self.gone_at.is_some_and(|t| Instant::now() >= t) {
                break;
            }
        }
        // Whatever is still queued, then EOF for the runner.
        while let Ok(input) = self.rx.try_recv() {
            if !matches!(input, Input::Command(_)) {
                self.take(input);
            }
        }
        if let Some(r) = &self.runner {
            let _ = r.shutdown(Shutdown::Both);
        }
        self.stop_watchers();
    }

    /// Ends the watchers (they never end by themselves while libvirtd
    /// runs): SIGINT, on which virsh deregisters its callbacks, then SIGKILL
    /// for one that is still there after a moment.
    pub fn stop_watchers(&mut self) {
        for w in &self.watchers {
            // SAFETY: kill(2) on our own unreaped child.
            unsafe {
                libc::kill(w.pid(), libc::SIGINT);
            }
        }
        let deadline = Instant::now() + Duration::from_millis(500);
        for mut w in self.watchers.drain(..) {
            if !matches!(w.wait_until(deadline), Ok(Some(_))) {
                let _ = w.kill();
            }
        }
    }

    fn take(&mut self, input: Input) {
        self.shared.sample_cpu();
        match input {
            Input::Libvirt(line, at) => self.libvirt_line(&line, at),
            Input::Qmp(line) => self.qmp_line(&line),
            Input::WatcherEnded(what) => {
                self.shared.note_error(format!("{what} ended"));
                if !self.shared.gone.load(Ordering::SeqCst) && !self.exists() {
                    self.set_gone();
                }
            }
            Input::Command(line) => self.command(&line),
            Input::RunnerGone => {}
        }
    }

    fn libvirt_line(&mut self, line: &str, at: SystemTime) {
        if let Some(f) = &mut self.libvirt_log {
            let _ = writeln!(f, "{line}");
        }
        let Some(ev) = events::parse_line(line) else {
            // A continuation line (tunable, job-completed): part of the last event's text.
            let mut r = self.shared.record.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(last) = r.events.last_mut() {
                last.text.push('\n');
                last.text.push_str(line);
            }
            return;
        };
        let name = ev.name();
        if name == "metadata-change" && !self.resumed {
            self.libvirt_probed = true;
        }
        let mut judged = self.judging;
        if judged && !self.answer_dropped && name == "resumed:unpaused" {
            self.answer_dropped = true;
            judged = false;
        }
        let stopped = name.starts_with("stopped:");
        let e = LibvirtEvent { name, text: line.to_string(), arrived_ms: self.ms(at), judged };
        self.shared.record.lock().unwrap_or_else(|e| e.into_inner()).events.push(e);
        if stopped {
            self.set_gone();
        }
    }

    fn set_gone(&mut self) {
        self.shared.gone.store(true, Ordering::SeqCst);
        self.judging = false;
        let mut r = self.shared.record.lock().unwrap_or_else(|e| e.into_inner());
        r.state.get_or_insert_with(|| GONE.to_string());
        drop(r);
        self.gone_at.get_or_insert(Instant::now() + GONE_GRACE);
    }

    fn qmp_line(&mut self, line: &str) {
        if let Some(f) = &mut self.qmp_log {
            let _ = writeln!(f, "{line}");
        }
        let Some(ev) = events::parse_line(line).as_ref().and_then(EventLine::qmp_event) else {
            return;
        };
        if ev.event == "DUMP_COMPLETED" && !self.resumed {
            self.qmp_probed = true;
            return;
        }
        let mut msg = json!({ "event": ev.event });
        if !ev.data.is_null() {
            msg["data"] = ev.data;
        }
        if let Some(us) = ev.timestamp_us {
            msg["timestamp"] =
                json!({ "seconds": us.div_euclid(1_000_000) as i64, "microseconds": us.rem_euclid(1_000_000) as i64 });
        }
        self.send(&msg);
    }

    fn send(&mut self, msg: &Value) {
        if let Some(r) = &mut self.runner {
            let _ = r.write_all(format!("{msg}\r\n").as_bytes());
        }
    }

    /// Does the domain still exist?
    fn exists(&self) -> bool {
        match virsh(&["domstate", &self.name], VIRSH_TIMEOUT) {
            Ok(_) => true,
            Err(e) => !is_no_domain(&e),
        }
    }

    /// Takes the domain's final state (once), and ends the judging of
    /// libvirt's events.
    fn take_state(&mut self) {
        self.judging = false;
        if self.shared.record.lock().unwrap_or_else(|e| e.into_inner()).state.is_some() {
            return;
        }
        let state = match virsh(&["domstate", "--reason", &self.name], VIRSH_TIMEOUT) {
            Ok(out) => events::parse_domstate(&out).unwrap_or_else(|| format!("unparsed:{}", out.trim())),
            Err(e) if is_no_domain(&e) => GONE.to_string(),
            Err(e) => {
                self.shared.note_error(format!("{e:#}"));
                format!("unknown ({e:#})")
            }
        };
        self.shared.record.lock().unwrap_or_else(|e| e.into_inner()).state = Some(state);
    }

    fn command(&mut self, line: &str) {
        let Ok(cmd) = serde_json::from_str::<Value>(line) else { return };
        let id = cmd.get("id").cloned().unwrap_or(Value::Null);
        let execute = cmd.get("execute").and_then(Value::as_str).unwrap_or_default().to_string();
        let answer = match execute.as_str() {
            "qmp_capabilities" => Ok(json!({})),
            "cont" => {
                self.resumed = true;
                self.judging = true;
                virsh(&["resume", &self.name], VIRSH_TIMEOUT).map(|_| json!({}))
            }
            "quit" => {
                self.take_state();
                self.send(&json!({ "return": {}, "id": id }));
                self.destroy();
                return;
            }
            _ => {
                if execute == "query-status" {
                    self.take_state();
                }
                let mut c = json!({ "execute": execute });
                if let Some(a) = cmd.get("arguments") {
                    c["arguments"] = a.clone();
                }
                self.passthrough(&c)
            }
        };
        let reply = match answer {
            Ok(v) => json!({ "return": v, "id": id }),
            Err(e) => {
                self.shared.note_error(format!("{e:#}"));
                json!({ "error": { "class": "GenericError", "desc": format!("{e:#}") }, "id": id })
            }
        };
        self.send(&reply);
    }

    /// A QMP command through `virsh qemu-monitor-command`: its `return`.
    fn passthrough(&self, cmd: &Value) -> Result<Value> {
        let out = virsh(&["qemu-monitor-command", &self.name, &cmd.to_string()], VIRSH_TIMEOUT)?;
        let v: Value = serde_json::from_str(out.trim()).with_context(|| format!("virsh printed {:?}", out.trim()))?;
        if let Some(e) = v.get("error") {
            bail!(
                "{}: {}",
                e.get("class").and_then(Value::as_str).unwrap_or("GenericError"),
                e.get("desc").and_then(Value::as_str).unwrap_or("(no description)")
            );
        }
        Ok(v.get("return").cloned().unwrap_or(Value::Null))
    }

    /// `virsh destroy` (on a thread of its own: it takes about 1.5 s, and
    /// the events keep coming meanwhile), then libvirt's `stopped` event (or
    /// [`DESTROY_GRACE`] after it returned).
    fn destroy(&mut self) {
        self.shared.sample_cpu();
        let name = self.name.clone();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = done_tx.send(super::destroy(&name));
        });
        let give_up = Instant::now() + VIRSH_TIMEOUT + DESTROY_GRACE;
        let mut returned: Option<Instant> = None;
        while !self.shared.gone.load(Ordering::SeqCst) {
            let now = Instant::now();
            if returned.is_none()
                && let Ok(r) = done_rx.try_recv()
            {
                if let Err(e) = r {
                    self.shared.note_error(format!("{e:#}"));
                }
                returned = Some(now);
            }
            if returned.is_some_and(|t| now >= t + DESTROY_GRACE) || now >= give_up {
                if !self.exists() {
                    self.set_gone();
                }
                break;
            }
            match self.rx.recv_timeout(Duration::from_millis(50)) {
                Ok(Input::Command(_)) | Ok(Input::RunnerGone) | Err(RecvTimeoutError::Timeout) => {}
                Ok(input) => self.take(input),
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        self.gone_at.get_or_insert(Instant::now());
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.stop_watchers();
    }
}
