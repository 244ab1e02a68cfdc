//! The aarch64 machine: its devices (from the device tree, found when a
//! step needs them), the crash reports, and how the agent ends.
//!
//! Error exits go through semihosting's SYS_EXIT with the same QEMU exit
//! statuses as x86's isa-debug-exit (see `crate::exit`); without
//! semihosting the agent halts after the error line.

use super::devicetree::{Conduit, Gic, Platform};
use super::{psci, semihosting, timer::Timer};
use crate::Arch;
use crate::agent::{DeviceError, Machine};
use crate::exit::{ErrorExit, qemu_status};
use crate::fw_cfg::{self, FileEntry, FwCfg};
use crate::pci_devices::PciDevices;
use crate::pvpanic::{PvDevice, PvEvent, Pvpanic};
use crate::script::{Action, Fault};
use crate::watchdog::{self, Model, Watchdog};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use defmt::{info, warn};

/// The pvpanic-pci found by the scan (packed by [`Pvpanic::to_raw`]; 0 =
/// none or not scanned), for the crash handlers.
static PVPANIC_PCI: AtomicU64 = AtomicU64::new(0);
/// PCI has been scanned (by a step, the start of the steps, or a crash).
static PCI_SCANNED: AtomicBool = AtomicBool::new(false);
/// The first step has started: from here on a crash of the agent is
/// reported through pvpanic; before it, it is an internal error.
static STEPS_STARTED: AtomicBool = AtomicBool::new(false);
/// A crash is being reported (a fault inside that goes straight to the exit).
static REPORTING: AtomicBool = AtomicBool::new(false);
/// The inventory has been logged in this boot.
static INVENTORY_LOGGED: AtomicBool = AtomicBool::new(false);
/// What the inventory says of the machine (set by `Arm::new`): the
/// device-tree facts, packed so crash handlers can log them.
static FW_CFG_STATE: AtomicU64 = AtomicU64::new(0);
/// The i6300esb ([`PciDevices::packed_i6300esb`], with bit 63 set; 0: none).
static I6300ESB: AtomicU64 = AtomicU64::new(0);

/// The boot counter: outside the image file and `.bss`, so a reset (which
/// reloads the file) keeps it.
#[unsafe(link_section = ".noinit")]
static BOOT_COUNT: AtomicU64 = AtomicU64::new(0);

pub struct Arm {
    platform: Platform,
    /// Started by the UEFI loader (else by QEMU as an Image).
    by_uefi: bool,
    fw_cfg: Option<FwCfg>,
    script_file: Option<FileEntry>,
    pci: Option<PciDevices>,
    clock: Option<Timer>,
}

/// One scan of PCI (numbering bridges and placing BARs as it goes) for
/// every device the agent knows there.
fn scan_pci() -> PciDevices {
    let devices = PciDevices::scan();
    PVPANIC_PCI.store(devices.pvpanic.as_ref().map_or(0, Pvpanic::to_raw), Ordering::Release);
    I6300ESB.store(devices.packed_i6300esb().map_or(0, |p| p | 1 << 63), Ordering::Release);
    PCI_SCANNED.store(true, Ordering::Release);
    devices
}

impl Arm {
    pub fn new(platform: Platform, by_uefi: bool) -> Self {
        if let Some(host) = platform.pci {
            // SAFETY: the device tree's ECAM window of its PCIe host bridge.
            unsafe { crate::pci::set_ecam(host.ecam as u64, host.buses) };
            if let Some((base, end)) = host.mem32 {
                crate::pci::set_memory_window(base, end);
            }
        }
        // SAFETY: the device tree's `qemu,fw-cfg-mmio` node.
        let mut fw_cfg = platform.fw_cfg.and_then(|base| unsafe { FwCfg::probe_mmio(base) });
        let mut script_file = None;
        if let Some(fw) = fw_cfg.as_mut() {
            fw.for_each_file(|file| {
                if file.is(fw_cfg::SCRIPT_FILE) {
                    script_file = Some(*file);
                }
            });
        }
        let state =
            fw_cfg.as_ref().map_or(0, |fw| 1 | u64::from(fw.uses_dma()) << 1) | u64::from(script_file.is_some()) << 2;
        FW_CFG_STATE.store(state, Ordering::Release);
        Arm { platform, by_uefi, fw_cfg, script_file, pci: None, clock: None }
    }

    fn pci(&mut self) -> &mut PciDevices {
        self.pci.get_or_insert_with(scan_pci)
    }

    fn pvpanic_with(&mut self, which: PvDevice, event: PvEvent) -> Result<Pvpanic, DeviceError> {
        // There is no ISA bus: `pvpanic.*` means pvpanic-pci here.
        let device = match which {
            PvDevice::Any | PvDevice::Pci => self.pci().pvpanic,
            PvDevice::Isa => None,
        }
        .ok_or(DeviceError::NoPvpanic(which))?;
        crate::pci_devices::advertising(device, event)
    }

    fn need_watchdog(&mut self, model: Model) -> Result<(), DeviceError> {
        let present = match model {
            Model::I6300Esb => self.pci().i6300esb.is_some(),
            // The others' architectures: refused from `Action::archs`.
            Model::Ib700 | Model::Diag288 => true,
        };
        if present { Ok(()) } else { Err(DeviceError::NoWatchdog(model)) }
    }
}

/// Logs every device (once per boot), scanning PCI if nobody did; returns
/// the pvpanic-pci device. Runs when the agent ends the script and before
/// it reports its own crash.
fn inventory() -> Option<Pvpanic> {
    if !PCI_SCANNED.load(Ordering::Acquire) {
        scan_pci();
    }
    let pvpanic = Pvpanic::from_raw(PVPANIC_PCI.load(Ordering::Acquire));
    if INVENTORY_LOGGED.swap(true, Ordering::AcqRel) {
        return pvpanic;
    }
    fw_cfg::log_inventory_state(FW_CFG_STATE.load(Ordering::Acquire));
    info!("pvpanic-isa: not present (no ISA bus on aarch64)");
    Pvpanic::log_inventory("pvpanic-pci", pvpanic);
    let esb = I6300ESB.load(Ordering::Acquire);
    crate::pci_devices::log_i6300esb((esb != 0).then_some(esb & !(1 << 63)));
    info!(
        "semihosting: {=str}",
        if semihosting::available() {
            "enabled (error exits use SYS_EXIT)"
        } else {
            "not enabled (errors will halt instead of exiting; add -semihosting-config enable=on,target=native)"
        }
    );
    pvpanic
}

impl Machine for Arm {
    const ARCH: Arch = Arch::Aarch64;
    const DESCRIPTION: &'static str = "aarch64";
    const INVALID_OPCODE: Fault = Fault::Undefined;
    type Clock = Timer;

    fn boot_number(&mut self) -> u8 {
        let stored = BOOT_COUNT.load(Ordering::Relaxed) as u16;
        let (boot, store) = crate::boot_count::next(stored);
        BOOT_COUNT.store(u64::from(store), Ordering::Relaxed);
        boot
    }

    fn log_start(&mut self) {
        let p = &self.platform;
        if self.by_uefi {
            crate::say!(info, "booted by UEFI (\\EFI\\BOOT\\BOOTAA64.EFI), device tree at {=u64:#x}", p.dtb as u64);
        } else {
            crate::say!(info, "booted as an arm64 Image (-kernel), device tree at {=u64:#x}", p.dtb as u64);
        }
        match p.pci {
            Some(host) => crate::say!(
                info,
                "PCIe host bridge: ECAM at {=u64:#x} ({=u64} buses), 32-bit window {=u64:#x}..{=u64:#x}",
                host.ecam as u64,
                host.buses,
                host.mem32.map_or(0, |w| w.0),
                host.mem32.map_or(0, |w| w.1)
            ),
            None => crate::say!(warn, "no PCIe host bridge in the device tree"),
        }
    }

    fn log_inventory(&mut self) {
        inventory();
    }

    /// fw_cfg `opt/pvagent/script` first, else the command line (`-append`,
    /// the device tree's `/chosen/bootargs`).
    fn load_script(&mut self, buf: &mut [u8]) -> (&'static str, usize) {
        match (&mut self.fw_cfg, self.script_file) {
            (Some(fw), Some(file)) => {
                let len = fw.read_file(&file, buf);
                ("fw_cfg opt/pvagent/script", (file.size as usize).max(len))
            }
            _ => {
                let args = self.platform.bootargs.as_bytes();
                for (to, &from) in buf.iter_mut().zip(args) {
                    *to = from;
                }
                ("the command line (-append)", args.len())
            }
        }
    }

    fn check(&mut self, action: &Action<'_>) -> Result<(), DeviceError> {
        match *action {
            Action::Pvpanic(which, event) => self.pvpanic_with(which, event).map(|_| ()),
            Action::Exit(_) => {
                if semihosting::available() {
                    Ok(())
                } else {
                    Err(DeviceError::NoSemihosting)
                }
            }
            Action::Psci(_) => self.platform.psci.map(|_| ()).ok_or(DeviceError::NoPsci),
            Action::WatchdogArm(timeout) => self.need_watchdog(timeout.model()),
            Action::WatchdogFeed(model) | Action::WatchdogStop(model) | Action::FeedFor { model, .. } => {
                self.need_watchdog(model)
            }
            Action::Sleep(_) | Action::Log(_) | Action::Halt | Action::FirstBoot | Action::Fault(_) => Ok(()),
            // Other architectures' steps: refused from `Action::archs`.
            Action::HvCrash { .. }
            | Action::HvProbe
            | Action::S390DisabledWait { .. }
            | Action::S390Shutdown
            | Action::PowerButton { .. } => Ok(()),
        }
    }

    fn run(&mut self, action: &Action<'_>) {
        match *action {
            Action::Pvpanic(which, event) => {
                if let Ok(device) = self.pvpanic_with(which, event) {
                    device.fire_step(event);
                }
            }
            Action::Exit(code) => {
                crate::say!(info, "exiting through semihosting with QEMU status {=u8}", qemu_status(code));
                semihosting::exit(qemu_status(code));
            }
            Action::Psci(call) => {
                if let Some(conduit) = self.platform.psci {
                    crate::say!(
                        info,
                        "PSCI {=str} ({=u32:#x}) by {=str}",
                        call.name(),
                        call.function_id(),
                        if conduit == Conduit::Hvc { "hvc" } else { "smc" }
                    );
                    let refused = psci::call(conduit, call);
                    crate::say!(error, "PSCI {=str} returned {=i64}", call.name(), refused);
                    self.fail(ErrorExit::Device);
                }
            }
            Action::WatchdogArm(watchdog::Timeout::I6300Esb(settings)) => {
                if let Some(esb) = self.pci().i6300esb.as_mut() {
                    esb.arm(&settings);
                }
            }
            Action::Fault(Fault::Undefined) => {
                crate::say!(info, "causing fault:undefined");
                // SAFETY: `udf` is permanently undefined: an exception on
                // purpose, whose handler reports it and never returns.
                unsafe { core::arch::asm!("udf #0", options(noreturn)) }
            }
            Action::Fault(Fault::DataAbort) => {
                crate::say!(info, "causing fault:data-abort");
                // SAFETY: a load from an address nothing maps (the upper
                // half, whose table walks are off: a translation fault, a
                // data abort on purpose); the handler never returns.
                unsafe {
                    core::arch::asm!("ldr x9, [{a}]", "udf #1", a = in(reg) 0xffff_ffff_ffff_f000u64, options(noreturn))
                }
            }
            // Run by the agent itself, never passed here.
            Action::Sleep(_)
            | Action::Log(_)
            | Action::Halt
            | Action::FirstBoot
            | Action::FeedFor { .. }
            | Action::WatchdogFeed(_)
            | Action::WatchdogStop(_)
            | Action::Fault(Fault::RustPanic | Fault::InternalPanic | Fault::InternalException) => {}
            // Other architectures': refused before any step runs (`Action::archs`).
            Action::WatchdogArm(watchdog::Timeout::Ib700(_) | watchdog::Timeout::Diag288(_))
            | Action::HvCrash { .. }
            | Action::HvProbe
            | Action::S390DisabledWait { .. }
            | Action::S390Shutdown
            | Action::PowerButton { .. }
            | Action::Fault(
                Fault::InvalidOpcode
                | Fault::GeneralProtection
                | Fault::PageFault
                | Fault::DivideError
                | Fault::StackOverflow
                | Fault::Triple
                | Fault::Operation
                | Fault::Specification,
            ) => {}
        }
    }

    fn feed(&mut self, model: Model) {
        if model == Model::I6300Esb
            && let Some(esb) = self.pci().i6300esb.as_mut()
        {
            esb.feed();
        }
    }

    fn stop(&mut self, model: Model) -> bool {
        model == Model::I6300Esb && self.pci().i6300esb.as_mut().is_some_and(Watchdog::stop)
    }

    fn clock(&mut self) -> &mut Timer {
        let gic = self.platform.gic;
        self.clock.get_or_insert_with(|| {
            let timer = Timer::new(gic);
            match gic {
                Some(Gic::V2 { .. }) => {
                    info!("clock: generic timer at {=u64} Hz, sleeps wait with wfi (GICv2)", timer.hz())
                }
                Some(Gic::V3 { .. }) if timer.wakes() => {
                    info!("clock: generic timer at {=u64} Hz, sleeps wait with wfi (GICv3)", timer.hz())
                }
                _ => warn!("clock: generic timer at {=u64} Hz; no usable GIC: sleeps poll the counter", timer.hz()),
            }
            timer
        })
    }

    fn fail(&mut self, why: ErrorExit) -> ! {
        if why == ErrorExit::Device {
            crate::pci_devices::say_buses_searched();
        }
        inventory();
        fail(why)
    }

    fn halt(&mut self) -> ! {
        super::halt()
    }

    /// From here on the agent's own crashes are reported through
    /// pvpanic-pci. A script that does not use PCI does not pay for the
    /// scan before its first step: the crash path (`inventory`) scans then.
    fn start_steps(&mut self, _waits: bool) {
        STEPS_STARTED.store(true, Ordering::Release);
    }
}

/// Ends the agent with one of its documented error exits (semihosting's
/// SYS_EXIT with the QEMU status x86's isa-debug-exit gives), or halts.
fn fail(why: ErrorExit) -> ! {
    if semihosting::available() {
        crate::say!(error, "exiting through semihosting with status {=u8} ({=str})", why.qemu_status(), why.meaning());
        semihosting::exit(why.qemu_status());
    }
    crate::say!(error, "no semihosting: halting ({=str})", why.meaning());
    super::halt()
}

/// Reports a crash of the agent, after the inventory: once steps run,
/// pvpanic `panicked` when pvpanic-pci is there; else the error exit.
fn report_crash(why: ErrorExit) -> ! {
    let device = if REPORTING.swap(true, Ordering::AcqRel) { None } else { inventory() };
    crate::pci_devices::report_crash_through(device, STEPS_STARTED.load(Ordering::Acquire));
    fail(why)
}

/// An exception's class (ESR_EL1.EC), as the log names it.
fn class_name(ec: u64) -> &'static str {
    match ec {
        0x00 => "unknown reason (an undefined instruction)",
        0x0e => "illegal execution state",
        0x15 => "SVC",
        0x16 => "HVC",
        0x17 => "SMC",
        0x20 => "instruction abort from a lower EL",
        0x21 => "instruction abort",
        0x22 => "PC alignment fault",
        0x24 => "data abort from a lower EL",
        0x25 => "data abort",
        0x26 => "SP alignment fault",
        0x2f => "SError",
        0x3c => "BRK",
        _ => "other",
    }
}

/// Every exception (the vector slot in `kind`: 4 is a synchronous
/// exception at EL1 on its own stack, 5–7 IRQ, FIQ, SError). Returns only
/// for the semihosting probe's undefined instruction.
#[unsafe(no_mangle)]
extern "C" fn pvagent_exception(kind: u64) {
    let (esr, elr, far): (u64, u64, u64);
    // SAFETY: reading the exception syndrome, link and fault address
    // registers has no side effects.
    unsafe {
        core::arch::asm!(
            "mrs {e}, esr_el1", "mrs {l}, elr_el1", "mrs {f}, far_el1",
            e = out(reg) esr, l = out(reg) elr, f = out(reg) far, options(nomem, nostack)
        )
    };
    let ec = esr >> 26;
    if kind == 4 && ec == 0 && semihosting::catch_probe() {
        // SAFETY: steps over the refused `hlt` (4 bytes) of the probe.
        unsafe { core::arch::asm!("msr elr_el1, {}", in(reg) elr + 4, options(nomem, nostack)) };
        return;
    }
    // This handler never returns to the code it interrupted: a log line
    // that code had open is ended here.
    // SAFETY: see above.
    unsafe { crate::log::abandon_interrupted_frame() };
    crate::say!(
        error,
        "CPU exception (vector slot {=u64}): {=str}, ESR {=u64:#x} (EC {=u64:#04x}), ELR {=u64:#x}, FAR {=u64:#x}",
        kind,
        class_name(ec),
        esr,
        ec,
        elr,
        far
    );
    report_crash(ErrorExit::Fault)
}

/// Ends the agent after a panic (logged by `agent::report_panic`): through
/// pvpanic once steps run, else the error exit. A panic inside that
/// (`first` false) halts.
pub fn end_after_panic(first: bool) -> ! {
    if !first {
        super::halt();
    }
    report_crash(ErrorExit::Panic)
}
