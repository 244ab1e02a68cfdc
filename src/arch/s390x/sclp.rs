//! The SCLP console (QEMU's first `-serial` on s390-ccw-virtio): one
//! SERVC "write event data" with an ASCII event per line.
//!
//! The agent's console is text lines on every architecture (see
//! `crate::log`); this one sends each line as one event.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};

/// SCLP command: write event data.
const WRITE_EVENT_DATA: u64 = 0x0076_0005;
/// Event type of the ASCII console.
const EVENT_ASCII: u8 = 0x1a;
/// Header (8) + event buffer header (6).
const HEADER: usize = 14;
/// Characters per event (a longer line is sent in pieces).
const LINE: usize = 960;

/// One page, so the SCCB never crosses a page boundary; in `.bss`, so it
/// is above the first 8 KiB and below 2 GiB as SCLP requires.
#[repr(C, align(4096))]
struct Sccb(UnsafeCell<[u8; 4096]>);
// SAFETY: used only through the one `Console` (see `OPENED`), by
// `write_event`, which takes it `&mut`.
unsafe impl Sync for Sccb {}
static SCCB: Sccb = Sccb(UnsafeCell::new([0; 4096]));
/// The console has been handed out: there is only one, as there is one SCCB.
static OPENED: AtomicBool = AtomicBool::new(false);

/// The console, with the line being filled.
pub struct Console {
    line: heapless::Vec<u8, LINE>,
}

impl Console {
    /// The SCLP console exists on every s390-ccw-virtio machine. The first
    /// call gets it; later ones get `None` (it owns the one SCCB).
    pub fn open() -> Option<Self> {
        if OPENED.swap(true, Ordering::AcqRel) {
            return None;
        }
        Some(Console { line: heapless::Vec::new() })
    }

    /// Adds text; a line feed sends the line (carriage returns are left
    /// out: the console ends lines itself).
    pub fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            match b {
                b'\n' => self.flush(),
                b'\r' => {}
                _ => {
                    if self.line.len() >= LINE {
                        self.flush();
                    }
                    let _ = self.line.push(b);
                }
            }
        }
    }

    fn flush(&mut self) {
        if !self.line.is_empty() {
            self.write_event();
            self.line.clear();
        }
    }

    /// Sends the line as one ASCII console event, through the SCCB that
    /// this console (the only one) owns.
    fn write_event(&mut self) {
        // SAFETY: only the one `Console` uses the SCCB, here, and it is
        // borrowed mutably for the whole call: no other reference exists.
        let sccb = unsafe { &mut *SCCB.0.get() };
        send(sccb, &self.line);
    }
}

/// Sends `<line>\n` as one ASCII console event.
fn send(sccb: &mut [u8; 4096], line: &[u8]) {
    // Byte by byte: the line (at most LINE bytes) always fits the page,
    // and no slice length can mismatch (a panic path, with `core::fmt`).
    // One plain loop: this runs for the agent's first log line, before
    // the first step, where code that runs for the first time costs its
    // translation under TCG.
    let mut len = HEADER;
    for &byte in line.iter().chain(b"\n") {
        if let Some(slot) = sccb.get_mut(len) {
            *slot = byte;
            len += 1;
        }
    }
    sccb[0..2].copy_from_slice(&(len as u16).to_be_bytes());
    sccb[2..8].fill(0); // function code, control mask, response code
    sccb[8..10].copy_from_slice(&((len - 8) as u16).to_be_bytes());
    sccb[10] = EVENT_ASCII;
    sccb[11..14].fill(0);
    let address = sccb.as_ptr() as u64;
    loop {
        let cc: u64;
        // SAFETY: SERVC with a valid, page-contained SCCB below 2 GiB; QEMU
        // handles the write synchronously. The service-signal interrupt it
        // raises stays pending: its subclass is disabled in CR0.
        unsafe {
            core::arch::asm!(
                ".insn rre,0xb2200000,{cmd},{sccb}",
                "ipm {cc}",
                "srlg {cc},{cc},28",
                cmd = in(reg) WRITE_EVENT_DATA,
                sccb = in(reg) address,
                cc = out(reg) cc,
            )
        }
        // Condition code 2: busy; try again.
        if cc & 3 != 2 {
            break;
        }
    }
}
