//! QEMU's fw_cfg interface (x86 I/O ports, aarch64 MMIO): the file
//! directory and files.
//!
//! What fw_cfg hands the agent is untrusted input (a `-fw_cfg` file of any
//! size, a directory whose count says anything). The logic that turns those
//! bytes into entries and lengths is pure ([`walk_directory`],
//! [`file_read_len`]), unit-tested and fuzzed on the host; the device half
//! ([`FwCfg`], x86_64 images only) only moves bytes.

/// Selector register (16-bit write).
pub const SELECTOR_PORT: u16 = 0x510;
/// Data register (8-bit reads, auto-advancing).
pub const DATA_PORT: u16 = 0x511;
/// Key of the "QEMU" signature.
pub const KEY_SIGNATURE: u16 = 0x0000;
/// Key of the interface ID (bit 1: the DMA interface exists).
pub const KEY_ID: u16 = 0x0001;
pub const ID_DMA: u32 = 1 << 1;
/// Key of the file directory.
pub const KEY_FILE_DIR: u16 = 0x0019;
/// DMA address register (two big-endian 32-bit halves; writing the low
/// half at +4 starts the transfer).
pub const DMA_PORT: u16 = 0x514;
/// DMA control bits.
pub const DMA_ERROR: u32 = 0x01;
pub const DMA_READ: u32 = 0x02;
pub const DMA_SELECT: u32 = 0x08;

/// The control word of a DMA read, selecting `key` first when given (else
/// reading on from the current offset).
pub const fn dma_read_control(key: Option<u16>) -> u32 {
    match key {
        Some(key) => (key as u32) << 16 | DMA_SELECT | DMA_READ,
        None => DMA_READ,
    }
}
/// The file a script is given in (`-fw_cfg name=opt/pvagent/script,string=...`).
pub const SCRIPT_FILE: &str = "opt/pvagent/script";
/// QEMU's SMBIOS structure table.
pub const SMBIOS_TABLES_FILE: &str = "etc/smbios/smbios-tables";
/// The file in which QEMU publishes the ISA pvpanic port.
pub const PVPANIC_PORT_FILE: &str = "etc/pvpanic-port";

/// Size of one directory entry.
pub const DIR_ENTRY_LEN: usize = 64;

/// One entry of the file directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileEntry {
    pub size: u32,
    pub select: u16,
    name: [u8; 56],
}

/// Key of the first file: the directory's entries select keys from here up.
pub const FILE_KEY_FIRST: u16 = 0x0020;
/// Keys are 14 bits wide (the top two are QEMU's write and arch flags).
pub const KEY_LIMIT: u16 = 0x4000;
/// Most files a directory can list: one per key from [`FILE_KEY_FIRST`] to
/// the key limit. A directory that announces more (corrupt or hostile) is
/// read up to this many entries, so a count near `u32::MAX` cannot keep the
/// agent reading for hours.
pub const MAX_FILES: u32 = (KEY_LIMIT - FILE_KEY_FIRST) as u32;
/// Entries fetched per read of the directory.
pub const ENTRIES_PER_READ: usize = 16;

/// What a walk of the directory saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Directory {
    /// The count at the start of the directory.
    pub announced: u32,
    /// The entries read and handed out: `announced`, at most [`MAX_FILES`].
    pub read: u32,
}

impl Directory {
    /// The directory announced more entries than fw_cfg can have.
    pub fn is_clamped(&self) -> bool {
        self.read < self.announced
    }
}

/// Walks the file directory: a big-endian u32 count, then that many
/// 64-byte entries. `read` fills its buffer with the directory item's next
/// bytes (QEMU reads zeros past an item's end); `f` sees every entry in
/// order. At most [`MAX_FILES`] entries are read, [`ENTRIES_PER_READ`] per
/// call of `read`.
pub fn walk_directory(mut read: impl FnMut(&mut [u8]), mut f: impl FnMut(&FileEntry)) -> Directory {
    let mut count = [0; 4];
    read(&mut count);
    let announced = u32::from_be_bytes(count);
    let total = announced.min(MAX_FILES);
    let mut chunk = [0u8; DIR_ENTRY_LEN * ENTRIES_PER_READ];
    let mut left = total as usize;
    while left > 0 {
        let n = left.min(ENTRIES_PER_READ);
        let bytes = &mut chunk[..n * DIR_ENTRY_LEN];
        read(bytes);
        let (entries, _) = bytes.as_chunks::<DIR_ENTRY_LEN>();
        for raw in entries {
            f(&FileEntry::parse(raw));
        }
        left -= n;
    }
    Directory { announced, read: total }
}

/// How many bytes of a file of `size` bytes are read into a buffer of
/// `capacity` bytes: all of it when it fits, else the buffer's worth (the
/// caller compares with `size` to tell a file that did not fit).
pub fn file_read_len(size: u32, capacity: usize) -> usize {
    usize::try_from(size).map_or(capacity, |size| size.min(capacity))
}

impl FileEntry {
    /// Decodes a raw entry: BE u32 size, BE u16 select, u16 reserved, name[56].
    pub fn parse(raw: &[u8; DIR_ENTRY_LEN]) -> Self {
        let mut name = [0; 56];
        name.copy_from_slice(&raw[8..]);
        FileEntry {
            size: u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]),
            select: u16::from_be_bytes([raw[4], raw[5]]),
            name,
        }
    }

    /// The name, up to its NUL terminator.
    pub fn name(&self) -> &[u8] {
        let end = self.name.iter().position(|&b| b == 0).unwrap_or(self.name.len());
        &self.name[..end]
    }

    /// Whether the entry's name is `name`. Byte by byte, stopping at the
    /// first difference: the agent compares every entry of the directory
    /// with two names while it boots, and a call into `memcmp` costs more
    /// than the compare itself the first time it runs under TCG.
    pub fn is(&self, name: &str) -> bool {
        let name = name.as_bytes();
        for (i, &byte) in self.name.iter().enumerate() {
            if byte == 0 {
                return i == name.len();
            }
            if name.get(i) != Some(&byte) {
                return false;
            }
        }
        name.len() == self.name.len()
    }
}

#[cfg(all(image, any(target_arch = "x86_64", target_arch = "aarch64")))]
pub use hw::{FwCfg, inventory_state, log_inventory_state};

/// MMIO fw_cfg (aarch64 `virt`): register offsets from the device's base.
pub mod mmio {
    /// Data register (reads of 1 byte advance by one).
    pub const DATA: usize = 0x0;
    /// Selector register (16-bit, big-endian).
    pub const SELECTOR: usize = 0x8;
    /// DMA address register (64-bit, big-endian; writing it starts the transfer).
    pub const DMA: usize = 0x10;
}

#[cfg(all(image, any(target_arch = "x86_64", target_arch = "aarch64")))]
mod hw {
    use super::*;

    /// Where the registers are: the x86 ports, or the MMIO base that the
    /// device tree gives on aarch64. Only this type touches them.
    #[derive(Clone, Copy)]
    struct Regs {
        #[cfg(target_arch = "aarch64")]
        base: usize,
    }

    #[cfg(target_arch = "x86_64")]
    impl Regs {
        fn select(self, key: u16) {
            use x86_64::instructions::port::Port;
            // SAFETY: 0x510 is fw_cfg's selector on every x86 QEMU machine;
            // selecting an item has no other effect.
            unsafe { Port::<u16>::new(SELECTOR_PORT).write(key) }
        }

        fn read_byte(self) -> u8 {
            use x86_64::instructions::port::Port;
            // SAFETY: reading fw_cfg's data port only advances its offset
            // within the selected item.
            unsafe { Port::<u8>::new(DATA_PORT).read() }
        }

        /// Hands QEMU the descriptor at `address`; the transfer is done
        /// when this returns.
        fn start_dma(self, address: u64) {
            use x86_64::instructions::port::Port;
            // SAFETY: fw_cfg's DMA register (two big-endian halves; the
            // low one starts the transfer). The empty asm statements (no
            // `nomem`) make the compiler store the descriptor before, and
            // reload the buffer after, the transfer: the port writes
            // themselves are declared not to touch memory.
            unsafe {
                core::arch::asm!("", options(nostack, preserves_flags));
                Port::<u32>::new(DMA_PORT).write(((address >> 32) as u32).swap_bytes());
                Port::<u32>::new(DMA_PORT + 4).write((address as u32).swap_bytes());
                core::arch::asm!("", options(nostack, preserves_flags));
            }
        }
    }

    #[cfg(target_arch = "aarch64")]
    impl Regs {
        fn select(self, key: u16) {
            // SAFETY: the selector of the fw_cfg device the device tree
            // names (`FwCfg::probe_mmio`'s contract): selecting an item has
            // no other effect.
            unsafe { core::ptr::write_volatile((self.base + mmio::SELECTOR) as *mut u16, key.to_be()) }
        }

        fn read_byte(self) -> u8 {
            // SAFETY: the data register of the same device: a read only
            // advances its offset in the selected item.
            unsafe { core::ptr::read_volatile((self.base + mmio::DATA) as *const u8) }
        }

        fn start_dma(self, address: u64) {
            use core::sync::atomic::{Ordering, fence};
            fence(Ordering::SeqCst);
            // SAFETY: the DMA register of the same device, written whole
            // (big-endian): QEMU runs the transfer before the store
            // completes. The fences keep the descriptor's stores before it
            // and the buffer's loads after it.
            unsafe { core::ptr::write_volatile((self.base + mmio::DMA) as *mut u64, address.to_be()) }
            fence(Ordering::SeqCst);
        }
    }

    /// The fw_cfg device, known to be present.
    pub struct FwCfg {
        regs: Regs,
        /// The DMA interface is there: whole items in one register write
        /// instead of one read per byte.
        dma: bool,
    }

    /// The DMA descriptor QEMU reads (big-endian fields).
    #[repr(C, align(16))]
    struct DmaAccess {
        control: u32,
        length: u32,
        address: u64,
    }

    /// fw_cfg as the inventory reports it, packed in a word that crash
    /// handlers can read from an atomic: bit 0 present, bit 1 DMA, bit 2 the
    /// script file is there.
    pub fn inventory_state(fw: Option<&FwCfg>, script_file: bool) -> u64 {
        fw.map_or(0, |fw| 1 | u64::from(fw.uses_dma()) << 1 | u64::from(script_file) << 2)
    }

    /// The inventory's fw_cfg line, from [`inventory_state`].
    pub fn log_inventory_state(state: u64) {
        if state & 1 != 0 {
            defmt::info!(
                "fw_cfg: present ({=str}), script file {=str}",
                if state & 2 != 0 { "DMA" } else { "no DMA: byte by byte" },
                crate::agent::yes_no(state & 4 != 0)
            );
        } else {
            defmt::info!("fw_cfg: not present");
        }
    }

    impl FwCfg {
        /// Finds fw_cfg at the x86 ports by its "QEMU" signature.
        #[cfg(target_arch = "x86_64")]
        pub fn probe() -> Option<Self> {
            Self::probe_regs(Regs {})
        }

        /// Finds fw_cfg at `base` by its "QEMU" signature.
        ///
        /// # Safety
        ///
        /// `base` must be the MMIO base of QEMU's fw_cfg (the device tree's
        /// `qemu,fw-cfg-mmio` node): the agent writes its selector and DMA
        /// registers.
        #[cfg(target_arch = "aarch64")]
        pub unsafe fn probe_mmio(base: usize) -> Option<Self> {
            Self::probe_regs(Regs { base })
        }

        fn probe_regs(regs: Regs) -> Option<Self> {
            let mut fw = FwCfg { regs, dma: false };
            let mut sig = [0; 4];
            fw.read(Some(KEY_SIGNATURE), &mut sig);
            if &sig != b"QEMU" {
                return None;
            }
            let mut id = [0; 4];
            fw.read(Some(KEY_ID), &mut id);
            fw.dma = u32::from_le_bytes(id) & ID_DMA != 0;
            Some(fw)
        }

        /// Whether the DMA interface is used.
        pub fn uses_dma(&self) -> bool {
            self.dma
        }

        /// Reads `buf.len()` bytes of item `key` (or, with `None`, on from
        /// the current offset).
        fn read(&mut self, key: Option<u16>, buf: &mut [u8]) {
            if self.dma && self.read_dma(key, buf) {
                return;
            }
            if let Some(key) = key {
                self.regs.select(key);
            }
            for b in buf {
                *b = self.regs.read_byte();
            }
        }

        /// One DMA read; false if QEMU reported an error.
        fn read_dma(&mut self, key: Option<u16>, buf: &mut [u8]) -> bool {
            // A length the descriptor cannot hold goes through the data register.
            let Ok(length) = u32::try_from(buf.len()) else {
                return false;
            };
            let access = DmaAccess {
                control: dma_read_control(key).to_be(),
                length: length.to_be(),
                address: (buf.as_mut_ptr() as u64).to_be(),
            };
            // The descriptor and the buffer live across the transfer, at
            // their physical addresses (identity map on x86_64, no MMU on
            // aarch64).
            self.regs.start_dma(&raw const access as u64);
            // SAFETY: the descriptor, which QEMU has finished writing.
            let control = unsafe { core::ptr::read_volatile(&raw const access.control) };
            u32::from_be(control) & DMA_ERROR == 0
        }

        /// Calls `f` for every file in the directory (at most
        /// [`MAX_FILES`], see [`walk_directory`]).
        pub fn for_each_file(&mut self, f: impl FnMut(&FileEntry)) -> Directory {
            let mut key = Some(KEY_FILE_DIR);
            walk_directory(|buf| self.read(key.take(), buf), f)
        }

        /// Reads the start of a file into `buf`; returns the bytes read
        /// (fewer than `file.size` when the file does not fit).
        pub fn read_file(&mut self, file: &FileEntry, buf: &mut [u8]) -> usize {
            let len = file_read_len(file.size, buf.len());
            self.read(Some(file.select), &mut buf[..len]);
            len
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_compare_up_to_their_terminator() {
        let entry = |name: &[u8]| {
            let mut raw = [0u8; DIR_ENTRY_LEN];
            raw[8..8 + name.len()].copy_from_slice(name);
            FileEntry::parse(&raw)
        };
        let full = [b'a'; 56];
        assert!(entry(&full).is(core::str::from_utf8(&full).unwrap()));
        assert!(!entry(&full).is(core::str::from_utf8(&full[..55]).unwrap()));
        let longer = [b'a'; 57];
        assert!(!entry(&full).is(core::str::from_utf8(&longer).unwrap()));
        assert!(entry(b"").is(""));
        assert!(!entry(b"").is("a"));
        assert!(!entry(b"ab").is("a"));
        assert!(!entry(b"a").is("ab"));
        // A NUL inside the name asked for never matches (the entry's name
        // ends at its first NUL).
        assert!(!entry(b"a").is("a\0b"));
        assert!(!entry(b"a\0b").is("a\0b"));
        assert!(entry(b"a\0b").is("a"));
    }

    #[test]
    fn parses_a_directory_entry() {
        let mut raw = [0u8; DIR_ENTRY_LEN];
        raw[..4].copy_from_slice(&17u32.to_be_bytes());
        raw[4..6].copy_from_slice(&0x2du16.to_be_bytes());
        raw[8..8 + SCRIPT_FILE.len()].copy_from_slice(SCRIPT_FILE.as_bytes());
        let entry = FileEntry::parse(&raw);
        assert_eq!(entry.size, 17);
        assert_eq!(entry.select, 0x2d);
        assert!(entry.is(SCRIPT_FILE));
        assert!(!entry.is("opt/pvagent"));
        assert!(!entry.is(PVPANIC_PORT_FILE));
    }

    #[test]
    fn dma_control_words() {
        assert_eq!(dma_read_control(Some(KEY_FILE_DIR)), 0x0019_000a);
        assert_eq!(dma_read_control(None), 0x0000_0002);
    }

    /// A directory item as QEMU serves it: its bytes, then zeros; counts
    /// the reads.
    struct Item {
        bytes: Vec<u8>,
        at: usize,
        reads: usize,
    }

    impl Item {
        fn new(bytes: Vec<u8>) -> Self {
            Item { bytes, at: 0, reads: 0 }
        }

        fn read(&mut self, buf: &mut [u8]) {
            self.reads += 1;
            for b in buf {
                *b = self.bytes.get(self.at).copied().unwrap_or(0);
                self.at += 1;
            }
        }
    }

    fn entry_bytes(name: &str, size: u32, select: u16) -> Vec<u8> {
        let mut raw = vec![0u8; DIR_ENTRY_LEN];
        raw[..4].copy_from_slice(&size.to_be_bytes());
        raw[4..6].copy_from_slice(&select.to_be_bytes());
        raw[8..8 + name.len()].copy_from_slice(name.as_bytes());
        raw
    }

    fn directory(count: u32, names: &[&str]) -> Vec<u8> {
        let mut bytes = count.to_be_bytes().to_vec();
        for (i, name) in names.iter().enumerate() {
            bytes.extend(entry_bytes(name, 10 + i as u32, FILE_KEY_FIRST + i as u16));
        }
        bytes
    }

    #[test]
    fn walks_every_entry_in_order_across_reads() {
        let names: Vec<String> = (0..ENTRIES_PER_READ + 1).map(|i| format!("opt/f{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut item = Item::new(directory(refs.len() as u32, &refs));
        let mut seen = Vec::new();
        let dir = walk_directory(|b| item.read(b), |e| seen.push((e.name().to_vec(), e.size, e.select)));
        assert_eq!(dir, Directory { announced: 17, read: 17 });
        assert!(!dir.is_clamped());
        // The count, then 16 entries, then 1.
        assert_eq!(item.reads, 3);
        assert_eq!(seen.len(), 17);
        assert_eq!(seen[0], (b"opt/f0".to_vec(), 10, 0x20));
        assert_eq!(seen[16], (b"opt/f16".to_vec(), 26, 0x30));
    }

    #[test]
    fn an_empty_directory_reads_only_its_count() {
        let mut item = Item::new(directory(0, &[SCRIPT_FILE]));
        let mut calls = 0;
        let dir = walk_directory(|b| item.read(b), |_| calls += 1);
        assert_eq!((dir.read, calls, item.reads), (0, 0, 1));
    }

    #[test]
    fn a_huge_count_is_clamped_to_what_fw_cfg_can_hold() {
        let mut item = Item::new(directory(u32::MAX, &[SCRIPT_FILE]));
        let mut count = 0u32;
        let mut first = None;
        let dir = walk_directory(
            |b| item.read(b),
            |e| {
                count += 1;
                first.get_or_insert(*e);
            },
        );
        assert_eq!(dir, Directory { announced: u32::MAX, read: MAX_FILES });
        assert!(dir.is_clamped());
        assert_eq!(count, MAX_FILES);
        assert_eq!(MAX_FILES, 0x3fe0);
        assert_eq!(item.reads, 1 + (MAX_FILES as usize).div_ceil(ENTRIES_PER_READ));
        assert!(first.is_some_and(|e| e.is(SCRIPT_FILE)));
    }

    #[test]
    fn a_short_directory_reads_zeros_past_its_end() {
        // Announces 3 entries, holds 1: the other two read as empty names.
        let mut item = Item::new(directory(3, &[PVPANIC_PORT_FILE]));
        let mut names = Vec::new();
        walk_directory(|b| item.read(b), |e| names.push(e.name().to_vec()));
        assert_eq!(names, vec![PVPANIC_PORT_FILE.as_bytes().to_vec(), vec![], vec![]]);
    }

    #[test]
    fn file_reads_are_bounded_by_the_buffer() {
        assert_eq!(file_read_len(17, 1025), 17);
        assert_eq!(file_read_len(1025, 1025), 1025);
        assert_eq!(file_read_len(1026, 1025), 1025);
        assert_eq!(file_read_len(u32::MAX, 2), 2);
        assert_eq!(file_read_len(5, 0), 0);
        assert_eq!(file_read_len(0, 16), 0);
    }

    #[test]
    fn a_name_filling_the_field_has_no_terminator() {
        let mut raw = [b'a'; DIR_ENTRY_LEN];
        raw[..8].fill(0);
        assert_eq!(FileEntry::parse(&raw).name().len(), 56);
    }
}
