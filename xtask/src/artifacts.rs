//! `target/pvagent-runs/<run-id>/…`: creating run directories, the `latest`
//! symlink and pruning to the newest few.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::SystemTime;

use anyhow::{Context, Result};

use crate::util::utc_stamp;

/// How many run directories are kept.
pub const KEEP_RUNS: usize = 10;

pub fn runs_root(target_dir: &Path) -> PathBuf {
    target_dir.join("pvagent-runs")
}

/// Creates `<root>/<UTC stamp>-<pid>[-n]`, points `latest` at it and prunes
/// old runs.
pub fn new_run_dir(runs_root: &Path) -> Result<PathBuf> {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    std::fs::create_dir_all(runs_root).with_context(|| format!("creating {}", runs_root.display()))?;
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
    let latest = runs_root.join("latest");
    let tmp = runs_root.join(format!(".latest-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    if std::os::unix::fs::symlink(dir.file_name().expect("name"), &tmp).is_ok() {
        let _ = std::fs::rename(&tmp, &latest);
    }
    prune(runs_root, KEEP_RUNS, &dir);
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

/// Removes all but the `keep` newest run directories (never `current`).
pub fn prune(runs_root: &Path, keep: usize, current: &Path) {
    let dirs = run_dirs(runs_root);
    if dirs.len() <= keep {
        return;
    }
    for d in &dirs[..dirs.len() - keep] {
        if d != current {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
