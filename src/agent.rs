//! The agent proper, the same on every architecture: load the script, check
//! it and the devices every step needs, then run it. Each architecture
//! supplies a [`Machine`]: its devices, its clock and its way to end.
//!
//! # What runs before the first step, and the log's order
//!
//! The time from the vCPU's start to the first step's event is mostly the
//! cost of running code for the first time (TCG translates it). So before
//! the first step the agent does only what the script needs: it logs its
//! first line and how it started, loads and parses the script, looks for
//! the devices its steps use (a missing one is still an error before any
//! step runs), and calibrates the clock only when the script waits or arms
//! a watchdog. The inventory (every device, with its address and
//! capabilities) is logged when the agent itself ends the script: the
//! script finished, a `halt` step, a `first-boot` stop, no script, every
//! error exit (after the line naming what is missing), and before the agent
//! reports its own crash. A step whose event stops or ends the VM (pvpanic
//! under `panic=pause`/`poweroff`, `exit:`, a disabled wait) leaves no
//! chance to log after it: such a run has no inventory in its log.

use crate::clock::{Clock, wait_us};
use crate::exit::ErrorExit;
use crate::pvpanic::{PvDevice, PvEvent};
use crate::script::{self, Action, Fault, Step};
use crate::watchdog::{self, Countdowns, Model};
use crate::{Arch, Archs};
use defmt::info;

/// Why a step cannot run on this machine; found before the first step runs.
#[derive(Clone, Copy)]
pub enum DeviceError {
    NoPvpanic(PvDevice),
    NotAdvertised {
        device: &'static str,
        address: u64,
        events: u8,
        event: PvEvent,
    },
    NoDebugExit,
    /// aarch64: `exit:` needs semihosting.
    NoSemihosting,
    /// aarch64: the device tree names no PSCI conduit.
    NoPsci,
    NoWatchdog(Model),
    /// The Hyper-V crash MSRs are unavailable (the reason) and there is no fallback.
    NoHyperV(&'static str),
    /// The verb exists, but only on these other architectures (decided by
    /// the agent from [`Action::archs`], never by a machine).
    OtherArchitecture(Archs),
}

/// What an architecture provides to the agent.
pub trait Machine {
    /// Which steps exist here: those whose [`Action::archs`] hold this one, or are `None`.
    const ARCH: Arch;
    /// For the first log line, e.g. "x86_64, PVH boot".
    const DESCRIPTION: &'static str;
    /// The fault that raises this architecture's invalid-opcode exception
    /// (for `fault:internal-exception`).
    const INVALID_OPCODE: Fault;
    type Clock: Clock;
    /// 1 on the first boot in this QEMU process, 2 after a reset, …
    fn boot_number(&mut self) -> u8;
    /// Logs how the agent started, right after the first line (before the
    /// first step, unlike the inventory).
    fn log_start(&mut self) {}
    /// Looks for every device not looked for yet and logs them all, with
    /// their addresses and capabilities (once per boot). Called when the
    /// agent ends the script; [`Self::fail`] and the crash paths log it
    /// themselves.
    fn log_inventory(&mut self);
    /// Copies the script into `buf`; returns where it came from and its
    /// length (a length beyond `buf` means it did not fit).
    fn load_script(&mut self, buf: &mut [u8]) -> (&'static str, usize);
    /// Checks that the devices `action` needs are there. Only asked about
    /// steps of this architecture (or of every one).
    fn check(&mut self, action: &Action<'_>) -> Result<(), DeviceError>;
    /// Runs a step that needs the machine's devices (steps of this
    /// architecture; the agent runs the shared ones itself).
    fn run(&mut self, action: &Action<'_>);
    /// Feeds a watchdog (`*.feed`, `feed:`).
    fn feed(&mut self, model: Model);
    /// Stops a watchdog; false if it cannot be stopped (a locked i6300esb).
    fn stop(&mut self, model: Model) -> bool;
    fn clock(&mut self) -> &mut Self::Clock;
    /// Logs the inventory, then ends with one of the documented error exits.
    fn fail(&mut self, why: ErrorExit) -> !;
    /// Called once, right before the first step runs. Until then a panic or
    /// CPU exception of the agent (while loading, parsing or checking the
    /// script) is an internal error and must end in the documented error
    /// exit, never in an event the script could have asked for (pvpanic,
    /// Hyper-V, a wait at a user address). From here on the agent's own
    /// faults are reported as crashes. `waits`: the script has steps during
    /// which time passes (`sleep:`, `feed:`, a watchdog's arm or feed), so
    /// interrupts (a watchdog's NMI) can be expected while it runs.
    fn start_steps(&mut self, waits: bool);
    /// Idles forever without a crash event.
    fn halt(&mut self) -> !;
}

fn log_device_error(number: usize, step: &Step<'_>, e: DeviceError) {
    let (n, t) = (number, step.text);
    match e {
        DeviceError::NoPvpanic(PvDevice::Any) => {
            crate::say!(
                error,
                "step {=usize} ({=str}): no pvpanic device (add -device pvpanic or -device pvpanic-pci)",
                n,
                t
            )
        }
        DeviceError::NoPvpanic(PvDevice::Isa) => {
            crate::say!(error, "step {=usize} ({=str}): no pvpanic-isa device (add -device pvpanic)", n, t)
        }
        DeviceError::NoPvpanic(PvDevice::Pci) => {
            crate::say!(error, "step {=usize} ({=str}): no pvpanic-pci device (add -device pvpanic-pci)", n, t)
        }
        DeviceError::NotAdvertised { device, address, events, event } => crate::say!(
            error,
            "step {=usize} ({=str}): {=str} at {=u64:#x} does not advertise {=str} (events {=u8:#04x})",
            n,
            t,
            device,
            address,
            event.name(),
            events
        ),
        DeviceError::NoDebugExit => crate::say!(
            error,
            "step {=usize} ({=str}): no isa-debug-exit (add -device isa-debug-exit,iobase=0xf4,iosize=0x04)",
            n,
            t
        ),
        DeviceError::NoSemihosting => crate::say!(
            error,
            "step {=usize} ({=str}): semihosting is not enabled (add -semihosting-config enable=on,target=native)",
            n,
            t
        ),
        DeviceError::NoPsci => {
            crate::say!(error, "step {=usize} ({=str}): the device tree has no PSCI node with a method", n, t)
        }
        DeviceError::NoWatchdog(model) => {
            crate::say!(
                error,
                "step {=usize} ({=str}): no {=str} device (add -device {=str})",
                n,
                t,
                model.name(),
                model.name()
            )
        }
        DeviceError::NoHyperV(reason) => crate::say!(
            error,
            "step {=usize} ({=str}): the Hyper-V crash MSRs are unavailable: {=str} (hv.crash-or-pvpanic would fall back to pvpanic instead)",
            n,
            t,
            reason
        ),
        DeviceError::OtherArchitecture(archs) => {
            crate::say!(
                error,
                "step {=usize} ({=str}): not available on this architecture ({=str} only)",
                n,
                t,
                archs.names()
            )
        }
    }
}

/// When each watchdog's countdown started, for timing its expiry in the
/// guest (see [`log_watchdog_expiry`]).
static COUNTDOWNS: Countdowns = Countdowns::new();

/// Called by the interrupt handler of QEMU's watchdog action `inject-nmi`
/// (x86_64: the NMI; s390x: the restart interrupt) with the guest time it
/// read first thing: when a watchdog was counting down, logs the guest time
/// from its last arm or feed, in a fixed form for tools:
/// `watchdog timing: <model> expired <µs>us after its last <arm|feed>`.
pub fn log_watchdog_expiry(now_us: u64) {
    if let Some(e) = COUNTDOWNS.expired(now_us) {
        crate::say!(
            info,
            "watchdog timing: {=str} expired {=u64}us after its last {=str}",
            e.model.name(),
            e.after_us,
            e.since.name()
        );
    }
}

/// Ends the script without an event: the inventory, then halt.
fn end<M: Machine>(machine: &mut M) -> ! {
    machine.log_inventory();
    machine.halt()
}

/// The agent's main loop.
pub fn run<M: Machine>(machine: &mut M) -> ! {
    let boot = machine.boot_number();
    crate::say!(
        info,
        "pvagent {=str} build {=str} ({=str}), boot {=u8}",
        crate::VERSION,
        crate::BUILD_ID,
        M::DESCRIPTION,
        boot
    );
    if boot == crate::boot_count::MAX_BOOT {
        crate::say!(warn, "the boot counter stops at {=u8}: later boots are numbered {=u8} too", boot, boot);
    }
    machine.log_start();

    let mut buf = [0u8; script::MAX_SCRIPT_LEN + 1];
    let (source, len) = machine.load_script(&mut buf);
    let text = &buf[..len.min(buf.len())];
    if len > script::MAX_SCRIPT_LEN {
        crate::say!(error, "{}", script::ScriptError::too_long(text, len));
        machine.fail(ErrorExit::Script);
    }
    if script::is_blank_bytes(text) {
        crate::say!(info, "no script (nothing in {=str}): halting", source);
        end(machine);
    }
    let script = match script::parse_bytes(text) {
        Ok(script) => script,
        Err(e) => {
            crate::say!(error, "{}", e);
            machine.fail(ErrorExit::Script)
        }
    };
    crate::say!(info, "script from {=str}: {=usize} step(s)", source, script.len());

    // Every step's devices are checked before the first one runs.
    for (i, step) in script.iter().enumerate() {
        // The two internal-error faults fire here, in the middle of the
        // checks: they prove that the agent's own faults before the first
        // step end in its error exits, never in an event.
        if matches!(step.action, Action::Fault(Fault::InternalPanic)) {
            // The panic message is static (no `core::fmt` in the image);
            // the step number goes in the line before it.
            crate::say!(
                error,
                "fault:internal-panic: a panic while checking step {=usize} (before any step ran)",
                i + 1
            );
            panic!("fault:internal-panic: a panic while checking the script, before any step ran");
        }
        if matches!(step.action, Action::Fault(Fault::InternalException)) {
            info!("fault:internal-exception: raising an exception while checking step {=usize}", i + 1);
            machine.run(&Action::Fault(M::INVALID_OPCODE));
        }
        // Whether the verb exists here is the step's own property, decided
        // once, here; the machine only checks its devices.
        let checked = match step.action.archs() {
            Some(archs) if !archs.contains(M::ARCH) => Err(DeviceError::OtherArchitecture(archs)),
            Some(_) | None => machine.check(&step.action),
        };
        if let Err(e) = checked {
            log_device_error(i + 1, step, e);
            machine.fail(ErrorExit::Device);
        }
    }

    // A script that waits or arms a watchdog needs the clock: calibrated
    // now, not in the middle of the first timed step (where it would delay
    // a feed by ~20 ms), and before any watchdog is armed, whose expiry is
    // timed in the guest (`log_watchdog_expiry`). Other scripts never pay
    // for it.
    let waits = script.iter().any(|s| {
        matches!(s.action, Action::Sleep(_) | Action::FeedFor { .. } | Action::WatchdogArm(_) | Action::WatchdogFeed(_))
    });
    if waits {
        machine.clock().now_us();
    }

    machine.start_steps(waits);
    for (i, step) in script.iter().enumerate() {
        crate::say!(info, "step {=usize}: {=str}", i + 1, step.text);
        match step.action {
            Action::Sleep(us) => wait_us(machine.clock(), us),
            Action::Log(text) => crate::say!(info, "log: {=str}", text),
            Action::Halt => {
                crate::say!(info, "halting");
                end(machine);
            }
            Action::FirstBoot if boot > 1 => {
                crate::say!(info, "boot {=u8} is not the first: the script ends here", boot);
                end(machine);
            }
            Action::FirstBoot => {}
            Action::FeedFor { model, every_us, for_us } => feed_for(machine, model, every_us, for_us),
            Action::WatchdogArm(timeout) => {
                log_arm(timeout);
                machine.run(&step.action);
                // Right after the device took it: its countdown runs from here.
                let now_us = machine.clock().now_us();
                if timeout.acts() {
                    COUNTDOWNS.armed(timeout.model(), now_us, timeout.us());
                } else {
                    COUNTDOWNS.stopped(timeout.model());
                }
            }
            Action::WatchdogFeed(model) => feed(machine, model),
            Action::WatchdogStop(model) => {
                if machine.stop(model) {
                    COUNTDOWNS.stopped(model);
                } else {
                    crate::say!(warn, "{=str}: locked, it cannot be stopped", model.name());
                }
            }
            Action::Fault(Fault::RustPanic) => panic!("fault:rust-panic requested by the script"),
            // Fired while the script was checked: never reached.
            Action::Fault(Fault::InternalPanic | Fault::InternalException) => {}
            // The machine's steps (of this architecture: the checks refused
            // the others).
            Action::Pvpanic(..)
            | Action::Exit(_)
            | Action::HvCrash { .. }
            | Action::HvProbe
            | Action::S390DisabledWait { .. }
            | Action::S390Shutdown
            | Action::Psci(_)
            | Action::PowerButton { .. }
            | Action::Fault(
                Fault::InvalidOpcode
                | Fault::GeneralProtection
                | Fault::PageFault
                | Fault::DivideError
                | Fault::StackOverflow
                | Fault::Triple
                | Fault::Operation
                | Fault::Specification
                | Fault::Undefined
                | Fault::DataAbort,
            ) => machine.run(&step.action),
        }
    }
    crate::say!(info, "script finished: halting");
    end(machine)
}

/// Says how a watchdog is about to be armed (the same line on every
/// architecture the model exists on).
fn log_arm(timeout: watchdog::Timeout) {
    match timeout {
        watchdog::Timeout::Ib700(t) => crate::say!(info, "ib700: armed, WATCHDOG after {=u64}us", t.us()),
        watchdog::Timeout::I6300Esb(settings) => crate::say!(
            info,
            "i6300esb: armed, {=str} prescaler, preloads {=u32}/{=u32}, reboot {=str}, free-run {=str}: WATCHDOG after {=u64}us",
            settings.prescaler.name(),
            settings.preload1,
            settings.preload2,
            yes_no(settings.reboot),
            yes_no(settings.free_run),
            settings.total_us()
        ),
        watchdog::Timeout::Diag288(t) => crate::say!(info, "diag288: armed, WATCHDOG after {=u32}s", t.seconds()),
    }
}

/// Feeds a watchdog; its countdown restarts now.
fn feed<M: Machine>(machine: &mut M, model: Model) {
    machine.feed(model);
    let now_us = machine.clock().now_us();
    COUNTDOWNS.fed(model, now_us);
}

/// Feeds at 0, every, 2·every, … up to `for_us`; returns right after the
/// last feed.
fn feed_for<M: Machine>(machine: &mut M, model: Model, every_us: u64, for_us: u64) {
    let start = machine.clock().now_us();
    let mut feeds = 0u64;
    loop {
        feed(machine, model);
        feeds += 1;
        let next = feeds * every_us;
        if next > for_us {
            break;
        }
        let elapsed = machine.clock().now_us() - start;
        wait_us(machine.clock(), next.saturating_sub(elapsed));
    }
    let last = machine.clock().now_us() - start;
    info!("{=str}: fed {=u64} times, the last at {=u64}us", model.name(), feeds, last);
}

/// The panic handler's body: logs the panic (once; a panic while handling
/// one is not logged again) and lets the architecture end the agent.
///
/// The line holds the message when it is a plain string (every panic the
/// agent raises on purpose) and always the location, without `core::fmt`:
/// a formatted message (from `core`, e.g. an index out of bounds) is not
/// rendered, its location says which.
pub fn report_panic(info: &core::panic::PanicInfo<'_>) -> ! {
    use core::sync::atomic::{AtomicBool, Ordering};
    static PANICKING: AtomicBool = AtomicBool::new(false);
    let first = !PANICKING.swap(true, Ordering::Relaxed);
    // SAFETY: the panic handler never returns (it ends in `-> !`, and the
    // images abort on panic), so the code it interrupted, which may have
    // had a log line open, never runs again.
    unsafe { crate::log::abandon_interrupted_frame() };
    if first {
        let message = info.message().as_str().unwrap_or("(a formatted message, not rendered in the image)");
        match info.location() {
            Some(at) => {
                crate::say!(
                    error,
                    "panic: {=str} (at {=str}:{=u32}:{=u32})",
                    message,
                    at.file(),
                    at.line(),
                    at.column()
                )
            }
            None => crate::say!(error, "panic: {=str}", message),
        }
    }
    crate::arch::end_after_panic(first)
}

/// "yes" or "no", for logs.
pub fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}
