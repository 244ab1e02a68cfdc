//! The boot counter: one byte of memory that survives a guest reset in QEMU
//! (x86_64: a CMOS byte; s390x: a lowcore byte), so that after a watchdog or
//! triple-fault `reset` the agent knows it is running again.

/// High nibble marking the byte as the agent's.
const MAGIC: u8 = 0xa0;

/// Given the stored byte, this boot's number (1 = first boot in this QEMU
/// process) and the byte to store back. Counts saturate at 15.
pub const fn next(stored: u8) -> (u8, u8) {
    let boot = if stored & 0xf0 == MAGIC { (stored & 0x0f) + 1 } else { 1 };
    let boot = if boot > 15 { 15 } else { boot };
    (boot, MAGIC | boot)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_boots() {
        assert_eq!(next(0x00), (1, 0xa1));
        assert_eq!(next(0xff), (1, 0xa1));
        assert_eq!(next(0xa1), (2, 0xa2));
        assert_eq!(next(0xaf), (15, 0xaf));
    }
}
