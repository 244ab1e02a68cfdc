//! Libvirt boards (`kind = "libvirt"`): every run is a transient libvirt
//! domain of the harness, and libvirt runs QEMU.
//!
//! A run
//!
//! * makes sure libvirt answers ([`daemons::ensure`]: started by the
//!   harness when nothing does);
//! * writes the domain XML (`domain.xml`, from [`crate::libvirt::xml`]: the
//!   board's machine, the agent, the script, the row's devices and actions,
//!   the console on a pty logged to `serial.bin`) and creates the domain
//!   paused (`virsh create --paused`), named `pvagent-<pid>-<n>-<board>-<row>`;
//! * attaches both event watchers and makes sure they listen
//!   ([`Bridge::probe`]), attaches `virsh console` when the row asks
//!   (`libvirt.virsh_console`), then hands the runner a QMP session served
//!   by the [`Bridge`], whose `cont` is `virsh resume`;
//! * gets [`BOOT_ALLOWANCE`] on top of the row's `timeout` to create the
//!   domain; the `timeout` counts from the domain ready to resume;
//! * afterwards destroys the domain if it still exists, and keeps libvirt's
//!   domain log (`libvirt-domain.log`, also `stderr.txt`: QEMU's stderr is in
//!   it), both watchers' output (`virsh-event.txt`,
//!   `qemu-monitor-event.txt`), what `virsh console` showed
//!   (`virsh-console.txt`), the core files' names and sizes (`libvirt.json`,
//!   the files themselves are removed) and libvirt's record for the judge.
//!
//! The QMP timestamps are QEMU's (libvirt passes them on), on the host's
//! clock. There is no exit status: libvirt runs QEMU with `-no-shutdown` and
//! ends it with SIGTERM.

use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::json;

use super::{Ended, Ending, Guest, Launcher, Slot, Slots, host};
use crate::clock::Clock;
use crate::config::{Board, Boot, LibvirtChecks};
use crate::libvirt::bridge::{Bridge, CoreDump, Shared};
use crate::libvirt::xml::{self, Domain, ScriptIn, Settings};
use crate::libvirt::{self, DOMAIN_LOG_DIR, MARKER, VIRSH_TIMEOUT, daemons, virsh};
use crate::matcher::{self, Progress};
use crate::qemu::{self, Session};
use crate::qemu_cmd::{Chardev, Delivery, QemuCmd, Script};
use crate::qmp::{Qmp, QmpEvent, Transcript};
use crate::util::{find_program, shell_join};

/// Extra time a libvirt run gets on top of the row's `timeout`: creating the
/// domain (libvirtd probes a QEMU's capabilities the first time it meets
/// it), the probes, and `virsh destroy` (about 1.5 s).
pub const BOOT_ALLOWANCE: Duration = Duration::from_secs(20);

/// How long `virsh console` gets to connect before the domain is resumed:
/// QEMU's pty chardev notices a reader by polling once a second, and drops
/// what it writes before that (the log file gets it all).
const CONSOLE_SETTLE: Duration = Duration::from_millis(1300);

/// What a run asks of its domain: the row's `libvirt` settings (or an
/// ad-hoc boot's devices), whether `virsh console` is attached, and what to
/// name the domain after.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LibvirtRun {
    pub settings: Settings,
    pub virsh_console: bool,
    /// The run's id (`scenario/variant`, `adhoc`), part of the domain name.
    pub label: String,
}

/// A libvirt board's launcher, for one run.
pub struct Libvirt<'a> {
    board: &'a Board,
    run: LibvirtRun,
    state: Mutex<Option<RunState>>,
}

/// What one run keeps between its start and its end.
struct RunState {
    name: String,
    shared: Arc<Shared>,
    bridge: Option<JoinHandle<()>>,
    console: Option<Console>,
    /// libvirt's domain id (names its core files).
    id: Option<u32>,
}

impl<'a> Libvirt<'a> {
    pub fn new(board: &'a Board, run: LibvirtRun) -> Libvirt<'a> {
        Libvirt { board, run, state: Mutex::new(None) }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Option<RunState>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How many libvirt runs may be under way at once: `PVAGENT_LIBVIRT_JOBS`,
/// else 4 per host CPU. Each run's `virsh create` costs libvirtd and the new
/// QEMU CPU; most of a run waits with the guest halted.
pub fn max_libvirt_runs() -> usize {
    if let Some(n) = std::env::var("PVAGENT_LIBVIRT_JOBS").ok().and_then(|v| v.trim().parse::<usize>().ok()) {
        return n.max(1);
    }
    std::thread::available_parallelism().map_or(4, |n| 4 * usize::from(n))
}

static SLOTS: Slots = Slots::new();

/// The domain of a run: the board, the run's command line (its image, script
/// and serial file) and the row's settings.
pub fn domain_of(board: &Board, cmd: &QemuCmd, name: &str, settings: &Settings) -> Result<Domain> {
    let script = match &cmd.script {
        None => None,
        Some(Script { text, delivery: Delivery::FwCfg }) => {
            if let Some(p) = xml::text_problem(text) {
                bail!("{p}");
            }
            Some(ScriptIn::FwCfg(text.clone(), libvirt::fw_cfg_commas().map_err(|e| anyhow!(e))?))
        }
        Some(Script { delivery: Delivery::FwCfgFile(f), .. }) => Some(ScriptIn::FwCfgFile(f.clone())),
        Some(Script { text, delivery: Delivery::Append }) => {
            if let Some(p) = xml::text_problem(text) {
                bail!("{p}");
            }
            Some(ScriptIn::Cmdline(text.clone()))
        }
        Some(Script { delivery: Delivery::Smbios | Delivery::Image, .. }) => {
            bail!("libvirt boards take scripts through fw_cfg or the command line here")
        }
    };
    let Some(Chardev::File(console_log)) = &cmd.serial else {
        bail!("libvirt: the agent's console must be logged to a file");
    };
    Ok(Domain {
        name: name.to_string(),
        description: Some(MARKER.to_string()),
        arch: board.arch,
        domain_type: if board.accel == "kvm" { "kvm" } else { "qemu" },
        machine: board.machine.clone(),
        memory: board.memory.clone(),
        emulator: find_program(&board.binary),
        boot: match cmd.boot {
            Boot::Kernel => xml::Boot::Kernel(cmd.image.clone()),
            Boot::Firmware => xml::Boot::Rom(cmd.image.clone()),
            Boot::Disk => bail!("libvirt boards do not boot the disk of `cargo xtask image` here yet"),
        },
        script,
        settings: settings.clone(),
        console_log: console_log.clone(),
        qemu_args: match cmd.clock {
            Clock::Real => Vec::new(),
            Clock::Virtual => Clock::ICOUNT.iter().map(|s| s.to_string()).chain(cmd.virtual_args.clone()).collect(),
        },
    })
}

/// Why libvirt cannot be used here, when that is something to set up (not
/// under CI, where the run fails with the reason instead).
fn setup_problem(board: &Board) -> Option<String> {
    if crate::runner::is_ci(std::env::var("CI").ok().as_deref()) {
        return None;
    }
    let missing: Vec<&str> = ["virsh", "libvirtd", "virtlogd"]
        .into_iter()
        .filter(|p| find_program(p).is_none() && !Path::new("/usr/sbin").join(p).exists())
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "libvirt is not installed ({} not found; run `cargo xtask setup --board {}`)",
            missing.join(", "),
            board.name
        )
    })
}

impl Launcher for Libvirt<'_> {
    fn board(&self) -> &Board {
        self.board
    }

    fn skip_reason(&self) -> Option<String> {
        host::requirements_problem(self.board).or_else(|| setup_problem(self.board))
    }

    fn prepare(&self) -> Result<Option<String>, String> {
        let line = daemons::ensure()?;
        let (lib, qemu) = libvirt::versions()?;
        let commas = match libvirt::fw_cfg_commas()? {
            libvirt::Commas::Double => "copies fw_cfg strings unescaped: commas are doubled in the XML",
            libvirt::Commas::AsIs => "escapes fw_cfg strings itself: scripts go into the XML as they are",
        };
        Ok(Some(format!("{line}; libvirt {lib}, QEMU {qemu}; libvirt {commas}")))
    }

    fn slot(&self) -> Option<Slot> {
        Some(SLOTS.acquire(max_libvirt_runs()))
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
        let shared = Arc::new(Shared::default());
        std::fs::write(dir.join("stderr.txt"), "")?;
        daemons::ensure().map_err(|e| anyhow!("libvirt: {e}"))?;
        let name = libvirt::domain_name(&format!("{}-{}", self.board.name, self.run.label));
        let domain = domain_of(self.board, cmd, &name, &self.run.settings)?;
        cmd.write_files()?;
        let xml_file = dir.join("domain.xml");
        std::fs::write(&xml_file, domain.xml())?;
        let create = ["create", "--paused", &xml_file.to_string_lossy()].map(String::from);
        let shown: Vec<String> =
            ["virsh", "-c", libvirt::URI].into_iter().map(String::from).chain(create.clone()).collect();
        std::fs::write(dir.join("cmdline.txt"), format!("{}\n", shell_join(&shown)))?;
        shared.record.lock().unwrap_or_else(|e| e.into_inner()).domain = name.clone();
        *self.state() =
            Some(RunState { name: name.clone(), shared: shared.clone(), bridge: None, console: None, id: None });

        let spawned_at = SystemTime::now();
        let spawned_instant = Instant::now();
        let deadline = spawned_instant + limit;
        libvirt::register(&name);
        *process = Some(Box::new(DomainGuest { name: name.clone(), shared: shared.clone(), spawned_at }));
        let create: Vec<&str> = create.iter().map(String::as_str).collect();
        if let Err(e) = virsh(&create, deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(1))) {
            shared.note_error(format!("{e:#}"));
            shared.gone.store(true, Ordering::SeqCst);
            return Err(e.context(format!("libvirt did not create the domain (see {})", xml_file.display())));
        }
        let id = virsh(&["domid", &name], VIRSH_TIMEOUT).ok().and_then(|s| s.trim().parse::<u32>().ok());
        if let Some(pid) = std::fs::read_to_string(Path::new(libvirt::RUN_DIR).join(format!("{name}.pid")))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        {
            shared.qemu_pid.store(pid, Ordering::Relaxed);
        }
        let mut bridge = Bridge::attach(&name, dir, spawned_at, shared.clone())?;
        bridge.probe(deadline)?;
        let console = if self.run.virsh_console {
            let c = Console::attach(&name)?;
            std::thread::sleep(CONSOLE_SETTLE);
            Some(c)
        } else {
            None
        };
        let version = qemu::qemu_version(&self.board.binary).map_err(|e| anyhow!(e))?;
        let greeting = json!({"QMP": {
            "version": {"qemu": {"major": version.major, "minor": version.minor, "micro": version.micro},
                        "package": format!("libvirt domain {name}")},
            "capabilities": []}});
        let (ours, theirs) = UnixStream::pair()?;
        let handle = bridge.serve(theirs, greeting)?;
        if let Some(s) = self.state().as_mut() {
            s.bridge = Some(handle);
            s.console = console;
            s.id = id;
        }
        let transcript = Transcript::create(&dir.join("qmp.jsonl"), spawned_at)?;
        let mut qmp = Qmp::new(ours, Some(transcript));
        qmp.note(&format!(
            "libvirt domain {name}: QMP through libvirt (events: virsh qemu-monitor-event; commands: virsh \
             qemu-monitor-command; cont: virsh resume; quit: virsh destroy)"
        ));
        let greeting = qmp.greeting(deadline)?;
        let greeting_at = SystemTime::now();
        qmp.execute("qmp_capabilities", None, deadline, on_event)?;
        // The row's `timeout` counts from here, the domain ready to resume:
        // the allowance was for creating it.
        let deadline = deadline.min(Instant::now() + limit.saturating_sub(BOOT_ALLOWANCE));
        Ok(Session { qmp, greeting, deadline, greeting_at, ready_at: SystemTime::now() })
    }

    fn live_stderr(&self, _dir: &Path) -> String {
        let name = self.state().as_ref().map(|s| s.name.clone()).unwrap_or_default();
        std::fs::read_to_string(Path::new(DOMAIN_LOG_DIR).join(format!("{name}.log"))).unwrap_or_default()
    }

    fn host_action(&self, args: &[String]) -> Result<String> {
        let name = self.state().as_ref().map(|s| s.name.clone()).context("no domain yet")?;
        let mut a: Vec<&str> = vec![args[0].as_str(), &name];
        a.extend(args[1..].iter().map(String::as_str));
        virsh(&a, VIRSH_TIMEOUT)
    }

    fn waiting(&self, checks: Option<&LibvirtChecks>) -> bool {
        let Some(c) = checks else { return false };
        let st = self.state();
        let Some(s) = st.as_ref() else { return false };
        let r = s.shared.record.lock().unwrap_or_else(|e| e.into_inner());
        let null = serde_json::Value::Null;
        let seen: Vec<(&str, &serde_json::Value)> = r
            .events
            .iter()
            .filter(|e| e.judged && !c.ignore.contains(&e.name))
            .map(|e| (e.name.as_str(), &null))
            .collect();
        matches!(matcher::evaluate(&c.events, &seen), Progress::Incomplete { .. })
    }

    fn finish(&self, dir: &Path, end: &mut Ending) {
        let Some(mut s) = self.state().take() else { return };
        if let Some(b) = s.bridge.take() {
            let _ = b.join();
        }
        if !s.shared.gone.load(Ordering::SeqCst)
            && let Err(e) = libvirt::destroy(&s.name)
        {
            s.shared.note_error(format!("{e:#}"));
            end.error.get_or_insert_with(|| format!("libvirt: could not destroy {}: {e:#}", s.name));
        }
        libvirt::unregister(&s.name);
        let mut record = std::mem::take(&mut *s.shared.record.lock().unwrap_or_else(|e| e.into_inner()));
        record.version = libvirt::versions().ok().map(|(lib, _)| lib);
        if let Some(c) = s.console.take() {
            let text = c.stop();
            let _ = std::fs::write(dir.join("virsh-console.txt"), &text);
            record.virsh_console = Some(text);
        }
        // libvirt's log of the domain: kept with the run, removed from /var/log.
        let log = Path::new(DOMAIN_LOG_DIR).join(format!("{}.log", s.name));
        let domain_log = std::fs::read_to_string(&log).unwrap_or_default();
        let _ = std::fs::write(dir.join("libvirt-domain.log"), &domain_log);
        let _ = std::fs::remove_file(&log);
        if let Some(id) = s.id {
            record.core_dumps = take_core_dumps(&libvirt::dump_dir(), &libvirt::dump_prefix(id, &s.name));
        }
        let errors = s.shared.errors.lock().unwrap_or_else(|e| e.into_inner()).join("\n");
        let stderr = if errors.is_empty() { domain_log } else { format!("{errors}\n{domain_log}") };
        let _ = std::fs::write(dir.join("stderr.txt"), &stderr);
        end.stderr = stderr;
        end.exit = None;
        let _ =
            std::fs::write(dir.join("libvirt.json"), serde_json::to_string_pretty(&record).unwrap_or_default() + "\n");
        end.libvirt = Some(record);
    }
}

/// The core files of a domain (named `prefix…` in `dir`): recorded, then
/// removed (each is as large as the guest's memory).
fn take_core_dumps(dir: &Path, prefix: &str) -> Vec<CoreDump> {
    let Ok(rd) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut dumps: Vec<CoreDump> = rd
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| {
            let path = e.path();
            let bytes = e.metadata().map(|m| m.len()).unwrap_or(0);
            let elf_core = libvirt::is_elf_core(&path);
            CoreDump { path, bytes, elf_core }
        })
        .collect();
    dumps.sort_by(|a, b| a.path.cmp(&b.path));
    for d in &dumps {
        let _ = std::fs::remove_file(&d.path);
    }
    dumps
}

/// A libvirt domain as the runner's guest: it has ended when libvirt's
/// `stopped` event came (or the bridge found it gone); killing it is
/// `virsh destroy`. Its exit status is libvirt's, never known here.
struct DomainGuest {
    name: String,
    shared: Arc<Shared>,
    spawned_at: SystemTime,
}

impl Guest for DomainGuest {
    fn spawned_at(&self) -> SystemTime {
        self.spawned_at
    }

    fn wait_until(&mut self, deadline: Instant) -> Result<Option<Ended>> {
        loop {
            if self.shared.gone.load(Ordering::SeqCst) {
                return Ok(Some(Ended(None)));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn kill(&mut self) -> Result<Ended> {
        self.shared.sample_cpu();
        libvirt::destroy(&self.name)?;
        self.shared.gone.store(true, Ordering::SeqCst);
        Ok(Ended(None))
    }

    /// At its last sample (each event, and right before it is destroyed).
    fn cpu_time(&self) -> Option<Duration> {
        *self.shared.cpu.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `virsh console` on a pty of ours, its output collected.
struct Console {
    child: Child,
    text: Arc<Mutex<Vec<u8>>>,
    reader: Option<JoinHandle<()>>,
}

impl Console {
    fn attach(name: &str) -> Result<Console> {
        let (mut master, mut slave) = (0, 0);
        // SAFETY: openpty writes two descriptors; no name, termios or size.
        if unsafe { libc::openpty(&mut master, &mut slave, std::ptr::null_mut(), std::ptr::null(), std::ptr::null()) }
            != 0
        {
            return Err(std::io::Error::last_os_error()).context("openpty for virsh console");
        }
        // SAFETY: both descriptors were just opened and are ours alone.
        let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        let mut cmd = libvirt::virsh_command(&["console", name, "--force"]);
        cmd.stdin(Stdio::from(slave.try_clone()?)).stdout(Stdio::from(slave.try_clone()?)).stderr(Stdio::from(slave));
        // SAFETY: setsid and ioctl are async-signal-safe; the pty becomes the
        // controlling terminal virsh console insists on.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().context("starting virsh console")?;
        drop(cmd);
        let text = Arc::new(Mutex::new(Vec::new()));
        let sink = text.clone();
        let mut file = std::fs::File::from(master);
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // EIO once virsh has exited and the pty is closed.
            while let Ok(n) = file.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(&buf[..n]);
            }
        });
        Ok(Console { child, text, reader: Some(reader) })
    }

    /// Ends `virsh console`; what it showed (carriage returns dropped).
    fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let bytes = std::mem::take(&mut *self.text.lock().unwrap_or_else(|e| e.into_inner()));
        String::from_utf8_lossy(&bytes).replace('\r', "")
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn board(text: &str) -> Board {
        crate::config::parse_board(Path::new("boards/libvirt-q35.toml"), text, Path::new("/w")).unwrap()
    }

    const Q35: &str = "name = \"libvirt-q35\"\ndescription = \"d\"\narch = \"x86_64\"\nbinary = \"qemu-system-x86_64\"\n\
                       machine = \"q35\"\naccel = \"tcg\"\nmemory = \"128M\"\npackage = \"qemu-system-x86\"\nkind = \"libvirt\"\n";

    #[test]
    fn the_runs_command_line_becomes_the_domain() {
        let b = board(Q35);
        let cmd = QemuCmd::new(&b, Path::new("/img/pvagent"))
            .serial_file(Path::new("/runs/x/serial.bin"))
            .script(Some("x"), Delivery::Append);
        let settings = Settings { devices: vec![xml::Device::PvpanicPci], ..Settings::default() };
        let d = domain_of(&b, &cmd, "pvagent-1-1-x", &settings).unwrap();
        assert_eq!(d.boot, xml::Boot::Kernel("/img/pvagent".into()));
        assert_eq!(d.script, Some(ScriptIn::Cmdline("x".into())));
        assert_eq!(d.console_log, Path::new("/runs/x/serial.bin"));
        assert_eq!((d.domain_type, d.description.as_deref()), ("qemu", Some(MARKER)));
        let x = d.xml();
        assert!(x.contains("<panic model='pvpanic'/>") && x.contains("<cmdline>x</cmdline>"), "{x}");
        let file = cmd.clone().script(Some("a\0b"), Delivery::FwCfgFile("/runs/x/script.bin".into()));
        assert_eq!(
            domain_of(&b, &file, "n", &settings).unwrap().script,
            Some(ScriptIn::FwCfgFile("/runs/x/script.bin".into()))
        );
        let nul = cmd.clone().script(Some("a\0b"), Delivery::Append);
        assert!(domain_of(&b, &nul, "n", &settings).unwrap_err().to_string().contains("fw_cfg_file"));
        let rom = board(&format!("{Q35}boot = \"firmware\"\n"));
        let cmd = QemuCmd::new(&rom, Path::new("/run/pvagent-x86_64.rom")).serial_file(Path::new("/s"));
        assert_eq!(
            domain_of(&rom, &cmd, "n", &settings).unwrap().boot,
            xml::Boot::Rom("/run/pvagent-x86_64.rom".into())
        );
    }

    /// The README's "Under libvirt" XML is what the generator makes of its
    /// `cargo xtask libvirt-xml` command (the board file's machine and
    /// memory; the checkout's path as the README writes it; libvirt 11.3.0's
    /// doubled commas).
    #[test]
    fn the_readmes_xml_is_the_generators() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
        let section = &readme[readme.find("\n## Under libvirt\n").expect("the README's libvirt section")..];
        let command = section.split("```sh\n").nth(1).unwrap().split("```").next().unwrap();
        let xml = section.split("```xml\n").nth(1).unwrap().split("```").next().unwrap();
        let script = "pvpanic.crashloaded; i6300esb.arm:300ms,300ms; sleep:5s";
        for arg in [
            format!("--script '{script}'"),
            "--device pvpanic-pci --device i6300esb --watchdog-action shutdown".into(),
            "--console-log /var/tmp/pvagent-console.log".into(),
        ] {
            assert!(command.replace("\\\n    ", "").contains(&arg), "{arg} not in {command}");
        }
        let boards = crate::config::load_boards(&root.join("boards"), root).unwrap();
        let b = boards.iter().find(|b| b.name == "libvirt-q35").unwrap();
        let d = Domain {
            name: "pvagent".into(),
            description: None,
            arch: b.arch,
            domain_type: "qemu",
            machine: b.machine.clone(),
            memory: b.memory.clone(),
            emulator: Some("/usr/bin/qemu-system-x86_64".into()),
            boot: xml::Boot::Kernel("/home/you/pvagent/target/x86_64-unknown-none/release/pvagent".into()),
            script: Some(ScriptIn::FwCfg(script.into(), libvirt::Commas::Double)),
            settings: Settings {
                devices: vec![xml::Device::PvpanicPci, xml::Device::I6300esb],
                watchdog_action: Some("shutdown".into()),
                ..Settings::default()
            },
            console_log: "/var/tmp/pvagent-console.log".into(),
            qemu_args: Vec::new(),
        };
        assert_eq!(xml, d.xml());
    }

    #[test]
    fn core_dumps_are_found_by_prefix_and_removed() {
        let d = tempfile::tempdir().unwrap();
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        h[5] = 1;
        h[16] = 4;
        std::fs::write(d.path().join("8-pvagent-1-2-libvir-2026-11-30-04:44:20"), &h).unwrap();
        std::fs::write(d.path().join("9-pvagent-1-3-libvir-2026-11-30-04:44:21"), b"other").unwrap();
        let dumps = take_core_dumps(d.path(), "8-pvagent-1-2-libvir-");
        assert_eq!(dumps.len(), 1);
        assert!(dumps[0].elf_core && dumps[0].bytes == 64);
        assert!(!dumps[0].path.exists());
        assert!(d.path().join("9-pvagent-1-3-libvir-2026-11-30-04:44:21").exists());
    }
}
