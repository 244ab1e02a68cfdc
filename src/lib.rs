//! pvagent: a bare-metal guest that makes QEMU emit its crash and watchdog
//! events on demand.
//!
//! The crate is split in two kinds of module:
//! - pure logic (the script parser, fw_cfg directory entries, PCI BAR
//!   decoding, exit codes): compiled and unit-tested on the host;
//! - hardware access, one small typed module per device, compiled only into
//!   the image (`cfg(image)`, set by build.rs for the bare-metal targets).
//!   `unsafe` lives there only.
#![cfg_attr(not(test), no_std)]

pub mod boot_count;
#[cfg(all(image, target_arch = "x86_64"))]
pub mod cmos;
pub mod exit;
pub mod fw_cfg;
pub mod hyperv;
pub mod pci;
pub mod pvpanic;
pub mod script;
pub mod watchdog;

#[cfg(image)]
pub mod agent;
#[cfg(image)]
pub mod arch;
#[cfg(image)]
pub mod log;

/// The agent's version, as logged at boot.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The build id (16 hex digits, from build.rs: a hash of what shapes the
/// image), logged in the agent's first line.
pub const BUILD_ID: &str = env!("PVAGENT_BUILD_ID");

/// The same id as a symbol, so the host decoder can read it from the ELF and
/// refuse a log that another build wrote.
#[cfg(image)]
#[used]
#[unsafe(no_mangle)]
pub static PVAGENT_BUILD_ID: [u8; 16] = {
    let src = BUILD_ID.as_bytes();
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 16 {
        out[i] = src[i];
        i += 1;
    }
    out
};
