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
#[cfg_attr(image, derive(defmt::Format))]
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
    /// Every error exit (the host tool explains each).
    pub const ALL: [ErrorExit; 4] = [ErrorExit::Script, ErrorExit::Device, ErrorExit::Panic, ErrorExit::Fault];

    /// The value written to the device.
    pub const fn code(self) -> u8 {
        self as u8
    }

    /// QEMU's exit status after the agent writes [`Self::code`].
    pub const fn qemu_status(self) -> u8 {
        qemu_status(self.code())
    }
}

impl ErrorExit {
    /// What the code means, for the log.
    pub const fn meaning(self) -> &'static str {
        match self {
            ErrorExit::Script => "script error",
            ErrorExit::Device => "missing device or capability",
            ErrorExit::Panic => "the agent panicked",
            ErrorExit::Fault => "CPU exception or program check",
        }
    }

    /// s390x has no isa-debug-exit: the agent ends in a disabled wait at
    /// this address instead (QEMU: GUEST_PANICKED with this psw-addr).
    pub const fn s390_wait_address(self) -> u64 {
        S390_RESERVED_BASE | (self as u64) << 8
    }
}

/// Start of the s390x wait addresses reserved for the agent's own exits:
/// 0xbad0000..=0xbadffff (a script cannot choose them).
pub const S390_RESERVED_BASE: u64 = 0x0bad_0000;

/// The disabled-wait address after a program check with this interruption code.
pub const fn s390_program_check_address(code: u16) -> u64 {
    S390_RESERVED_BASE | ((code as u64) & 0xff) << 4
}

/// Whether a wait address belongs to the agent's own exits.
pub const fn is_reserved_wait_address(address: u64) -> bool {
    address >> 16 == S390_RESERVED_BASE >> 16
}

/// QEMU's exit status for a value written to isa-debug-exit.
pub const fn qemu_status(value: u8) -> u8 {
    (((value as u32) << 1) | 1) as u8
}

#[cfg(all(image, target_arch = "x86_64"))]
pub use hw::DebugExit;

#[cfg(all(image, target_arch = "x86_64"))]
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
        let statuses = ErrorExit::ALL.map(ErrorExit::qemu_status);
        assert_eq!(statuses, [225, 227, 229, 231]);
        assert_eq!(qemu_status(ErrorExit::Script.code()), 225);
        assert_eq!(qemu_status(ErrorExit::Device.code()), 227);
        assert_eq!(qemu_status(ErrorExit::Panic.code()), 229);
        assert_eq!(qemu_status(ErrorExit::Fault.code()), 231);
        assert_eq!(qemu_status(0), 1);
        assert_eq!(qemu_status(5), 11);
        assert!(ErrorExit::Script.code() as u64 > crate::script::MAX_USER_EXIT_CODE);
    }

    #[test]
    fn s390_wait_addresses() {
        assert_eq!(ErrorExit::Script.s390_wait_address(), 0xbad7000);
        assert_eq!(ErrorExit::Device.s390_wait_address(), 0xbad7100);
        assert_eq!(ErrorExit::Panic.s390_wait_address(), 0xbad7200);
        assert_eq!(s390_program_check_address(0x0001), 0xbad0010);
        assert_eq!(s390_program_check_address(0x0006), 0xbad0060);
        assert!(is_reserved_wait_address(0xbad0010));
        assert!(!is_reserved_wait_address(0x12340));
        // Even, so a valid PSW address; never QEMU's special 0x...fff wait.
        for a in [ErrorExit::Script.s390_wait_address(), s390_program_check_address(0xff)] {
            assert_eq!(a % 2, 0);
            assert_ne!(a & 0xfff, 0xfff);
        }
    }
}
