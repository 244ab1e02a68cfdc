//! The ACPI power button on `pc` (PIIX4 PM, 00:01.3) and `q35` (ICH9 LPC,
//! 00:1f.0): what QEMU's `system_powerdown`, libvirt's `virsh shutdown
//! --mode acpi` and the watchdog action `shutdown` press. The agent finds
//! (or, as the firmware, sets up) the PM I/O block, enables the power
//! button's event and routes the SCI (GSI 9) through the IOAPIC to its own
//! vector; a press then ends in S5 (QEMU: `SHUTDOWN {guest-shutdown}`), as
//! with a real OS, unless the script asked to ignore it.

use crate::pci::{self, Bdf};
use core::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use x86_64::instructions::port::Port;

/// Where the agent puts the PM block when nobody did (what SeaBIOS uses).
const DEFAULT_PM_BASE: u16 = 0x600;
/// PM1 status, enable and control registers, from the PM base.
const PM1_STS: u16 = 0;
const PM1_EN: u16 = 2;
const PM1_CNT: u16 = 4;
const PWRBTN: u16 = 1 << 8;
const SCI_EN: u16 = 1;
const SLP_EN: u16 = 1 << 13;
const SLP_TYP_MASK: u16 = 7 << 10;
/// QEMU's S5 sleep type on both chipsets (their DSDT's `_S5`).
const SLP_TYP_S5: u16 = 0;
/// The GSI of the SCI on both chipsets (ICH9: ACPI_CNTL's default).
const SCI_GSI: u32 = 9;
const IOAPIC: usize = 0xfec0_0000;

/// The PM block's base (0: none found yet).
static PM_BASE: AtomicU16 = AtomicU16::new(0);
/// The button is armed (its event enabled and the SCI routed).
static ARMED: AtomicBool = AtomicBool::new(false);
/// `power-button.ignore`: presses are logged, not obeyed.
static IGNORE: AtomicBool = AtomicBool::new(false);

/// The chipset's PM function and how it holds its base.
enum Chipset {
    Piix4(Bdf),
    Ich9(Bdf),
}

fn chipset() -> Option<Chipset> {
    let piix4 = Bdf { bus: 0, device: 1, function: 3 };
    let ich9 = Bdf { bus: 0, device: 0x1f, function: 0 };
    if pci::has_ids(piix4, 0x8086, 0x7113) {
        Some(Chipset::Piix4(piix4))
    } else if pci::has_ids(ich9, 0x8086, 0x2918) {
        Some(Chipset::Ich9(ich9))
    } else {
        None
    }
}

/// Finds the PM block, enabling it at [`DEFAULT_PM_BASE`] when no firmware
/// did (the agent as `-bios`).
fn pm_base() -> Option<u16> {
    match chipset()? {
        Chipset::Piix4(bdf) => {
            // PMBA (0x40, bits 15:6) and PMREGMISC (0x80) bit 0: I/O enable.
            let base = (pci::read32(bdf, 0x40) & 0xffc0) as u16;
            if pci::read8(bdf, 0x80) & 1 != 0 && base != 0 {
                return Some(base);
            }
            // SAFETY: the PM function's base and enable registers: it then
            // decodes 64 ports at 0x600, where nothing else is on `pc`.
            unsafe {
                pci::write32(bdf, 0x40, u32::from(DEFAULT_PM_BASE) | 1);
                pci::write8(bdf, 0x80, pci::read8(bdf, 0x80) | 1);
            }
        }
        Chipset::Ich9(bdf) => {
            // PMBASE (0x40, bits 15:7) and ACPI_CNTL (0x44) bit 7: ACPI_EN.
            let base = (pci::read32(bdf, 0x40) & 0xff80) as u16;
            if pci::read8(bdf, 0x44) & 0x80 != 0 && base != 0 {
                return Some(base);
            }
            // SAFETY: the LPC bridge's PM base and ACPI enable (SCI on IRQ 9,
            // the default): 128 ports at 0x600, where nothing else is on q35.
            unsafe {
                pci::write32(bdf, 0x40, u32::from(DEFAULT_PM_BASE) | 1);
                pci::write8(bdf, 0x44, (pci::read8(bdf, 0x44) & !7) | 0x80);
            }
        }
    }
    Some(DEFAULT_PM_BASE)
}

fn pm_read(base: u16, register: u16) -> u16 {
    // SAFETY: a PM1 register of the chipset's PM block (found by `pm_base`).
    unsafe { Port::<u16>::new(base + register).read() }
}

fn pm_write(base: u16, register: u16, value: u16) {
    // SAFETY: as in `pm_read`; the callers write only the power button's
    // bits, SCI_EN and, for S5, the sleep bits.
    unsafe { Port::<u16>::new(base + register).write(value) }
}

/// Routes GSI 9 to `vector` on CPU 0: fixed, active high, level-triggered
/// (as QEMU's MADT describes the SCI).
fn route_sci(vector: u8) {
    let write = |index: u32, value: u32| {
        // SAFETY: the IOAPIC's select and window registers (identity
        // mapped); only the SCI's redirection entry is written.
        unsafe {
            core::ptr::write_volatile(IOAPIC as *mut u32, index);
            core::ptr::write_volatile((IOAPIC + 0x10) as *mut u32, value);
        }
    };
    write(0x11 + 2 * SCI_GSI, 0);
    write(0x10 + 2 * SCI_GSI, u32::from(vector) | 1 << 15);
}

/// Arms the power button (once); false when the machine has no PM block
/// the agent knows (microvm, `-machine acpi=off`).
pub fn arm() -> bool {
    if ARMED.load(Ordering::Acquire) {
        return true;
    }
    let Some(base) = pm_base() else {
        return false;
    };
    PM_BASE.store(base, Ordering::Release);
    pm_write(base, PM1_STS, PWRBTN);
    pm_write(base, PM1_EN, pm_read(base, PM1_EN) | PWRBTN);
    pm_write(base, PM1_CNT, pm_read(base, PM1_CNT) | SCI_EN);
    route_sci(super::interrupts::SCI);
    ARMED.store(true, Ordering::Release);
    crate::say!(
        info,
        "ACPI power button armed (PM block at {=u16:#x}): a press powers off (S5){=str}",
        base,
        if IGNORE.load(Ordering::Relaxed) { ", but power-button.ignore is set" } else { "" }
    );
    true
}

pub fn set_ignore(ignore: bool) {
    IGNORE.store(ignore, Ordering::Release);
}

/// The SCI's handler: a power-button press enters S5 (or is logged and
/// ignored); anything else is cleared.
pub fn on_sci() {
    let base = PM_BASE.load(Ordering::Acquire);
    if base == 0 {
        return;
    }
    let status = pm_read(base, PM1_STS);
    if status & PWRBTN == 0 {
        return;
    }
    pm_write(base, PM1_STS, PWRBTN);
    if IGNORE.load(Ordering::Acquire) {
        crate::say!(warn, "ACPI power button pressed: ignored (power-button.ignore)");
        return;
    }
    crate::say!(info, "ACPI power button pressed: powering off (S5)");
    let control = pm_read(base, PM1_CNT) & !SLP_TYP_MASK;
    pm_write(base, PM1_CNT, control | SLP_TYP_S5 << 10 | SLP_EN);
}
