//! The s390x machine: SCLP console, diag288, wait PSWs.

use super::{load_wait_psw, lowcore, tod::Tod};
use crate::Arch;
use crate::agent::{DeviceError, Machine};
use crate::clock::Clock;
use crate::exit::{self, ErrorExit};
use crate::s390_psw as psw;
use crate::script::{Action, Fault};
use crate::watchdog::{self, Diag288, Model, Watchdog, diag288};
use core::sync::atomic::{AtomicBool, Ordering};
use defmt::{info, warn};

/// The boot counter (see `boot_count`): a halfword of lowcore outside the
/// image, which QEMU neither reloads nor clears on a re-IPL.
const BOOT_COUNTER: usize = 0xd00;

unsafe extern "C" {
    /// The command-line area at 0x10480 (entry.rs).
    static pvagent_cmdline: [u8; 1032];
}

/// `DIAG 0x288`, with a program-check fix-up: a refusal (no device, or a
/// request QEMU rejects) is a specification exception, caught and returned.
pub struct DiagInsn;

impl diag288::DiagBus for DiagInsn {
    fn diag288(&mut self, function: u64, seconds: u64) -> Result<(), diag288::Refused> {
        let refused: u64;
        // SAFETY: DIAG 0x288 with r2 = function, r3 = timeout, r4 = action 0
        // (encoded with base 0 so TCG and KVM read the same code). A program
        // check resumes at label 2 through the armed fix-up, which the
        // handler disarms; label 3 disarms it on success.
        unsafe {
            core::arch::asm!(
                "larl {tmp}, 2f",
                "stg {tmp}, 0({fixup})",
                ".long 0x83240288",
                "lghi {refused}, 0",
                "j 3f",
                "2:",
                "lghi {refused}, 1",
                "3:",
                "xc 0(8,{fixup}), 0({fixup})",
                tmp = out(reg) _,
                refused = out(reg) refused,
                fixup = in(reg_addr) &raw const super::entry::PVAGENT_PGM_FIXUP,
                in("r2") function,
                in("r3") seconds,
                in("r4") 0u64,
            )
        }
        if refused == 0 { Ok(()) } else { Err(diag288::Refused) }
    }
}

pub struct S390 {
    clock: Tod,
    diag288: Diag288<DiagInsn>,
    /// diag288 answered a probe (None: not probed yet).
    diag288_present: Option<bool>,
}

impl S390 {
    pub fn new() -> Self {
        S390 { clock: Tod, diag288: Diag288::new(DiagInsn), diag288_present: None }
    }

    /// Whether diag288 exists (probed once, see `Diag288::probe`).
    fn probe_diag288(&mut self) -> bool {
        let diag288 = &mut self.diag288;
        *self.diag288_present.get_or_insert_with(|| diag288.probe())
    }

    /// The watchdog a step uses is there.
    fn need_watchdog(&mut self, model: Model) -> Result<(), DeviceError> {
        let present = match model {
            Model::Diag288 => self.probe_diag288(),
            // x86's: the agent refuses them from `Action::archs`.
            Model::Ib700 | Model::I6300Esb => true,
        };
        if present { Ok(()) } else { Err(DeviceError::NoWatchdog(model)) }
    }
}

impl Machine for S390 {
    const ARCH: Arch = Arch::S390x;
    const DESCRIPTION: &'static str = "s390x, s390-ccw-virtio -kernel";
    const INVALID_OPCODE: Fault = Fault::Operation;
    type Clock = Tod;

    fn boot_number(&mut self) -> u8 {
        let counter = BOOT_COUNTER as *mut u16;
        // SAFETY: an aligned halfword of lowcore that neither the architecture nor QEMU
        // uses; it survives a re-IPL, which is the point.
        let (boot, store) = crate::boot_count::next(unsafe { core::ptr::read_volatile(counter) });
        // SAFETY: as above.
        unsafe { core::ptr::write_volatile(counter, store) };
        boot
    }

    fn log_inventory(&mut self) {
        inventory();
    }

    fn load_script(&mut self, buf: &mut [u8]) -> (&'static str, usize) {
        // SAFETY: the image's own command-line area, written by QEMU before
        // the CPU started.
        let area = unsafe { &pvagent_cmdline };
        let len = area.iter().position(|&b| b == 0).unwrap_or(area.len());
        for (to, &from) in buf.iter_mut().zip(area.iter().take(len)) {
            *to = from;
        }
        ("the command line (-append)", len)
    }

    fn check(&mut self, action: &Action<'_>) -> Result<(), DeviceError> {
        match *action {
            Action::WatchdogArm(timeout) => self.need_watchdog(timeout.model()),
            Action::WatchdogFeed(model) | Action::WatchdogStop(model) | Action::FeedFor { model, .. } => {
                self.need_watchdog(model)
            }
            // No device needed (the faults are the CPU's own).
            Action::S390DisabledWait { .. }
            | Action::S390Shutdown
            | Action::Sleep(_)
            | Action::Log(_)
            | Action::Halt
            | Action::FirstBoot
            | Action::Fault(_) => Ok(()),
            // Other architectures' steps: the agent refuses them from
            // `Action::archs` before asking; there is nothing to check here.
            Action::Pvpanic(..)
            | Action::Exit(_)
            | Action::HvCrash { .. }
            | Action::HvProbe
            | Action::Psci(_)
            | Action::PowerButton { .. } => Ok(()),
        }
    }

    fn run(&mut self, action: &Action<'_>) {
        match *action {
            Action::S390DisabledWait { address, mask } => {
                crate::say!(info, "loading the disabled-wait PSW {=u64:#018x} {=u64:#x}", mask, address);
                load_wait_psw(mask, address)
            }
            Action::S390Shutdown => {
                crate::say!(info, "loading the shutdown wait PSW (address 0xfff)");
                load_wait_psw(psw::DISABLED_WAIT, psw::SPECIAL_WAIT_LOW_BITS)
            }
            Action::WatchdogArm(watchdog::Timeout::Diag288(timeout)) => {
                self.diag288.arm(&timeout);
                if self.diag288.refused {
                    crate::say!(error, "diag288: QEMU refused the init (specification exception)");
                    self.fail(ErrorExit::Device);
                }
            }
            Action::Fault(Fault::Operation) => {
                crate::say!(info, "causing fault:operation");
                // SAFETY: opcode 0x00 is not an instruction: an operation
                // exception on purpose; the program-check handler ends the CPU.
                unsafe { core::arch::asm!(".long 0", options(noreturn)) }
            }
            Action::Fault(Fault::Specification) => {
                crate::say!(info, "causing fault:specification");
                // SAFETY: a branch to an odd address: a specification
                // exception on purpose; the handler ends the CPU.
                unsafe { core::arch::asm!("larl %r1, 1f", "la %r1, 1(%r1)", "br %r1", "1: j 1b", options(noreturn)) }
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
            Action::Pvpanic(..)
            | Action::Psci(_)
            | Action::PowerButton { .. }
            | Action::Exit(_)
            | Action::HvCrash { .. }
            | Action::HvProbe
            | Action::WatchdogArm(watchdog::Timeout::Ib700(_) | watchdog::Timeout::I6300Esb(_))
            | Action::Fault(
                Fault::InvalidOpcode
                | Fault::GeneralProtection
                | Fault::PageFault
                | Fault::DivideError
                | Fault::StackOverflow
                | Fault::Triple
                | Fault::Undefined
                | Fault::DataAbort,
            ) => {}
        }
    }

    fn feed(&mut self, model: Model) {
        match model {
            Model::Diag288 => {
                self.diag288.feed();
                if self.diag288.refused {
                    warn!("diag288: QEMU refused the feed");
                }
            }
            // x86's: refused before any step runs.
            Model::Ib700 | Model::I6300Esb => {}
        }
    }

    /// A cancel QEMU refuses means the watchdog was not running: stopped
    /// either way.
    fn stop(&mut self, model: Model) -> bool {
        if model == Model::Diag288 {
            self.diag288.stop();
        }
        true
    }

    fn clock(&mut self) -> &mut Tod {
        &mut self.clock
    }

    fn fail(&mut self, why: ErrorExit) -> ! {
        fail(why)
    }

    /// Nothing changes on s390x: the agent's own panics and program checks
    /// end in a disabled wait in its reserved range (0xbad0000..=0xbadffff)
    /// before and after the first step alike; a script cannot choose those
    /// addresses.
    fn start_steps(&mut self, _waits: bool) {}

    fn halt(&mut self) -> ! {
        super::halt()
    }
}

/// The inventory has been logged (or is being logged) in this boot.
static INVENTORY_LOGGED: AtomicBool = AtomicBool::new(false);

/// Logs what the agent knows of the machine, once per boot; see
/// `agent.rs` for when.
fn inventory() {
    if INVENTORY_LOGGED.swap(true, Ordering::AcqRel) {
        return;
    }
    info!("console: SCLP ASCII console (defmt frames as D:<hex> lines)");
    info!("command line: -append at 0x10480 (up to 1024 bytes)");
    info!("diag288: probed when a step uses it (a refused DIAG 0x288 is a specification exception)");
}

/// Logs the inventory, then ends in a disabled wait at the error's
/// documented address.
fn fail(why: ErrorExit) -> ! {
    inventory();
    let address = why.s390_wait_address();
    crate::say!(error, "ending in a disabled wait at {=u64:#x} ({=str})", address, why.meaning());
    load_wait_psw(psw::DISABLED_WAIT, address)
}

/// Called by the program-check stub (not for fixed-up diag288 calls).
#[unsafe(no_mangle)]
extern "C" fn pvagent_program_check() -> ! {
    // SAFETY: this handler never returns (it ends in a disabled wait), so
    // the interrupted code, which may have had a log line open, never runs
    // again.
    unsafe { crate::log::abandon_interrupted_frame() };
    let code = lowcore::read_u16(lowcore::PROGRAM_CODE);
    let (mask, address) = lowcore::read_psw(lowcore::PROGRAM_OLD_PSW);
    let name = match code & 0xff {
        0x01 => "operation",
        0x02 => "privileged operation",
        0x04 => "protection",
        0x05 => "addressing",
        0x06 => "specification",
        0x07 => "data",
        0x09 => "fixed-point divide",
        0x10 => "segment translation",
        0x11 => "page translation",
        _ => "other",
    };
    crate::say!(
        error,
        "program check: interruption code {=u16:#06x} ({=str} exception), old PSW {=u64:#018x} {=u64:#x}",
        code,
        name,
        mask,
        address
    );
    inventory();
    let wait = exit::s390_program_check_address(code);
    crate::say!(error, "ending in a disabled wait at {=u64:#x} (program check)", wait);
    load_wait_psw(psw::DISABLED_WAIT, wait)
}

/// Called by the restart stub; returning resumes the interrupted PSW.
#[unsafe(no_mangle)]
extern "C" fn pvagent_restart() {
    // The time first: a watchdog's restart interrupt is timed from its
    // last arm or feed (`agent::log_watchdog_expiry`).
    let now_us = Tod.now_us();
    let (mask, address) = lowcore::read_psw(lowcore::RESTART_OLD_PSW);
    crate::say!(
        warn,
        "restart interrupt received (QEMU's watchdog action inject-nmi sends one); old PSW {=u64:#018x} {=u64:#x}, resuming",
        mask,
        address
    );
    crate::agent::log_watchdog_expiry(now_us);
}

/// Ends the agent after a panic (logged by `agent::report_panic`), also
/// after a panic inside that.
pub fn end_after_panic(_first: bool) -> ! {
    fail(ErrorExit::Panic)
}
