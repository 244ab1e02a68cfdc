//! QEMU's pvpanic device, ISA (`-device pvpanic`) and PCI (`-device pvpanic-pci`).

use crate::script::PvEvent;

/// Default I/O port of the ISA device (QEMU publishes the real one in the
/// fw_cfg file `etc/pvpanic-port`).
pub const ISA_DEFAULT_PORT: u16 = 0x505;
/// PCI IDs of pvpanic-pci.
pub const PCI_VENDOR: u16 = 0x1b36;
pub const PCI_DEVICE: u16 = 0x0011;

/// Interprets the capability byte read from the ISA port: 0xff is what an
/// unassigned port reads, so it means "no device", not "every event".
pub const fn isa_capabilities(raw: u8) -> Option<u8> {
    if raw == 0xff { None } else { Some(raw) }
}

/// Whether a capability byte advertises an event.
pub const fn advertises(events: u8, event: PvEvent) -> bool {
    events & event.bit() != 0
}

#[cfg(all(image, target_arch = "x86_64"))]
pub use hw::Pvpanic;

#[cfg(all(image, target_arch = "x86_64"))]
mod hw {
    use super::*;
    use crate::pci::{self, Bdf};
    use x86_64::instructions::port::Port;

    /// A present pvpanic device and the events it advertises.
    #[derive(Clone, Copy)]
    pub enum Pvpanic {
        Isa { port: u16, events: u8 },
        Pci { base: u64, events: u8 },
    }

    impl Pvpanic {
        /// Reads the ISA device's capability byte at `port`.
        pub fn probe_isa(port: u16) -> Option<Self> {
            // SAFETY: reading pvpanic's port only returns its capabilities;
            // an unassigned ISA port reads 0xff.
            let raw = unsafe { Port::<u8>::new(port).read() };
            isa_capabilities(raw).map(|events| Pvpanic::Isa { port, events })
        }

        /// Takes pvpanic-pci at `bdf` (found by `pci::find`) and maps its BAR0.
        pub fn probe_pci(bdf: Bdf) -> Option<Self> {
            let bar = match pci::map_memory_bar(bdf, 0) {
                Ok(bar) => bar,
                Err(e) => {
                    defmt::warn!("pvpanic-pci at {}: BAR0 unusable: {}", bdf, e);
                    return None;
                }
            };
            let base = bar.address;
            // SAFETY: BAR0 of pvpanic-pci is a byte-wide register, identity
            // mapped by the boot page tables (0-4 GiB); reading it returns
            // the capability byte.
            let events = unsafe { core::ptr::read_volatile(base as *const u8) };
            Some(Pvpanic::Pci { base, events })
        }

        pub fn name(&self) -> &'static str {
            match self {
                Pvpanic::Isa { .. } => "pvpanic-isa",
                Pvpanic::Pci { .. } => "pvpanic-pci",
            }
        }

        /// The I/O port or MMIO address the device answers at.
        pub fn address(&self) -> u64 {
            match *self {
                Pvpanic::Isa { port, .. } => u64::from(port),
                Pvpanic::Pci { base, .. } => base,
            }
        }

        pub fn events(&self) -> u8 {
            match *self {
                Pvpanic::Isa { events, .. } | Pvpanic::Pci { events, .. } => events,
            }
        }

        /// Packs the device into one word (0 = none), so that interrupt
        /// and panic handlers can find it without touching shared state.
        pub fn to_raw(&self) -> u64 {
            let kind = match self {
                Pvpanic::Isa { .. } => 0,
                Pvpanic::Pci { .. } => 1 << 62,
            };
            1 << 63 | kind | u64::from(self.events()) << 48 | (self.address() & 0xffff_ffff_ffff)
        }

        /// Unpacks [`Self::to_raw`].
        pub fn from_raw(raw: u64) -> Option<Self> {
            if raw >> 63 == 0 {
                return None;
            }
            let events = (raw >> 48) as u8;
            let address = raw & 0xffff_ffff_ffff;
            Some(if raw & 1 << 62 == 0 {
                Pvpanic::Isa { port: address as u16, events }
            } else {
                Pvpanic::Pci { base: address, events }
            })
        }

        /// Reports one event. Only one bit is ever written: QEMU acts on the
        /// first bit it recognises.
        pub fn fire(&self, event: PvEvent) {
            match *self {
                // SAFETY: writing one event bit to pvpanic is the device's
                // purpose; QEMU turns it into a QMP event.
                Pvpanic::Isa { port, .. } => unsafe { Port::<u8>::new(port).write(event.bit()) },
                // SAFETY: as above, through the mapped BAR0 (byte access:
                // a wider one would be split and could fire twice).
                Pvpanic::Pci { base, .. } => unsafe { core::ptr::write_volatile(base as *mut u8, event.bit()) },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_isa_port_is_not_a_device() {
        assert_eq!(isa_capabilities(0xff), None);
        assert_eq!(isa_capabilities(0x07), Some(7));
        assert_eq!(isa_capabilities(0x01), Some(1));
    }

    #[test]
    fn capability_bits() {
        assert!(advertises(0x07, PvEvent::Shutdown));
        assert!(advertises(0x01, PvEvent::Panicked));
        assert!(!advertises(0x01, PvEvent::CrashLoaded));
        assert!(!advertises(0x03, PvEvent::Shutdown));
    }
}
