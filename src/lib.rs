//! pvagent: a bare-metal guest that makes QEMU emit its crash and watchdog
//! events on demand.
//!
//! The crate is split in two kinds of module:
//! - pure logic (the script parser, fw_cfg directory entries, PCI BAR
//!   decoding, exit codes, pvpanic events, s390x PSW bits, watchdog
//!   arithmetic): compiled and unit-tested on the host;
//! - hardware access, one small typed module per device, compiled only into
//!   the image (`cfg(image)`, set by build.rs for the bare-metal targets).
//!   `unsafe` lives there only.
#![cfg_attr(not(test), no_std)]

pub mod baked;
pub mod boot_count;
pub mod clock;
pub mod exit;
pub mod fw_cfg;
pub mod hyperv;
pub mod pci;
pub mod pvpanic;
pub mod s390_psw;
pub mod script;
pub mod smbios;
pub mod text;
pub mod watchdog;

#[cfg(image)]
pub mod agent;
#[cfg(image)]
pub mod arch;
#[cfg(image)]
pub mod log;
#[cfg(all(image, any(target_arch = "x86_64", target_arch = "aarch64")))]
pub mod pci_devices;

/// The architectures the agent runs on. Whether a step exists on one is a
/// property of the step ([`script::Action::archs`]), decided before any
/// step runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(image, derive(defmt::Format))]
pub enum Arch {
    X86_64,
    S390x,
    Aarch64,
}

impl Arch {
    pub const ALL: [Arch; 3] = [Arch::X86_64, Arch::S390x, Arch::Aarch64];

    /// As the README and the logs name it.
    pub const fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::S390x => "s390x",
            Arch::Aarch64 => "aarch64",
        }
    }

    const fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// A set of architectures: where a step or a device exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Archs(u8);

impl Archs {
    pub const fn of(arch: Arch) -> Self {
        Archs(arch.bit())
    }

    pub const fn and(self, arch: Arch) -> Self {
        Archs(self.0 | arch.bit())
    }

    pub const fn contains(self, arch: Arch) -> bool {
        self.0 & arch.bit() != 0
    }

    /// The architectures in the set, in [`Arch::ALL`]'s order.
    pub fn iter(self) -> impl Iterator<Item = Arch> {
        Arch::ALL.into_iter().filter(move |a| self.contains(*a))
    }

    /// As the logs name the set, e.g. "x86_64 and aarch64".
    pub const fn names(self) -> &'static str {
        match self.0 {
            0b001 => "x86_64",
            0b010 => "s390x",
            0b100 => "aarch64",
            0b011 => "x86_64 and s390x",
            0b101 => "x86_64 and aarch64",
            0b110 => "s390x and aarch64",
            0b111 => "x86_64, s390x and aarch64",
            _ => "no architecture",
        }
    }
}

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
