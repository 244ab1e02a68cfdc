//! The contract with the agent: how it is built, where the script goes and
//! what its exit codes mean.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Cargo package and target of the x86_64 image (every architecture's
/// target: [`crate::images::Arch::target`]).
pub const PACKAGE: &str = "pvagent";
pub const TARGET: &str = "x86_64-unknown-none";

/// fw_cfg file the agent reads its script from.
pub const SCRIPT_FW_CFG_NAME: &str = "opt/pvagent/script";

/// isa-debug-exit values written by the agent (port 0xf4, 4 bytes) …
pub const DEBUG_EXIT_SCRIPT_ERROR: u32 = 0x70;
pub const DEBUG_EXIT_MISSING_DEVICE: u32 = 0x71;
pub const DEBUG_EXIT_RUST_PANIC: u32 = 0x72;
pub const DEBUG_EXIT_CPU_EXCEPTION: u32 = 0x73;

/// … and the QEMU exit status each produces: `(value << 1) | 1`.
pub const fn qemu_status_for(value: u32) -> i32 {
    (((value << 1) | 1) & 0xff) as i32
}

/// Script failed to parse or a step failed: 225.
pub const EXIT_SCRIPT_ERROR: i32 = qemu_status_for(DEBUG_EXIT_SCRIPT_ERROR);
/// A needed device or capability is missing: 227.
pub const EXIT_MISSING_DEVICE: i32 = qemu_status_for(DEBUG_EXIT_MISSING_DEVICE);
/// The agent hit a Rust panic: 229.
pub const EXIT_RUST_PANIC: i32 = qemu_status_for(DEBUG_EXIT_RUST_PANIC);
/// The agent took a CPU exception and has no pvpanic device to report it: 231.
pub const EXIT_CPU_EXCEPTION: i32 = qemu_status_for(DEBUG_EXIT_CPU_EXCEPTION);

/// A short explanation of a QEMU exit status, e.g. " (agent: script error)".
pub fn explain_exit(code: i32) -> String {
    let what = match code {
        EXIT_SCRIPT_ERROR => "agent: script error",
        EXIT_MISSING_DEVICE => "agent: missing device/capability",
        EXIT_RUST_PANIC => "agent: Rust panic",
        EXIT_CPU_EXCEPTION => "agent: CPU exception",
        c if c & 1 == 1 && c > 1 => return format!(" (agent exit:{})", c >> 1),
        _ => return String::new(),
    };
    format!(" ({what})")
}

/// The workspace root (parent of the xtask crate).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Cargo's target directory (`CARGO_TARGET_DIR` respected; relative values
/// are relative to the workspace root, where cargo is run).
pub fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => {
            let p = PathBuf::from(d);
            if p.is_absolute() { p } else { root.join(p) }
        }
        _ => root.join("target"),
    }
}

/// Where `cargo build --release -p pvagent --target x86_64-unknown-none` puts the image.
pub fn image_path(root: &Path) -> PathBuf {
    target_dir(root).join(TARGET).join("release").join(PACKAGE)
}

/// Builds the x86_64 image and returns its path (all architectures:
/// [`crate::images::build`]).
pub fn build_image(root: &Path) -> Result<PathBuf> {
    use crate::images::{Arch, build};
    let mut built = build(root, &[Arch::X86_64].into())?;
    built.remove(&Arch::X86_64).context("no x86_64 image built")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        assert_eq!(EXIT_SCRIPT_ERROR, 225);
        assert_eq!(EXIT_MISSING_DEVICE, 227);
        assert_eq!(EXIT_RUST_PANIC, 229);
        assert_eq!(EXIT_CPU_EXCEPTION, 231);
        assert_eq!(explain_exit(231), " (agent: CPU exception)");
        assert_eq!(qemu_status_for(5), 11);
        assert_eq!(explain_exit(225), " (agent: script error)");
        assert_eq!(explain_exit(11), " (agent exit:5)");
        assert_eq!(explain_exit(0), "");
        assert_eq!(explain_exit(1), "");
    }
}
