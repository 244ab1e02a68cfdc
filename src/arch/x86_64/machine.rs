//! The x86_64 machine: its devices, found when a step needs them, and how
//! the agent ends.
//!
//! Before the first step the agent looks only for what the script uses
//! (fw_cfg for the script itself, then each step's device): under TCG the
//! cost of a boot is mostly translating code that runs for the first time,
//! so code the script does not need stays unrun until the script ends. The
//! inventory (every device, for the log) is taken when the agent itself
//! ends the script: [`inventory`], from the main code or from a crash
//! handler that never returns, which is why what the probes found is also
//! published in atomics ([`Probed`]).

use super::{cpu, interrupts, pvh::Boot, tsc::Tsc};
use crate::Arch;
use crate::agent::{DeviceError, Machine, yes_no};
use crate::exit::{DebugExit, ErrorExit};
use crate::fw_cfg::{self, FileEntry, FwCfg};
use crate::hyperv::{self, Probe, Unavailable};
use crate::pci_devices::PciDevices;
use crate::pvpanic::{self, PvDevice, PvEvent, Pvpanic};
use crate::script::{Action, Fault};
use crate::smbios;
use crate::watchdog::{self, Ib700, Model, Watchdog, ib700};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use defmt::{info, warn};

/// What the agent found on the machine so far (each device is looked for
/// the first time a step, the crash-report set-up or the inventory needs it).
pub struct X86 {
    boot: Boot,
    fw_cfg: Option<FwCfg>,
    script_file: Option<FileEntry>,
    /// `etc/pvpanic-port`: QEMU publishes it whenever pvpanic-isa exists.
    port_file: Option<FileEntry>,
    /// `etc/smbios/smbios-tables`.
    smbios_file: Option<FileEntry>,
    /// `None` until probed.
    pvpanic_isa: Option<Option<Pvpanic>>,
    /// `None` until PCI is scanned.
    pci: Option<PciDevices>,
    /// ib700's ports are write-only: it cannot be detected, only used.
    ib700: Ib700<ib700::IsaPorts>,
    clock: Option<Tsc>,
}

/// The device that interrupt and panic handlers report the agent's own
/// faults and NMIs through (packed by [`Pvpanic::to_raw`]; 0 = none or not
/// known yet). Set when the first step starts ([`Machine::start_steps`])
/// and completed by the inventory.
static REPORT_PVPANIC: AtomicU64 = AtomicU64::new(0);
/// The first step has started: from here on a crash of the agent is
/// reported as one (through pvpanic); before it, it is an internal error
/// and ends in isa-debug-exit.
static STEPS_STARTED: AtomicBool = AtomicBool::new(false);

/// A probe's result, published for code that cannot borrow the machine
/// (the inventory in crash handlers): not probed yet, absent, or the
/// device packed in a word with bit 63 set.
struct Probed(AtomicU64);

const NOT_PROBED: u64 = 0;
const ABSENT: u64 = 1;

impl Probed {
    const fn new() -> Self {
        Probed(AtomicU64::new(NOT_PROBED))
    }

    /// `None` when not probed yet; else the packed device, if present.
    fn get(&self) -> Option<Option<u64>> {
        match self.0.load(Ordering::Acquire) {
            NOT_PROBED => None,
            ABSENT => Some(None),
            packed => Some(Some(packed)),
        }
    }

    fn set(&self, packed: Option<u64>) {
        self.0.store(packed.map_or(ABSENT, |p| p | 1 << 63), Ordering::Release);
    }
}

/// fw_cfg: bit 0 present, bit 1 DMA, bit 2 the script file is there.
static FW_CFG: Probed = Probed::new();
static PVPANIC_ISA: Probed = Probed::new();
static PVPANIC_PCI: Probed = Probed::new();
/// The i6300esb: BAR0 (bits 0–31), bus/device/function (32–47), the
/// previous-reset flag (bit 48).
static I6300ESB: Probed = Probed::new();

fn publish_fw_cfg(fw: Option<&FwCfg>, script_file: bool) {
    FW_CFG.set(fw.map(|_| fw_cfg::inventory_state(fw, script_file)));
}

fn publish_pci(devices: &PciDevices) {
    PVPANIC_PCI.set(devices.pvpanic.as_ref().map(Pvpanic::to_raw));
    I6300ESB.set(devices.packed_i6300esb());
}

/// The files of fw_cfg's directory the agent reads.
#[derive(Clone, Copy, Default)]
struct Files {
    script: Option<FileEntry>,
    /// The pvpanic-isa port.
    port: Option<FileEntry>,
    /// QEMU's SMBIOS structure table (what firmware copies into memory).
    smbios: Option<FileEntry>,
}

fn find_files(fw: &mut FwCfg) -> Files {
    let mut files = Files::default();
    fw.for_each_file(|file| {
        if file.is(fw_cfg::SCRIPT_FILE) {
            files.script = Some(*file);
        } else if file.is(fw_cfg::PVPANIC_PORT_FILE) {
            files.port = Some(*file);
        } else if file.is(fw_cfg::SMBIOS_TABLES_FILE) {
            files.smbios = Some(*file);
        }
    });
    files
}

/// Copies `script` into `buf`; returns its whole length (more than the
/// buffer: it did not fit).
fn copy_script(script: &[u8], buf: &mut [u8]) -> usize {
    for (to, &from) in buf.iter_mut().zip(script) {
        *to = from;
    }
    script.len()
}

/// Probes pvpanic-isa at the port QEMU published in fw_cfg (none: no
/// device), or at the default port on a machine without fw_cfg.
fn probe_pvpanic_isa(fw: Option<&mut FwCfg>, port_file: Option<FileEntry>) -> Option<Pvpanic> {
    let port = match (fw, port_file) {
        (Some(fw), Some(file)) => {
            let mut port = [0; 2];
            fw.read_file(&file, &mut port);
            Some(u16::from_le_bytes(port))
        }
        (Some(_), None) => None,
        (None, _) => Some(pvpanic::ISA_DEFAULT_PORT),
    };
    let device = match port {
        // SAFETY: the port QEMU published for pvpanic, or the default on
        // a machine without fw_cfg (above).
        Some(port) => unsafe { Pvpanic::probe_isa(port) },
        None => None,
    };
    PVPANIC_ISA.set(device.as_ref().map(Pvpanic::to_raw));
    device
}

/// One scan of PCI for every device the agent knows there.
fn scan_pci() -> PciDevices {
    let devices = PciDevices::scan();
    publish_pci(&devices);
    devices
}

/// The inventory has been logged (or is being logged) in this boot.
static INVENTORY_LOGGED: AtomicBool = AtomicBool::new(false);

/// Probes whatever nobody probed yet, logs every device (once per boot),
/// and returns the pvpanic devices (ISA, PCI). Runs when the agent ends
/// the script (finished, halt, first-boot stop, an error exit) and before
/// it reports its own crash: in the main code, or in a crash handler that
/// never returns to the code it interrupted (so a probe it cut short, e.g.
/// of fw_cfg, is never resumed; PCI accesses guard themselves).
fn inventory() -> [Option<Pvpanic>; 2] {
    let fw_state = match FW_CFG.get() {
        Some(state) => state,
        None => {
            let mut fw = FwCfg::probe();
            let script = fw.as_mut().and_then(|fw| find_files(fw).script);
            publish_fw_cfg(fw.as_ref(), script.is_some());
            FW_CFG.get().flatten()
        }
    };
    let isa = match PVPANIC_ISA.get() {
        Some(packed) => packed.and_then(Pvpanic::from_raw),
        None => {
            let mut fw = FwCfg::probe();
            let port_file = fw.as_mut().and_then(|fw| find_files(fw).port);
            probe_pvpanic_isa(fw.as_mut(), port_file)
        }
    };
    if PVPANIC_PCI.get().is_none() || I6300ESB.get().is_none() {
        scan_pci();
    }
    let pci = PVPANIC_PCI.get().flatten().and_then(Pvpanic::from_raw);
    if STEPS_STARTED.load(Ordering::Acquire)
        && let Some(device) = isa.or(pci)
    {
        let _ = REPORT_PVPANIC.compare_exchange(0, device.to_raw(), Ordering::AcqRel, Ordering::Acquire);
    }
    if INVENTORY_LOGGED.swap(true, Ordering::AcqRel) {
        return [isa, pci];
    }
    fw_cfg::log_inventory_state(fw_state.unwrap_or(0));
    Pvpanic::log_inventory("pvpanic-isa", isa);
    Pvpanic::log_inventory("pvpanic-pci", pci);
    crate::pci_devices::log_i6300esb(I6300ESB.get().flatten());
    info!("ib700: write-only ports 0x441/0x443 (cannot be detected)");
    match DebugExit::probe() {
        Some(_) => info!("isa-debug-exit: at {=u16:#x}", crate::exit::DEBUG_EXIT_PORT),
        None => info!("isa-debug-exit: not present (errors will halt instead of exiting)"),
    }
    [isa, pci]
}

impl X86 {
    /// Sets up the IDT and the local APIC (the boot stub did the GDT, TSS
    /// and stack guard) and finds fw_cfg and its files: what every boot
    /// needs to read its script. Devices are looked for when a step needs
    /// them.
    pub fn new(boot: Boot) -> Self {
        interrupts::init(interrupts::Handlers { nmi: on_nmi, sci: super::acpi::on_sci, exception: on_exception });
        let mut fw_cfg = FwCfg::probe();
        let files = fw_cfg.as_mut().map(find_files).unwrap_or_default();
        publish_fw_cfg(fw_cfg.as_ref(), files.script.is_some());
        X86 {
            boot,
            fw_cfg,
            script_file: files.script,
            port_file: files.port,
            smbios_file: files.smbios,
            pvpanic_isa: None,
            pci: None,
            ib700: Ib700::new(ib700::IsaPorts),
            clock: None,
        }
    }

    fn pvpanic_isa(&mut self) -> Option<Pvpanic> {
        if let Some(probed) = self.pvpanic_isa {
            return probed;
        }
        let device = probe_pvpanic_isa(self.fw_cfg.as_mut(), self.port_file);
        self.pvpanic_isa = Some(device);
        device
    }

    fn pci(&mut self) -> &mut PciDevices {
        self.pci.get_or_insert_with(scan_pci)
    }

    /// The pvpanic device a step addresses: ISA first for `pvpanic.*`.
    fn pvpanic(&mut self, which: PvDevice) -> Option<Pvpanic> {
        match which {
            PvDevice::Any => self.pvpanic_isa().or_else(|| self.pci().pvpanic),
            PvDevice::Isa => self.pvpanic_isa(),
            PvDevice::Pci => self.pci().pvpanic,
        }
    }

    fn pvpanic_with(&mut self, which: PvDevice, event: PvEvent) -> Result<Pvpanic, DeviceError> {
        let device = self.pvpanic(which).ok_or(DeviceError::NoPvpanic(which))?;
        crate::pci_devices::advertising(device, event)
    }

    /// The watchdog a step uses is there.
    fn need_watchdog(&mut self, model: Model) -> Result<(), DeviceError> {
        let present = match model {
            // Write-only ports: it cannot be detected, only used.
            Model::Ib700 => true,
            Model::I6300Esb => self.pci().i6300esb.is_some(),
            // s390x's: the agent refuses it from `Action::archs`.
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
                crate::say!(
                    info,
                    "hv.crash: writing P0..P4 = {=u64:#x} {=u64:#x} {=u64:#x} {=u64:#x} {=u64:#x}, then CRASH_CTL notify",
                    args[0],
                    args[1],
                    args[2],
                    args[3],
                    args[4]
                );
                match hyperv::report_crash(&mut cpu::Cpu, args) {
                    Ok(()) => {
                        crate::say!(info, "hv.crash: wrote P0..P4 and CRASH_CTL notify");
                        return;
                    }
                    Err(msr) => {
                        crate::say!(
                            error,
                            "hv.crash: wrmsr {=u32:#x} raised #GP (the hypervisor refused the crash MSRs)",
                            msr
                        )
                    }
                }
            }
            Err(why) => {
                crate::say!(warn, "hv.crash: the Hyper-V crash MSRs are unavailable: {=str}", unavailable_reason(why))
            }
        }
        match self.pvpanic_with(PvDevice::Any, PvEvent::Panicked) {
            Ok(device) if fallback => {
                crate::say!(info, "hv.crash-or-pvpanic: falling back to {=str} panicked", device.name());
                device.fire(PvEvent::Panicked);
            }
            _ => self.fail(ErrorExit::Device),
        }
    }
}

impl X86 {
    /// The script of an SMBIOS OEM string (type 11, `pvagent:script=…`):
    /// from the tables a firmware left in memory, found by their entry
    /// point (SeaBIOS, qboot: in 0xf0000–0xfffff; UEFI: its configuration
    /// table, which the loader passed on); else (the agent as the firmware:
    /// nobody built them) from fw_cfg's copy.
    fn smbios_script(&mut self, buf: &mut [u8]) -> Option<(&'static str, usize)> {
        let table = match self.boot {
            Boot::Pvh(_) | Boot::Disk => {
                // SAFETY: the legacy BIOS area, RAM below 1 MiB that the
                // firmware filled (identity mapped); only read.
                let area = unsafe { core::slice::from_raw_parts(0xf_0000 as *const u8, 0x1_0000) };
                smbios::find_entry_point(area)
            }
            Boot::Uefi { smbios } if smbios != 0 && smbios < crate::pci::IDENTITY_MAP_END - 32 => {
                // SAFETY: the entry point UEFI's configuration table named
                // (the loader passed its address), identity mapped; only read.
                smbios::entry_point(unsafe { core::slice::from_raw_parts(smbios as *const u8, 32) })
            }
            _ => None,
        };
        if let Some(table) = table
            && table.address.saturating_add(u64::from(table.len)) <= crate::pci::IDENTITY_MAP_END
        {
            // SAFETY: the structure table the entry point names, inside the
            // identity map (checked), which the firmware filled; only read.
            let bytes = unsafe { core::slice::from_raw_parts(table.address as *const u8, table.len as usize) };
            return smbios::script(bytes)
                .map(|s| ("an SMBIOS OEM string (the firmware's tables)", copy_script(s, buf)));
        }
        let (fw, file) = (self.fw_cfg.as_mut()?, self.smbios_file?);
        let mut table = [0u8; 4096];
        let n = fw.read_file(&file, &mut table);
        smbios::script(table.get(..n).unwrap_or_default())
            .map(|s| ("an SMBIOS OEM string (fw_cfg etc/smbios/smbios-tables)", copy_script(s, buf)))
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

    fn log_start(&mut self) {
        match self.boot {
            Boot::Pvh(_) => crate::say!(info, "booted through PVH (-kernel)"),
            Boot::Firmware => {
                crate::say!(info, "booted as the firmware (-bios): no command line, scripts come through fw_cfg")
            }
            Boot::Disk => {
                crate::say!(info, "booted from a disk by the BIOS (the image's boot sector): no command line")
            }
            Boot::Uefi { smbios } => {
                crate::say!(info, "booted by UEFI (\\EFI\\BOOT\\BOOTX64.EFI), SMBIOS entry point at {=u64:#x}", smbios)
            }
            Boot::Unknown => crate::say!(warn, "no valid PVH start info: no command line"),
        }
    }

    fn log_inventory(&mut self) {
        inventory();
    }

    /// fw_cfg `opt/pvagent/script` first, then an SMBIOS OEM string
    /// `pvagent:script=…`, then a script baked into the image, then the
    /// PVH command line.
    fn load_script(&mut self, buf: &mut [u8]) -> (&'static str, usize) {
        if let (Some(fw), Some(file)) = (&mut self.fw_cfg, self.script_file) {
            let len = fw.read_file(&file, buf);
            return ("fw_cfg opt/pvagent/script", (file.size as usize).max(len));
        }
        if let Some((source, len)) = self.smbios_script(buf) {
            return (source, len);
        }
        if let Some((len, script)) = crate::baked::script() {
            copy_script(script, buf);
            return ("the image (cargo xtask image --script)", len);
        }
        match self.boot {
            Boot::Pvh(info) => ("the command line", info.copy_cmdline(buf)),
            Boot::Firmware | Boot::Disk | Boot::Uefi { .. } | Boot::Unknown => {
                ("fw_cfg, SMBIOS or the image (no command line without PVH)", 0)
            }
        }
    }

    fn check(&mut self, action: &Action<'_>) -> Result<(), DeviceError> {
        match *action {
            Action::Pvpanic(which, event) => self.pvpanic_with(which, event).map(|_| ()),
            Action::Exit(_) => DebugExit::probe().map(|_| ()).ok_or(DeviceError::NoDebugExit),
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
            | Action::PowerButton { .. }
            | Action::Fault(_) => Ok(()),
            // Other architectures' steps: the agent refuses them from
            // `Action::archs` before asking; there is nothing to check here.
            Action::S390DisabledWait { .. } | Action::S390Shutdown | Action::Psci(_) => Ok(()),
        }
    }

    fn run(&mut self, action: &Action<'_>) {
        match *action {
            Action::Pvpanic(which, event) => {
                if let Some(device) = self.pvpanic(which) {
                    device.fire_step(event);
                }
            }
            Action::Exit(code) => {
                if let Some(exit) = DebugExit::probe() {
                    exit.exit(code);
                }
            }
            Action::WatchdogArm(watchdog::Timeout::Ib700(timeout)) => {
                self.ib700.arm(&timeout);
            }
            Action::WatchdogArm(watchdog::Timeout::I6300Esb(settings)) => {
                if let Some(esb) = self.pci().i6300esb.as_mut() {
                    esb.arm(&settings);
                }
            }
            Action::HvProbe => log_probe(&Probe::read(&mut cpu::Cpu)),
            Action::PowerButton { ignore } => {
                super::acpi::set_ignore(ignore);
                if !super::acpi::arm() {
                    crate::say!(warn, "no ACPI PM block (PIIX4 or ICH9): there is no power button to answer");
                }
            }
            Action::HvCrash { args, fallback } => self.hv_crash(args, fallback),
            Action::Fault(fault) => {
                crate::say!(info, "causing fault:{=str}", fault.name());
                match fault {
                    Fault::InvalidOpcode => cpu::invalid_opcode(),
                    Fault::GeneralProtection => cpu::general_protection(),
                    Fault::PageFault => cpu::page_fault(),
                    Fault::DivideError => cpu::divide_error(),
                    Fault::StackOverflow => cpu::stack_overflow(),
                    Fault::Triple => cpu::triple_fault(),
                    // Run by the agent itself, never passed here.
                    Fault::RustPanic | Fault::InternalPanic | Fault::InternalException => {}
                    // Other architectures': refused before any step runs (`Action::archs`).
                    Fault::Operation | Fault::Specification | Fault::Undefined | Fault::DataAbort => {}
                }
            }
            // Run by the agent itself, never passed here.
            Action::Sleep(_)
            | Action::Log(_)
            | Action::Halt
            | Action::FirstBoot
            | Action::FeedFor { .. }
            | Action::WatchdogFeed(_)
            | Action::WatchdogStop(_) => {}
            // s390x's: refused before any step runs (`Action::archs`).
            Action::WatchdogArm(watchdog::Timeout::Diag288(_))
            | Action::S390DisabledWait { .. }
            | Action::S390Shutdown
            | Action::Psci(_) => {}
        }
    }

    fn feed(&mut self, model: Model) {
        match model {
            Model::Ib700 => self.ib700.feed(),
            Model::I6300Esb => self.pci().i6300esb.as_mut().map_or((), Watchdog::feed),
            // s390x's: refused before any step runs.
            Model::Diag288 => {}
        }
    }

    fn stop(&mut self, model: Model) -> bool {
        match model {
            Model::Ib700 => self.ib700.stop(),
            Model::I6300Esb => self.pci().i6300esb.as_mut().is_some_and(Watchdog::stop),
            // s390x's: refused before any step runs.
            Model::Diag288 => false,
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
        if why == ErrorExit::Device {
            crate::pci_devices::say_buses_searched();
        }
        inventory();
        fail(DebugExit::probe(), why)
    }

    /// Idles, answering the ACPI power button as a real OS would.
    fn halt(&mut self) -> ! {
        super::acpi::arm();
        super::idle()
    }

    /// Finds the pvpanic device that NMIs (and, until the inventory, the
    /// agent's own crashes) are reported through: pvpanic-isa costs a
    /// fw_cfg read and a port read, so it is always looked for; PCI is
    /// scanned for pvpanic-pci only when a step needed PCI anyway or the
    /// script waits (`sleep:`, `feed:`, a watchdog's arm or feed), when an
    /// NMI can be expected and the clock's calibration dwarfs the scan.
    /// Otherwise the inventory or the crash path finds it.
    fn start_steps(&mut self, waits: bool) {
        // A script during which time passes can meet a power-button press
        // (a watchdog's `shutdown` action, `virsh shutdown`): armed now.
        // Others arm it when they end (`halt`), off the path to their event.
        if waits {
            // NMIs (a watchdog's inject-nmi) arrive through LINT1.
            super::apic::init();
            super::acpi::arm();
        }
        let device = match self.pvpanic_isa() {
            Some(isa) => Some(isa),
            None if waits || self.pci.is_some() => self.pci().pvpanic,
            None => None,
        };
        if let Some(device) = device {
            REPORT_PVPANIC.store(device.to_raw(), Ordering::Release);
        }
        STEPS_STARTED.store(true, Ordering::Release);
    }
}

/// Ends the agent with one of its documented error exits (or halts when
/// QEMU has no isa-debug-exit).
fn fail(debug_exit: Option<DebugExit>, why: ErrorExit) -> ! {
    match debug_exit {
        Some(exit) => {
            crate::say!(error, "exiting through isa-debug-exit with {=u8:#04x} ({=str})", why.code(), why.meaning());
            exit.exit(why.code())
        }
        None => {
            crate::say!(error, "no isa-debug-exit device: halting ({=str})", why.meaning());
            // After its own crash the agent no longer answers anything.
            if REPORTING.load(Ordering::Acquire) {
                super::halt()
            }
            super::acpi::arm();
            super::idle()
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
    Pvpanic::from_raw(REPORT_PVPANIC.load(Ordering::Acquire)).filter(|d| pvpanic::advertises(d.events(), event))
}

/// A crash is being reported: a fault inside that (e.g. in the inventory's
/// probes) goes straight to the exit, without a second inventory.
static REPORTING: AtomicBool = AtomicBool::new(false);

/// Reports a crash of the agent, after the inventory: once steps run,
/// pvpanic `panicked` when a device is there; before the first step (an
/// internal error) and without a device, the documented isa-debug-exit
/// code, else halt.
fn report_crash(why: ErrorExit) -> ! {
    if !REPORTING.swap(true, Ordering::AcqRel) {
        // Completes REPORT_PVPANIC once steps have started.
        inventory();
    }
    let device = Pvpanic::from_raw(REPORT_PVPANIC.load(Ordering::Acquire));
    crate::pci_devices::report_crash_through(device, STEPS_STARTED.load(Ordering::Acquire));
    // Probing reads port 0xf4 only: harmless, and right even when the fault
    // came before the devices were found.
    fail(DebugExit::probe(), why)
}

fn on_nmi() {
    // The time first: the NMI of a watchdog's expiry is timed from its
    // last arm or feed (`agent::log_watchdog_expiry`).
    let now_us = super::tsc::now_us();
    crate::say!(warn, "NMI received (QEMU's watchdog action inject-nmi sends one)");
    if let Some(now_us) = now_us {
        crate::agent::log_watchdog_expiry(now_us);
    }
    match report_device(PvEvent::CrashLoaded) {
        Some(device) => {
            crate::say!(info, "reporting the NMI through {=str} crashloaded", device.name());
            device.fire(PvEvent::CrashLoaded);
        }
        None => warn!("no pvpanic device with crashloaded: the NMI is only logged"),
    }
}

fn on_exception(frame: &interrupts::Frame) -> ! {
    if interrupts::has_error_code(frame.vector) {
        crate::say!(
            error,
            "CPU exception {=u64} ({=str}): error code {=u64:#x}, RIP {=u64:#x}, RSP {=u64:#x}",
            frame.vector,
            interrupts::vector_name(frame.vector),
            frame.error_code,
            frame.rip,
            frame.rsp
        );
    } else {
        crate::say!(
            error,
            "CPU exception {=u64} ({=str}): RIP {=u64:#x}, RSP {=u64:#x}",
            frame.vector,
            interrupts::vector_name(frame.vector),
            frame.rip,
            frame.rsp
        );
    }
    if frame.vector == u64::from(interrupts::PAGE_FAULT) || frame.vector == u64::from(interrupts::DOUBLE_FAULT) {
        let cr2 = interrupts::cr2();
        crate::say!(error, "page fault address (CR2) {=u64:#x}", cr2);
        if cr2 >> 12 == cpu::stack_guard() >> 12 {
            crate::say!(error, "the address is the stack's guard page: stack overflow");
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
