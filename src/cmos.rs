//! The RTC's CMOS memory, which survives a guest reset in QEMU: the agent
//! counts its boots in one byte of it, so that after a watchdog `reset` it
//! knows it is running again.

/// CMOS byte used for the boot counter (unused by QEMU's machines and SeaBIOS).
pub const BOOT_COUNT_INDEX: u8 = 0x7f;
/// High nibble marking the byte as the agent's.
const MAGIC: u8 = 0xa0;

/// Given the stored byte, this boot's number (1 = first boot in this QEMU
/// process) and the byte to store back. Counts saturate at 15.
pub const fn next_boot(stored: u8) -> (u8, u8) {
    let boot = if stored & 0xf0 == MAGIC { (stored & 0x0f) + 1 } else { 1 };
    let boot = if boot > 15 { 15 } else { boot };
    (boot, MAGIC | boot)
}

#[cfg(all(image, target_arch = "x86_64"))]
pub fn count_boot() -> u8 {
    use x86_64::instructions::port::Port;
    let mut index = Port::<u8>::new(0x70);
    let mut data = Port::<u8>::new(0x71);
    // SAFETY: the RTC's index/data ports; selecting a byte below 0x80 keeps
    // NMIs enabled (bit 7 clear), and byte 0x7f holds nothing else.
    unsafe {
        index.write(BOOT_COUNT_INDEX);
        let (boot, store) = next_boot(data.read());
        index.write(BOOT_COUNT_INDEX);
        data.write(store);
        boot
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_boots() {
        assert_eq!(next_boot(0x00), (1, 0xa1));
        assert_eq!(next_boot(0xff), (1, 0xa1));
        assert_eq!(next_boot(0xa1), (2, 0xa2));
        assert_eq!(next_boot(0xaf), (15, 0xaf));
    }
}
