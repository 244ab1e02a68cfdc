//! The boot counter: two bytes of memory that survive a guest reset in
//! QEMU (x86_64: two CMOS bytes; s390x: a lowcore halfword; aarch64: memory
//! outside the image's file and `.bss`), so that after a watchdog, PSCI or
//! triple-fault reset the agent knows it is running again.

/// High byte marking the halfword as the agent's.
const MAGIC: u16 = 0xa500;

/// The highest boot number: the counter stays there (the log says so).
pub const MAX_BOOT: u8 = 255;

/// Given the stored halfword, this boot's number (1 = first boot in this
/// QEMU process) and the halfword to store back. Counts saturate at
/// [`MAX_BOOT`].
pub const fn next(stored: u16) -> (u8, u16) {
    let boot = if stored & 0xff00 == MAGIC { (stored as u8).saturating_add(1) } else { 1 };
    let boot = if boot == 0 { 1 } else { boot };
    (boot, MAGIC | boot as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_boots() {
        assert_eq!(next(0x0000), (1, 0xa501));
        assert_eq!(next(0xffff), (1, 0xa501));
        assert_eq!(next(0x00a1), (1, 0xa501));
        assert_eq!(next(0xa501), (2, 0xa502));
        assert_eq!(next(0xa50f), (16, 0xa510));
        assert_eq!(next(0xa5fe), (255, 0xa5ff));
        assert_eq!(next(0xa5ff), (MAX_BOOT, 0xa5ff));
        // A stored zero count with the magic (never written) is a first boot.
        assert_eq!(next(0xa500), (1, 0xa501));
    }
}
