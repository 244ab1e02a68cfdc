//! PCI configuration space (x86: mechanism #1, ports 0xcf8/0xcfc; aarch64:
//! ECAM): enumeration with bus numbering, BAR decoding and placement,
//! bridge windows.

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
        self.below(IDENTITY_MAP_END)
    }

    /// Whether the whole range `[address, address + size)` ends at or
    /// below `end`.
    pub const fn below(&self, end: u64) -> bool {
        match self.address.checked_add(self.size) {
            Some(last) => last <= end,
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

#[cfg(all(image, target_arch = "aarch64"))]
pub use hw::config::set_ecam;
#[cfg(all(image, any(target_arch = "x86_64", target_arch = "aarch64")))]
pub use hw::{
    BarError, find, has_ids, last_bus_searched, map_memory_bar, read8, read16, read32, set_memory_window, write8,
    write16, write32,
};

/// Bridge (type 1 header) registers.
pub mod bridge {
    /// Primary (byte 0), secondary (1) and subordinate (2) bus numbers.
    pub const BUS_NUMBERS: u8 = 0x18;
    pub const SUBORDINATE_BUS: u8 = 0x1a;
    /// Memory base (low word) and limit (high word): address bits 31:20
    /// in bits 15:4 of each.
    pub const MEMORY_WINDOW: u8 = 0x20;
    /// The granularity of a bridge's memory window.
    pub const WINDOW_ALIGN: u64 = 1 << 20;
}

/// A bridge's memory window, from its register (`None`: closed).
pub const fn window_from_register(value: u32) -> Option<(u64, u64)> {
    let base = ((value & 0xfff0) as u64) << 16;
    let limit = ((value >> 16 & 0xfff0) as u64) << 16 | 0xf_ffff;
    if base > limit { None } else { Some((base, limit)) }
}

/// The window register that forwards `[base, limit]` (both inside 4 GiB,
/// rounded out to 1 MiB).
pub const fn window_register(base: u64, limit: u64) -> u32 {
    ((base >> 16) as u32 & 0xfff0) | ((limit >> 16) as u32 & 0xfff0) << 16
}

/// The window a bridge needs so that it forwards `[address, address +
/// size)` too: `None` when it already does, else the smallest window that
/// holds what it forwarded and the new range (or just the range, when the
/// window was closed).
pub const fn widened_window(current: Option<(u64, u64)>, address: u64, size: u64) -> Option<(u64, u64)> {
    let align = bridge::WINDOW_ALIGN;
    let last = address + size - 1;
    match current {
        Some((base, limit)) if base <= address && last <= limit => None,
        Some((base, limit)) => {
            let new_base = if address < base { address & !(align - 1) } else { base };
            let new_limit = if last > limit { last | (align - 1) } else { limit };
            Some((new_base, new_limit))
        }
        None => Some((address & !(align - 1), last | (align - 1))),
    }
}

/// The 32-bit memory range of a PCI host bridge's device-tree `ranges`
/// (entries of 3 PCI address cells, 2 CPU address cells, 2 size cells, as
/// QEMU's `virt` writes them): `[base, end)`, the first range whose space
/// code is 32-bit memory and that maps PCI addresses 1:1 (BARs hold the
/// PCI address, the agent uses the CPU's).
pub fn mem32_range(ranges: &[u8]) -> Option<(u64, u64)> {
    const ENTRY: usize = 7 * 4;
    const SPACE_MEM32: u32 = 0b10;
    let cell = |entry: &[u8], i: usize| -> u64 {
        let at = i * 4;
        u64::from(u32::from_be_bytes([entry[at], entry[at + 1], entry[at + 2], entry[at + 3]]))
    };
    let (entries, _) = ranges.as_chunks::<ENTRY>();
    entries.iter().find_map(|entry| {
        let space = (cell(entry, 0) >> 24) as u32 & 0b11;
        let pci = cell(entry, 1) << 32 | cell(entry, 2);
        let cpu = cell(entry, 3) << 32 | cell(entry, 4);
        let size = cell(entry, 5) << 32 | cell(entry, 6);
        let end = cpu.checked_add(size)?;
        (space == SPACE_MEM32 && pci == cpu && size > 0 && end <= 1 << 32).then_some((cpu, end))
    })
}

#[cfg(all(image, any(target_arch = "x86_64", target_arch = "aarch64")))]
mod hw {
    use super::*;
    use core::sync::atomic::{AtomicBool, AtomicU8, AtomicU16, AtomicU64, Ordering};

    /// Configuration-space access, one way per architecture: ports
    /// 0xcf8/0xcfc on x86, the ECAM window from the device tree on aarch64.
    /// A read that cannot be done gives all ones, like an absent function.
    #[cfg(target_arch = "x86_64")]
    mod config {
        use super::Bdf;
        use core::sync::atomic::{AtomicBool, Ordering};
        use x86_64::instructions::port::Port;

        const ADDRESS_PORT: u16 = 0xcf8;
        const DATA_PORT: u16 = 0xcfc;
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
        // devices (i6300esb) act only on accesses of one width.

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

        /// # Safety
        ///
        /// See [`super::write32`].
        pub unsafe fn write32(bdf: Bdf, offset: u8, value: u32) {
            // SAFETY: by the caller's contract; 0xcfc is the selected dword.
            access(bdf, offset & !3, |port| unsafe { Port::<u32>::new(port).write(value) });
        }

        /// # Safety
        ///
        /// See [`super::write32`].
        pub unsafe fn write16(bdf: Bdf, offset: u8, value: u16) {
            // SAFETY: as in write32, for the selected dword's aligned word.
            access(bdf, offset & !1, |port| unsafe { Port::<u16>::new(port).write(value) });
        }

        /// # Safety
        ///
        /// See [`super::write32`].
        pub unsafe fn write8(bdf: Bdf, offset: u8, value: u8) {
            // SAFETY: as in write32, for one byte of the selected dword.
            access(bdf, offset, |port| unsafe { Port::<u8>::new(port).write(value) });
        }
    }

    #[cfg(target_arch = "aarch64")]
    pub mod config {
        use super::Bdf;
        use core::sync::atomic::{AtomicU64, Ordering};

        /// The ECAM window's base (0: none) and how many buses it covers.
        static ECAM_BASE: AtomicU64 = AtomicU64::new(0);
        static ECAM_BUSES: AtomicU64 = AtomicU64::new(0);

        /// Sets the ECAM window (from the device tree's PCIe host bridge).
        ///
        /// # Safety
        ///
        /// `[base, base + buses << 20)` must be the host bridge's ECAM
        /// window: every configuration access goes there from now on.
        pub unsafe fn set_ecam(base: u64, buses: u64) {
            ECAM_BUSES.store(buses.min(256), Ordering::Relaxed);
            ECAM_BASE.store(base, Ordering::Release);
        }

        /// The address of `offset` in `bdf`'s configuration space, if the
        /// window covers its bus.
        fn address(bdf: Bdf, offset: u8) -> Option<usize> {
            let base = ECAM_BASE.load(Ordering::Acquire);
            if base == 0 || u64::from(bdf.bus) >= ECAM_BUSES.load(Ordering::Relaxed) {
                return None;
            }
            let at = u64::from(bdf.bus) << 20
                | u64::from(bdf.device & 0x1f) << 15
                | u64::from(bdf.function & 7) << 12
                | u64::from(offset);
            Some((base + at) as usize)
        }

        pub fn read32(bdf: Bdf, offset: u8) -> u32 {
            // SAFETY: an aligned dword of the ECAM window (`set_ecam`'s
            // contract); configuration reads have no side effects.
            address(bdf, offset & !3).map_or(u32::MAX, |a| unsafe { core::ptr::read_volatile(a as *const u32) })
        }

        pub fn read16(bdf: Bdf, offset: u8) -> u16 {
            // SAFETY: as in read32, for an aligned word.
            address(bdf, offset & !1).map_or(u16::MAX, |a| unsafe { core::ptr::read_volatile(a as *const u16) })
        }

        pub fn read8(bdf: Bdf, offset: u8) -> u8 {
            // SAFETY: as in read32, for a byte.
            address(bdf, offset).map_or(u8::MAX, |a| unsafe { core::ptr::read_volatile(a as *const u8) })
        }

        /// # Safety
        ///
        /// See [`super::write32`].
        pub unsafe fn write32(bdf: Bdf, offset: u8, value: u32) {
            if let Some(a) = address(bdf, offset & !3) {
                // SAFETY: an aligned dword of the ECAM window; what the write
                // does is the caller's contract.
                unsafe { core::ptr::write_volatile(a as *mut u32, value) }
            }
        }

        /// # Safety
        ///
        /// See [`super::write32`].
        pub unsafe fn write16(bdf: Bdf, offset: u8, value: u16) {
            if let Some(a) = address(bdf, offset & !1) {
                // SAFETY: as in write32, for an aligned word.
                unsafe { core::ptr::write_volatile(a as *mut u16, value) }
            }
        }

        /// # Safety
        ///
        /// See [`super::write32`].
        pub unsafe fn write8(bdf: Bdf, offset: u8, value: u8) {
            if let Some(a) = address(bdf, offset) {
                // SAFETY: as in write32, for a byte.
                unsafe { core::ptr::write_volatile(a as *mut u8, value) }
            }
        }
    }

    pub use config::{read8, read16, read32};

    /// How far the agent reaches: the identity maps' 0–4 GiB on x86_64
    /// and 0–512 GiB on aarch64 (`arch::aarch64::boot`).
    #[cfg(target_arch = "x86_64")]
    const REACH_END: u64 = IDENTITY_MAP_END;
    #[cfg(target_arch = "aarch64")]
    const REACH_END: u64 = 1 << 39;

    /// Where the agent places BARs that firmware left unassigned: by
    /// default inside the PCI hole of both `pc` and `q35` (above q35's
    /// MMCONFIG window, below the IOAPIC); aarch64 sets it from the device
    /// tree ([`set_memory_window`]).
    static NEXT_FREE: AtomicU64 = AtomicU64::new(0xe000_0000);
    static WINDOW_END: AtomicU64 = AtomicU64::new(0xfec0_0000);

    /// Sets the window the agent assigns BARs from: `[base, end)`, inside
    /// the host bridge's 32-bit memory range and free of anything else.
    pub fn set_memory_window(base: u64, end: u64) {
        WINDOW_END.store(end, Ordering::Relaxed);
        NEXT_FREE.store(base, Ordering::Relaxed);
    }

    /// Writes a dword of configuration space (`offset` rounded down to a
    /// multiple of 4). On x86 a write from an interrupt handler in the
    /// middle of another access is not done.
    ///
    /// # Safety
    ///
    /// The write must not make any device decode memory or ports the agent
    /// uses, nor change how memory is mapped: the caller must know which
    /// function `bdf` is and what its register at `offset` does (BARs, the
    /// command register, bridge windows and host-bridge registers such as
    /// PAM, SMRAM or PCIEXBAR are the dangerous ones).
    pub unsafe fn write32(bdf: Bdf, offset: u8, value: u32) {
        // SAFETY: the same contract.
        unsafe { config::write32(bdf, offset, value) }
    }

    /// Writes a word of configuration space (`offset` rounded down to even).
    ///
    /// # Safety
    ///
    /// As for [`write32`].
    pub unsafe fn write16(bdf: Bdf, offset: u8, value: u16) {
        // SAFETY: the same contract.
        unsafe { config::write16(bdf, offset, value) }
    }

    /// Writes a byte of configuration space.
    ///
    /// # Safety
    ///
    /// As for [`write32`].
    pub unsafe fn write8(bdf: Bdf, offset: u8, value: u8) {
        // SAFETY: the same contract.
        unsafe { config::write8(bdf, offset, value) }
    }

    /// Whether the function at `bdf` has these vendor and device IDs.
    pub fn has_ids(bdf: Bdf, vendor: u16, device: u16) -> bool {
        read16(bdf, reg::VENDOR_ID) == vendor && read16(bdf, reg::DEVICE_ID) == device
    }

    /// For every bus behind a bridge, the bridge (packed bus << 8 | devfn,
    /// plus bit 16 when known): the path a BAR's range must be forwarded
    /// along.
    static BRIDGE_OF: [BridgeSlot; 256] = [const { BridgeSlot::new() }; 256];
    /// The highest bus number in use so far (bridges the agent numbers get
    /// the next one).
    static LAST_BUS: AtomicU8 = AtomicU8::new(0);

    struct BridgeSlot(AtomicU16, AtomicU8);

    impl BridgeSlot {
        const fn new() -> Self {
            BridgeSlot(AtomicU16::new(0), AtomicU8::new(0))
        }

        fn set(&self, bridge: Bdf) {
            self.0.store(
                u16::from(bridge.bus) << 8 | u16::from(bridge.device) << 3 | u16::from(bridge.function),
                Ordering::Relaxed,
            );
            self.1.store(1, Ordering::Release);
        }

        fn get(&self) -> Option<Bdf> {
            if self.1.load(Ordering::Acquire) == 0 {
                return None;
            }
            let v = self.0.load(Ordering::Relaxed);
            Some(Bdf { bus: (v >> 8) as u8, device: (v >> 3) as u8 & 0x1f, function: v as u8 & 7 })
        }
    }

    /// A scan has run.
    static SCANNED: AtomicBool = AtomicBool::new(false);

    /// The highest bus number the scans reached (they start at 0), if one ran.
    pub fn last_bus_searched() -> Option<u8> {
        SCANNED.load(Ordering::Acquire).then(|| LAST_BUS.load(Ordering::Relaxed))
    }

    /// Finds, in one scan of every bus, the first function with each
    /// (vendor, device) ID. Bridges are followed to their secondary buses;
    /// a bridge nobody numbered (the agent booted as the firmware, or with
    /// `-kernel` on aarch64, where no firmware enumerates PCI) gets the next
    /// free bus numbers.
    pub fn find<const N: usize>(ids: [(u16, u16); N]) -> [Option<Bdf>; N] {
        let mut found = [None; N];
        SCANNED.store(true, Ordering::Release);
        scan_bus(0, 0, &mut |bdf, v, d| {
            for (slot, id) in found.iter_mut().zip(ids) {
                if slot.is_none() && id == (v, d) {
                    *slot = Some(bdf);
                }
            }
        });
        found
    }

    /// Scans `bus` and the buses behind its bridges; returns the highest
    /// bus number behind it.
    fn scan_bus(bus: u8, depth: u8, f: &mut dyn FnMut(Bdf, u16, u16)) -> u8 {
        LAST_BUS.fetch_max(bus, Ordering::Relaxed);
        let mut highest = bus;
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
                if read8(bdf, reg::HEADER_TYPE) & 0x7f == 1 && depth < 16 {
                    highest = highest.max(scan_bridge(bdf, depth, f));
                }
            }
        }
        highest
    }

    /// Scans behind the bridge at `bdf`, numbering it first if nobody did.
    fn scan_bridge(bdf: Bdf, depth: u8, f: &mut dyn FnMut(Bdf, u16, u16)) -> u8 {
        let secondary = read8(bdf, reg::SECONDARY_BUS);
        if secondary > bdf.bus {
            BRIDGE_OF[usize::from(secondary)].set(bdf);
            let below = scan_bus(secondary, depth + 1, f);
            return below.max(read8(bdf, bridge::SUBORDINATE_BUS));
        }
        let Some(secondary) = LAST_BUS.load(Ordering::Relaxed).checked_add(1) else {
            return bdf.bus;
        };
        let numbers = read32(bdf, bridge::BUS_NUMBERS) & 0xff00_0000;
        // SAFETY: the bus-number registers of a type-1 function nobody
        // numbered: they decide which configuration cycles it forwards and
        // map no memory; the subordinate bus is closed after the scan.
        unsafe {
            write32(bdf, bridge::BUS_NUMBERS, numbers | 0xff << 16 | u32::from(secondary) << 8 | u32::from(bdf.bus))
        };
        BRIDGE_OF[usize::from(secondary)].set(bdf);
        let below = scan_bus(secondary, depth + 1, f);
        // SAFETY: as above: the subordinate bus number of the same bridge.
        unsafe { write8(bdf, bridge::SUBORDINATE_BUS, below) };
        below
    }

    /// Makes every bridge between the root bus and `bdf` forward
    /// `[address, address + size)` (a BAR of `bdf`), opening or widening
    /// their memory windows and enabling them; a window that already holds
    /// it is left as it was.
    fn forward(bdf: Bdf, address: u64, size: u64) {
        let mut bus = bdf.bus;
        while let Some(bridge) = BRIDGE_OF[usize::from(bus)].get() {
            let current = window_from_register(read32(bridge, bridge::MEMORY_WINDOW));
            if let Some((base, limit)) = widened_window(current, address, size) {
                let command = read16(bridge, reg::COMMAND);
                // SAFETY: the memory window of a bridge on the path to the
                // device whose BAR the agent placed: it now forwards that
                // range (inside the agent's window of the host bridge's
                // memory, where nothing else decodes) and what it forwarded
                // before.
                unsafe {
                    write32(bridge, bridge::MEMORY_WINDOW, window_register(base, limit));
                    write16(bridge, reg::COMMAND, command | COMMAND_MEMORY);
                }
            } else if read16(bridge, reg::COMMAND) & COMMAND_MEMORY == 0 {
                let command = read16(bridge, reg::COMMAND);
                // SAFETY: the bridge already forwards the range; enabling
                // its memory decoding makes it act on the window it has.
                unsafe { write16(bridge, reg::COMMAND, command | COMMAND_MEMORY) };
            }
            if bridge.bus == 0 || bridge.bus >= bus {
                break;
            }
            bus = bridge.bus;
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
        /// It is (partly) beyond what the agent can reach (x86_64: the
        /// identity-mapped 0–4 GiB): left disabled.
        OutsideIdentityMap { address: u64, size: u64 },
    }

    impl defmt::Format for BarError {
        fn format(&self, f: defmt::Formatter<'_>) {
            match *self {
                BarError::NoSuchBar => defmt::write!(f, "not a BAR of an ordinary (header type 0) function"),
                BarError::NotMemory => defmt::write!(f, "not a memory BAR"),
                BarError::Unimplemented => defmt::write!(f, "not implemented (size 0)"),
                BarError::CannotAssign => {
                    defmt::write!(f, "unassigned, and the agent's window for BARs has no room for it")
                }
                BarError::OutsideIdentityMap { address, size } => defmt::write!(
                    f,
                    "at {=u64:#x}, size {=u64:#x}: beyond what the agent can reach (x86_64: the identity-mapped 0-4 GiB), so not used",
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
            bar.address = assign(bar.size, bdf.bus != 0).ok_or(BarError::CannotAssign).map_err(restore)?;
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
        if !bar.below(REACH_END) {
            return Err(restore(BarError::OutsideIdentityMap { address: bar.address, size: bar.size }));
        }
        // SAFETY: the BAR is at the address firmware (or `assign`) gave it;
        // the function's other memory BARs are absent or assigned (this
        // function's contract).
        unsafe { write16(bdf, reg::COMMAND, command | COMMAND_MEMORY) };
        forward(bdf, bar.address, bar.size);
        Ok(bar)
    }

    /// Hands out naturally aligned addresses from the agent's window; a
    /// BAR behind a bridge gets a 1 MiB block of its own (a bridge's window
    /// granularity), so that no two bridges need to forward the same block.
    fn assign(size: u64, behind_bridge: bool) -> Option<u64> {
        let size = size.max(16);
        if !size.is_power_of_two() {
            return None;
        }
        let align = if behind_bridge { size.max(bridge::WINDOW_ALIGN) } else { size };
        let end_limit = WINDOW_END.load(Ordering::Relaxed);
        let mut chosen = None;
        NEXT_FREE
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |next| {
                let start = next.checked_add(align - 1)? & !(align - 1);
                let end = start.checked_add(size.max(align))?;
                (end <= end_limit).then(|| {
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
    fn bridge_windows() {
        // Closed: base above limit (what a bridge nobody set up reads).
        assert_eq!(window_from_register(0x0000_fff0), None);
        assert_eq!(window_from_register(0xfeb0_fe80), Some((0xfe80_0000, 0xfebf_ffff)));
        assert_eq!(window_register(0xfe80_0000, 0xfebf_ffff), 0xfeb0_fe80);
        // A closed window opens on the BAR's 1 MiB block.
        assert_eq!(widened_window(None, 0x1010_0000, 16), Some((0x1010_0000, 0x101f_ffff)));
        // Already forwarded: nothing to do.
        assert_eq!(widened_window(Some((0x1000_0000, 0x102f_ffff)), 0x1010_0000, 16), None);
        // Widened up and down to hold the new range.
        assert_eq!(widened_window(Some((0x1000_0000, 0x100f_ffff)), 0x1010_0000, 16), Some((0x1000_0000, 0x101f_ffff)));
        assert_eq!(widened_window(Some((0x1010_0000, 0x101f_ffff)), 0x1000_0000, 16), Some((0x1000_0000, 0x101f_ffff)));
        for (base, limit) in [(0x1000_0000, 0x100f_ffff), (0xe000_0000, 0xfebf_ffff)] {
            assert_eq!(window_from_register(window_register(base, limit)), Some((base, limit)));
        }
    }

    #[test]
    fn host_bridge_ranges() {
        // QEMU's virt: I/O, 32-bit memory, 64-bit memory.
        let cells: [u32; 21] = [
            0x0100_0000,
            0,
            0,
            0,
            0x3eff_0000,
            0,
            0x1_0000, //
            0x0200_0000,
            0,
            0x1000_0000,
            0,
            0x1000_0000,
            0,
            0x2eff_0000, //
            0x0300_0000,
            0x80,
            0,
            0x80,
            0,
            0x80,
            0,
        ];
        let bytes: std::vec::Vec<u8> = cells.iter().flat_map(|c| c.to_be_bytes()).collect();
        assert_eq!(mem32_range(&bytes), Some((0x1000_0000, 0x3eff_0000)));
        assert_eq!(mem32_range(&bytes[..28]), None);
        assert_eq!(mem32_range(&bytes[..30]), None);
        assert_eq!(mem32_range(&[]), None);
        // A translated range (PCI 0 at CPU 0x1000_0000) is not used.
        let mut moved = bytes.clone();
        moved[36..40].copy_from_slice(&0u32.to_be_bytes());
        assert_eq!(mem32_range(&moved), None);
    }

    #[test]
    fn unimplemented_and_reserved_bars() {
        assert_eq!(Bar::decode(0, 0, 0).unwrap().size, 0);
        assert_eq!(Bar::decode(0x6, 0xffff_fff6, 0), None);
    }
}
