//! The fw_cfg directory walk and file read lengths (`pvagent::fw_cfg`), as
//! the agent runs them on whatever QEMU's fw_cfg holds.
//!
//! Input: two bytes (little-endian) for the size of the buffer a file is
//! read into, then the directory item (a big-endian count, 64-byte
//! entries); reads past its end give zeros, as QEMU's do. Checked: the walk
//! ends, reads exactly min(count, MAX_FILES) entries in that many reads of
//! at most ENTRIES_PER_READ, and every file read fits its buffer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pvagent::fw_cfg::{self, DIR_ENTRY_LEN, ENTRIES_PER_READ, MAX_FILES};

fuzz_target!(|data: &[u8]| {
    let (capacity, item) = match data {
        [a, b, rest @ ..] => (usize::from(u16::from_le_bytes([*a, *b])), rest),
        _ => (0, data),
    };
    let (mut at, mut reads, mut seen) = (0usize, 0usize, 0u32);
    let dir = fw_cfg::walk_directory(
        |buf| {
            reads += 1;
            assert!(buf.len() == 4 || buf.len() <= ENTRIES_PER_READ * DIR_ENTRY_LEN, "read of {} bytes", buf.len());
            let rest = item.get(at..).unwrap_or_default();
            let have = rest.len().min(buf.len());
            buf[..have].copy_from_slice(&rest[..have]);
            buf[have..].fill(0);
            at += buf.len();
        },
        |entry| {
            seen += 1;
            let name = entry.name();
            assert!(name.len() <= DIR_ENTRY_LEN - 8 && !name.contains(&0));
            let len = fw_cfg::file_read_len(entry.size, capacity);
            assert!(len <= capacity && len as u64 <= u64::from(entry.size));
            assert_eq!(len, capacity.min(entry.size as usize));
            let _ = entry.is(fw_cfg::SCRIPT_FILE) || entry.is(fw_cfg::PVPANIC_PORT_FILE);
        },
    );
    assert_eq!(dir.read, dir.announced.min(MAX_FILES));
    assert_eq!(dir.is_clamped(), dir.announced > MAX_FILES);
    assert_eq!(seen, dir.read);
    assert_eq!(reads, 1 + (dir.read as usize).div_ceil(ENTRIES_PER_READ));
    assert_eq!(at, 4 + dir.read as usize * DIR_ENTRY_LEN);
});
