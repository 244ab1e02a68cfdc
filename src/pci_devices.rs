//! The PCI devices the agent uses (pvpanic-pci, i6300esb), found in one
//! scan on every architecture with PCI (x86_64 and aarch64).

use crate::agent::{DeviceError, yes_no};
use crate::pci::Bdf;
use crate::pvpanic::{self, PvEvent, Pvpanic};
use crate::watchdog::{I6300Esb, i6300esb};

/// What one scan of PCI found.
pub struct PciDevices {
    pub pvpanic: Option<Pvpanic>,
    pub i6300esb: Option<I6300Esb<i6300esb::PciEsbBus>>,
}

impl PciDevices {
    /// Scans every bus (numbering bridges nobody numbered) and takes the
    /// first pvpanic-pci and the first i6300esb, placing their BARs if
    /// nobody did.
    pub fn scan() -> PciDevices {
        let [pvpanic, esb] = crate::pci::find([
            (pvpanic::PCI_VENDOR, pvpanic::PCI_DEVICE),
            (i6300esb::PCI_VENDOR, i6300esb::PCI_DEVICE),
        ]);
        PciDevices { pvpanic: pvpanic.and_then(Pvpanic::probe_pci), i6300esb: esb.and_then(i6300esb::probe) }
    }
}

impl PciDevices {
    /// The i6300esb packed into one word, for the inventory that crash
    /// handlers log from atomics: BAR0 (bits 0–31), bus/device/function
    /// (32–47), the previous-reset flag (bit 48).
    pub fn packed_i6300esb(&self) -> Option<u64> {
        self.i6300esb.as_ref().map(|esb| {
            let bdf = esb.bus().bdf;
            let bdf = u64::from(bdf.bus) << 8 | u64::from(bdf.device) << 3 | u64::from(bdf.function);
            esb.bus().base as u64 & 0xffff_ffff | bdf << 32 | u64::from(esb.previous_reboot()) << 48
        })
    }
}

/// The inventory's i6300esb line, from [`PciDevices::packed_i6300esb`].
pub fn log_i6300esb(packed: Option<u64>) {
    match packed {
        Some(packed) => {
            let bdf = Bdf {
                bus: (packed >> 40) as u8,
                device: (packed >> 35) as u8 & 0x1f,
                function: (packed >> 32) as u8 & 7,
            };
            defmt::info!(
                "i6300esb: {} BAR0 at {=u64:#x}, previous reset by this watchdog: {=str}",
                bdf,
                packed & 0xffff_ffff,
                yes_no(packed >> 48 & 1 != 0)
            )
        }
        None => defmt::info!("i6300esb: not present"),
    }
}

/// After a missing-device error: which PCI buses were searched.
pub fn say_buses_searched() {
    if let Some(last) = crate::pci::last_bus_searched() {
        crate::say!(
            error,
            "PCI buses searched: 0 to {=u8} (behind every bridge, numbering those nobody numbered)",
            last
        );
    }
}

/// `device`, if it advertises `event` (the check both architectures with
/// pvpanic make before any step runs).
pub fn advertising(device: Pvpanic, event: PvEvent) -> Result<Pvpanic, DeviceError> {
    if pvpanic::advertises(device.events(), event) {
        Ok(device)
    } else {
        Err(DeviceError::NotAdvertised {
            device: device.name(),
            address: device.address(),
            events: device.events(),
            event,
        })
    }
}

/// Reports the agent's own crash through `device` (pvpanic `panicked`)
/// once steps run, and halts; otherwise says why it cannot and returns,
/// and the caller ends in its error exit. Before the first step a crash is
/// an internal error, never an event.
pub fn report_crash_through(device: Option<Pvpanic>, steps_started: bool) {
    if steps_started && let Some(device) = device.filter(|d| pvpanic::advertises(d.events(), PvEvent::Panicked)) {
        crate::say!(error, "reporting it through {=str} panicked", device.name());
        device.fire(PvEvent::Panicked);
        crate::arch::halt();
    }
    if steps_started {
        crate::say!(error, "no pvpanic device to report it through");
    } else {
        crate::say!(error, "an internal error of the agent: no step has run yet");
    }
}
