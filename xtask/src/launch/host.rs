//! What the host can do: the capabilities boards ask for (`requires`), and
//! the `instead_of` rule, for every launcher. Probes are memoized per
//! process.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::config::{Board, HostFeature};
use crate::nested::kvm;

static PROBES: Mutex<BTreeMap<String, Result<(), String>>> = Mutex::new(BTreeMap::new());

/// `f()`, once per process and `key`.
pub(super) fn memo(key: String, f: impl FnOnce() -> Result<(), String>) -> Result<(), String> {
    let mut m = PROBES.lock().unwrap_or_else(|e| e.into_inner());
    m.entry(key).or_insert_with(f).clone()
}

/// Is `f` available on this host? (Memoized.)
fn feature_available(f: HostFeature) -> Result<(), String> {
    memo(format!("feature {}", f.name()), || match f {
        HostFeature::Kvm => std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .map(drop)
            .map_err(|e| format!("/dev/kvm is not usable: {e}")),
        HostFeature::KvmHyperv => kvm::direct_hyperv_available(),
    })
}

fn all_available(req: &[HostFeature]) -> Result<(), String> {
    req.iter().try_for_each(|&f| feature_available(f).map_err(|e| format!("{}: {e}", f.name())))
}

/// Why `board`'s `instead_of` or `requires` keep it from running here.
pub(super) fn requirements_problem(board: &Board) -> Option<String> {
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
    None
}
