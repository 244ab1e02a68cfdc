//! The x86_64 machine: its devices, found at boot, and how the agent ends.

use super::{cpu, interrupts, pvh::Boot, tsc::Tsc};
use crate::Arch;
use crate::agent::{DeviceError, Machine, yes_no};
use crate::exit::{DebugExit, ErrorExit};
use crate::fw_cfg::{self, FileEntry, FwCfg};
use crate::hyperv::{self, Probe, Unavailable};
use crate::pvpanic::{self, PvDevice, PvEvent, Pvpanic};
use crate::script::{Action, Fault};
use crate::watchdog::{self, I6300Esb, Ib700, Model, Watchdog, i6300esb, ib700};
use core::sync::atomic::{AtomicU64, Ordering};
use defmt::{error, info, warn};

/// Everything the agent found on the machine.
pub struct X86 {
    boot: Boot,
    fw_cfg: Option<FwCfg>,
    script_file: Option<FileEntry>,
    pvpanic_isa: Option<Pvpanic>,
    pvpanic_pci: Option<Pvpanic>,
    debug_exit: Option<DebugExit>,
    /// ib700's ports are write-only: it cannot be detected, only used.
    ib700: Ib700<ib700::IsaPorts>,
    i6300esb: Option<I6300Esb<i6300esb::PciEsbBus>>,
    clock: Option<Tsc>,
}

/// The device that interrupt and panic handlers report the agent's own
/// faults through (packed by [`Pvpanic::to_raw`]; 0 = none). It stays 0
/// until the first step starts ([`Machine::start_steps`]): a fault before
/// that is an internal error and ends in isa-debug-exit, never in pvpanic.
static REPORT_PVPANIC: AtomicU64 = AtomicU64::new(0);

impl X86 {
    /// Sets up the CPU (GDT, IDT, stack guard) and probes every device.
    pub fn new(boot: Boot) -> Self {
        cpu::init();
        interrupts::init(interrupts::Handlers { nmi: on_nmi, exception: on_exception });
        super::apic::init();
        let mut fw_cfg = FwCfg::probe();
        let mut script_file = None;
        let mut port_file = None;
        if let Some(fw) = &mut fw_cfg {
            fw.for_each_file(|file| {
                if file.is(fw_cfg::SCRIPT_FILE) {
                    script_file = Some(*file);
                } else if file.is(fw_cfg::PVPANIC_PORT_FILE) {
                    port_file = Some(*file);
                }
            });
        }
        // QEMU publishes the ISA port in fw_cfg whenever the device exists.
        let isa_port = match (&mut fw_cfg, port_file) {
            (Some(fw), Some(file)) => {
                let mut port = [0; 2];
                fw.read_file(&file, &mut port);
                Some(u16::from_le_bytes(port))
            }
            (Some(_), None) => None,
            (None, _) => Some(pvpanic::ISA_DEFAULT_PORT),
        };
        // One scan of PCI for every device the agent knows there.
        let [pvpanic_pci, esb] = crate::pci::find([
            (pvpanic::PCI_VENDOR, pvpanic::PCI_DEVICE),
            (i6300esb::PCI_VENDOR, i6300esb::PCI_DEVICE),
        ]);
        X86 {
            boot,
            script_file,
            // SAFETY: the port QEMU published for pvpanic, or the default
            // on a machine without fw_cfg (see `isa_port` above).
            pvpanic_isa: isa_port.and_then(|port| unsafe { Pvpanic::probe_isa(port) }),
            pvpanic_pci: pvpanic_pci.and_then(Pvpanic::probe_pci),
            debug_exit: DebugExit::probe(),
            ib700: Ib700::new(ib700::IsaPorts),
            i6300esb: esb.and_then(i6300esb::probe),
            fw_cfg,
            clock: None,
        }
    }

    /// The pvpanic device a step addresses: ISA first for `pvpanic.*`.
    fn pvpanic(&self, which: PvDevice) -> Option<&Pvpanic> {
        match which {
            PvDevice::Any => self.pvpanic_isa.as_ref().or(self.pvpanic_pci.as_ref()),
            PvDevice::Isa => self.pvpanic_isa.as_ref(),
            PvDevice::Pci => self.pvpanic_pci.as_ref(),
        }
    }

    fn pvpanic_with(&self, which: PvDevice, event: PvEvent) -> Result<&Pvpanic, DeviceError> {
        let device = self.pvpanic(which).ok_or(DeviceError::NoPvpanic(which))?;
        if !pvpanic::advertises(device.events(), event) {
            return Err(DeviceError::NotAdvertised {
                device: device.name(),
                address: device.address(),
                events: device.events(),
                event,
            });
        }
        Ok(device)
    }

    fn stop(&mut self, model: Model) -> bool {
        match model {
            Model::Ib700 => self.ib700.stop(),
            Model::I6300Esb => self.i6300esb.as_mut().is_some_and(Watchdog::stop),
            // s390x's: refused before any step runs.
            Model::Diag288 => false,
        }
    }

    /// The watchdog a step uses is there.
    fn need_watchdog(&self, model: Model) -> Result<(), DeviceError> {
        let present = match model {
            // Write-only ports: it cannot be detected, only used.
            Model::Ib700 => true,
            Model::I6300Esb => self.i6300esb.is_some(),
            // s390x's: the agent refuses it from `Action::arch`.
            Model::Diag288 => true,
        };
        if present { Ok(()) } else { Err(DeviceError::NoWatchdog(model)) }
    }

    /// Runs `hv.crash` / `hv.crash-or-pvpanic`; returns if the vCPU goes on
    /// (QEMU's panic action `none`).
    fn hv_crash(&mut self, args: [u64; 5], fallback: bool) {
        let probe = Probe::read(&mut cpu::Cpu);
        log_probe(&probe);
        match probe.check() {
            Ok(()) => {
                info!(
                    "hv.crash: writing P0..P4 = {=u64:#x} {=u64:#x} {=u64:#x} {=u64:#x} {=u64:#x}, then CRASH_CTL notify",
                    args[0], args[1], args[2], args[3], args[4]
                );
                match hyperv::report_crash(&mut cpu::Cpu, args) {
                    Ok(()) => {
                        info!("hv.crash: wrote P0..P4 and CRASH_CTL notify");
                        return;
                    }
                    Err(msr) => {
                        error!("hv.crash: wrmsr {=u32:#x} raised #GP (the hypervisor refused the crash MSRs)", msr)
                    }
                }
            }
            Err(why) => warn!("hv.crash: the Hyper-V crash MSRs are unavailable: {=str}", unavailable_reason(why)),
        }
        match self.pvpanic_with(PvDevice::Any, PvEvent::Panicked) {
            Ok(device) if fallback => {
                info!("hv.crash-or-pvpanic: falling back to {=str} panicked", device.name());
                device.fire(PvEvent::Panicked);
            }
            _ => self.fail(ErrorExit::Device),
        }
    }
}

impl Machine for X86 {
    const ARCH: Arch = Arch::X86_64;
    const DESCRIPTION: &'static str = "x86_64";
    const INVALID_OPCODE: Fault = Fault::InvalidOpcode;
    type Clock = Tsc;

    fn boot_number(&mut self) -> u8 {
        super::cmos::count_boot()
    }

    fn log_inventory(&mut self) {
        match self.boot {
            Boot::Pvh(_) => info!("booted through PVH (-kernel)"),
            Boot::Firmware => info!("booted as the firmware (-bios): no command line, scripts come through fw_cfg"),
            Boot::Unknown => warn!("no valid PVH start info: no command line"),
        }
        match &self.fw_cfg {
            Some(fw) => info!(
                "fw_cfg: present ({=str}), script file {=str}",
                if fw.uses_dma() { "DMA" } else { "port I/O" },
                yes_no(self.script_file.is_some())
            ),
            None => info!("fw_cfg: not present"),
        }
        for (name, device) in [("pvpanic-isa", &self.pvpanic_isa), ("pvpanic-pci", &self.pvpanic_pci)] {
            match device {
                Some(d) => info!(
                    "{=str}: at {=u64:#x}, events {=u8:#04x} (bit0 panicked, bit1 crashloaded, bit2 shutdown)",
                    name,
                    d.address(),
                    d.events()
                ),
                None => info!("{=str}: not present", name),
            }
        }
        match &self.i6300esb {
            Some(esb) => info!(
                "i6300esb: {} BAR0 at {=u64:#x}, previous reset by this watchdog: {=str}",
                esb.bus().bdf,
                esb.bus().base as u64,
                yes_no(esb.previous_reboot())
            ),
            None => info!("i6300esb: not present"),
        }
        info!("ib700: write-only ports 0x441/0x443 (cannot be detected)");
        match self.debug_exit {
            Some(_) => info!("isa-debug-exit: at {=u16:#x}", crate::exit::DEBUG_EXIT_PORT),
            None => info!("isa-debug-exit: not present (errors will halt instead of exiting)"),
        }
    }

    /// fw_cfg `opt/pvagent/script` first, else the PVH command line.
    fn load_script(&mut self, buf: &mut [u8]) -> (&'static str, usize) {
        match (&mut self.fw_cfg, self.script_file) {
            (Some(fw), Some(file)) => {
                let len = fw.read_file(&file, buf);
                ("fw_cfg opt/pvagent/script", (file.size as usize).max(len))
            }
            _ => match self.boot {
                Boot::Pvh(info) => ("the command line", info.copy_cmdline(buf)),
                Boot::Firmware | Boot::Unknown => ("fw_cfg (no command line without PVH)", 0),
            },
        }
    }

    fn check(&mut self, action: &Action<'_>) -> Result<(), DeviceError> {
        match *action {
            Action::Pvpanic(which, event) => self.pvpanic_with(which, event).map(|_| ()),
            Action::Exit(_) => self.debug_exit.as_ref().map(|_| ()).ok_or(DeviceError::NoDebugExit),
            Action::HvCrash { fallback, .. } => match Probe::read(&mut cpu::Cpu).check() {
                Ok(()) => Ok(()),
                Err(_) if fallback => self.pvpanic_with(PvDevice::Any, PvEvent::Panicked).map(|_| ()),
                Err(why) => Err(DeviceError::NoHyperV(unavailable_reason(why))),
            },
            Action::WatchdogArm(timeout) => self.need_watchdog(timeout.model()),
            Action::WatchdogFeed(model) | Action::WatchdogStop(model) | Action::FeedFor { model, .. } => {
                self.need_watchdog(model)
            }
            // No device needed (the faults are the CPU's own).
            Action::HvProbe
            | Action::Sleep(_)
            | Action::Log(_)
            | Action::Halt
            | Action::FirstBoot
            | Action::Fault(_) => Ok(()),
            // s390x's steps: the agent refuses them from `Action::arch`
            // before asking; there is nothing of theirs to check here.
            Action::S390DisabledWait { .. } | Action::S390Shutdown => Ok(()),
        }
    }

    fn run(&mut self, action: &Action<'_>) {
        match *action {
            Action::Pvpanic(which, event) => {
                if let Some(device) = self.pvpanic(which) {
                    info!(
                        "{=str} at {=u64:#x}: writing {=str} ({=u8:#04x})",
                        device.name(),
                        device.address(),
                        event.name(),
                        event.bit()
                    );
                    device.fire(event);
                }
            }
            Action::Exit(code) => {
                if let Some(exit) = self.debug_exit.take() {
                    exit.exit(code);
                }
            }
            Action::WatchdogArm(watchdog::Timeout::Ib700(timeout)) => {
                info!("ib700: armed, WATCHDOG after {=u64}us", timeout.us());
                self.ib700.arm(&timeout);
            }
            Action::WatchdogArm(watchdog::Timeout::I6300Esb(settings)) => {
                info!(
                    "i6300esb: armed, {=str} prescaler, preloads {=u32}/{=u32}, reboot {=str}, free-run {=str}: WATCHDOG after {=u64}us",
                    settings.prescaler.name(),
                    settings.preload1,
                    settings.preload2,
                    yes_no(settings.reboot),
                    yes_no(settings.free_run),
                    settings.total_us()
                );
                if let Some(esb) = self.i6300esb.as_mut() {
                    esb.arm(&settings);
                }
            }
            Action::WatchdogFeed(model) => self.feed(model),
            Action::WatchdogStop(model) => {
                if !self.stop(model) {
                    warn!("{=str}: locked, it cannot be stopped", model.name());
                }
            }
            Action::HvProbe => log_probe(&Probe::read(&mut cpu::Cpu)),
            Action::HvCrash { args, fallback } => self.hv_crash(args, fallback),
            Action::Fault(fault) => {
                info!("causing fault:{=str}", fault.name());
                match fault {
                    Fault::InvalidOpcode => cpu::invalid_opcode(),
                    Fault::GeneralProtection => cpu::general_protection(),
                    Fault::PageFault => cpu::page_fault(),
                    Fault::DivideError => cpu::divide_error(),
                    Fault::StackOverflow => cpu::stack_overflow(),
                    Fault::Triple => cpu::triple_fault(),
                    // Run by the agent itself, never passed here.
                    Fault::RustPanic | Fault::InternalPanic | Fault::InternalException => {}
                    // s390x's: refused before any step runs (`Action::arch`).
                    Fault::Operation | Fault::Specification => {}
                }
            }
            // Run by the agent itself, never passed here.
            Action::Sleep(_) | Action::Log(_) | Action::Halt | Action::FirstBoot | Action::FeedFor { .. } => {}
            // s390x's: refused before any step runs (`Action::arch`).
            Action::WatchdogArm(watchdog::Timeout::Diag288(_))
            | Action::S390DisabledWait { .. }
            | Action::S390Shutdown => {}
        }
    }

    fn feed(&mut self, model: Model) {
        match model {
            Model::Ib700 => self.ib700.feed(),
            Model::I6300Esb => self.i6300esb.as_mut().map_or((), Watchdog::feed),
            // s390x's: refused before any step runs.
            Model::Diag288 => {}
        }
    }

    fn clock(&mut self) -> &mut Tsc {
        self.clock.get_or_insert_with(|| {
            let tsc = Tsc::calibrate();
            info!(
                "clock: TSC at {=u64} kHz (against {=str}), local APIC timer at {=u64} kHz",
                tsc.ticks_per_ms(),
                tsc.reference(),
                tsc.apic_ticks_per_ms()
            );
            if !tsc.halts_in_sleeps() {
                warn!(
                    "the APIC timer's rate is implausible (APIC base MSR {=u64:#x}): sleeps will spin",
                    super::apic::base_msr()
                );
            }
            tsc
        })
    }

    fn fail(&mut self, why: ErrorExit) -> ! {
        fail(self.debug_exit.take(), why)
    }

    fn halt(&mut self) -> ! {
        super::halt()
    }

    fn start_steps(&mut self) {
        if let Some(device) = self.pvpanic(PvDevice::Any) {
            REPORT_PVPANIC.store(device.to_raw(), Ordering::Relaxed);
        }
    }
}

/// Ends the agent with one of its documented error exits (or halts when
/// QEMU has no isa-debug-exit).
fn fail(debug_exit: Option<DebugExit>, why: ErrorExit) -> ! {
    match debug_exit {
        Some(exit) => {
            error!("exiting through isa-debug-exit with {=u8:#04x} ({=str})", why.code(), why.meaning());
            exit.exit(why.code())
        }
        None => {
            error!("no isa-debug-exit device: halting ({=str})", why.meaning());
            super::halt()
        }
    }
}

fn unavailable_reason(why: Unavailable) -> &'static str {
    match why {
        Unavailable::NoHypervisor => "CPUID.1:ECX bit 31 is clear (no hypervisor)",
        Unavailable::NotHyperV => {
            "CPUID 0x40000001 EAX is not \"Hv#1\" (no Hyper-V interface: needs KVM with Hyper-V and -cpu ...,hv-crash)"
        }
        Unavailable::NoCrashMsrs => "CPUID 0x40000003 EDX bit 10 is clear (no crash MSRs: add hv-crash to -cpu)",
    }
}

fn log_probe(probe: &Probe) {
    info!(
        "hv.probe: hypervisor bit {=str}, vendor \"{=str}\" (max leaf {=u32:#x}), interface {=u32:#010x}{=str}, CPUID 0x40000003 EDX {=u32:#x}: crash MSRs {=str}",
        yes_no(probe.hypervisor),
        probe.vendor_str(),
        probe.max_leaf,
        probe.interface,
        if probe.interface == hyperv::HV_SIGNATURE { " (Hv#1)" } else { "" },
        probe.features_edx,
        if probe.check().is_ok() { "available" } else { "unavailable" }
    );
}

fn report_device(event: PvEvent) -> Option<Pvpanic> {
    Pvpanic::from_raw(REPORT_PVPANIC.load(Ordering::Relaxed)).filter(|d| pvpanic::advertises(d.events(), event))
}

/// Reports a crash of the agent: once steps run, pvpanic `panicked` when a
/// device is there; before the first step (an internal error) and without
/// a device, the documented isa-debug-exit code, else halt.
fn report_crash(why: ErrorExit) -> ! {
    if let Some(device) = report_device(PvEvent::Panicked) {
        error!("reporting it through {=str} panicked", device.name());
        device.fire(PvEvent::Panicked);
        super::halt();
    }
    if REPORT_PVPANIC.load(Ordering::Relaxed) == 0 {
        error!("an internal error of the agent (no step has run, or no pvpanic to report it through)");
    }
    // Probing reads port 0xf4 only: harmless, and right even when the fault
    // came before the devices were found.
    fail(DebugExit::probe(), why)
}

fn on_nmi() {
    warn!("NMI received (QEMU's watchdog action inject-nmi sends one)");
    match report_device(PvEvent::CrashLoaded) {
        Some(device) => {
            info!("reporting the NMI through {=str} crashloaded", device.name());
            device.fire(PvEvent::CrashLoaded);
        }
        None => warn!("no pvpanic device with crashloaded: the NMI is only logged"),
    }
}

fn on_exception(frame: &interrupts::Frame) -> ! {
    if interrupts::has_error_code(frame.vector) {
        error!(
            "CPU exception {=u64} ({=str}): error code {=u64:#x}, RIP {=u64:#x}, RSP {=u64:#x}",
            frame.vector,
            interrupts::vector_name(frame.vector),
            frame.error_code,
            frame.rip,
            frame.rsp
        );
    } else {
        error!(
            "CPU exception {=u64} ({=str}): RIP {=u64:#x}, RSP {=u64:#x}",
            frame.vector,
            interrupts::vector_name(frame.vector),
            frame.rip,
            frame.rsp
        );
    }
    if frame.vector == u64::from(interrupts::PAGE_FAULT) || frame.vector == u64::from(interrupts::DOUBLE_FAULT) {
        let cr2 = interrupts::cr2();
        error!("page fault address (CR2) {=u64:#x}", cr2);
        if cr2 >> 12 == cpu::stack_guard() >> 12 {
            error!("the address is the stack's guard page: stack overflow");
        }
    }
    report_crash(ErrorExit::Fault)
}

/// Ends the agent after a panic (logged by `agent::report_panic`): through
/// pvpanic once steps run, else isa-debug-exit, else halt. A panic inside
/// that (`first` false) halts, so the device probes cannot recurse.
pub fn end_after_panic(first: bool) -> ! {
    if !first {
        super::halt();
    }
    report_crash(ErrorExit::Panic)
}
