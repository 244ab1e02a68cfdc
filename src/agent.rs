//! The agent proper: find the devices, load and check the script, run it.

use crate::arch::{self, pvh::BootInfo};
use crate::exit::{DebugExit, ErrorExit};
use crate::fw_cfg::{self, FileEntry, FwCfg};
use crate::pvpanic::{self, Pvpanic};
use crate::script::{self, Action, PvDevice, PvEvent, Step};
use crate::time::Clock;
use defmt::{error, info, warn};

/// Everything the agent found on the machine.
pub struct Devices {
    fw_cfg: Option<FwCfg>,
    script_file: Option<FileEntry>,
    pvpanic_isa: Option<Pvpanic>,
    pvpanic_pci: Option<Pvpanic>,
    debug_exit: Option<DebugExit>,
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

    /// Ends the agent with one of its documented error exits (or halts when
    /// QEMU has no isa-debug-exit).
    pub fn fail(&mut self, why: ErrorExit) -> ! {
        match self.debug_exit.take() {
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
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// Why a step cannot run on this machine.
enum DeviceError {
    NoPvpanic(PvDevice),
    NotAdvertised(&'static str, u64, u8, PvEvent),
    NoDebugExit,
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
    }
}

/// Where the script came from.
#[derive(Clone, Copy, defmt::Format)]
enum Source {
    FwCfg,
    CommandLine,
}

/// The agent's main loop, entered from the architecture's start-up code.
pub fn run(boot: Option<BootInfo>) -> ! {
    crate::log::init();
    info!("pvagent {=str} (x86_64, PVH boot)", crate::VERSION);
    if boot.is_none() {
        warn!("no valid PVH start info: no command line");
    }
    let mut devices = Devices::discover();
    devices.log();

    // Load the script text: fw_cfg first, else the command line.
    let mut buf = [0u8; script::MAX_SCRIPT_LEN + 1];
    let (source, len) = match (&mut devices.fw_cfg, devices.script_file) {
        (Some(fw), Some(file)) => (Source::FwCfg, fw.read_file(&file, &mut buf)),
        _ => {
            let len = boot.map_or(Ok(0), |b| b.copy_cmdline(&mut buf)).unwrap_or_else(|len| len);
            (Source::CommandLine, len)
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
            devices.fail(ErrorExit::Script)
        }
    };
    info!("script from {}: {=usize} step(s)", source, script.len());

    // Every step's devices are checked before the first one runs.
    for (i, step) in script.iter().enumerate() {
        if let Err(e) = check(step, &devices) {
            log_device_error(i + 1, step, &e);
            devices.fail(ErrorExit::Device);
        }
    }

    let mut clock = None;
    for (i, step) in script.iter().enumerate() {
        info!("step {=usize}: {=str}", i + 1, step.text);
        match step.action {
            Action::Pvpanic(which, event) => {
                if let Some(device) = devices.pvpanic(which) {
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
        }
    }
    info!("script finished: halting");
    arch::halt()
}

/// Reports a panic of the agent: pvpanic `panicked` when a device is there,
/// else the documented isa-debug-exit code, else halt.
pub fn report_panic(info: &core::panic::PanicInfo<'_>) -> ! {
    use core::sync::atomic::{AtomicBool, Ordering};
    static PANICKING: AtomicBool = AtomicBool::new(false);
    if PANICKING.swap(true, Ordering::Relaxed) {
        arch::halt();
    }
    error!("panic: {}", defmt::Display2Format(info));
    let mut devices = Devices::discover();
    if let Some(device) = devices.pvpanic(PvDevice::Any).filter(|d| pvpanic::advertises(d.events(), PvEvent::Panicked))
    {
        error!("reporting the panic through {=str}", device.name());
        device.fire(PvEvent::Panicked);
        arch::halt();
    }
    devices.fail(ErrorExit::Panic)
}
