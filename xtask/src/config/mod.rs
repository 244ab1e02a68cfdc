//! The data of the host tool: `boards/*.toml` ([`board`]) and
//! `scenarios.toml` ([`scenario`], with its `[scripts.LIST]` lists in
//! [`scripts`]), parsed and strictly validated.
//!
//! Every error names the file, the board or scenario, the field and a fix
//! ([`ConfigError`]), and all of them are reported before anything runs.
//! The expectation types live with the matcher ([`crate::matcher::expect`]),
//! timing validation with timing ([`crate::timing`]), case expansion in
//! [`crate::cases`]; they are re-exported here under their old paths.

use std::path::{Path, PathBuf};

pub mod board;
pub mod disk;
pub mod libvirt;
pub mod scenario;
pub mod scripts;

#[cfg(test)]
pub(crate) mod fixtures;

pub use board::{Board, BoardKind, Boot, HostFeature, Launch, Ram, ScriptVia};
pub use disk::{DiskBoot, DiskBus, Uefi};
pub use libvirt::{LibvirtChecks, LibvirtRow};
pub use scenario::{
    DEFAULT_SETTLE, DEFAULT_TIMEOUT, End, HostAction, HostStep, QmpCommand, RUN_STATES, Scenario, Scenarios, Variant,
};

pub use crate::clock::Clock;
pub use crate::error::ConfigError;
pub use crate::matcher::{ExpectEntry, Expected, WATCHED_EVENTS};

/// Parses one board file's text (`file` is used in messages and to derive the
/// expected name). The typed error: [`board::parse`].
pub fn parse_board(file: &Path, text: &str, root: &Path) -> Result<Board, String> {
    board::parse(file, text, root).map_err(|e| e.to_string())
}

/// Parses and validates `scenarios.toml` against the known boards; all
/// errors, one after the other. The typed errors: [`scenario::parse`].
pub fn parse_scenarios(file: &Path, text: &str, boards: &[Board]) -> Result<Scenarios, String> {
    scenario::parse(file, text, boards).map_err(|e| crate::error::join(&e))
}

/// Loads every `*.toml` in `dir`, sorted by name. All errors are collected.
pub fn load_boards(dir: &Path, root: &Path) -> Result<Vec<Board>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("cannot read board directory {}: {e}", dir.display()))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(format!("no board files in {} (fix: add e.g. boards/pc.toml)", dir.display()));
    }
    let mut boards = Vec::new();
    let mut errors = Vec::new();
    for f in files {
        let shown = f.strip_prefix(root).unwrap_or(&f).to_path_buf();
        match std::fs::read_to_string(&f) {
            Ok(text) => match board::parse(&shown, &text, root) {
                Ok(b) => boards.push(b),
                Err(e) => errors.push(e),
            },
            Err(e) => errors.push(crate::error::Place::new(shown.display().to_string()).plain(e.to_string())),
        }
    }
    if errors.is_empty() {
        // Across boards (`instead_of`) and the nested kind's own rules.
        errors = board::check_boards(&mut boards);
    }
    if errors.is_empty() { Ok(boards) } else { Err(crate::error::join(&errors)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workspace_boards_load() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let boards = load_boards(&root.join("boards"), root).unwrap();
        assert!(boards.iter().any(|b| b.name == "q35" && b.arch == crate::arch::Arch::X86_64));
        assert!(boards.iter().any(|b| b.arch == "s390x"));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pc.toml"), fixtures::PC.replace("128M", "lots")).unwrap();
        std::fs::write(dir.path().join("x.toml"), fixtures::PC).unwrap();
        let e = load_boards(dir.path(), dir.path()).unwrap_err();
        assert_eq!(
            e,
            "pc.toml: field `memory`: \"lots\" is not a memory size\n  fix: write a number with an optional \
             K/M/G suffix, e.g. \"128M\"\nx.toml: field `name`: is \"pc\" but the file is named x.toml\n  \
             fix: set name = \"x\" or rename the file to pc.toml"
        );
    }
}
