//! Host tool of pvagent: builds the bare-metal agent, boots it under QEMU for
//! every board × scenario × variant of `scenarios.toml`, and proves over QMP
//! that exactly the expected events arrived.
//!
//! The binary (`src/main.rs`) is a thin CLI over this library; the e2e test
//! harness (`tests/e2e.rs`) uses the same runner.

pub mod admission;
pub mod agent;
pub mod arch;
pub mod arm64_image;
pub mod artifacts;
pub mod bench;
pub mod cases;
pub mod clock;
pub mod config;
pub mod defmt_log;
pub mod disk;
pub mod error;
pub mod fuzz;
pub mod guest_timing;
pub mod handover;
pub mod images;
pub mod launch;
pub mod libvirt;
pub mod matcher;
pub mod nested;
pub mod qemu;
pub mod qemu_cmd;
pub mod qmp;
pub mod report;
pub mod rom;
pub mod runner;
pub mod schedule;
pub mod setup;
pub mod timing;
pub mod util;

use std::path::{Path, PathBuf};

use anyhow::Result;

/// The loaded, validated configuration of the workspace.
pub struct Project {
    pub root: PathBuf,
    pub boards: Vec<config::Board>,
    pub table: config::Scenarios,
}

impl Project {
    /// Loads `boards/*.toml` and the scenario table (default
    /// `<root>/scenarios.toml`). Every validation error is reported at once.
    pub fn load(root: &Path, scenarios: Option<&Path>) -> Result<Project> {
        let boards = config::load_boards(&root.join("boards"), root).map_err(anyhow::Error::msg)?;
        let file = scenarios.map(Path::to_path_buf).unwrap_or_else(|| root.join("scenarios.toml"));
        let text =
            std::fs::read_to_string(&file).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
        let shown = file.strip_prefix(root).unwrap_or(&file);
        let table = config::parse_scenarios(shown, &text, &boards).map_err(anyhow::Error::msg)?;
        Ok(Project { root: root.to_path_buf(), boards, table })
    }

    pub fn board(&self, name: &str) -> Result<&config::Board> {
        self.boards.iter().find(|b| b.name == name).ok_or_else(|| {
            anyhow::anyhow!(
                "unknown board `{name}` (known: {})",
                self.boards.iter().map(|b| b.name.as_str()).collect::<Vec<_>>().join(", ")
            )
        })
    }
}
