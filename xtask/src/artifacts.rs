//! `target/pvagent-runs/<run-id>/…`: creating run directories, the `latest`
//! symlink and pruning to the newest few.
//!
//! Several invocations may share one checkout (a `qemu-run` next to a
//! `cargo xtask test`), so a run that is still going on is never pruned:
//! each run directory has a lock file ([`LOCK_FILE`]) that the process that
//! made it holds locked (`flock`) until it exits, however it exits. Creating
//! a run (directory and lock) and pruning happen under one more lock
//! ([`CREATE_LOCK`]) in the runs root, so a pruner never sees a new run
//! before its lock is held.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::SystemTime;

use anyhow::{Context, Result};

use crate::util::utc_stamp;

/// How many run directories are kept.
pub const KEEP_RUNS: usize = 10;

/// In each run directory: locked while the run's process lives.
pub const LOCK_FILE: &str = ".lock";
/// In the runs root: serialises creating runs and pruning.
pub const CREATE_LOCK: &str = ".create.lock";

/// The lock files of this process's runs, held (open and locked) until the
/// process exits; the kernel releases them then, even on SIGKILL.
static HELD: Mutex<Vec<File>> = Mutex::new(Vec::new());

pub fn runs_root(target_dir: &Path) -> PathBuf {
    target_dir.join("pvagent-runs")
}

/// `flock(2)` on `file`; `Ok(false)` when `nonblocking` and another open
/// file (of any process, this one included) holds it.
fn flock(file: &File, nonblocking: bool) -> std::io::Result<bool> {
    let op = libc::LOCK_EX | if nonblocking { libc::LOCK_NB } else { 0 };
    loop {
        // SAFETY: flock on a descriptor owned by `file`.
        if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) if nonblocking => return Ok(false),
            _ => return Err(e),
        }
    }
}

/// Creates `<root>/<UTC stamp>-<pid>[-n]` with its lock held for the rest of
/// this process, points `latest` at it and prunes old runs that are over.
pub fn new_run_dir(runs_root: &Path) -> Result<PathBuf> {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    std::fs::create_dir_all(runs_root).with_context(|| format!("creating {}", runs_root.display()))?;
    let create_lock = runs_root.join(CREATE_LOCK);
    let guard = File::create(&create_lock).with_context(|| format!("creating {}", create_lock.display()))?;
    flock(&guard, false).with_context(|| format!("locking {}", create_lock.display()))?;
    let base = format!("{}-{}", utc_stamp(SystemTime::now()), std::process::id());
    let dir = loop {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let name = if n == 0 { base.clone() } else { format!("{base}-{n}") };
        let d = runs_root.join(name);
        match std::fs::create_dir(&d) {
            Ok(()) => break d,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("creating {}", d.display())),
        }
    };
    let lock_path = dir.join(LOCK_FILE);
    let lock = File::create(&lock_path).with_context(|| format!("creating {}", lock_path.display()))?;
    if !flock(&lock, true).with_context(|| format!("locking {}", lock_path.display()))? {
        anyhow::bail!("{} is locked by another process", lock_path.display());
    }
    HELD.lock().unwrap_or_else(|e| e.into_inner()).push(lock);
    let latest = runs_root.join("latest");
    let tmp = runs_root.join(format!(".latest-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    if std::os::unix::fs::symlink(dir.file_name().expect("name"), &tmp).is_ok() {
        let _ = std::fs::rename(&tmp, &latest);
    }
    prune_locked(runs_root, KEEP_RUNS, &dir);
    drop(guard);
    Ok(dir)
}

/// Run directory names, oldest first (names start with a sortable stamp).
fn run_dirs(runs_root: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(runs_root)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.as_bytes().first().is_some_and(|b| b.is_ascii_digit()))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Removes all but the `keep` newest run directories, never `current` and
/// never a run that is still going on (its lock held). [`CREATE_LOCK`] is
/// held by the caller.
fn prune_locked(runs_root: &Path, keep: usize, current: &Path) {
    let dirs = run_dirs(runs_root);
    if dirs.len() <= keep {
        return;
    }
    for d in &dirs[..dirs.len() - keep] {
        if d == current {
            continue;
        }
        // Hold the run's lock while removing it: a live run keeps it.
        match File::open(d.join(LOCK_FILE)) {
            Ok(f) => {
                if flock(&f, true).unwrap_or(false) {
                    let _ = std::fs::remove_dir_all(d);
                }
            }
            Err(_) => {
                let _ = std::fs::remove_dir_all(d);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Is the run in `dir` still going on (its lock held by a live process)?
    /// A directory without a lock file (older tools) counts as finished.
    fn run_is_alive(dir: &Path) -> bool {
        match File::open(dir.join(LOCK_FILE)) {
            Ok(f) => !flock(&f, true).unwrap_or(true),
            Err(_) => false,
        }
    }

    /// Removes all but the `keep` newest run directories, never `current` and
    /// never a run that is still going on ([`run_is_alive`]), as
    /// [`new_run_dir`] does.
    fn prune(runs_root: &Path, keep: usize, current: &Path) {
        let Ok(guard) = File::create(runs_root.join(CREATE_LOCK)) else { return };
        if flock(&guard, false).is_ok() {
            prune_locked(runs_root, keep, current);
        }
    }

    #[test]
    fn keeps_ten_newest_and_latest() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("runs");
        std::fs::create_dir_all(&root).unwrap();
        for i in 0..12 {
            std::fs::create_dir(root.join(format!("20000101-0000{i:02}-1"))).unwrap();
        }
        let d = new_run_dir(&root).unwrap();
        let left = run_dirs(&root);
        assert_eq!(left.len(), KEEP_RUNS);
        assert_eq!(left.last().unwrap(), &d);
        assert!(!root.join("20000101-000000-1").exists());
        let target = std::fs::read_link(root.join("latest")).unwrap();
        assert_eq!(root.join(target), d);
        let d2 = new_run_dir(&root).unwrap();
        assert_ne!(d, d2);
    }

    /// Another invocation's run (`other`, its lock held through an open file
    /// of its own, as another process's would be) survives any number of
    /// newer runs; once it is over, the next run prunes it.
    #[test]
    fn a_live_run_is_never_pruned() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("runs");
        std::fs::create_dir_all(&root).unwrap();
        let other = root.join("20000101-000000-4242");
        std::fs::create_dir(&other).unwrap();
        let held = File::create(other.join(LOCK_FILE)).unwrap();
        assert!(flock(&held, true).unwrap());
        std::fs::write(other.join("result.json"), "{}").unwrap();
        // An old run of an older tool (no lock file) and one that is over.
        std::fs::create_dir(root.join("20000101-000001-1")).unwrap();
        std::fs::create_dir(root.join("20000101-000002-2")).unwrap();
        File::create(root.join("20000101-000002-2").join(LOCK_FILE)).unwrap();
        assert!(run_is_alive(&other));
        assert!(!run_is_alive(&root.join("20000101-000001-1")));
        assert!(!run_is_alive(&root.join("20000101-000002-2")));
        let mine: Vec<PathBuf> = (0..KEEP_RUNS + 3).map(|_| new_run_dir(&root).unwrap()).collect();
        assert!(other.join("result.json").exists(), "the live run was pruned");
        assert!(!root.join("20000101-000001-1").exists());
        assert!(!root.join("20000101-000002-2").exists());
        // This process's own runs are alive too: none of them was pruned.
        assert!(mine.iter().all(|d| d.exists() && run_is_alive(d)));
        drop(held);
        // A child forked meanwhile by another test thread shares the lock
        // until it execs (the descriptor is close-on-exec): give it a moment.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while run_is_alive(&other) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(!run_is_alive(&other));
        new_run_dir(&root).unwrap();
        assert!(!other.exists(), "a finished run is pruned");
    }

    /// The same with a real second process holding the lock (`flock(1)`).
    #[test]
    fn a_run_locked_by_another_process_is_alive() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("20000101-000000-1");
        std::fs::create_dir(&dir).unwrap();
        let lock = dir.join(LOCK_FILE);
        File::create(&lock).unwrap();
        if std::process::Command::new("flock").arg("--version").output().is_err() {
            eprintln!("flock(1) not installed: skipped");
            return;
        }
        // One process (sh, then sleep) holding the lock on fd 9.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "exec 9>>\"$1\" && flock 9 && exec sleep 30", "sh"])
            .arg(&lock)
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !run_is_alive(&dir) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(run_is_alive(&dir));
        prune(tmp.path(), 0, Path::new("/none"));
        assert!(dir.exists());
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!run_is_alive(&dir));
        prune(tmp.path(), 0, Path::new("/none"));
        assert!(!dir.exists());
    }
}
