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
