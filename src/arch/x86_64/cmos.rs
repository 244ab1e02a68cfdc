//! The RTC's CMOS memory, which survives a guest reset in QEMU: where the
//! x86_64 agent keeps its boot counter (see `boot_count`).

/// CMOS bytes used for the boot counter (unused by QEMU's machines and
/// SeaBIOS): the high byte (the magic) and the low byte (the count).
pub const BOOT_COUNT_HIGH: u8 = 0x7e;
pub const BOOT_COUNT_LOW: u8 = 0x7f;

/// Counts this boot; returns its number.
pub fn count_boot() -> u8 {
    use x86_64::instructions::port::Port;
    let mut index = Port::<u8>::new(0x70);
    let mut data = Port::<u8>::new(0x71);
    // SAFETY: the RTC's index/data ports; selecting a byte below 0x80 keeps
    // NMIs enabled (bit 7 clear), and bytes 0x7e/0x7f hold nothing else.
    let mut byte = |at: u8, value: Option<u8>| unsafe {
        index.write(at);
        match value {
            Some(v) => {
                data.write(v);
                v
            }
            None => data.read(),
        }
    };
    let stored = u16::from(byte(BOOT_COUNT_HIGH, None)) << 8 | u16::from(byte(BOOT_COUNT_LOW, None));
    let (boot, store) = crate::boot_count::next(stored);
    byte(BOOT_COUNT_HIGH, Some((store >> 8) as u8));
    byte(BOOT_COUNT_LOW, Some(store as u8));
    boot
}
