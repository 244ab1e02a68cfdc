//! QEMU processes: spawning (argument list, no shell, dies with us), a global
//! registry of live children and temp dirs for the handler of SIGINT,
//! SIGTERM and SIGHUP, guards that clean up on every path, the one session
//! start (spawn, accept QMP, greeting, capabilities, under one deadline) and
//! the version probe.

use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::qemu_cmd::Chardev;
use crate::qmp::{self, Qmp, QmpEvent, Transcript};
use crate::util::{Version, excerpt, find_program, shell_join, signal_name};

#[derive(Default)]
struct Registry {
    pids: BTreeSet<i32>,
    dirs: BTreeSet<PathBuf>,
    /// Process groups of child tools (`cargo test`) that get our stop signal.
    groups: BTreeSet<i32>,
    /// Set by [`cleanup_all`]: nothing new is spawned or created after it.
    stopping: bool,
}

static REGISTRY: Mutex<Registry> =
    Mutex::new(Registry { pids: BTreeSet::new(), dirs: BTreeSet::new(), groups: BTreeSet::new(), stopping: false });

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Kills every registered QEMU and removes every registered temp dir; from
/// then on no QEMU is spawned and no temp dir created (the process is about
/// to exit).
pub fn cleanup_all() {
    let mut r = registry();
    r.stopping = true;
    for &pid in &r.pids {
        // SAFETY: plain kill(2) on a pid we spawned and have not reaped yet.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
    r.pids.clear();
    for d in std::mem::take(&mut r.dirs) {
        let _ = std::fs::remove_dir_all(d);
    }
    drop(r);
    let hooks: Vec<fn()> = STOP_HOOKS.lock().unwrap_or_else(|e| e.into_inner()).drain(..).collect();
    for hook in hooks {
        hook();
    }
}

/// What [`cleanup_all`] runs after killing the processes: cleanup of things
/// that are not our children (the libvirt domains of the harness, and the
/// daemons it started: `crate::libvirt`). Each runs once.
static STOP_HOOKS: Mutex<Vec<fn()>> = Mutex::new(Vec::new());

/// Adds a hook to [`cleanup_all`] (see [`STOP_HOOKS`]).
pub fn on_stop(hook: fn()) {
    STOP_HOOKS.lock().unwrap_or_else(|e| e.into_inner()).push(hook);
}

/// The signals that stop the tool cleanly (a terminal's Ctrl-C, `kill`,
/// a closed terminal or SSH session).
pub const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// Write end of the self-pipe from the signal handler to the stop thread.
static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);
/// The stop signal being handled (0: none).
static STOPPING: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_stop_signal(sig: libc::c_int) {
    // Only async-signal-safe work here: one write(2) to a non-blocking pipe
    // (a full pipe drops the byte: a stop is already pending), errno kept.
    // SAFETY: __errno_location returns this thread's errno; write(2) with a
    // valid one-byte buffer on a descriptor that is never closed.
    unsafe {
        let errno = *libc::__errno_location();
        let byte = sig as u8;
        libc::write(SIGNAL_PIPE.load(Ordering::Relaxed), (&byte as *const u8).cast(), 1);
        *libc::__errno_location() = errno;
    }
}

/// Installs the handler of SIGINT, SIGTERM and SIGHUP once (a signal that is
/// ignored when we start, e.g. SIGHUP under `nohup`, stays ignored). On the
/// first of them: say which arrived, forward it to the child tools started
/// with [`status_forwarding_signals`] and wait for them, kill every QEMU,
/// remove the temp dirs, and exit with 128 + the signal number.
pub fn install_signal_handlers() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if let Err(e) = install_stop_handler() {
            let _ = writeln!(std::io::stderr(), "warning: cannot handle SIGINT/SIGTERM/SIGHUP: {e}");
        }
    });
}

fn install_stop_handler() -> std::io::Result<()> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into a two-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fcntl on the write end just created.
    if unsafe { libc::fcntl(fds[1], libc::F_SETFL, libc::O_NONBLOCK) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the read end is ours alone from here on.
    let read_end = unsafe { std::fs::File::from_raw_fd(fds[0]) };
    SIGNAL_PIPE.store(fds[1], Ordering::Relaxed);
    std::thread::Builder::new().name("stop-signals".into()).spawn(move || stop_thread(read_end))?;
    for sig in STOP_SIGNALS {
        // SAFETY: sigaction with zeroed (valid) structs; the handler only
        // does async-signal-safe work.
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut old) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if old.sa_sigaction == libc::SIG_IGN {
                continue;
            }
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_stop_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// How long child tools get to clean up after a forwarded stop signal.
const CHILD_GRACE: Duration = Duration::from_secs(15);

fn stop_thread(mut pipe: std::fs::File) {
    let mut byte = [0u8; 1];
    loop {
        match pipe.read(&mut byte) {
            Ok(1) => break,
            Ok(_) => return,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        }
    }
    let sig = libc::c_int::from(byte[0]);
    STOPPING.store(sig, Ordering::SeqCst);
    let name = signal_name(sig).unwrap_or("a signal");
    let what = match sig {
        libc::SIGINT => "interrupted",
        libc::SIGTERM => "terminated",
        libc::SIGHUP => "hung up",
        _ => "stopped",
    };
    let groups: Vec<i32> = registry().groups.iter().copied().collect();
    // Never eprintln!: with the terminal gone (SIGHUP) it would panic here.
    let _ = writeln!(
        std::io::stderr(),
        "\n{what} ({name}): {}killing QEMU and removing temp dirs",
        if groups.is_empty() { "" } else { "passing it on to cargo test, " }
    );
    stop_groups(&groups, sig, CHILD_GRACE);
    cleanup_all();
    std::process::exit(128 + sig);
}

/// Sends `sig` to each process group and waits until they are gone, at most
/// `grace`; what is left then gets SIGKILL.
fn stop_groups(groups: &[i32], sig: libc::c_int, grace: Duration) {
    let alive = |g: i32| {
        // SAFETY: signal 0 only checks whether the group has members.
        unsafe { libc::kill(-g, 0) == 0 }
    };
    for &g in groups {
        // SAFETY: kill(2) on a process group this process created.
        unsafe {
            libc::kill(-g, sig);
        }
    }
    let deadline = Instant::now() + grace;
    while groups.iter().any(|&g| alive(g)) {
        if Instant::now() >= deadline {
            let _ = writeln!(
                std::io::stderr(),
                "still running {} s after {}: killing it",
                grace.as_secs(),
                signal_name(sig).unwrap_or("the signal")
            );
            for &g in groups {
                // SAFETY: as above.
                unsafe {
                    libc::kill(-g, libc::SIGKILL);
                }
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The stop signal being handled, if any.
pub fn stopping() -> Option<i32> {
    Some(STOPPING.load(Ordering::SeqCst)).filter(|&s| s != 0)
}

/// Runs `cmd` (a child tool such as `cargo test`) in its own process group
/// and waits for it. A stop signal that reaches this process (SIGINT,
/// SIGTERM, SIGHUP) is passed on to that whole group (cargo and the test
/// binaries it runs), and this process waits for them to clean up before it
/// exits; a terminal's Ctrl-C therefore reaches the child through us.
pub fn status_forwarding_signals(cmd: &mut Command) -> Result<ExitStatus> {
    cmd.process_group(0);
    let mut reg = registry();
    if reg.stopping {
        bail!("stopping");
    }
    let mut child = cmd.spawn().with_context(|| format!("starting {}", cmd.get_program().to_string_lossy()))?;
    let pgid = child.id() as i32;
    reg.groups.insert(pgid);
    drop(reg);
    let st = child.wait();
    if stopping().is_some() {
        // The stop thread is waiting for the group and then ends the process.
        loop {
            std::thread::park();
        }
    }
    registry().groups.remove(&pgid);
    Ok(st?)
}

/// Removes `/tmp/pvagent-<pid>-*` dirs left by a killed (SIGKILL) xtask
/// whose pid no longer exists. Runs once per process.
fn remove_stale_dirs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let Ok(rd) = std::fs::read_dir("/tmp") else {
            return;
        };
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        for e in rd.flatten() {
            let name = e.file_name();
            let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("pvagent-")) else {
                continue;
            };
            let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
                continue;
            };
            // SAFETY: signal 0 only checks whether the pid exists.
            let gone = unsafe { libc::kill(pid, 0) } != 0
                && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
            let mine = e.metadata().map(|m| std::os::unix::fs::MetadataExt::uid(&m) == me).unwrap_or(false);
            if gone && mine {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    });
}

/// A private (0700) temp dir under /tmp for the QMP socket; removed on drop.
pub struct PrivateDir {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl PrivateDir {
    pub fn new() -> Result<PrivateDir> {
        remove_stale_dirs();
        // Created under the registry lock: the stop handler either removes
        // it or it is never created.
        let mut reg = registry();
        if reg.stopping {
            bail!("stopping");
        }
        let dir = tempfile::Builder::new()
            .prefix(&format!("pvagent-{}-", std::process::id()))
            .tempdir_in("/tmp")
            .context("creating a temp dir in /tmp")?;
        let path = dir.path().to_path_buf();
        reg.dirs.insert(path.clone());
        drop(reg);
        let dir = PrivateDir { dir: Some(dir), path };
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))?;
        Ok(dir)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        registry().dirs.remove(&self.path);
        drop(self.dir.take());
    }
}

/// A listening QMP socket in a private dir.
pub struct QmpListener {
    pub listener: UnixListener,
    pub path: PathBuf,
    _dir: PrivateDir,
}

impl QmpListener {
    pub fn new() -> Result<QmpListener> {
        let dir = PrivateDir::new()?;
        let path = dir.path().join("qmp.sock");
        if path.as_os_str().len() >= 108 {
            bail!("socket path too long: {}", path.display());
        }
        let listener = UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
        Ok(QmpListener { listener, path, _dir: dir })
    }

    /// The chardev that makes QEMU connect to this socket.
    pub fn chardev(&self) -> Chardev {
        Chardev::Socket(self.path.clone())
    }
}

/// A running QEMU. Killed and reaped on drop unless already reaped.
pub struct QemuProcess {
    child: Child,
    pid: i32,
    status: Option<ExitStatus>,
    pub spawned_at: SystemTime,
    pub spawned_instant: Instant,
    /// Its CPU time (user + system, all threads), read when it has exited
    /// and before it is reaped.
    cpu: Option<Duration>,
}

impl QemuProcess {
    /// Spawns `argv` (argv[0] is the binary) with stdin null, stdout null and
    /// stderr to `stderr`. The child gets SIGKILL if this thread dies
    /// (PR_SET_PDEATHSIG) and its own process group (a terminal's Ctrl-C goes
    /// to us; our handler kills it).
    pub fn spawn(argv: &[String], stderr: Stdio) -> Result<QemuProcess> {
        QemuProcess::spawn_with(argv, Stdio::null(), stderr, &[])
    }

    /// [`QemuProcess::spawn`] with stdout piped (see
    /// [`QemuProcess::take_stdout`]) and `env` added: a `virsh` watcher.
    pub fn spawn_piped(argv: &[String], stderr: Stdio, env: &[(&str, &str)]) -> Result<QemuProcess> {
        QemuProcess::spawn_with(argv, Stdio::piped(), stderr, env)
    }

    fn spawn_with(argv: &[String], stdout: Stdio, stderr: Stdio, env: &[(&str, &str)]) -> Result<QemuProcess> {
        let parent = std::process::id() as libc::pid_t;
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]).stdin(Stdio::null()).stdout(stdout).stderr(stderr);
        cmd.envs(env.iter().copied());
        // SAFETY: only async-signal-safe libc calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died before prctl took effect.
                if libc::getppid() != parent {
                    return Err(std::io::Error::other("parent exited"));
                }
                libc::setpgid(0, 0);
                Ok(())
            });
        }
        // Register under the lock so a stop signal cannot slip between spawn
        // and registration.
        let mut reg = registry();
        if reg.stopping {
            bail!("stopping");
        }
        let spawned_at = SystemTime::now();
        let spawned_instant = Instant::now();
        let child = cmd.spawn().with_context(|| format!("starting {}", argv[0]))?;
        let pid = child.id() as i32;
        reg.pids.insert(pid);
        drop(reg);
        Ok(QemuProcess { child, pid, status: None, spawned_at, spawned_instant, cpu: None })
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Its stdout, when spawned with [`QemuProcess::spawn_piped`] (once).
    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.stdout.take()
    }

    /// The CPU time the process used (user + system, all its threads), once
    /// it has exited; `None` before, or when it could not be read.
    pub fn cpu_time(&self) -> Option<Duration> {
        self.cpu
    }

    /// Whether the process has exited, without reaping it (`None`: waitid
    /// failed); once it has, reads its CPU time: a zombie keeps its final
    /// counters in /proc/<pid>/stat. `block`: wait for the exit (after a
    /// kill).
    fn exited_sampling_cpu(&mut self, block: bool) -> Option<bool> {
        let mut flags = libc::WEXITED | libc::WNOWAIT;
        if !block {
            flags |= libc::WNOHANG;
        }
        // SAFETY: waitid with WNOWAIT only reports on our own child (it
        // stays unreaped for Child::wait); `info` is a plain C struct.
        let exited = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            if libc::waitid(libc::P_PID, self.pid as libc::id_t, &mut info, flags) != 0 {
                return None;
            }
            info.si_pid() != 0
        };
        if exited && self.cpu.is_none() {
            self.cpu = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).ok().and_then(|s| cpu_of_stat(&s));
        }
        Some(exited)
    }

    fn reaped(&mut self, st: ExitStatus) -> ExitStatus {
        registry().pids.remove(&self.pid);
        self.status = Some(st);
        st
    }

    /// Non-blocking exit check.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if let Some(s) = self.status {
            return Ok(Some(s));
        }
        // Only a process known to have exited is reaped, so that its CPU
        // time is read first.
        if self.exited_sampling_cpu(false) == Some(false) {
            return Ok(None);
        }
        match self.child.try_wait()? {
            Some(st) => Ok(Some(self.reaped(st))),
            None => Ok(None),
        }
    }

    /// Waits for exit until `deadline`; `None` if still running.
    pub fn wait_until(&mut self, deadline: Instant) -> Result<Option<ExitStatus>> {
        loop {
            if let Some(s) = self.try_wait()? {
                return Ok(Some(s));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        if let Some(s) = self.status {
            return Ok(s);
        }
        let _ = self.child.kill();
        self.exited_sampling_cpu(true);
        let st = self.child.wait()?;
        Ok(self.reaped(st))
    }
}

impl Drop for QemuProcess {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.kill();
        }
    }
}

/// User + system time from a `/proc/<pid>/stat` line (fields 14 and 15, in
/// clock ticks; the command name in parentheses may contain anything).
pub(crate) fn cpu_of_stat(stat: &str) -> Option<Duration> {
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 1..)?.split_whitespace().collect();
    // After the name: field 3 (state) is fields[0], so field N is fields[N - 3].
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| Duration::from_secs_f64(ticks as f64 / hz as f64))
}

/// The CPU time (user + system) this process has used itself, its QEMUs
/// not included.
pub fn own_cpu_time() -> Duration {
    // SAFETY: getrusage fills the struct it is given.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Human form of an exit status: `exit status 1`, `killed by signal 9
/// (SIGKILL)`, `killed by signal 6 (SIGABRT, core dumped)`.
pub fn describe_status(st: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(s)) => {
            let core = if st.core_dumped() { ", core dumped" } else { "" };
            match signal_name(s) {
                Some(name) => format!("killed by signal {s} ({name}{core})"),
                None if core.is_empty() => format!("killed by signal {s}"),
                None => format!("killed by signal {s} (core dumped)"),
            }
        }
        _ => "unknown status".into(),
    }
}

/// The first three non-empty lines of a file (QEMU's stderr) joined with
/// ` | `, or `(no stderr)`.
pub fn first_lines(path: &Path) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let s: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).take(3).collect();
    if s.is_empty() { "(no stderr)".into() } else { s.join(" | ") }
}

// ───────────────────────────── session start ─────────────────────────────

/// How to start a QEMU session.
pub struct Start<'a> {
    /// The command (argv\[0\] is the binary); it makes QEMU's QMP monitor
    /// connect to `listener`.
    pub argv: &'a [String],
    pub listener: &'a QmpListener,
    pub stderr: Stdio,
    /// The session's deadline, counted from the spawn: every wait of the
    /// start, and of the caller afterwards ([`Session::deadline`]).
    pub limit: Duration,
    /// Where the QMP transcript goes (none: no transcript).
    pub transcript: Option<&'a Path>,
    /// The file `stderr` writes to: its first lines are quoted when QEMU
    /// exits before connecting.
    pub stderr_file: Option<&'a Path>,
}

/// A QEMU whose QMP connection is negotiated: greeting read,
/// `qmp_capabilities` answered. The process stays with the caller (see
/// [`start_session`]).
pub struct Session {
    pub qmp: Qmp,
    pub greeting: Value,
    /// Spawn + [`Start::limit`].
    pub deadline: Instant,
    /// Host clock when the greeting was read.
    pub greeting_at: SystemTime,
    /// Host clock when `qmp_capabilities` was answered (QEMU's main loop
    /// runs, the machine is built).
    pub ready_at: SystemTime,
}

/// The one session start: spawns `start.argv` into `process` (so that the
/// caller reaps or kills it on every path, an error included), accepts its
/// QMP connection, reads the greeting and negotiates capabilities, all
/// before `start.limit` after the spawn. Events that arrive meanwhile go to
/// `on_event`.
pub fn start_session(
    start: Start<'_>,
    process: &mut Option<QemuProcess>,
    on_event: &mut dyn FnMut(&mut Qmp, QmpEvent),
) -> Result<Session> {
    let qemu = process.insert(QemuProcess::spawn(start.argv, start.stderr)?);
    let deadline = qemu.spawned_instant + start.limit;
    let transcript = start.transcript.map(|p| Transcript::create(p, qemu.spawned_at)).transpose()?;
    let stream = qmp::accept(&start.listener.listener, deadline, || match qemu.try_wait()? {
        Some(st) => {
            let stderr = start.stderr_file.map(|f| format!(": {}", first_lines(f))).unwrap_or_default();
            bail!("QEMU exited before connecting to QMP ({}){stderr}", describe_status(st))
        }
        None => Ok(()),
    })?;
    let mut qmp = Qmp::new(stream, transcript);
    qmp.note(&format!("spawned pid {}", qemu.pid()));
    let greeting = qmp.greeting(deadline)?;
    let greeting_at = SystemTime::now();
    qmp.execute("qmp_capabilities", None, deadline, on_event)?;
    Ok(Session { qmp, greeting, deadline, greeting_at, ready_at: SystemTime::now() })
}

static VERSIONS: Mutex<Option<HashMap<String, Result<Version, String>>>> = Mutex::new(None);

/// QEMU's version (cached per binary): starts `<binary> -M none -S`, reads the
/// QMP greeting, quits.
pub fn qemu_version(binary: &str) -> Result<Version, String> {
    let mut cache = VERSIONS.lock().unwrap_or_else(|e| e.into_inner());
    let map = cache.get_or_insert_with(HashMap::new);
    if let Some(v) = map.get(binary) {
        return v.clone();
    }
    let v = probe_version(binary).map_err(|e| format!("{e:#}"));
    map.insert(binary.to_string(), v.clone());
    v
}

/// The message of a version probe that found no binary at all (as opposed
/// to one that exists and failed); set-up installs QEMU only then.
pub const NOT_FOUND: &str = "not found in PATH";

/// How long a version probe waits for QEMU's QMP greeting.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

fn probe_version(binary: &str) -> Result<Version> {
    let Some(path) = find_program(binary) else {
        bail!("{binary} {NOT_FOUND}");
    };
    let listener = QmpListener::new()?;
    let mut argv: Vec<String> =
        [binary, "-M", "none", "-S", "-nodefaults", "-display", "none"].iter().map(|s| s.to_string()).collect();
    // Every failure names the command (but for the QMP socket's temp path)
    // and the file that ran.
    let cmd = format!(
        "`{} -chardev socket,… -mon …`{}",
        shell_join(&argv),
        if binary.contains('/') { String::new() } else { format!(" ({})", path.display()) }
    );
    argv.extend(listener.chardev().qmp_args());
    let errf = tempfile::tempfile()?;
    let mut errf_read = errf.try_clone()?;
    let mut process = None;
    let start = Start {
        argv: &argv,
        listener: &listener,
        stderr: Stdio::from(errf),
        limit: PROBE_TIMEOUT,
        transcript: None,
        stderr_file: None,
    };
    let result = start_session(start, &mut process, &mut |_, _| {}).and_then(|mut s| {
        let v = qmp::greeting_version(&s.greeting).context("greeting without QMP.version.qemu")?;
        let _ = s.qmp.execute("quit", None, s.deadline, &mut |_, _| {});
        s.qmp.no_more_commands = true;
        s.qmp.drain_to_eof(s.deadline, &mut |_, _| {});
        Ok(v)
    });
    let Some(mut qemu) = process else {
        // The spawn itself failed.
        return result.with_context(|| format!("version probe {cmd} could not start"));
    };
    let deadline = qemu.spawned_instant + PROBE_TIMEOUT;
    // A probe that timed out is killed at once; otherwise QEMU got `quit`.
    let grace = if Instant::now() >= deadline { Duration::ZERO } else { Duration::from_secs(3) };
    if qemu.wait_until(Instant::now() + grace)?.is_none() {
        qemu.kill()?;
    }
    result.map_err(|e| {
        let e = if Instant::now() >= deadline {
            anyhow::anyhow!("it did not answer on QMP within {} s (killed)", PROBE_TIMEOUT.as_secs())
        } else {
            e
        };
        use std::io::Seek;
        let mut bytes = Vec::new();
        let _ = errf_read.rewind();
        let _ = Read::by_ref(&mut errf_read).take(64 * 1024).read_to_end(&mut bytes);
        let stderr = excerpt(&String::from_utf8_lossy(&bytes), 3, 400);
        let stderr = if stderr.is_empty() { "no stderr".to_string() } else { format!("stderr: {stderr}") };
        anyhow::anyhow!("version probe {cmd} failed: {e:#}; {stderr}")
    })
}

/// Drops the cached version of `binary` (after installing a new one).
pub fn forget_version(binary: &str) {
    let mut cache = VERSIONS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(m) = cache.as_mut() {
        m.remove(binary);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    /// Writes an executable `sh` script `name` with `body` into `dir`: a fake
    /// `qemu-system-*`. Returns once it can be executed (a child forked
    /// meanwhile by another test thread may briefly hold the written file
    /// open: ETXTBSY).
    pub(crate) fn fake_binary(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n[ -n \"$PVAGENT_FAKE_READY\" ] && exit 0\n{body}")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        for _ in 0..200 {
            match Command::new(&p).env("PVAGENT_FAKE_READY", "1").status() {
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => std::thread::sleep(Duration::from_millis(10)),
                r => {
                    assert!(r.unwrap().success());
                    return p;
                }
            }
        }
        panic!("{} stays busy", p.display());
    }

    #[test]
    fn statuses_name_the_signal() {
        assert_eq!(describe_status(ExitStatus::from_raw(3 << 8)), "exit status 3");
        assert_eq!(describe_status(ExitStatus::from_raw(libc::SIGKILL)), "killed by signal 9 (SIGKILL)");
        assert_eq!(describe_status(ExitStatus::from_raw(libc::SIGTERM)), "killed by signal 15 (SIGTERM)");
        assert_eq!(
            describe_status(ExitStatus::from_raw(libc::SIGABRT | 0x80)),
            "killed by signal 6 (SIGABRT, core dumped)"
        );
        assert_eq!(describe_status(ExitStatus::from_raw(40)), "killed by signal 40");
    }

    #[test]
    fn the_cpu_time_of_an_exited_process_is_read_before_reaping() {
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let stat = "4242 (qemu (x) y) S 1 2 3 4 5 6 7 8 9 10 150 50 0 0 20 0 3 0";
        assert_eq!(cpu_of_stat(stat), Some(Duration::from_secs_f64(200.0 / hz)));
        assert_eq!(cpu_of_stat("4242 (short) S 1"), None);
        // A process that burns some CPU, then one killed while it waits.
        let busy = "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done";
        let mut p = QemuProcess::spawn(&["sh".into(), "-c".into(), busy.into()], Stdio::null()).unwrap();
        assert!(p.wait_until(Instant::now() + Duration::from_secs(30)).unwrap().is_some());
        assert!(p.cpu_time().is_some_and(|c| c > Duration::ZERO), "{:?}", p.cpu_time());
        let mut p = QemuProcess::spawn(&["sleep".into(), "30".into()], Stdio::null()).unwrap();
        assert_eq!(p.cpu_time(), None);
        p.kill().unwrap();
        assert!(p.cpu_time().is_some());
        assert!(own_cpu_time() > Duration::ZERO);
    }

    #[test]
    fn a_process_killed_for_real_is_named() {
        let st = Command::new("sh").args(["-c", "kill -KILL $$"]).status().unwrap();
        assert_eq!(describe_status(st), "killed by signal 9 (SIGKILL)");
    }

    #[test]
    fn probe_errors_name_the_command_the_status_and_stderr() {
        let tmp = tempfile::tempdir().unwrap();
        let bin =
            fake_binary(tmp.path(), "qemu-system-fail", "echo 'first line' >&2\necho 'fake: no KVM' >&2\nexit 3\n");
        let e = qemu_version(bin.to_str().unwrap()).unwrap_err();
        assert!(e.contains(&format!("version probe `{} -M none -S -nodefaults -display none", bin.display())), "{e}");
        assert!(e.contains("QEMU exited before connecting to QMP (exit status 3)"), "{e}");
        assert!(e.contains("stderr: first line | fake: no KVM"), "{e}");
        let bin = fake_binary(tmp.path(), "qemu-system-killed", "kill -SEGV $$\n");
        let e = qemu_version(bin.to_str().unwrap()).unwrap_err();
        assert!(e.contains("killed by signal 11 (SIGSEGV"), "{e}");
        assert!(e.ends_with("no stderr"), "{e}");
        let e = qemu_version(tmp.path().join("qemu-system-none").to_str().unwrap()).unwrap_err();
        assert!(e.ends_with(NOT_FOUND), "{e}");
    }

    #[test]
    fn child_tools_run_in_their_own_process_group() {
        // Field 5 of /proc/<pid>/stat is the process group.
        let st = status_forwarding_signals(
            Command::new("sh").args(["-c", "set -- $(cat /proc/$$/stat); [ \"$5\" = \"$$\" ]"]),
        )
        .unwrap();
        assert!(st.success(), "{st:?}");
        assert!(registry().groups.is_empty());
        let st = status_forwarding_signals(Command::new("sh").args(["-c", "exit 4"])).unwrap();
        assert_eq!(st.code(), Some(4));
    }

    /// Spawns `script` as the leader of a new process group, reaped by a
    /// thread (as the main thread reaps `cargo test`).
    fn group(script: &str) -> (i32, std::thread::JoinHandle<ExitStatus>) {
        let mut child = Command::new("sh").args(["-c", script]).process_group(0).spawn().unwrap();
        let pgid = child.id() as i32;
        (pgid, std::thread::spawn(move || child.wait().unwrap()))
    }

    #[test]
    fn a_stop_signal_is_passed_on_and_waited_for() {
        let tmp = tempfile::tempdir().unwrap();
        let done = tmp.path().join("cleaned-up");
        // The child cleans up for 300 ms after SIGTERM, then exits 143; its
        // own child in the same group (a test binary under cargo) dies too.
        let (pgid, waiter) =
            group(&format!("trap 'sleep 0.3; touch {}; exit 143' TERM; sleep 30 & wait; wait", done.display()));
        std::thread::sleep(Duration::from_millis(200));
        let started = Instant::now();
        stop_groups(&[pgid], libc::SIGTERM, Duration::from_secs(10));
        assert!(started.elapsed() >= Duration::from_millis(250), "returned before the child cleaned up");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(done.exists(), "the child did not get SIGTERM");
        assert_eq!(waiter.join().unwrap().code(), Some(143));
        // SAFETY: signal 0 only checks for the group.
        assert_ne!(unsafe { libc::kill(-pgid, 0) }, 0, "the group is gone");
    }

    #[test]
    fn a_child_that_ignores_the_signal_is_killed_after_the_grace() {
        let (pgid, waiter) = group("trap '' TERM; sleep 30");
        std::thread::sleep(Duration::from_millis(200));
        let started = Instant::now();
        stop_groups(&[pgid], libc::SIGTERM, Duration::from_millis(300));
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(waiter.join().unwrap().signal(), Some(libc::SIGKILL));
    }
}
