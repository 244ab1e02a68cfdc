//! The s390x PSW mask bits and the rules for the wait PSWs the agent loads.
//!
//! Pure, so it is compiled and tested on every host: the script parser
//! checks `s390.disabled-wait` masks and addresses with it before anything
//! runs, and the s390x image builds its wait PSWs from the same bits.

/// Wait state.
pub const WAIT: u64 = 0x0002_0000_0000_0000;
/// I/O interrupts enabled.
pub const IO: u64 = 0x0200_0000_0000_0000;
/// External interrupts enabled.
pub const EXT: u64 = 0x0100_0000_0000_0000;
/// Machine checks enabled.
pub const MCHECK: u64 = 0x0004_0000_0000_0000;
/// Extended addressing (with [`BA`]: 64-bit).
pub const EA: u64 = 0x0000_0001_0000_0000;
/// Basic addressing (alone: 31-bit).
pub const BA: u64 = 0x0000_0000_8000_0000;
/// The default mask of `s390.disabled-wait`: wait, 64-bit addressing.
pub const DISABLED_WAIT: u64 = WAIT | EA | BA;
/// Addresses whose low 12 bits are all ones are QEMU's "special" wait,
/// which it turns into a guest shutdown (`s390.shutdown` loads this one).
pub const SPECIAL_WAIT_LOW_BITS: u64 = 0xfff;

/// A disabled wait: the wait bit, and no interrupt class that could end it
/// (I/O, external, machine check).
pub const fn is_disabled_wait(mask: u64) -> bool {
    mask & WAIT != 0 && mask & (IO | EXT | MCHECK) == 0
}

/// QEMU's shutdown wait rather than a crash.
pub const fn is_special_wait_address(address: u64) -> bool {
    address & SPECIAL_WAIT_LOW_BITS == SPECIAL_WAIT_LOW_BITS
}

/// The highest address the mask's addressing mode can hold: 64, 31 or 24
/// bits.
pub const fn address_limit(mask: u64) -> u64 {
    match (mask & EA != 0, mask & BA != 0) {
        (true, true) => u64::MAX,
        (false, true) => 0x7fff_ffff,
        _ => 0x00ff_ffff,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disabled_waits() {
        assert!(is_disabled_wait(DISABLED_WAIT));
        assert!(is_disabled_wait(WAIT | BA));
        assert!(!is_disabled_wait(EA | BA), "no wait bit");
        for enabled in [IO, EXT, MCHECK] {
            assert!(!is_disabled_wait(DISABLED_WAIT | enabled), "{enabled:#x} can end the wait");
        }
    }

    #[test]
    fn addressing_modes() {
        assert_eq!(address_limit(DISABLED_WAIT), u64::MAX);
        assert_eq!(address_limit(WAIT | BA), 0x7fff_ffff);
        assert_eq!(address_limit(WAIT), 0x00ff_ffff);
        assert_eq!(address_limit(WAIT | EA), 0x00ff_ffff, "EA without BA is not a valid mode");
    }

    #[test]
    fn special_waits() {
        assert!(is_special_wait_address(0xfff));
        assert!(is_special_wait_address(0x1_2fff));
        assert!(!is_special_wait_address(0x12340));
        assert!(!is_special_wait_address(0xffe));
    }
}
