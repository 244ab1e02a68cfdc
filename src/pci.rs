//! PCI configuration space (mechanism #1, ports 0xcf8/0xcfc): enumeration and
//! BAR decoding.

/// A function's address on the bus.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(image, derive(defmt::Format))]
pub struct Bdf {
    pub bus: u8,
    pub device: u8,
    pub function: u8,
}

impl Bdf {
    /// The value written to 0xcf8 to reach the dword holding `offset`.
    pub const fn config_address(self, offset: u8) -> u32 {
        0x8000_0000
            | (self.bus as u32) << 16
            | (self.device as u32) << 11
            | (self.function as u32) << 8
            | (offset as u32 & 0xfc)
    }
}

/// Standard configuration-space offsets.
pub mod reg {
    pub const VENDOR_ID: u8 = 0x00;
    pub const DEVICE_ID: u8 = 0x02;
    pub const COMMAND: u8 = 0x04;
    pub const HEADER_TYPE: u8 = 0x0e;
    pub const BAR0: u8 = 0x10;
    pub const SECONDARY_BUS: u8 = 0x19;
}

/// Command register: memory space enable.
pub const COMMAND_MEMORY: u16 = 0x0002;
/// Command register: I/O space enable.
pub const COMMAND_IO: u16 = 0x0001;

/// What a BAR maps, from its low bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(image, derive(defmt::Format))]
pub enum BarKind {
    Io,
    Mem32 { prefetchable: bool },
    Mem64 { prefetchable: bool },
}

impl BarKind {
    /// Decodes the type bits. Take them from the value read *before* sizing:
    /// some devices (QEMU's pvpanic-pci) read back 0xfffffffe after the
    /// all-ones write, with the type bits apparently set.
    pub const fn from_bar(original: u32) -> Option<BarKind> {
        if original & 1 == 1 {
            return Some(BarKind::Io);
        }
        let prefetchable = original & 0x8 != 0;
        match (original >> 1) & 0b11 {
            0b00 | 0b01 => Some(BarKind::Mem32 { prefetchable }),
            0b10 => Some(BarKind::Mem64 { prefetchable }),
            _ => None,
        }
    }

    const fn flag_mask(self) -> u32 {
        match self {
            BarKind::Io => 0x3,
            _ => 0xf,
        }
    }
}

/// A decoded BAR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(image, derive(defmt::Format))]
pub struct Bar {
    pub kind: BarKind,
    /// Address assigned by firmware (0 = unassigned).
    pub address: u64,
    /// Size in bytes (0 = the BAR is not implemented).
    pub size: u64,
}

impl Bar {
    /// Decodes a BAR from the value read before sizing (`original`), the
    /// value read back after writing all ones (`sized`), and for 64-bit BARs
    /// the upper dword (`upper`, 0 otherwise).
    pub fn decode(original: u32, sized: u32, upper: u32) -> Option<Bar> {
        let kind = BarKind::from_bar(original)?;
        let mask = sized & !kind.flag_mask();
        let mut size = u64::from((!mask).wrapping_add(1));
        if kind == BarKind::Io {
            size &= 0xffff;
        }
        if mask == 0 {
            size = 0;
        }
        let mut address = u64::from(original & !kind.flag_mask());
        if matches!(kind, BarKind::Mem64 { .. }) {
            address |= u64::from(upper) << 32;
        }
        Some(Bar { kind, address, size })
    }
}

#[cfg(all(image, target_arch = "x86_64"))]
pub use hw::{BarError, find, map_memory_bar, read8, read16, read32, write8, write16, write32};

#[cfg(all(image, target_arch = "x86_64"))]
mod hw {
    use super::*;
    use core::sync::atomic::{AtomicU32, Ordering};
    use x86_64::instructions::port::Port;

    const ADDRESS_PORT: u16 = 0xcf8;
    const DATA_PORT: u16 = 0xcfc;

    /// Where the agent places BARs that firmware left unassigned: inside the
    /// PCI hole of both `pc` and `q35` (above q35's MMCONFIG window).
    const ASSIGN_BASE: u32 = 0xe000_0000;
    static NEXT_FREE: AtomicU32 = AtomicU32::new(ASSIGN_BASE);

    fn select(bdf: Bdf, offset: u8) {
        // SAFETY: 0xcf8 is the PCI configuration address register of QEMU's
        // x86 host bridges; selecting an address has no other effect.
        unsafe { Port::<u32>::new(ADDRESS_PORT).write(bdf.config_address(offset)) }
    }

    // Each access uses exactly its own width at 0xcfc + (offset & 3): some
    // devices (i6300esb) act only on accesses of one width.

    pub fn read32(bdf: Bdf, offset: u8) -> u32 {
        select(bdf, offset);
        // SAFETY: configuration reads have no side effects on QEMU devices.
        unsafe { Port::<u32>::new(DATA_PORT).read() }
    }

    pub fn read16(bdf: Bdf, offset: u8) -> u16 {
        select(bdf, offset);
        // SAFETY: as in read32.
        unsafe { Port::<u16>::new(DATA_PORT + u16::from(offset & 2)).read() }
    }

    pub fn read8(bdf: Bdf, offset: u8) -> u8 {
        select(bdf, offset);
        // SAFETY: as in read32.
        unsafe { Port::<u8>::new(DATA_PORT + u16::from(offset & 3)).read() }
    }

    pub fn write32(bdf: Bdf, offset: u8, value: u32) {
        select(bdf, offset);
        // SAFETY: the callers write registers of a device they found by
        // enumeration, with values that the PCI spec defines.
        unsafe { Port::<u32>::new(DATA_PORT).write(value) }
    }

    pub fn write16(bdf: Bdf, offset: u8, value: u16) {
        select(bdf, offset);
        // SAFETY: as in write32.
        unsafe { Port::<u16>::new(DATA_PORT + u16::from(offset & 2)).write(value) }
    }

    pub fn write8(bdf: Bdf, offset: u8, value: u8) {
        select(bdf, offset);
        // SAFETY: as in write32.
        unsafe { Port::<u8>::new(DATA_PORT + u16::from(offset & 3)).write(value) }
    }

    /// Finds, in one scan of every bus (bridges are followed to their
    /// secondary buses), the first function with each (vendor, device) ID.
    pub fn find<const N: usize>(ids: [(u16, u16); N]) -> [Option<Bdf>; N] {
        let mut found = [None; N];
        scan_bus(0, 0, &mut |bdf, v, d| {
            for (slot, id) in found.iter_mut().zip(ids) {
                if slot.is_none() && id == (v, d) {
                    *slot = Some(bdf);
                }
            }
        });
        found
    }

    fn scan_bus(bus: u8, depth: u8, f: &mut dyn FnMut(Bdf, u16, u16)) {
        for device in 0..32 {
            let first = Bdf { bus, device, function: 0 };
            if read16(first, reg::VENDOR_ID) == 0xffff {
                continue;
            }
            let functions = if read8(first, reg::HEADER_TYPE) & 0x80 != 0 { 8 } else { 1 };
            for function in 0..functions {
                let bdf = Bdf { bus, device, function };
                let vendor = read16(bdf, reg::VENDOR_ID);
                if vendor == 0xffff {
                    continue;
                }
                f(bdf, vendor, read16(bdf, reg::DEVICE_ID));
                // A PCI-to-PCI bridge: continue on its secondary bus.
                if read8(bdf, reg::HEADER_TYPE) & 0x7f == 1 {
                    let secondary = read8(bdf, reg::SECONDARY_BUS);
                    if secondary > bus && depth < 16 {
                        scan_bus(secondary, depth + 1, f);
                    }
                }
            }
        }
    }

    /// Why a memory BAR could not be mapped.
    #[derive(Clone, Copy, Debug, defmt::Format)]
    pub enum BarError {
        /// The BAR is not a memory BAR, or has a reserved type.
        NotMemory,
        /// The BAR is not implemented (size 0).
        Unimplemented,
        /// It is unassigned, and too big or 64-bit-only for the agent to place.
        CannotAssign,
    }

    /// Decodes a memory BAR, assigns it an address if firmware did not, and
    /// enables memory decoding. Returns the BAR's address and size.
    pub fn map_memory_bar(bdf: Bdf, index: u8) -> Result<Bar, BarError> {
        let offset = reg::BAR0 + 4 * index;
        let command = read16(bdf, reg::COMMAND);
        let original = read32(bdf, offset);
        let is64 = matches!(BarKind::from_bar(original), Some(BarKind::Mem64 { .. }));
        // Size the BAR with decoding off, then put the original back.
        write16(bdf, reg::COMMAND, command & !(COMMAND_MEMORY | COMMAND_IO));
        write32(bdf, offset, 0xffff_ffff);
        let sized = read32(bdf, offset);
        write32(bdf, offset, original);
        let upper = if is64 { read32(bdf, offset + 4) } else { 0 };
        let mut bar = Bar::decode(original, sized, upper).ok_or(BarError::NotMemory)?;
        if bar.kind == BarKind::Io {
            write16(bdf, reg::COMMAND, command);
            return Err(BarError::NotMemory);
        }
        if bar.size == 0 {
            write16(bdf, reg::COMMAND, command);
            return Err(BarError::Unimplemented);
        }
        if bar.address == 0 {
            bar.address = u64::from(assign(bar.size).ok_or(BarError::CannotAssign)?);
            write32(bdf, offset, bar.address as u32);
            if is64 {
                write32(bdf, offset + 4, 0);
            }
        }
        write16(bdf, reg::COMMAND, command | COMMAND_MEMORY);
        Ok(bar)
    }

    /// Hands out naturally aligned addresses from the agent's window.
    fn assign(size: u64) -> Option<u32> {
        let size = u32::try_from(size.max(16)).ok()?;
        let mut chosen = None;
        NEXT_FREE
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |next| {
                let start = next.checked_add(size - 1)? & !(size - 1);
                let end = start.checked_add(size)?;
                // Stay below the IOAPIC at 0xfec00000.
                (end <= 0xfec0_0000).then(|| {
                    chosen = Some(start);
                    end
                })
            })
            .ok()?;
        chosen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_address_layout() {
        let bdf = Bdf { bus: 1, device: 3, function: 2 };
        assert_eq!(bdf.config_address(0x62), 0x8001_1a60);
    }

    #[test]
    fn pvpanic_pci_bar_reads_back_with_type_bits_set() {
        // QEMU's pvpanic-pci: a 2-byte region whose sizing read-back is 0xfffffffe.
        let bar = Bar::decode(0xfebf_f000, 0xffff_fffe, 0).unwrap();
        assert_eq!(bar.kind, BarKind::Mem32 { prefetchable: false });
        assert_eq!(bar.address, 0xfebf_f000);
        assert_eq!(bar.size, 16);
    }

    #[test]
    fn ordinary_memory_and_io_bars() {
        let bar = Bar::decode(0xfebf_e000, 0xffff_fff0, 0).unwrap();
        assert_eq!((bar.address, bar.size), (0xfebf_e000, 16));
        let bar = Bar::decode(0x0000_c001, 0xffff_ffe1, 0).unwrap();
        assert_eq!((bar.kind, bar.address, bar.size), (BarKind::Io, 0xc000, 32));
        let bar = Bar::decode(0x0000_000c, 0xffe0_000c, 0x1).unwrap();
        assert_eq!(bar.kind, BarKind::Mem64 { prefetchable: true });
        assert_eq!((bar.address, bar.size), (0x1_0000_0000, 0x20_0000));
    }

    #[test]
    fn unimplemented_and_reserved_bars() {
        assert_eq!(Bar::decode(0, 0, 0).unwrap().size, 0);
        assert_eq!(Bar::decode(0x6, 0xffff_fff6, 0), None);
    }
}
