//! The 8254 PIT, channel 0, read back with the latch command: the agent's
//! reference for calibrating the TSC. (Channel 2's output on port 0x61
//! needs the PC speaker, which `-M microvm` lacks.)

use x86_64::instructions::port::Port;

/// The PIT's input clock, Hz.
pub const HZ: u64 = 1_193_182;

const CHANNEL0: u16 = 0x40;
const COMMAND: u16 = 0x43;

/// Starts channel 0 counting down from 65536, over and over (mode 2).
pub fn start_channel0() {
    // SAFETY: the PIT's command and channel-0 ports. Its interrupt (IRQ0)
    // is masked at the PIC (apic::init), so reprogramming it only changes
    // what the agent reads back.
    unsafe {
        Port::<u8>::new(COMMAND).write(0b0011_0100); // channel 0, lo/hi, mode 2, binary
        Port::<u8>::new(CHANNEL0).write(0);
        Port::<u8>::new(CHANNEL0).write(0);
    }
}

/// Channel 0's current count (latched, then read low byte first).
pub fn read_channel0() -> u16 {
    // SAFETY: latching and reading the count has no other effect.
    unsafe {
        Port::<u8>::new(COMMAND).write(0b0000_0000);
        let low = Port::<u8>::new(CHANNEL0).read();
        let high = Port::<u8>::new(CHANNEL0).read();
        u16::from_le_bytes([low, high])
    }
}
