//! The PL011 UART that carries the agent's log (raw defmt frames, as on
//! x86's COM1), at the address the device tree gives.

use core::sync::atomic::{AtomicUsize, Ordering};

/// The UART's base (0: none), set from the device tree before logging starts.
static BASE: AtomicUsize = AtomicUsize::new(0);

const DR: usize = 0x00;
const FR: usize = 0x18;
const CR: usize = 0x30;
/// FR: the transmit FIFO is full.
const FR_TXFF: u32 = 1 << 5;
/// CR: UART, transmit and receive enabled.
const CR_ENABLE: u32 = 1 | 1 << 8 | 1 << 9;

/// Sets the UART's base.
///
/// # Safety
///
/// `base` must be a PL011's register block (the device tree's `arm,pl011`).
pub unsafe fn set_base(base: usize) {
    BASE.store(base, Ordering::Release);
}

/// The UART, known to be there.
pub struct Pl011(usize);

impl Pl011 {
    /// Enables the UART; `None` when the device tree named none.
    pub fn open() -> Option<Self> {
        let base = BASE.load(Ordering::Acquire);
        if base == 0 {
            return None;
        }
        // SAFETY: the control register of the PL011 `set_base` was given.
        unsafe { core::ptr::write_volatile((base + CR) as *mut u32, CR_ENABLE) };
        Some(Pl011(base))
    }

    /// Sends raw bytes (the log is binary).
    pub fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            // SAFETY: the flag and data registers of the same PL011.
            unsafe {
                while core::ptr::read_volatile((self.0 + FR) as *const u32) & FR_TXFF != 0 {}
                core::ptr::write_volatile((self.0 + DR) as *mut u32, u32::from(b));
            }
        }
    }
}
