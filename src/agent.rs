//! The agent proper: find the devices, load and check the script, run it.

use crate::arch::{self, cpu, interrupts, pvh::BootInfo};
use crate::exit::{DebugExit, ErrorExit};
use crate::fw_cfg::{self, FileEntry, FwCfg};
use crate::hyperv::{self, Probe, Unavailable};
use crate::pvpanic::{self, Pvpanic};
use crate::script::{self, Action, Fault, PvDevice, PvEvent, Step};
use crate::time::Clock;
use crate::watchdog::{self, I6300Esb, Ib700, Model, Watchdog, i6300esb, ib700};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use defmt::{error, info, warn};

/// Everything the agent found on the machine.
pub struct Devices {
    fw_cfg: Option<FwCfg>,
    script_file: Option<FileEntry>,
    pvpanic_isa: Option<Pvpanic>,
    pvpanic_pci: Option<Pvpanic>,
    debug_exit: Option<DebugExit>,
    /// ib700's ports are write-only: it cannot be detected, only used.
    ib700: Ib700<ib700::IsaPorts>,
    i6300esb: Option<I6300Esb<i6300esb::PciEsbBus>>,
}

impl Devices {
    /// Probes every device the agent knows.
    pub fn discover() -> Self {
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
        Devices {
            script_file,
            pvpanic_isa: isa_port.and_then(Pvpanic::probe_isa),
            pvpanic_pci: Pvpanic::probe_pci(),
            debug_exit: DebugExit::probe(),
            ib700: Ib700::new(ib700::IsaPorts),
            i6300esb: i6300esb::probe(),
            fw_cfg,
        }
    }

    fn log(&self) {
        match &self.fw_cfg {
            Some(_) => info!("fw_cfg: present, script file {=str}", yes_no(self.script_file.is_some())),
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

    /// The pvpanic device a step addresses: ISA first for `pvpanic.*`.
    fn pvpanic(&self, which: PvDevice) -> Option<&Pvpanic> {
        match which {
            PvDevice::Any => self.pvpanic_isa.as_ref().or(self.pvpanic_pci.as_ref()),
            PvDevice::Isa => self.pvpanic_isa.as_ref(),
            PvDevice::Pci => self.pvpanic_pci.as_ref(),
        }
    }

    fn feed(&mut self, model: Model) {
        match model {
            Model::Ib700 => self.ib700.feed(),
            Model::I6300Esb => self.i6300esb.as_mut().map_or((), Watchdog::feed),
        }
    }

    fn stop(&mut self, model: Model) -> bool {
        match model {
            Model::Ib700 => self.ib700.stop(),
            Model::I6300Esb => self.i6300esb.as_mut().is_some_and(Watchdog::stop),
        }
    }
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// Ends the agent with one of its documented error exits (or halts when
/// QEMU has no isa-debug-exit).
fn fail(debug_exit: Option<DebugExit>, why: ErrorExit) -> ! {
    match debug_exit {
        Some(exit) => {
            error!("exiting through isa-debug-exit with {=u8:#04x} ({})", why.code(), why);
            exit.exit(why.code())
        }
        None => {
            error!("no isa-debug-exit device: halting ({})", why);
            arch::halt()
        }
    }
}

/// Why a step cannot run on this machine.
enum DeviceError {
    NoPvpanic(PvDevice),
    NotAdvertised(&'static str, u64, u8, PvEvent),
    NoDebugExit,
    NoI6300Esb,
    /// The crash MSRs are unavailable and there is no pvpanic fallback.
    NoHyperV(Unavailable),
}

/// Checks that the devices a step needs are there.
fn check(step: &Step<'_>, devices: &Devices) -> Result<(), DeviceError> {
    match step.action {
        Action::Pvpanic(which, event) => {
            let device = devices.pvpanic(which).ok_or(DeviceError::NoPvpanic(which))?;
            if !pvpanic::advertises(device.events(), event) {
                return Err(DeviceError::NotAdvertised(device.name(), device.address(), device.events(), event));
            }
            Ok(())
        }
        Action::Exit(_) if devices.debug_exit.is_none() => Err(DeviceError::NoDebugExit),
        Action::HvCrash { fallback, .. } => match Probe::read(&mut cpu::Cpu).check() {
            Ok(()) => Ok(()),
            Err(_) if fallback => {
                // The run-time fallback is pvpanic `panicked`.
                let device = devices.pvpanic(PvDevice::Any).ok_or(DeviceError::NoPvpanic(PvDevice::Any))?;
                match pvpanic::advertises(device.events(), PvEvent::Panicked) {
                    true => Ok(()),
                    false => Err(DeviceError::NotAdvertised(
                        device.name(),
                        device.address(),
                        device.events(),
                        PvEvent::Panicked,
                    )),
                }
            }
            Err(why) => Err(DeviceError::NoHyperV(why)),
        },
        _ if step.action.watchdog() == Some(Model::I6300Esb) && devices.i6300esb.is_none() => {
            Err(DeviceError::NoI6300Esb)
        }
        _ => Ok(()),
    }
}

fn log_device_error(number: usize, step: &Step<'_>, e: &DeviceError) {
    match *e {
        DeviceError::NoPvpanic(PvDevice::Any) => error!(
            "step {=usize} ({=str}): no pvpanic device (add -device pvpanic or -device pvpanic-pci)",
            number, step.text
        ),
        DeviceError::NoPvpanic(PvDevice::Isa) => {
            error!("step {=usize} ({=str}): no pvpanic-isa device (add -device pvpanic)", number, step.text)
        }
        DeviceError::NoPvpanic(PvDevice::Pci) => {
            error!("step {=usize} ({=str}): no pvpanic-pci device (add -device pvpanic-pci)", number, step.text)
        }
        DeviceError::NotAdvertised(name, address, events, event) => error!(
            "step {=usize} ({=str}): {=str} at {=u64:#x} does not advertise {=str} (events {=u8:#04x})",
            number,
            step.text,
            name,
            address,
            event.name(),
            events
        ),
        DeviceError::NoDebugExit => error!(
            "step {=usize} ({=str}): no isa-debug-exit (add -device isa-debug-exit,iobase=0xf4,iosize=0x04)",
            number, step.text
        ),
        DeviceError::NoHyperV(why) => {
            error!(
                "step {=usize} ({=str}): the Hyper-V crash MSRs are unavailable: {=str} (use hv.crash-or-pvpanic for a pvpanic fallback)",
                number,
                step.text,
                unavailable_reason(why)
            );
        }
        DeviceError::NoI6300Esb => {
            error!("step {=usize} ({=str}): no i6300esb device (add -device i6300esb)", number, step.text)
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

/// Runs `hv.crash` / `hv.crash-or-pvpanic`; returns if the vCPU goes on
/// (QEMU's panic action `none`).
fn hv_crash(args: [u64; 5], fallback: bool, devices: &mut Devices) {
    let probe = Probe::read(&mut cpu::Cpu);
    log_probe(&probe);
    let failure = match probe.check() {
        Ok(()) => match hyperv::report_crash(&mut cpu::Cpu, args) {
            Ok(()) => {
                info!("hv.crash: wrote P0..P4 and CRASH_CTL notify");
                return;
            }
            Err(msr) => {
                error!("hv.crash: wrmsr {=u32:#x} raised #GP (the hypervisor refused the crash MSRs)", msr);
                None
            }
        },
        Err(why) => {
            warn!("hv.crash: the Hyper-V crash MSRs are unavailable: {=str}", unavailable_reason(why));
            Some(why)
        }
    };
    match devices.pvpanic(PvDevice::Any).filter(|_| fallback) {
        Some(device) => {
            info!("hv.crash-or-pvpanic: falling back to {=str} panicked", device.name());
            device.fire(PvEvent::Panicked);
        }
        None => {
            if let Some(why) = failure {
                error!("hv.crash: {=str}", unavailable_reason(why));
            }
            fail(devices.debug_exit.take(), ErrorExit::Device)
        }
    }
}

/// The device that interrupt and panic handlers report through (packed by
/// [`Pvpanic::to_raw`]; 0 = none), and whether isa-debug-exit exists.
static REPORT_PVPANIC: AtomicU64 = AtomicU64::new(0);
static HAS_DEBUG_EXIT: AtomicBool = AtomicBool::new(false);

fn report_device(event: PvEvent) -> Option<Pvpanic> {
    Pvpanic::from_raw(REPORT_PVPANIC.load(Ordering::Relaxed)).filter(|d| pvpanic::advertises(d.events(), event))
}

/// Reports a crash of the agent: pvpanic `panicked` when a device is there,
/// else the documented isa-debug-exit code, else halt.
fn report_crash(why: ErrorExit) -> ! {
    if let Some(device) = report_device(PvEvent::Panicked) {
        error!("reporting it through {=str} panicked", device.name());
        device.fire(PvEvent::Panicked);
        arch::halt();
    }
    let debug_exit = if HAS_DEBUG_EXIT.load(Ordering::Relaxed) { DebugExit::probe() } else { None };
    fail(debug_exit, why)
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
    error!(
        "CPU exception {=u64} ({=str}): error code {=u64:#x}, RIP {=u64:#x}, RSP {=u64:#x}",
        frame.vector,
        interrupts::vector_name(frame.vector),
        frame.error_code,
        frame.rip,
        frame.rsp
    );
    if frame.vector == u64::from(interrupts::PAGE_FAULT) || frame.vector == u64::from(interrupts::DOUBLE_FAULT) {
        let cr2 = interrupts::cr2();
        error!("page fault address (CR2) {=u64:#x}", cr2);
        if cr2 >> 12 == cpu::stack_guard() >> 12 {
            error!("the address is the stack's guard page: stack overflow");
        }
    }
    report_crash(ErrorExit::Fault)
}

/// The agent's main loop, entered from the architecture's start-up code.
pub fn run(boot: Option<BootInfo>) -> ! {
    crate::log::init();
    cpu::init();
    interrupts::init(interrupts::Handlers { nmi: on_nmi, exception: on_exception });
    let boot_number = crate::cmos::count_boot();
    info!("pvagent {=str} (x86_64, PVH boot), boot {=u8}", crate::VERSION, boot_number);
    if boot.is_none() {
        warn!("no valid PVH start info: no command line");
    }
    let mut devices = Devices::discover();
    devices.log();
    if let Some(device) = devices.pvpanic(PvDevice::Any) {
        REPORT_PVPANIC.store(device.to_raw(), Ordering::Relaxed);
    }
    HAS_DEBUG_EXIT.store(devices.debug_exit.is_some(), Ordering::Relaxed);

    // Load the script text: fw_cfg first, else the command line.
    let mut buf = [0u8; script::MAX_SCRIPT_LEN + 1];
    let (source, len) = match (&mut devices.fw_cfg, devices.script_file) {
        (Some(fw), Some(file)) => ("fw_cfg opt/pvagent/script", fw.read_file(&file, &mut buf)),
        _ => {
            let len = boot.map_or(Ok(0), |b| b.copy_cmdline(&mut buf)).unwrap_or_else(|len| len);
            ("the command line", len)
        }
    };
    let text = &buf[..len];
    if script::is_blank_bytes(text) {
        info!("no script (neither fw_cfg {=str} nor a command line): halting", fw_cfg::SCRIPT_FILE);
        arch::halt();
    }

    let script = match script::parse_bytes(text) {
        Ok(script) => script,
        Err(e) => {
            error!("{}", defmt::Display2Format(&e));
            fail(devices.debug_exit.take(), ErrorExit::Script)
        }
    };
    info!("script from {=str}: {=usize} step(s)", source, script.len());

    // Every step's devices are checked before the first one runs.
    for (i, step) in script.iter().enumerate() {
        if let Err(e) = check(step, &devices) {
            log_device_error(i + 1, step, &e);
            fail(devices.debug_exit.take(), ErrorExit::Device);
        }
    }

    let mut clock = None;
    for (i, step) in script.iter().enumerate() {
        info!("step {=usize}: {=str}", i + 1, step.text);
        match step.action {
            Action::Pvpanic(which, event) => {
                if let Some(device) = devices.pvpanic(which) {
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
            Action::Sleep(us) => clock.get_or_insert_with(Clock::calibrate).sleep_us(us),
            Action::Exit(code) => {
                if let Some(exit) = devices.debug_exit.take() {
                    exit.exit(code);
                }
            }
            Action::Log(text) => info!("log: {=str}", text),
            Action::Halt => {
                info!("halting");
                arch::halt();
            }
            Action::FirstBoot if boot_number > 1 => {
                info!("boot {=u8} is not the first: the script ends here", boot_number);
                arch::halt();
            }
            Action::FirstBoot => {}
            Action::HvProbe => log_probe(&Probe::read(&mut cpu::Cpu)),
            Action::HvCrash { args, fallback } => hv_crash(args, fallback, &mut devices),
            Action::Fault(fault) => {
                info!("causing fault:{=str}", fault.name());
                match fault {
                    Fault::InvalidOpcode => cpu::invalid_opcode(),
                    Fault::GeneralProtection => cpu::general_protection(),
                    Fault::PageFault => cpu::page_fault(),
                    Fault::DivideError => cpu::divide_error(),
                    Fault::StackOverflow => cpu::stack_overflow(),
                    Fault::RustPanic => panic!("fault:rust-panic requested by the script"),
                    Fault::Triple => cpu::triple_fault(),
                }
            }
            Action::WatchdogArm(watchdog::Timeout::Ib700(timeout)) => {
                info!("ib700: armed, WATCHDOG after {=u64}us", timeout.us());
                devices.ib700.arm(&timeout);
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
                if let Some(esb) = devices.i6300esb.as_mut() {
                    esb.arm(&settings);
                }
            }
            Action::WatchdogFeed(model) => devices.feed(model),
            Action::WatchdogStop(model) => {
                if !devices.stop(model) {
                    warn!("{=str}: locked, it cannot be stopped", model.name());
                }
            }
            Action::FeedFor { model, every_us, for_us } => {
                let clock = clock.get_or_insert_with(Clock::calibrate);
                let start = clock.now_us();
                let mut feeds = 0u64;
                loop {
                    devices.feed(model);
                    feeds += 1;
                    let next = feeds * every_us;
                    if next > for_us {
                        break;
                    }
                    let now = clock.now_us() - start;
                    clock.sleep_us(next.saturating_sub(now));
                }
                info!("{=str}: fed {=u64} times, last at {=u64}us", model.name(), feeds, clock.now_us() - start);
            }
        }
    }
    info!("script finished: halting");
    arch::halt()
}

/// The panic handler's body.
pub fn report_panic(info: &core::panic::PanicInfo<'_>) -> ! {
    static PANICKING: AtomicBool = AtomicBool::new(false);
    if PANICKING.swap(true, Ordering::Relaxed) {
        arch::halt();
    }
    error!("panic: {}", defmt::Display2Format(info));
    if REPORT_PVPANIC.load(Ordering::Relaxed) == 0 && !HAS_DEBUG_EXIT.load(Ordering::Relaxed) {
        // A panic before discovery finished: look for the devices now.
        if let Some(device) = Pvpanic::probe_isa(pvpanic::ISA_DEFAULT_PORT) {
            REPORT_PVPANIC.store(device.to_raw(), Ordering::Relaxed);
        }
        HAS_DEBUG_EXIT.store(DebugExit::probe().is_some(), Ordering::Relaxed);
    }
    report_crash(ErrorExit::Panic)
}
