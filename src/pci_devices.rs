//! The PCI devices the agent uses (pvpanic-pci, i6300esb), found in one
//! scan on every architecture with PCI (x86_64 and aarch64).

use crate::pvpanic::{self, Pvpanic};
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
