//! COM1, the 16550 UART that carries the agent's log.

use uart_16550::{Config, Uart16550, backend::PioBackend};

/// I/O base of COM1.
pub const COM1: u16 = 0x3f8;

/// COM1, initialised and known to be present.
pub struct Serial(Uart16550<PioBackend>);

impl Serial {
    /// Initialises COM1; `None` when the machine has no serial port there.
    pub fn open() -> Option<Self> {
        // SAFETY: 0x3f8..0x400 is COM1's register block on every x86 QEMU
        // machine; nothing else in the agent touches these ports.
        let mut uart = unsafe { Uart16550::new_port(COM1) }.ok()?;
        uart.init(Config::default()).ok()?;
        Some(Serial(uart))
    }

    /// Sends the bytes as they are (the log writes its own line ends).
    pub fn write(&mut self, bytes: &[u8]) {
        self.0.send_bytes_exact(bytes);
    }
}
