//! The contract with the agent: how it is built, where the script goes and
//! what its exit codes mean. The script key, the limits and the exit codes
//! are the agent's own definitions, from the `pvagent` crate's host build
//! (pure modules, no hardware dependencies), never copies of them.

use std::path::{Path, PathBuf};

pub use pvagent::exit::{ErrorExit, qemu_status};
/// fw_cfg file the agent reads its script from.
pub use pvagent::fw_cfg::SCRIPT_FILE as SCRIPT_FW_CFG_NAME;
pub use pvagent::script::{MAX_DURATION_US, MAX_SCRIPT_LEN, MAX_STEP_LEN, MAX_STEPS, MAX_USER_EXIT_CODE};

/// isa-debug-exit values written by the agent (port 0xf4, 4 bytes) …
pub const DEBUG_EXIT_SCRIPT_ERROR: u32 = ErrorExit::Script.code() as u32;
pub const DEBUG_EXIT_MISSING_DEVICE: u32 = ErrorExit::Device.code() as u32;
pub const DEBUG_EXIT_RUST_PANIC: u32 = ErrorExit::Panic.code() as u32;
pub const DEBUG_EXIT_CPU_EXCEPTION: u32 = ErrorExit::Fault.code() as u32;

/// … and the QEMU exit status each produces: `(value << 1) | 1`.
pub const fn qemu_status_for(value: u32) -> i32 {
    qemu_status(value as u8) as i32
}

/// Script failed to parse or a step failed: 225.
pub const EXIT_SCRIPT_ERROR: i32 = ErrorExit::Script.qemu_status() as i32;
/// A needed device or capability is missing: 227.
pub const EXIT_MISSING_DEVICE: i32 = ErrorExit::Device.qemu_status() as i32;
/// The agent hit a Rust panic: 229.
pub const EXIT_RUST_PANIC: i32 = ErrorExit::Panic.qemu_status() as i32;
/// The agent took a CPU exception and has no pvpanic device to report it: 231.
pub const EXIT_CPU_EXCEPTION: i32 = ErrorExit::Fault.qemu_status() as i32;

/// A short explanation of a QEMU exit status, e.g. " (agent: script error)".
pub fn explain_exit(code: i32) -> String {
    let agent = ErrorExit::ALL.into_iter().find(|e| i32::from(e.qemu_status()) == code);
    let what = match agent {
        Some(ErrorExit::Script) => "agent: script error",
        Some(ErrorExit::Device) => "agent: missing device/capability",
        Some(ErrorExit::Panic) => "agent: Rust panic",
        Some(ErrorExit::Fault) => "agent: CPU exception",
        None if code & 1 == 1 && code > 1 => return format!(" (agent exit:{})", code >> 1),
        None => return String::new(),
    };
    format!(" ({what})")
}

/// The workspace root (parent of the xtask crate).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Cargo's target directory (one definition, in util).
pub use crate::util::target_dir;

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

    /// The contract comes from the agent's crate: the values the README
    /// documents.
    #[test]
    fn contract_is_the_agents() {
        assert_eq!(SCRIPT_FW_CFG_NAME, "opt/pvagent/script");
        assert_eq!((MAX_SCRIPT_LEN, MAX_STEPS, MAX_STEP_LEN), (1024, 32, 128));
        assert_eq!(MAX_DURATION_US, 1_000_000 * 1_000_000);
        assert_eq!(qemu_status_for(MAX_USER_EXIT_CODE as u32), 223);
        assert_eq!(
            [DEBUG_EXIT_SCRIPT_ERROR, DEBUG_EXIT_MISSING_DEVICE, DEBUG_EXIT_RUST_PANIC, DEBUG_EXIT_CPU_EXCEPTION],
            [0x70, 0x71, 0x72, 0x73]
        );
        let waits = ErrorExit::ALL.map(ErrorExit::s390_wait_address);
        assert_eq!(waits, [0xbad7000, 0xbad7100, 0xbad7200, 0xbad7300]);
        assert_eq!(pvagent::exit::s390_program_check_address(1), 0xbad0010);
    }
}
