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

/// The end of what the boot page tables identity-map: the agent reaches
/// physical addresses 0–4 GiB, nothing above (2 MiB pages, set up by the
/// x86_64 boot stub, `arch/x86_64/boot.rs`).
pub const IDENTITY_MAP_END: u64 = 1 << 32;

impl Bar {
    /// Whether the whole range `[address, address + size)` is inside the
    /// identity map, so that the agent can reach every byte of it.
    pub const fn in_identity_map(&self) -> bool {
        match self.address.checked_add(self.size) {
            Some(end) => end <= IDENTITY_MAP_END,
            None => false,
        }
    }

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
pub use hw::{BarError, find, has_ids, map_memory_bar, read8, read16, read32, write8, write16, write32};

#[cfg(all(image, target_arch = "x86_64"))]
mod hw {
    use super::*;
    use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    use x86_64::instructions::port::Port;

    const ADDRESS_PORT: u16 = 0xcf8;
    const DATA_PORT: u16 = 0xcfc;

    /// Where the agent places BARs that firmware left unassigned: inside the
    /// PCI hole of both `pc` and `q35` (above q35's MMCONFIG window).
    const ASSIGN_BASE: u32 = 0xe000_0000;
    static NEXT_FREE: AtomicU32 = AtomicU32::new(ASSIGN_BASE);
    /// A configuration access (select, then data) is under way.
    static BUSY: AtomicBool = AtomicBool::new(false);

    /// Selects `offset` of `bdf` and runs `f` with the data port for it,
    /// unless another access is under way (an interrupt handler that came
    /// between its select and its data access): then `None`, and neither
    /// access is disturbed. Ports 0xcf8/0xcfc are used only here.
    fn access<R>(bdf: Bdf, offset: u8, f: impl FnOnce(u16) -> R) -> Option<R> {
        if BUSY.swap(true, Ordering::AcqRel) {
            return None;
        }
        // SAFETY: 0xcf8 is the PCI configuration address register of QEMU's
        // x86 host bridges; selecting an address has no other effect.
        unsafe { Port::<u32>::new(ADDRESS_PORT).write(bdf.config_address(offset)) };
        let result = f(DATA_PORT + u16::from(offset & 3));
        BUSY.store(false, Ordering::Release);
        Some(result)
    }

    // Each access uses exactly its own width at 0xcfc + (offset & 3): some
    // devices (i6300esb) act only on accesses of one width. A read that
    // cannot be done (see `access`) gives all ones, like an absent function.

    pub fn read32(bdf: Bdf, offset: u8) -> u32 {
        // SAFETY: a configuration read only returns the register (QEMU's
        // devices have no read side effects in configuration space); the
        // dword at 0xcfc is the one `access` selected.
        access(bdf, offset & !3, |port| unsafe { Port::<u32>::new(port).read() }).unwrap_or(u32::MAX)
    }

    pub fn read16(bdf: Bdf, offset: u8) -> u16 {
        // SAFETY: as in read32, for the selected dword's aligned word.
        access(bdf, offset & !1, |port| unsafe { Port::<u16>::new(port).read() }).unwrap_or(u16::MAX)
    }

    pub fn read8(bdf: Bdf, offset: u8) -> u8 {
        // SAFETY: as in read32, for one byte of the selected dword.
        access(bdf, offset, |port| unsafe { Port::<u8>::new(port).read() }).unwrap_or(u8::MAX)
    }

    /// Writes a dword of configuration space (`offset` rounded down to a
    /// multiple of 4). A write from an interrupt handler in the middle of
    /// another access is not done.
    ///
    /// # Safety
    ///
    /// The write must not make any device decode memory or ports the agent
    /// uses, nor change how memory is mapped: the caller must know which
    /// function `bdf` is and what its register at `offset` does (BARs, the
    /// command register, bridge windows and host-bridge registers such as
    /// PAM, SMRAM or PCIEXBAR are the dangerous ones).
    pub unsafe fn write32(bdf: Bdf, offset: u8, value: u32) {
        // SAFETY: harmless by this function's contract; 0xcfc is the
        // selected dword.
        access(bdf, offset & !3, |port| unsafe { Port::<u32>::new(port).write(value) });
    }

    /// Writes a word of configuration space (`offset` rounded down to even).
    ///
    /// # Safety
    ///
    /// As for [`write32`].
    pub unsafe fn write16(bdf: Bdf, offset: u8, value: u16) {
        // SAFETY: as in write32, for the selected dword's aligned word.
        access(bdf, offset & !1, |port| unsafe { Port::<u16>::new(port).write(value) });
    }

    /// Writes a byte of configuration space.
    ///
    /// # Safety
    ///
    /// As for [`write32`].
    pub unsafe fn write8(bdf: Bdf, offset: u8, value: u8) {
        // SAFETY: as in write32, for one byte of the selected dword.
        access(bdf, offset, |port| unsafe { Port::<u8>::new(port).write(value) });
    }

    /// Whether the function at `bdf` has these vendor and device IDs.
    pub fn has_ids(bdf: Bdf, vendor: u16, device: u16) -> bool {
        read16(bdf, reg::VENDOR_ID) == vendor && read16(bdf, reg::DEVICE_ID) == device
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
    #[derive(Clone, Copy, Debug)]
    pub enum BarError {
        /// Not a BAR of a type-0 (ordinary) function: the header type, or
        /// an index past the last BAR.
        NoSuchBar,
        /// The BAR is not a memory BAR, or has a reserved type.
        NotMemory,
        /// The BAR is not implemented (size 0).
        Unimplemented,
        /// It is unassigned, and too big or 64-bit-only for the agent to place.
        CannotAssign,
        /// It is (partly) above the identity-mapped 0–4 GiB, which is all
        /// the agent can reach: left disabled.
        OutsideIdentityMap { address: u64, size: u64 },
    }

    impl defmt::Format for BarError {
        fn format(&self, f: defmt::Formatter<'_>) {
            match *self {
                BarError::NoSuchBar => defmt::write!(f, "not a BAR of an ordinary (header type 0) function"),
                BarError::NotMemory => defmt::write!(f, "not a memory BAR"),
                BarError::Unimplemented => defmt::write!(f, "not implemented (size 0)"),
                BarError::CannotAssign => {
                    defmt::write!(f, "unassigned, and the agent cannot place it below the IOAPIC")
                }
                BarError::OutsideIdentityMap { address, size } => defmt::write!(
                    f,
                    "at {=u64:#x}, size {=u64:#x}: not inside the identity-mapped 0-4 GiB the agent can reach, so not used",
                    address,
                    size
                ),
            }
        }
    }

    /// Decodes a memory BAR, assigns it an address if firmware did not, and
    /// enables memory decoding. Returns the BAR's address and size. A BAR
    /// that is not wholly inside the identity map (see
    /// [`Bar::in_identity_map`]) is refused, with decoding left as it was.
    ///
    /// # Safety
    ///
    /// `bdf` must be a function the caller knows (checked by its IDs) whose
    /// other memory BARs are absent or assigned: enabling memory decoding
    /// turns them all on, and an unassigned one would decode at address 0,
    /// over the agent's memory. QEMU's pvpanic-pci and i6300esb have one
    /// BAR, BAR0.
    pub unsafe fn map_memory_bar(bdf: Bdf, index: u8) -> Result<Bar, BarError> {
        const LAST_BAR: u8 = 5;
        if read8(bdf, reg::HEADER_TYPE) & 0x7f != 0 || index > LAST_BAR {
            return Err(BarError::NoSuchBar);
        }
        let offset = reg::BAR0 + 4 * index;
        let command = read16(bdf, reg::COMMAND);
        let original = read32(bdf, offset);
        let is64 = matches!(BarKind::from_bar(original), Some(BarKind::Mem64 { .. }));
        if is64 && index == LAST_BAR {
            return Err(BarError::NoSuchBar);
        }
        // Puts the command register back as it was: on every refusal.
        let restore = |e: BarError| {
            // SAFETY: the value read above, before this function changed it.
            unsafe { write16(bdf, reg::COMMAND, command) };
            e
        };
        // SAFETY: the BAR and command registers of a type-0 function that
        // the caller vouches for (this function's contract): sized with
        // decoding off, so the all-ones probe maps nothing, then put back.
        let sized = unsafe {
            write16(bdf, reg::COMMAND, command & !(COMMAND_MEMORY | COMMAND_IO));
            write32(bdf, offset, 0xffff_ffff);
            let sized = read32(bdf, offset);
            write32(bdf, offset, original);
            sized
        };
        let upper = if is64 { read32(bdf, offset + 4) } else { 0 };
        let mut bar = Bar::decode(original, sized, upper).ok_or(BarError::NotMemory).map_err(restore)?;
        if bar.kind == BarKind::Io {
            return Err(restore(BarError::NotMemory));
        }
        if bar.size == 0 {
            return Err(restore(BarError::Unimplemented));
        }
        if bar.address == 0 {
            bar.address = u64::from(assign(bar.size).ok_or(BarError::CannotAssign).map_err(restore)?);
            // SAFETY: an address from the agent's window in the PCI hole,
            // where neither RAM nor another BAR is (`assign`); decoding is
            // still off.
            unsafe {
                write32(bdf, offset, bar.address as u32);
                if is64 {
                    write32(bdf, offset + 4, 0);
                }
            }
        }
        if !bar.in_identity_map() {
            return Err(restore(BarError::OutsideIdentityMap { address: bar.address, size: bar.size }));
        }
        // SAFETY: the BAR is at the address firmware (or `assign`) gave it;
        // the function's other memory BARs are absent or assigned (this
        // function's contract).
        unsafe { write16(bdf, reg::COMMAND, command | COMMAND_MEMORY) };
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
    fn only_bars_wholly_inside_the_identity_map_are_reachable() {
        let bar = |address, size| Bar { kind: BarKind::Mem64 { prefetchable: false }, address, size };
        assert!(bar(0xfebf_f000, 16).in_identity_map());
        // Ends exactly at 4 GiB: the last byte is 0xffff_ffff.
        assert!(bar(0xffff_fff0, 0x10).in_identity_map());
        // Straddles 4 GiB, starts at it, lies above it.
        assert!(!bar(0xffff_fff0, 0x20).in_identity_map());
        assert!(!bar(IDENTITY_MAP_END, 16).in_identity_map());
        assert!(!bar(0x8_0000_0000, 0x1000).in_identity_map());
        // A range whose end does not fit a u64.
        assert!(!bar(u64::MAX - 7, 16).in_identity_map());
        // A 64-bit BAR decoded from its two halves, placed above 4 GiB.
        assert!(!Bar::decode(0x0000_000c, 0xffe0_000c, 0x1).unwrap().in_identity_map());
    }

    #[test]
    fn unimplemented_and_reserved_bars() {
        assert_eq!(Bar::decode(0, 0, 0).unwrap().size, 0);
        assert_eq!(Bar::decode(0x6, 0xffff_fff6, 0), None);
    }
}
