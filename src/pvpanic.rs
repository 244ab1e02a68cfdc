//! QEMU's pvpanic device, ISA (`-device pvpanic`) and PCI (`-device pvpanic-pci`).
//!
//! The events, the device choice of a step and the capability byte are
//! pure (host-tested); the device half (`Pvpanic`, x86_64 images only)
//! probes and writes.

/// One pvpanic event, by the bit QEMU's device uses for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(image, derive(defmt::Format))]
pub enum PvEvent {
    Panicked,
    CrashLoaded,
    Shutdown,
}

impl PvEvent {
    pub const ALL: [PvEvent; 3] = [PvEvent::Panicked, PvEvent::CrashLoaded, PvEvent::Shutdown];

    /// The bit written to the device (and advertised in its capability byte).
    pub const fn bit(self) -> u8 {
        match self {
            PvEvent::Panicked => 0x01,
            PvEvent::CrashLoaded => 0x02,
            PvEvent::Shutdown => 0x04,
        }
    }

    /// The name used in scripts and logs.
    pub const fn name(self) -> &'static str {
        match self {
            PvEvent::Panicked => "panicked",
            PvEvent::CrashLoaded => "crashloaded",
            PvEvent::Shutdown => "shutdown",
        }
    }

    /// The event a script names (`pvpanic.<name>`).
    pub fn from_name(name: &str) -> Option<Self> {
        PvEvent::ALL.into_iter().find(|e| crate::script::same(e.name(), name))
    }
}

/// Which pvpanic device a step addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(image, derive(defmt::Format))]
pub enum PvDevice {
    /// `pvpanic.<event>`: the ISA device if present, else the PCI one.
    Any,
    /// `pvpanic-isa.<event>`.
    Isa,
    /// `pvpanic-pci.<event>`.
    Pci,
}

impl PvDevice {
    /// The device a script names (the part of the verb before the dot).
    pub fn from_name(name: &str) -> Option<Self> {
        [PvDevice::Any, PvDevice::Isa, PvDevice::Pci].into_iter().find(|d| crate::script::same(d.name(), name))
    }

    /// The name a script uses for the device (the part of the verb before
    /// the dot).
    pub const fn name(self) -> &'static str {
        match self {
            PvDevice::Any => "pvpanic",
            PvDevice::Isa => "pvpanic-isa",
            PvDevice::Pci => "pvpanic-pci",
        }
    }
}

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

#[cfg(all(image, any(target_arch = "x86_64", target_arch = "aarch64")))]
pub use hw::Pvpanic;

#[cfg(all(image, any(target_arch = "x86_64", target_arch = "aarch64")))]
mod hw {
    use super::*;
    use crate::pci::{self, Bdf};
    use core::sync::atomic::{AtomicU64, Ordering};
    #[cfg(target_arch = "x86_64")]
    use x86_64::instructions::port::Port;

    /// A present pvpanic device and the events it advertises. Only the
    /// probes make one (the fields are private), so `fire` writes only to a
    /// port or BAR that a probe found.
    #[derive(Clone, Copy)]
    pub struct Pvpanic(Device);

    #[derive(Clone, Copy)]
    enum Device {
        /// x86 only (aarch64 has no ISA bus).
        #[cfg(target_arch = "x86_64")]
        Isa {
            port: u16,
            events: u8,
        },
        Pci {
            base: u64,
            events: u8,
        },
    }

    /// What the probes found, packed by `to_raw` (0 = nothing): the only
    /// values `from_raw` accepts.
    static PROBED_ISA: AtomicU64 = AtomicU64::new(0);
    static PROBED_PCI: AtomicU64 = AtomicU64::new(0);

    impl Pvpanic {
        /// Reads the ISA device's capability byte at `port`.
        ///
        /// # Safety
        ///
        /// `port` must be pvpanic's: the port QEMU publishes in fw_cfg
        /// (`etc/pvpanic-port`), or [`ISA_DEFAULT_PORT`] on a machine
        /// without fw_cfg, where nothing else sits. A device found here
        /// gets event bits written to that port by [`Self::fire`].
        #[cfg(target_arch = "x86_64")]
        pub unsafe fn probe_isa(port: u16) -> Option<Self> {
            // SAFETY: pvpanic's port (this function's contract) returns its
            // capabilities; if it is unassigned it reads 0xff.
            let raw = unsafe { Port::<u8>::new(port).read() };
            let device = Pvpanic(Device::Isa { port, events: isa_capabilities(raw)? });
            PROBED_ISA.store(device.to_raw(), Ordering::Relaxed);
            Some(device)
        }

        /// Takes pvpanic-pci at `bdf` (found by `pci::find`; its IDs are
        /// checked again here) and maps its BAR0.
        pub fn probe_pci(bdf: Bdf) -> Option<Self> {
            if !pci::has_ids(bdf, PCI_VENDOR, PCI_DEVICE) {
                defmt::warn!("{}: not a pvpanic-pci device", bdf);
                return None;
            }
            // SAFETY: `bdf` is pvpanic-pci (IDs checked above), a type-0
            // function whose one BAR is the memory BAR0.
            let bar = match unsafe { pci::map_memory_bar(bdf, 0) } {
                Ok(bar) => bar,
                Err(e) => {
                    defmt::warn!("pvpanic-pci at {}: BAR0 unusable: {}", bdf, e);
                    return None;
                }
            };
            let base = bar.address;
            // SAFETY: BAR0 of pvpanic-pci, a byte-wide register whose
            // memory decoding map_memory_bar enabled, within the agent's
            // reach (checked by map_memory_bar); reading it returns the
            // capability byte.
            let events = unsafe { core::ptr::read_volatile(base as *const u8) };
            let device = Pvpanic(Device::Pci { base, events });
            PROBED_PCI.store(device.to_raw(), Ordering::Relaxed);
            Some(device)
        }

        pub fn name(&self) -> &'static str {
            match self.0 {
                #[cfg(target_arch = "x86_64")]
                Device::Isa { .. } => "pvpanic-isa",
                Device::Pci { .. } => "pvpanic-pci",
            }
        }

        /// The I/O port or MMIO address the device answers at.
        pub fn address(&self) -> u64 {
            match self.0 {
                #[cfg(target_arch = "x86_64")]
                Device::Isa { port, .. } => u64::from(port),
                Device::Pci { base, .. } => base,
            }
        }

        pub fn events(&self) -> u8 {
            match self.0 {
                #[cfg(target_arch = "x86_64")]
                Device::Isa { events, .. } => events,
                Device::Pci { events, .. } => events,
            }
        }

        /// Packs the device into one word (0 = none), so that interrupt
        /// and panic handlers can find it without touching shared state.
        pub fn to_raw(&self) -> u64 {
            let kind = match self.0 {
                #[cfg(target_arch = "x86_64")]
                Device::Isa { .. } => 0,
                Device::Pci { .. } => 1 << 62,
            };
            1 << 63 | kind | u64::from(self.events()) << 48 | (self.address() & 0xffff_ffff_ffff)
        }

        /// Unpacks [`Self::to_raw`]: only the word of a device a probe
        /// found (anything else is `None`).
        pub fn from_raw(raw: u64) -> Option<Self> {
            if raw >> 63 == 0
                || (raw != PROBED_ISA.load(Ordering::Relaxed) && raw != PROBED_PCI.load(Ordering::Relaxed))
            {
                return None;
            }
            let events = (raw >> 48) as u8;
            let address = raw & 0xffff_ffff_ffff;
            if raw & 1 << 62 != 0 {
                return Some(Pvpanic(Device::Pci { base: address, events }));
            }
            #[cfg(target_arch = "x86_64")]
            return Some(Pvpanic(Device::Isa { port: address as u16, events }));
            #[cfg(not(target_arch = "x86_64"))]
            None
        }

        /// The inventory's line of the device `name` (absent: `None`).
        pub fn log_inventory(name: &str, device: Option<Self>) {
            match device {
                Some(d) => defmt::info!(
                    "{=str}: at {=u64:#x}, events {=u8:#04x} (bit0 panicked, bit1 crashloaded, bit2 shutdown)",
                    name,
                    d.address(),
                    d.events()
                ),
                None => defmt::info!("{=str}: not present", name),
            }
        }

        /// Runs a `pvpanic*.<event>` step: says so, then reports the event.
        pub fn fire_step(&self, event: PvEvent) {
            crate::say!(
                info,
                "{=str} at {=u64:#x}: writing {=str} ({=u8:#04x})",
                self.name(),
                self.address(),
                event.name(),
                event.bit()
            );
            self.fire(event);
        }

        /// Reports one event. Only one bit is ever written: QEMU acts on the
        /// first bit it recognises.
        pub fn fire(&self, event: PvEvent) {
            match self.0 {
                // SAFETY: pvpanic's port, by `probe_isa`'s contract (only
                // the probes make a `Pvpanic`); writing one event bit is the
                // device's purpose: QEMU turns it into a QMP event.
                #[cfg(target_arch = "x86_64")]
                Device::Isa { port, .. } => unsafe { Port::<u8>::new(port).write(event.bit()) },
                // SAFETY: as above, through BAR0 as mapped by the probe,
                // within the agent's reach (byte access: a wider one would
                // be split and could fire twice).
                Device::Pci { base, .. } => unsafe { core::ptr::write_volatile(base as *mut u8, event.bit()) },
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
    fn names() {
        for event in PvEvent::ALL {
            assert_eq!(PvEvent::from_name(event.name()), Some(event));
        }
        assert_eq!(PvEvent::from_name("explode"), None);
        assert_eq!(PvDevice::from_name("pvpanic-pci"), Some(PvDevice::Pci));
        assert_eq!(PvDevice::from_name("pvpanic-mmio"), None);
    }

    #[test]
    fn capability_bits() {
        assert!(advertises(0x07, PvEvent::Shutdown));
        assert!(advertises(0x01, PvEvent::Panicked));
        assert!(!advertises(0x01, PvEvent::CrashLoaded));
        assert!(!advertises(0x03, PvEvent::Shutdown));
    }
}
