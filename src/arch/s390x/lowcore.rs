//! The lowcore: the PSWs and interruption codes the CPU stores and loads.

/// A z/Architecture PSW, as it sits in memory.
#[repr(C, align(8))]
pub struct Psw {
    pub mask: u64,
    pub address: u64,
}

/// Program interruption code (u16).
pub const PROGRAM_CODE: usize = 0x8e;
/// Program old PSW.
pub const PROGRAM_OLD_PSW: usize = 0x150;
/// Restart old PSW.
pub const RESTART_OLD_PSW: usize = 0x120;

/// Reads a u16 of the lowcore.
pub fn read_u16(offset: usize) -> u16 {
    // SAFETY: the lowcore (0..8 KiB, prefix 0) is always mapped; the CPU
    // stored this field when the interrupt was taken.
    unsafe { core::ptr::read_volatile(offset as *const u16) }
}

/// Reads a PSW of the lowcore.
pub fn read_psw(offset: usize) -> (u64, u64) {
    // SAFETY: as above, for a 16-byte PSW slot.
    unsafe { (core::ptr::read_volatile(offset as *const u64), core::ptr::read_volatile((offset + 8) as *const u64)) }
}
