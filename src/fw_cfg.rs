//! QEMU's fw_cfg interface (x86 I/O ports): the file directory and files.

/// Selector register (16-bit write).
pub const SELECTOR_PORT: u16 = 0x510;
/// Data register (8-bit reads, auto-advancing).
pub const DATA_PORT: u16 = 0x511;
/// Key of the "QEMU" signature.
pub const KEY_SIGNATURE: u16 = 0x0000;
/// Key of the file directory.
pub const KEY_FILE_DIR: u16 = 0x0019;
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
    }

    impl FwCfg {
        /// Finds fw_cfg by its "QEMU" signature.
        pub fn probe() -> Option<Self> {
            let mut fw = FwCfg { selector: Port::new(SELECTOR_PORT), data: Port::new(DATA_PORT) };
            fw.select(KEY_SIGNATURE);
            let mut sig = [0; 4];
            fw.read(&mut sig);
            (&sig == b"QEMU").then_some(fw)
        }

        fn select(&mut self, key: u16) {
            // SAFETY: 0x510 is fw_cfg's selector on every x86 QEMU machine;
            // selecting an item has no other effect.
            unsafe { self.selector.write(key) };
        }

        fn read(&mut self, buf: &mut [u8]) {
            for b in buf {
                // SAFETY: reading fw_cfg's data port only advances its offset
                // within the selected item.
                *b = unsafe { self.data.read() };
            }
        }

        /// Calls `f` for every file in the directory.
        pub fn for_each_file(&mut self, mut f: impl FnMut(&FileEntry)) {
            self.select(KEY_FILE_DIR);
            let mut count = [0; 4];
            self.read(&mut count);
            for _ in 0..u32::from_be_bytes(count) {
                let mut raw = [0; DIR_ENTRY_LEN];
                self.read(&mut raw);
                f(&FileEntry::parse(&raw));
            }
        }

        /// Reads the start of a file into `buf`; returns the bytes read.
        pub fn read_file(&mut self, file: &FileEntry, buf: &mut [u8]) -> usize {
            let len = buf.len().min(file.size as usize);
            self.select(file.select);
            self.read(&mut buf[..len]);
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
    fn a_name_filling_the_field_has_no_terminator() {
        let mut raw = [b'a'; DIR_ENTRY_LEN];
        raw[..8].fill(0);
        assert_eq!(FileEntry::parse(&raw).name().len(), 56);
    }
}
