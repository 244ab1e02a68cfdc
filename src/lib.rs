//! pvagent: a bare-metal guest that makes QEMU emit its crash and watchdog
//! events on demand.
//!
//! The crate is split in two kinds of module:
//! - pure logic (the script parser, fw_cfg directory entries, PCI BAR
//!   decoding, exit codes): compiled and unit-tested on the host;
//! - hardware access, one small typed module per device, compiled only for
//!   the bare-metal target (`target_os = "none"`). `unsafe` lives there only.
#![cfg_attr(not(test), no_std)]

pub mod cmos;
pub mod exit;
pub mod fw_cfg;
pub mod hyperv;
pub mod pci;
pub mod pvpanic;
pub mod script;
pub mod watchdog;

#[cfg(target_os = "none")]
pub mod agent;
#[cfg(target_os = "none")]
pub mod arch;
#[cfg(target_os = "none")]
pub mod log;
#[cfg(target_os = "none")]
pub mod serial;
#[cfg(target_os = "none")]
pub mod time;

/// The agent's version, as logged at boot.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
