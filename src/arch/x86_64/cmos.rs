//! The RTC's CMOS memory, which survives a guest reset in QEMU: where the
//! x86_64 agent keeps its boot counter (see `boot_count`).

/// CMOS byte used for the boot counter (unused by QEMU's machines and SeaBIOS).
pub const BOOT_COUNT_INDEX: u8 = 0x7f;

/// Counts this boot; returns its number.
pub fn count_boot() -> u8 {
    use x86_64::instructions::port::Port;
    let mut index = Port::<u8>::new(0x70);
    let mut data = Port::<u8>::new(0x71);
    // SAFETY: the RTC's index/data ports; selecting a byte below 0x80 keeps
    // NMIs enabled (bit 7 clear), and byte 0x7f holds nothing else.
    unsafe {
        index.write(BOOT_COUNT_INDEX);
        let (boot, store) = crate::boot_count::next(data.read());
        index.write(BOOT_COUNT_INDEX);
        data.write(store);
        boot
    }
}
