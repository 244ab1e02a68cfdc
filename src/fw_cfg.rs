//! QEMU's fw_cfg interface (x86 I/O ports): the file directory and files.

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

    pub fn is(&self, name: &str) -> bool {
        self.name() == name.as_bytes()
    }
}

#[cfg(all(image, target_arch = "x86_64"))]
pub use hw::FwCfg;

#[cfg(all(image, target_arch = "x86_64"))]
mod hw {
    use super::*;
    use x86_64::instructions::port::Port;

    /// The fw_cfg device, known to be present.
    pub struct FwCfg {
        selector: Port<u16>,
        data: Port<u8>,
        /// The DMA interface is there: whole items in one port write
        /// instead of one port read per byte.
        dma: bool,
    }

    /// The DMA descriptor QEMU reads (big-endian fields).
    #[repr(C, align(16))]
    struct DmaAccess {
        control: u32,
        length: u32,
        address: u64,
    }

    impl FwCfg {
        /// Finds fw_cfg by its "QEMU" signature.
        pub fn probe() -> Option<Self> {
            let mut fw = FwCfg { selector: Port::new(SELECTOR_PORT), data: Port::new(DATA_PORT), dma: false };
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
                // SAFETY: 0x510 is fw_cfg's selector on every x86 QEMU
                // machine; selecting an item has no other effect.
                unsafe { self.selector.write(key) };
            }
            for b in buf {
                // SAFETY: reading fw_cfg's data port only advances its offset
                // within the selected item.
                *b = unsafe { self.data.read() };
            }
        }

        /// One DMA read; false if QEMU reported an error.
        fn read_dma(&mut self, key: Option<u16>, buf: &mut [u8]) -> bool {
            let access = DmaAccess {
                control: dma_read_control(key).to_be(),
                length: (buf.len() as u32).to_be(),
                address: (buf.as_mut_ptr() as u64).to_be(),
            };
            let address = &raw const access as u64;
            // SAFETY: the descriptor and the buffer are identity mapped and
            // live across the transfer, which QEMU completes before the
            // port write returns; the halves are written big-endian. The
            // empty asm statements (no `nomem`) make the compiler store the
            // descriptor before, and reload the buffer after, the transfer:
            // the port writes themselves are declared not to touch memory.
            let control = unsafe {
                core::arch::asm!("", options(nostack, preserves_flags));
                Port::<u32>::new(DMA_PORT).write(((address >> 32) as u32).swap_bytes());
                Port::<u32>::new(DMA_PORT + 4).write((address as u32).swap_bytes());
                core::arch::asm!("", options(nostack, preserves_flags));
                core::ptr::read_volatile(&raw const access.control)
            };
            u32::from_be(control) & DMA_ERROR == 0
        }

        /// Calls `f` for every file in the directory.
        pub fn for_each_file(&mut self, mut f: impl FnMut(&FileEntry)) {
            let mut count = [0; 4];
            self.read(Some(KEY_FILE_DIR), &mut count);
            let mut left = u32::from_be_bytes(count) as usize;
            // Sixteen entries per read.
            let mut chunk = [0u8; DIR_ENTRY_LEN * 16];
            while left > 0 {
                let n = left.min(16);
                self.read(None, &mut chunk[..n * DIR_ENTRY_LEN]);
                for raw in chunk[..n * DIR_ENTRY_LEN].chunks_exact(DIR_ENTRY_LEN) {
                    f(&FileEntry::parse(raw.try_into().expect("64-byte chunk")));
                }
                left -= n;
            }
        }

        /// Reads the start of a file into `buf`; returns the bytes read.
        pub fn read_file(&mut self, file: &FileEntry, buf: &mut [u8]) -> usize {
            let len = buf.len().min(file.size as usize);
            self.read(Some(file.select), &mut buf[..len]);
            len
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn a_name_filling_the_field_has_no_terminator() {
        let mut raw = [b'a'; DIR_ENTRY_LEN];
        raw[..8].fill(0);
        assert_eq!(FileEntry::parse(&raw).name().len(), 56);
    }
}
