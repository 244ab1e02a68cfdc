//! Exits through QEMU's `isa-debug-exit` device, and the agent's documented
//! error codes.
//!
//! The device sits at the conventional `-device isa-debug-exit,iobase=0xf4,iosize=0x04`.
//! Writing `v` makes QEMU (≥ 9.1) emit `SHUTDOWN {guest-shutdown}` and exit
//! with status `(v << 1) | 1`.

/// I/O port of isa-debug-exit.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;

/// Why the agent ended on its own. Each code is above the range that
/// `exit:<code>` accepts, so a user exit can never be mistaken for one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(target_os = "none", derive(defmt::Format))]
#[repr(u8)]
pub enum ErrorExit {
    /// The script did not parse (QEMU exits 225).
    Script = 0x70,
    /// A step needs a device (or a device capability) that is not there (227).
    Device = 0x71,
    /// The agent panicked and no pvpanic device could report it (229).
    Panic = 0x72,
    /// A CPU exception and no pvpanic device to report it (231).
    Fault = 0x73,
}

impl ErrorExit {
    /// The value written to the device.
    pub const fn code(self) -> u8 {
        self as u8
    }
}

/// QEMU's exit status for a value written to isa-debug-exit.
pub const fn qemu_status(value: u8) -> u8 {
    (((value as u32) << 1) | 1) as u8
}

#[cfg(target_os = "none")]
pub use hw::DebugExit;

#[cfg(target_os = "none")]
mod hw {
    use super::DEBUG_EXIT_PORT;
    use x86_64::instructions::port::Port;

    /// A present isa-debug-exit device.
    pub struct DebugExit {
        port: Port<u8>,
    }

    impl DebugExit {
        /// Finds the device: it reads 0, while an unassigned ISA port reads 0xff.
        pub fn probe() -> Option<Self> {
            let mut port = Port::new(DEBUG_EXIT_PORT);
            // SAFETY: reading an ISA port has no side effect on QEMU's
            // machines: either isa-debug-exit (returns 0) or nothing (0xff).
            let value = unsafe { port.read() };
            (value != 0xff).then_some(DebugExit { port })
        }

        /// Makes QEMU exit with status `(value << 1) | 1`; halts if QEMU keeps
        /// the guest alive (`-action shutdown=pause`).
        pub fn exit(mut self, value: u8) -> ! {
            // SAFETY: probe() found isa-debug-exit at this port; writing it
            // only asks QEMU to shut down.
            unsafe { self.port.write(value) };
            crate::arch::halt()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_odd_and_documented() {
        assert_eq!(qemu_status(ErrorExit::Script.code()), 225);
        assert_eq!(qemu_status(ErrorExit::Device.code()), 227);
        assert_eq!(qemu_status(ErrorExit::Panic.code()), 229);
        assert_eq!(qemu_status(ErrorExit::Fault.code()), 231);
        assert_eq!(qemu_status(0), 1);
        assert_eq!(qemu_status(5), 11);
        assert!(ErrorExit::Script.code() as u64 > crate::script::MAX_USER_EXIT_CODE);
    }
}
