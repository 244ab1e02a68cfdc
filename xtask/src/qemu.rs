//! QEMU processes: spawning (argument list, no shell, dies with us), a global
//! registry of live children and temp dirs for the Ctrl-C handler, guards
//! that clean up on every path, and the version probe.

use std::collections::{BTreeSet, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};

use crate::qmp::{self, Qmp};
use crate::util::{Version, escape_qemu_opt};

#[derive(Default)]
struct Registry {
    pids: BTreeSet<i32>,
    dirs: BTreeSet<PathBuf>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry { pids: BTreeSet::new(), dirs: BTreeSet::new() });

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Kills every registered QEMU and removes every registered temp dir.
pub fn cleanup_all() {
    let mut r = registry();
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
}

/// Installs the Ctrl-C handler once: kill all QEMUs, remove temp dirs, exit 130.
pub fn install_ctrlc_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let r = ctrlc::set_handler(|| {
            eprintln!("\ninterrupted: killing QEMU and removing temp dirs");
            cleanup_all();
            std::process::exit(130);
        });
        if let Err(e) = r {
            eprintln!("warning: cannot install the Ctrl-C handler: {e}");
        }
    });
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
        let dir = tempfile::Builder::new()
            .prefix(&format!("pvagent-{}-", std::process::id()))
            .tempdir_in("/tmp")
            .context("creating a temp dir in /tmp")?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))?;
        let path = dir.path().to_path_buf();
        registry().dirs.insert(path.clone());
        Ok(PrivateDir { dir: Some(dir), path })
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

    /// The QEMU arguments that make QEMU connect to this socket.
    pub fn qemu_args(&self) -> Vec<String> {
        vec![
            "-chardev".into(),
            format!("socket,id=qmp,path={},server=off", escape_qemu_opt(&self.path.to_string_lossy())),
            "-mon".into(),
            "chardev=qmp,mode=control".into(),
        ]
    }
}

/// A running QEMU. Killed and reaped on drop unless already reaped.
pub struct QemuProcess {
    child: Child,
    pid: i32,
    status: Option<ExitStatus>,
    pub spawned_at: SystemTime,
    pub spawned_instant: Instant,
}

impl QemuProcess {
    /// Spawns `argv` (argv[0] is the binary) with stdin null, stdout null and
    /// stderr to `stderr`. The child gets SIGKILL if this thread dies
    /// (PR_SET_PDEATHSIG) and its own process group (a terminal's Ctrl-C goes
    /// to us; our handler kills it).
    pub fn spawn(argv: &[String], stderr: Stdio) -> Result<QemuProcess> {
        let parent = std::process::id() as libc::pid_t;
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(stderr);
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
        // Register under the lock so a Ctrl-C cannot slip between spawn and
        // registration.
        let mut reg = registry();
        let spawned_at = SystemTime::now();
        let spawned_instant = Instant::now();
        let child = cmd.spawn().with_context(|| format!("starting {}", argv[0]))?;
        let pid = child.id() as i32;
        reg.pids.insert(pid);
        drop(reg);
        Ok(QemuProcess { child, pid, status: None, spawned_at, spawned_instant })
    }

    pub fn pid(&self) -> i32 {
        self.pid
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

/// Human form of an exit status.
pub fn describe_status(st: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => "unknown status".into(),
    }
}

/// Finds `binary` in `PATH` (or checks it directly if it contains a `/`).
pub fn find_binary(binary: &str) -> Option<PathBuf> {
    if binary.contains('/') {
        let p = PathBuf::from(binary);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(binary))
        .find(|p| std::fs::metadata(p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false))
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

fn probe_version(binary: &str) -> Result<Version> {
    if find_binary(binary).is_none() {
        bail!("{binary} not found in PATH");
    }
    let listener = QmpListener::new()?;
    let mut argv: Vec<String> =
        [binary, "-M", "none", "-S", "-nodefaults", "-display", "none"].iter().map(|s| s.to_string()).collect();
    argv.extend(listener.qemu_args());
    let errf = tempfile::tempfile()?;
    let mut errf_read = errf.try_clone()?;
    let mut qemu = QemuProcess::spawn(&argv, Stdio::from(errf))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let result = (|| -> Result<Version> {
        let stream = qmp::accept(&listener.listener, deadline, || match qemu.try_wait()? {
            Some(st) => bail!("{binary} exited ({}) during the version probe", describe_status(st)),
            None => Ok(()),
        })?;
        let mut q = Qmp::new(stream, None);
        let g = q.greeting(deadline)?;
        let v = qmp::greeting_version(&g).context("greeting without QMP.version.qemu")?;
        q.execute("qmp_capabilities", None, deadline, &mut |_, _| {})?;
        let _ = q.execute("quit", None, deadline, &mut |_, _| {});
        q.no_more_commands = true;
        q.drain_to_eof(deadline, &mut |_, _| {});
        Ok(v)
    })();
    if qemu.wait_until(Instant::now() + Duration::from_secs(3))?.is_none() {
        qemu.kill()?;
    }
    result.map_err(|e| {
        use std::io::{Read, Seek};
        let mut s = String::new();
        let _ = errf_read.rewind();
        let _ = errf_read.read_to_string(&mut s);
        if s.trim().is_empty() { e } else { e.context(s.trim().to_string()) }
    })
}

/// Drops the cached version of `binary` (after installing a new one).
pub fn forget_version(binary: &str) {
    let mut cache = VERSIONS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(m) = cache.as_mut() {
        m.remove(binary);
    }
}
