//! libvirt's daemons for the harness.
//!
//! When libvirt answers on [`super::URI`] (a system service, or daemons a
//! person started) the harness uses it and touches nothing of it but its own
//! transient domains. When nothing answers (a CI machine without systemd,
//! where installing libvirt starts no service) the harness starts what is
//! missing itself: `virtlogd` (libvirt's QEMU driver sends every domain's
//! log through it) and then `libvirtd` (Debian's monolithic daemon), both in
//! the foreground as children of this process, with their output in
//! `target/pvagent-libvirt/`. It stops exactly those at its end ([`stop`]:
//! the end of `cargo xtask` and of the e2e harness, and the stop hook on
//! Ctrl-C, SIGTERM and SIGHUP), after destroying its domains. Should the
//! harness be killed outright, they get SIGTERM too (PR_SET_PDEATHSIG, from
//! a thread that lives as long as the process).
//!
//! Once libvirt answers, domains named like the harness's (`pvagent-<pid>-…`)
//! whose process is gone and whose description is [`super::MARKER`] are
//! destroyed: leftovers of a harness that was killed outright.

use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use super::{MARKER, VIRSH_TIMEOUT, pid_of_name, virsh};
use crate::util::find_program;

/// virtlogd's socket: something listening there is a virtlogd.
const VIRTLOGD_SOCK: &str = "/run/libvirt/virtlogd-sock";
/// How long a started daemon may take to answer (libvirtd probes every
/// installed QEMU's capabilities on its first start: seconds).
const START_LIMIT: Duration = Duration::from_secs(60);
/// How long a daemon may take to stop after SIGTERM.
const STOP_LIMIT: Duration = Duration::from_secs(15);

struct Started {
    what: &'static str,
    child: Child,
}

#[derive(Default)]
struct State {
    /// The outcome of the first [`ensure`] (kept until [`stop`]).
    checked: Option<Result<String, String>>,
    /// Daemons this process started, in start order.
    ours: Vec<Started>,
}

static STATE: Mutex<State> = Mutex::new(State { checked: None, ours: Vec::new() });

fn state() -> std::sync::MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Does libvirt answer on [`super::URI`]?
pub fn answering() -> bool {
    virsh(&["version"], Duration::from_secs(10)).is_ok()
}

/// Makes sure libvirt answers, starting virtlogd and libvirtd when nothing
/// does (once per process; every caller waits for the first). `Ok`: a line
/// saying whose daemons run; `Err`: why libvirt cannot be used.
pub fn ensure() -> Result<String, String> {
    let mut s = state();
    if let Some(r) = &s.checked {
        return r.clone();
    }
    let r = if answering() {
        Ok("libvirt: using the libvirt that answers on qemu:///system (the harness touches only its own domains)"
            .into())
    } else {
        start(&mut s.ours).map(|what| {
            format!(
                "libvirt: nothing answered on qemu:///system: started {what} (logs in {}); stopped at the end",
                log_dir().display()
            )
        })
    };
    if r.is_ok() {
        remove_leftovers();
    }
    s.checked = Some(r.clone());
    r
}

/// Whether this process started daemons that still run.
pub fn started_any() -> bool {
    !state().ours.is_empty()
}

/// Stops the daemons this process started (after destroying its domains),
/// libvirtd first; each gets SIGTERM and [`STOP_LIMIT`] before SIGKILL.
/// Nothing to do when it started none.
pub fn stop() {
    let ours = {
        let mut s = state();
        s.checked = None;
        std::mem::take(&mut s.ours)
    };
    if ours.is_empty() {
        return;
    }
    super::destroy_all();
    for mut d in ours.into_iter().rev() {
        let pid = d.child.id() as i32;
        // SAFETY: kill(2) on our own unreaped child.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + STOP_LIMIT;
        loop {
            match d.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = d.child.kill();
                    let _ = d.child.wait();
                    let _ = std::io::Write::write_fmt(
                        &mut std::io::stderr(),
                        format_args!("libvirt: {} did not stop within {} s: killed\n", d.what, STOP_LIMIT.as_secs()),
                    );
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

/// Where the started daemons' output goes.
pub fn log_dir() -> PathBuf {
    crate::util::target_dir(&crate::agent::workspace_root()).join("pvagent-libvirt")
}

fn program(name: &str) -> Option<PathBuf> {
    find_program(name).or_else(|| {
        let p = Path::new("/usr/sbin").join(name);
        p.is_file().then_some(p)
    })
}

/// Starts virtlogd (unless one listens) and libvirtd; returns what it
/// started.
fn start(ours: &mut Vec<Started>) -> Result<String, String> {
    let install = "libvirt is not installed: run `cargo xtask setup --board <a libvirt board>` (as root it installs \
                   libvirt-daemon-system and libvirt-clients)";
    let libvirtd = program("libvirtd").ok_or(install)?;
    let virtlogd = program("virtlogd").ok_or(install)?;
    if find_program("virsh").is_none() {
        return Err(install.into());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("no libvirt answers on qemu:///system, and only root can start its system daemons: start \
                    libvirtd (e.g. `sudo systemctl start libvirtd`), or run as root"
            .into());
    }
    super::install_stop_hook();
    let dir = log_dir();
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let mut what = Vec::new();
    if UnixStream::connect(VIRTLOGD_SOCK).is_err() {
        let child = spawn_daemon(&virtlogd, &dir.join("virtlogd.log"), false)?;
        ours.push(Started { what: "virtlogd", child });
        wait_for("virtlogd", ours, &dir.join("virtlogd.log"), || UnixStream::connect(VIRTLOGD_SOCK).is_ok())?;
        what.push("virtlogd");
    }
    let child = spawn_daemon(&libvirtd, &dir.join("libvirtd.log"), true)?;
    ours.push(Started { what: "libvirtd", child });
    wait_for("libvirtd", ours, &dir.join("libvirtd.log"), answering)?;
    what.push("libvirtd");
    Ok(what.join(" and "))
}

/// Waits until `ready`, or fails when the last started daemon exits or
/// [`START_LIMIT`] passes (naming its log).
fn wait_for(what: &str, ours: &mut [Started], log: &Path, mut ready: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + START_LIMIT;
    loop {
        if ready() {
            return Ok(());
        }
        let last = ours.last_mut().expect("just started");
        if let Ok(Some(st)) = last.child.try_wait() {
            let tail = std::fs::read_to_string(log).unwrap_or_default();
            return Err(format!(
                "{what} exited ({st}) before answering: {}",
                crate::util::excerpt(&tail, 3, 400).replace('\n', " | ")
            ));
        }
        if Instant::now() >= deadline {
            return Err(format!("{what} did not answer within {} s (see {})", START_LIMIT.as_secs(), log.display()));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Spawns a daemon in the foreground, from a thread that lives as long as
/// the process: PR_SET_PDEATHSIG fires when the spawning thread ends, and it
/// must fire only when the whole process does (then the daemon gets
/// SIGTERM and shuts down cleanly). Its own process group: a terminal's
/// Ctrl-C reaches the harness, which destroys its domains first.
///
/// `reaper` (libvirtd): the child is a reaper that runs the daemon as its own
/// child (see [`reaper_then_exec`]); the returned [`Child`] is the reaper,
/// which passes SIGTERM, SIGINT and SIGHUP on and exits with the daemon.
fn spawn_daemon(program: &Path, log: &Path, reaper: bool) -> Result<Child, String> {
    let out = std::fs::File::create(log).map_err(|e| format!("creating {}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let program = program.to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    let shown = program.display().to_string();
    std::thread::Builder::new()
        .name("libvirt-daemon".into())
        .spawn(move || {
            let parent = std::process::id() as libc::pid_t;
            let mut cmd = Command::new(&program);
            cmd.stdin(Stdio::null()).stdout(out).stderr(err).process_group(0);
            // SAFETY: only async-signal-safe libc calls between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    if libc::getppid() != parent {
                        return Err(std::io::Error::other("parent exited"));
                    }
                    Ok(())
                });
            }
            if reaper {
                // SAFETY: reaper_then_exec makes only async-signal-safe calls.
                unsafe {
                    cmd.pre_exec(reaper_then_exec);
                }
            }
            let _ = tx.send(cmd.spawn());
            loop {
                std::thread::park();
            }
        })
        .map_err(|e| e.to_string())?;
    rx.recv().map_err(|e| e.to_string())?.map_err(|e| format!("starting {shown}: {e}"))
}

/// libvirtd's pid, in the reaper (see [`reaper_then_exec`]).
static REAPED_DAEMON: AtomicI32 = AtomicI32::new(0);

extern "C" fn pass_on(sig: libc::c_int) {
    let pid = REAPED_DAEMON.load(Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill(2) is async-signal-safe.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

/// Between fork and exec of libvirtd: this process becomes a child
/// subreaper (PR_SET_CHILD_SUBREAPER) and forks again; the new child goes
/// on to exec libvirtd, this one stays its parent and reaps every child it
/// gets until libvirtd exits, then exits with libvirtd's status.
///
/// Why: libvirtd daemonizes each QEMU it starts (its domains', its
/// capability probes'), so QEMU's parent is the nearest subreaper, else
/// PID 1. libvirt waits for a QEMU it stopped to be gone by polling
/// `kill(pid, 0)` every 200 ms, and a zombie still counts. Where PID 1 reaps
/// late (measured on the 2-CPU machines here: a destroyed domain's QEMU
/// stayed a zombie for about 1 s, so `virsh destroy` took 1.2-2.5 s, SIGTERM
/// to "shutting down" in libvirt's log 1.2 s) every domain's end waited
/// for it; with this reaper SIGTERM to "shutting down" takes 0.2 s. (The
/// harness itself cannot be the subreaper: it would have to reap children
/// it did not spawn without taking its own children's exit statuses.)
///
/// Only async-signal-safe calls (the harness is multi-threaded): prctl,
/// fork, sigaction, close_range, waitpid, kill, _exit.
fn reaper_then_exec() -> std::io::Result<()> {
    // SAFETY: async-signal-safe calls on this process's own state.
    unsafe {
        if libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let daemon = libc::fork();
        if daemon < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if daemon == 0 {
            // libvirtd-to-be: it dies with the reaper, as the reaper does with the harness.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong);
            return Ok(());
        }
        REAPED_DAEMON.store(daemon, Ordering::Relaxed);
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = pass_on as *const () as libc::sighandler_t;
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
        // Every descriptor above stderr: among them the harness's end of
        // the pipe that tells it the exec happened (libvirtd's copy closes
        // on its exec).
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
        loop {
            let mut status = 0;
            let got = libc::waitpid(-1, &mut status, 0);
            if got == daemon {
                let code =
                    if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { 128 + libc::WTERMSIG(status) };
                libc::_exit(code);
            }
            if got < 0 && *libc::__errno_location() != libc::EINTR {
                libc::_exit(1);
            }
        }
    }
}

/// Destroys domains a killed harness left behind (see the module docs), all
/// at once, and removes the logs and core files of its domains.
fn remove_leftovers() {
    let Ok(list) = virsh(&["list", "--name"], VIRSH_TIMEOUT) else { return };
    remove_dead_harness_files(&list);
    let threads: Vec<_> = list
        .lines()
        .map(str::trim)
        .filter_map(|name| Some((name.to_string(), pid_of_name(name)?)))
        .filter(|&(_, pid)| {
            // SAFETY: signal 0 only checks whether the pid exists.
            let gone = unsafe { libc::kill(pid, 0) } != 0
                && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
            pid != std::process::id() as i32 && gone
        })
        .map(|(name, pid)| {
            std::thread::spawn(move || {
                let ours = virsh(&["desc", &name], VIRSH_TIMEOUT).is_ok_and(|d| d.trim() == MARKER);
                if ours && super::destroy(&name).is_ok() {
                    eprintln!("libvirt: destroyed {name}, left behind by a harness (pid {pid}) that no longer runs");
                    super::remove_files_of(pid);
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

/// The logs and core files of domains whose harness no longer runs and
/// which no longer exist (`running`: `virsh list --name`; a domain that
/// still runs is destroyed first, and its files then).
fn remove_dead_harness_files(running: &str) {
    let Ok(rd) = std::fs::read_dir(super::DOMAIN_LOG_DIR) else { return };
    let mut pids: Vec<i32> = rd.flatten().filter_map(|e| pid_of_name(&e.file_name().to_string_lossy())).collect();
    pids.sort_unstable();
    pids.dedup();
    for pid in pids {
        // SAFETY: signal 0 only checks whether the pid exists.
        let gone =
            unsafe { libc::kill(pid, 0) } != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        let has_domain = running.lines().any(|n| pid_of_name(n.trim()) == Some(pid));
        if gone && !has_domain && pid != std::process::id() as i32 {
            super::remove_files_of(pid);
        }
    }
}
