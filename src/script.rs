//! The script language: the agent's public interface.
//!
//! ```text
//! script   = step *( ";" step )         whitespace around steps is ignored
//! step     = verb [ ":" arg *( "," arg ) ]
//! number   = decimal | "0x" hex
//! duration = number ( "us" | "ms" | "s" )
//! ```
//!
//! The parser is pure and runs on the host in unit tests. It checks the whole
//! script before the agent runs any step, so a script with an error anywhere
//! never fires an event.

use crate::s390_psw as psw;
use crate::watchdog::{self, Model, diag288, i6300esb, ib700};
use crate::{Arch, Archs};
use heapless::Vec;

pub use crate::pvpanic::{PvDevice, PvEvent};

/// Longest script the agent accepts, in bytes.
pub const MAX_SCRIPT_LEN: usize = 1024;
/// Longest single step, in bytes (after trimming whitespace).
pub const MAX_STEP_LEN: usize = 128;
/// Most steps in one script.
pub const MAX_STEPS: usize = 32;
/// Longest duration a step accepts (`sleep:`, `feed:`'s `every=` and
/// `for=`), in microseconds: 1 000 000 s, about 11.6 days. Every clock
/// computation on a duration stays far from overflowing below it.
pub const MAX_DURATION_US: u64 = 1_000_000_000_000;
/// Highest code a script may pass to `exit:`; the codes above it are the
/// agent's own error exits (see [`crate::exit`]).
pub const MAX_USER_EXIT_CODE: u64 = 0x6f;

/// What one step does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action<'a> {
    Pvpanic(PvDevice, PvEvent),
    /// Busy time to wait, in microseconds.
    Sleep(u64),
    /// Value written to isa-debug-exit (QEMU exits with `(code << 1) | 1`).
    Exit(u8),
    /// Text to put in the log.
    Log(&'a str),
    /// Idle forever.
    Halt,
    /// Arm a watchdog (the model is the timeout's).
    WatchdogArm(watchdog::Timeout),
    WatchdogFeed(Model),
    WatchdogStop(Model),
    /// Feed at `0, every, 2·every, …` up to `for`, then end the step.
    FeedFor {
        model: Model,
        every_us: u64,
        for_us: u64,
    },
    /// On any boot after the first (a watchdog reset), end the script here.
    FirstBoot,
    /// Cause a fault on purpose.
    Fault(Fault),
    /// Report a crash through the Hyper-V crash MSRs; with `fallback`, through
    /// pvpanic `panicked` when the CPU does not offer them.
    HvCrash {
        args: [u64; 5],
        fallback: bool,
    },
    /// Log what the CPU advertises of Hyper-V.
    HvProbe,
    /// s390x: load a disabled-wait PSW (QEMU: GUEST_PANICKED with s390 info).
    S390DisabledWait {
        address: u64,
        mask: u64,
    },
    /// s390x: the special wait PSW QEMU turns into a guest shutdown.
    S390Shutdown,
    /// aarch64: a PSCI call that powers the machine off or resets it.
    Psci(Psci),
    /// x86_64: how the ACPI power button is answered from here on: `true`
    /// (`power-button.ignore`) logs presses and ignores them, `false`
    /// (`power-button.off`, the default) powers off (S5).
    PowerButton {
        ignore: bool,
    },
}

/// The PSCI calls `psci.<call>` makes (aarch64).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(image, derive(defmt::Format))]
pub enum Psci {
    /// `system-off`: QEMU reports SHUTDOWN (guest-shutdown).
    SystemOff,
    /// `system-reset`: QEMU reports RESET (guest-reset) and boots again.
    SystemReset,
}

impl Psci {
    pub const ALL: [Psci; 2] = [Psci::SystemOff, Psci::SystemReset];

    pub const fn name(self) -> &'static str {
        match self {
            Psci::SystemOff => "system-off",
            Psci::SystemReset => "system-reset",
        }
    }

    /// The PSCI 0.2 function ID (SMC32 convention).
    pub const fn function_id(self) -> u32 {
        match self {
            Psci::SystemOff => 0x8400_0008,
            Psci::SystemReset => 0x8400_0009,
        }
    }
}

/// The faults `fault:<kind>` causes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(image, derive(defmt::Format))]
pub enum Fault {
    /// `ud`: invalid opcode (#UD).
    InvalidOpcode,
    /// `gp`: general protection (#GP), a non-canonical access.
    GeneralProtection,
    /// `pf`: page fault (#PF) on an unmapped address.
    PageFault,
    /// `de`: divide error (#DE).
    DivideError,
    /// `stack-overflow`: run into the stack's guard page (#DF).
    StackOverflow,
    /// `rust-panic`: a Rust panic.
    RustPanic,
    /// `triple`: an empty IDT, then a fault: the CPU resets.
    Triple,
    /// s390x `operation`: an invalid opcode (program interruption code 1).
    Operation,
    /// s390x `specification`: a branch to an odd address (code 6).
    Specification,
    /// aarch64 `undefined`: an undefined instruction (`udf`).
    Undefined,
    /// aarch64 `data-abort`: a load from an address nothing decodes.
    DataAbort,
    /// `internal-panic`: a Rust panic while the script is being checked,
    /// before any step runs: the agent's internal-error path (no event).
    InternalPanic,
    /// `internal-exception`: the architecture's invalid-opcode exception
    /// while the script is being checked, before any step runs.
    InternalException,
}

impl Fault {
    pub const ALL: [Fault; 13] = [
        Fault::InvalidOpcode,
        Fault::GeneralProtection,
        Fault::PageFault,
        Fault::DivideError,
        Fault::StackOverflow,
        Fault::RustPanic,
        Fault::Triple,
        Fault::Operation,
        Fault::Specification,
        Fault::Undefined,
        Fault::DataAbort,
        Fault::InternalPanic,
        Fault::InternalException,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Fault::InvalidOpcode => "ud",
            Fault::GeneralProtection => "gp",
            Fault::PageFault => "pf",
            Fault::DivideError => "de",
            Fault::StackOverflow => "stack-overflow",
            Fault::RustPanic => "rust-panic",
            Fault::Triple => "triple",
            Fault::Operation => "operation",
            Fault::Specification => "specification",
            Fault::Undefined => "undefined",
            Fault::DataAbort => "data-abort",
            Fault::InternalPanic => "internal-panic",
            Fault::InternalException => "internal-exception",
        }
    }

    /// The architectures the fault exists on (`None`: every one).
    pub const fn archs(self) -> Option<Archs> {
        match self {
            Fault::InvalidOpcode
            | Fault::GeneralProtection
            | Fault::PageFault
            | Fault::DivideError
            | Fault::StackOverflow
            | Fault::Triple => Some(Archs::of(Arch::X86_64)),
            Fault::Operation | Fault::Specification => Some(Archs::of(Arch::S390x)),
            Fault::Undefined | Fault::DataAbort => Some(Archs::of(Arch::Aarch64)),
            Fault::RustPanic | Fault::InternalPanic | Fault::InternalException => None,
        }
    }
}

impl Action<'_> {
    /// The watchdog a step uses, if any.
    pub const fn watchdog(&self) -> Option<Model> {
        match *self {
            Action::WatchdogArm(timeout) => Some(timeout.model()),
            Action::WatchdogFeed(m) | Action::WatchdogStop(m) | Action::FeedFor { model: m, .. } => Some(m),
            Action::Pvpanic(..)
            | Action::Sleep(_)
            | Action::Exit(_)
            | Action::Log(_)
            | Action::Halt
            | Action::FirstBoot
            | Action::Fault(_)
            | Action::HvCrash { .. }
            | Action::HvProbe
            | Action::S390DisabledWait { .. }
            | Action::S390Shutdown
            | Action::Psci(_)
            | Action::PowerButton { .. } => None,
        }
    }

    /// The architectures the step exists on (`None`: every one). The
    /// agent refuses a step of another architecture from this alone,
    /// before any step runs and before any machine looks at it.
    pub const fn archs(&self) -> Option<Archs> {
        // pvpanic is PCI on aarch64 (pvpanic-pci); `exit:` is isa-debug-exit
        // on x86_64 and semihosting's SYS_EXIT on aarch64.
        let pci_machines = Archs::of(Arch::X86_64).and(Arch::Aarch64);
        match *self {
            // aarch64 has no ISA bus.
            Action::Pvpanic(PvDevice::Isa, _) => Some(Archs::of(Arch::X86_64)),
            Action::Pvpanic(..) | Action::Exit(_) => Some(pci_machines),
            Action::HvCrash { .. } | Action::HvProbe | Action::PowerButton { .. } => Some(Archs::of(Arch::X86_64)),
            Action::S390DisabledWait { .. } | Action::S390Shutdown => Some(Archs::of(Arch::S390x)),
            Action::Psci(_) => Some(Archs::of(Arch::Aarch64)),
            Action::WatchdogArm(timeout) => Some(timeout.model().archs()),
            Action::WatchdogFeed(m) | Action::WatchdogStop(m) | Action::FeedFor { model: m, .. } => Some(m.archs()),
            Action::Fault(fault) => fault.archs(),
            Action::Sleep(_) | Action::Log(_) | Action::Halt | Action::FirstBoot => None,
        }
    }
}

/// A parsed step: what to do, plus where it came from for the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step<'a> {
    pub action: Action<'a>,
    /// The step's text as written (trimmed).
    pub text: &'a str,
}

/// A whole parsed script.
pub type Script<'a> = Vec<Step<'a>, MAX_STEPS>;

/// Why a script was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind<'a> {
    ScriptTooLong {
        len: usize,
    },
    NotAscii,
    TooManySteps,
    EmptyStep,
    StepTooLong {
        len: usize,
    },
    UnknownVerb(&'a str),
    /// Text after the verb that is neither `:` nor the end of the step.
    TrailingGarbage(&'a str),
    MissingArgument {
        verb: &'a str,
        what: &'static str,
    },
    UnexpectedArgument {
        verb: &'a str,
    },
    TooManyArguments {
        verb: &'a str,
        max: usize,
    },
    BadNumber(&'a str),
    BadDurationUnit(&'a str),
    MissingDurationUnit(&'a str),
    DurationTooLong(&'a str),
    ExitCodeOutOfRange(u64),
    Ib700Timeout(&'a str),
    EsbTooLong(&'a str),
    EsbUnrepresentable(&'a str),
    UnknownFlag {
        verb: &'a str,
        flag: &'a str,
    },
    UnknownDevice(&'a str),
    /// A `key=value` argument is missing or repeated.
    NeedsKey {
        verb: &'a str,
        key: &'static str,
    },
    ZeroInterval,
    UnknownFault(&'a str),
    WrongArgumentCount {
        verb: &'a str,
        expected: usize,
    },
    Diag288Timeout(&'a str),
    NotDisabledWait(u64),
    ReservedWaitAddress(u64),
    SpecialWaitAddress(u64),
    AddressTooWide {
        address: u64,
        mask: u64,
    },
}

/// A refused script: which step, where, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScriptError<'a> {
    /// 1-based step number (for a script over the length limit, the step
    /// where the limit falls).
    pub step: usize,
    /// Byte offset in the script where the problem starts.
    pub offset: usize,
    pub kind: ErrorKind<'a>,
}

/// The message of every error, written once. It expands into `Display`
/// (host builds: tests, the fuzz targets) and `text::Render` (the images,
/// which carry no `core::fmt`: the console's `pvagent: error: …` line):
/// both read the same format strings, since they use only `{}` and hints
/// like `{:#x}` that `core::write!` and `crate::text` understand alike.
macro_rules! error_message {
    (error $error:expr, $f:expr, $write:ident) => {
        $write!($f, "script error: step {} at byte {}: {}", $error.step, $error.offset, $error.kind)
    };
    (kind $kind:expr, $f:expr, $write:ident) => {
        match *$kind {
            ErrorKind::ScriptTooLong { len } => $write!($f, "script is {} bytes, the limit is {}", len, MAX_SCRIPT_LEN),
            ErrorKind::NotAscii => $write!($f, "script contains a non-ASCII byte"),
            ErrorKind::TooManySteps => $write!($f, "more than {} steps", MAX_STEPS),
            ErrorKind::EmptyStep => $write!($f, "empty step (two ';' in a row, or a trailing ';')"),
            ErrorKind::StepTooLong { len } => $write!($f, "step is {} bytes, the limit is {}", len, MAX_STEP_LEN),
            ErrorKind::UnknownVerb(v) => $write!($f, "unknown verb '{}' (see the README for the verbs)", v),
            ErrorKind::TrailingGarbage(t) => $write!($f, "unexpected text '{}' after the verb", t),
            ErrorKind::MissingArgument { verb, what } => $write!($f, "'{}' needs {}", verb, what),
            ErrorKind::UnexpectedArgument { verb } => $write!($f, "'{}' takes no argument", verb),
            ErrorKind::TooManyArguments { verb, max } => $write!($f, "'{}' takes at most {} argument(s)", verb, max),
            ErrorKind::BadNumber(n) => $write!($f, "bad number '{}' (decimal, or hex with 0x)", n),
            ErrorKind::BadDurationUnit(d) => $write!($f, "bad unit in duration '{}' (use us, ms or s)", d),
            ErrorKind::MissingDurationUnit(d) => $write!($f, "duration '{}' has no unit (use us, ms or s)", d),
            ErrorKind::DurationTooLong(d) => {
                $write!($f, "duration '{}' is too long (the limit is {}s)", d, MAX_DURATION_US / 1_000_000)
            }
            ErrorKind::Ib700Timeout(d) => {
                $write!($f, "ib700 cannot time out after '{}': its timeouts are 0s, 2s, 4s, ... 30s", d)
            }
            ErrorKind::EsbTooLong(d) => {
                $write!($f, "i6300esb stages of '{}' exceed its range (about 1030s a stage)", d)
            }
            ErrorKind::EsbUnrepresentable(d) => $write!(
                $f,
                "i6300esb cannot represent stages '{}' within 0.5% with one prescaler (1MHz: 0.96us units up to 1.0066s; 1kHz: 983.04us units)",
                d
            ),
            ErrorKind::UnknownFlag { verb, flag } => $write!($f, "'{}' has no option '{}'", verb, flag),
            ErrorKind::UnknownDevice(d) => $write!($f, "unknown watchdog '{}' (ib700 or i6300esb)", d),
            ErrorKind::NeedsKey { verb, key } => $write!($f, "'{}' needs exactly one '{}=<duration>'", verb, key),
            ErrorKind::ZeroInterval => $write!($f, "'every=' must be longer than 0"),
            ErrorKind::UnknownFault(k) => $write!(
                $f,
                "unknown fault '{}' (x86_64: ud, gp, pf, de, stack-overflow, triple; s390x: operation, specification; both: rust-panic, internal-panic, internal-exception)",
                k
            ),
            ErrorKind::Diag288Timeout(d) => {
                $write!($f, "diag288 timeouts are whole seconds, at least 15s; '{}' is not one", d)
            }
            ErrorKind::NotDisabledWait(m) => $write!(
                $f,
                "PSW mask {:#018x} is not a disabled wait (needs the wait bit 0x0002000000000000, and no I/O, external or machine-check bit)",
                m
            ),
            ErrorKind::ReservedWaitAddress(a) => {
                $write!($f, "wait address {:#x} is in the agent's own range 0xbad0000..=0xbadffff (its error exits)", a)
            }
            ErrorKind::SpecialWaitAddress(a) => {
                $write!($f, "wait address {:#x} ends in 0xfff: that is QEMU's shutdown wait (use s390.shutdown)", a)
            }
            ErrorKind::AddressTooWide { address, mask } => {
                $write!($f, "address {:#x} does not fit the addressing mode of mask {:#018x}", address, mask)
            }
            ErrorKind::WrongArgumentCount { verb, expected } => {
                $write!($f, "'{}' takes exactly {} arguments", verb, expected)
            }
            ErrorKind::ExitCodeOutOfRange(c) => $write!(
                $f,
                "exit code {} out of range (0..={}; higher values are the agent's own error codes)",
                c,
                MAX_USER_EXIT_CODE
            ),
        }
    };
}

#[cfg(not(image))]
impl core::fmt::Display for ScriptError<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        error_message!(error self, f, write)
    }
}

#[cfg(not(image))]
impl core::fmt::Display for ErrorKind<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        error_message!(kind self, f, write)
    }
}

/// `write!` for [`crate::text`]: the same messages as plain text, for the
/// console line a person reads.
macro_rules! text_write {
    ($out:expr, $fmt:literal $(, $arg:expr)* $(,)?) => {
        crate::text::render($out, $fmt, &[$(crate::text::ToArg::to_arg(&$arg)),*])
    };
}

impl crate::text::Render for ScriptError<'_> {
    fn render(&self, out: &mut dyn FnMut(&[u8])) {
        error_message!(error self, out, text_write)
    }
}

impl crate::text::Render for ErrorKind<'_> {
    fn render(&self, out: &mut dyn FnMut(&[u8])) {
        error_message!(kind self, out, text_write)
    }
}

impl crate::text::ToArg for ErrorKind<'_> {
    fn to_arg(&self) -> crate::text::Arg<'_> {
        crate::text::Arg::Text(self)
    }
}

impl crate::text::ToArg for ScriptError<'_> {
    fn to_arg(&self) -> crate::text::Arg<'_> {
        crate::text::Arg::Text(self)
    }
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// `a == b`, one shared loop for every name the parser compares (verbs,
/// events, options, units). `==` on strings calls `memcmp`, and a `match`
/// on string literals compares byte by byte with a branch each: under TCG
/// every piece of code that runs for the first time is translated first,
/// which is most of what the agent's start costs.
#[inline(never)]
pub fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

// The parser never indexes a `str` (`&s[a..b]`, `split_at`) nor uses
// `core`'s char searcher (`find`, `split`, `split_once` on a char): their
// failure paths panic with a formatted message, which would pull
// `core::fmt` into the images. It cuts with `str::get` instead, at ASCII
// bytes, which are always character boundaries: the `None` cases are
// unreachable, and still no panic.

/// Returns the trimmed sub-slice and its offset in `s`.
fn trim_with_offset(s: &str) -> (&str, usize) {
    let bytes = s.as_bytes();
    let start = bytes.iter().position(|&b| !is_space(b)).unwrap_or(bytes.len());
    let end = bytes.iter().rposition(|&b| !is_space(b)).map_or(start, |p| p + 1);
    (s.get(start..end).unwrap_or_default(), start)
}

/// `s` before and after the first `sep` (an ASCII byte).
fn split_once_at(s: &str, sep: u8) -> Option<(&str, &str)> {
    let at = s.bytes().position(|b| b == sep)?;
    Some((s.get(..at)?, s.get(at + 1..)?))
}

/// `s` split at every `sep` (an ASCII byte), like `str::split`.
fn split_at_every(s: &str, sep: u8) -> impl Iterator<Item = &str> {
    let mut rest = Some(s);
    core::iter::from_fn(move || {
        let current = rest?;
        let (piece, tail) = match split_once_at(current, sep) {
            Some((piece, tail)) => (piece, Some(tail)),
            None => (current, None),
        };
        rest = tail;
        Some(piece)
    })
}

/// Nothing but whitespace as `str::trim` sees it (for ASCII text).
fn is_blank_arg(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b'\t'..=b'\r' | b' '))
}

/// True when the script holds nothing but whitespace (the "no script" case).
pub fn is_blank(text: &str) -> bool {
    text.bytes().all(is_space)
}

/// Byte version of [`is_blank`].
pub fn is_blank_bytes(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| is_space(b))
}

/// Parses a number: decimal, or hexadecimal after `0x`.
pub fn parse_number(s: &str) -> Option<u64> {
    let bytes = s.as_bytes();
    let (digits, radix) = match bytes {
        [b'0', b'x' | b'X', hex @ ..] => (hex, 16),
        _ => (bytes, 10),
    };
    if digits.is_empty() {
        return None;
    }
    // One loop, no `from_str_radix`: it is the whole of what runs.
    let mut value = 0u64;
    for &b in digits {
        let digit = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' if radix == 16 => b - b'a' + 10,
            b'A'..=b'F' if radix == 16 => b - b'A' + 10,
            _ => return None,
        };
        value = value.checked_mul(radix)?.checked_add(u64::from(digit))?;
    }
    Some(value)
}

/// Why a duration did not parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DurationError {
    BadNumber,
    BadUnit,
    MissingUnit,
    Overflow,
}

/// Parses `<number><unit>` into microseconds.
pub fn parse_duration_us(s: &str) -> Result<u64, DurationError> {
    let unit_at = if s.starts_with("0x") || s.starts_with("0X") {
        2 + s.bytes().skip(2).position(|b| !b.is_ascii_hexdigit()).unwrap_or(s.len() - 2)
    } else {
        s.bytes().position(|b| !b.is_ascii_digit()).unwrap_or(s.len())
    };
    // A hex number swallows the 's' of nothing, but "0x10s" is fine: 's' is
    // not a hex digit. "0x1ms" is ambiguous-free for the same reason.
    // Every byte before `unit_at` is ASCII, so the cut is a boundary.
    let (num, unit) = s.split_at_checked(unit_at).ok_or(DurationError::BadNumber)?;
    let value = parse_number(num).ok_or(DurationError::BadNumber)?;
    let scale = if same(unit, "us") {
        1
    } else if same(unit, "ms") {
        1_000
    } else if same(unit, "s") {
        1_000_000
    } else if unit.is_empty() {
        return Err(DurationError::MissingUnit);
    } else if unit.bytes().any(|b| b.is_ascii_digit()) {
        // "12x3ms": the number is followed by garbage, not by a unit.
        return Err(DurationError::BadNumber);
    } else {
        return Err(DurationError::BadUnit);
    };
    value.checked_mul(scale).filter(|&us| us <= MAX_DURATION_US).ok_or(DurationError::Overflow)
}

/// The 1-based number of the step that holds byte `offset` of a script.
fn step_at(bytes: &[u8], offset: usize) -> usize {
    1 + bytes[..offset.min(bytes.len())].iter().filter(|&&b| b == b';').count()
}

impl ScriptError<'static> {
    /// The script is `len` bytes long (`bytes` holds at least its first
    /// [`MAX_SCRIPT_LEN`]): the error names the step where the limit falls.
    pub fn too_long(bytes: &[u8], len: usize) -> Self {
        ScriptError {
            step: step_at(bytes, MAX_SCRIPT_LEN),
            offset: MAX_SCRIPT_LEN,
            kind: ErrorKind::ScriptTooLong { len },
        }
    }
}

/// Parses a script as read from fw_cfg or the command line (raw bytes).
/// Every error names a step (1-based) and a byte offset no further than the
/// end of the input.
pub fn parse_bytes(bytes: &[u8]) -> Result<Script<'_>, ScriptError<'_>> {
    if bytes.len() > MAX_SCRIPT_LEN {
        return Err(ScriptError::too_long(bytes, bytes.len()));
    }
    if let Some(pos) = bytes.iter().position(|b| !b.is_ascii()) {
        return Err(ScriptError { step: step_at(bytes, pos), offset: pos, kind: ErrorKind::NotAscii });
    }
    match core::str::from_utf8(bytes) {
        Ok(text) => parse_checked(text),
        // Unreachable after the ASCII check, and still an error, never a panic.
        Err(e) => Err(ScriptError {
            step: step_at(bytes, e.valid_up_to()),
            offset: e.valid_up_to(),
            kind: ErrorKind::NotAscii,
        }),
    }
}

/// Parses a whole script. Nothing in it may run unless this returns `Ok`.
pub fn parse(text: &str) -> Result<Script<'_>, ScriptError<'_>> {
    let bytes = text.as_bytes();
    if text.len() > MAX_SCRIPT_LEN {
        return Err(ScriptError::too_long(bytes, text.len()));
    }
    if let Some(pos) = bytes.iter().position(|b| !b.is_ascii()) {
        return Err(ScriptError { step: step_at(bytes, pos), offset: pos, kind: ErrorKind::NotAscii });
    }
    parse_checked(text)
}

/// [`parse`] of a script already checked for its length and for ASCII.
fn parse_checked(text: &str) -> Result<Script<'_>, ScriptError<'_>> {
    let mut script = Script::new();
    let mut offset = 0;
    for (index, raw) in split_at_every(text, b';').enumerate() {
        let (step_text, lead) = trim_with_offset(raw);
        let step_offset = offset + lead;
        offset += raw.len() + 1;
        let number = index + 1;
        let err = |at: usize, kind| ScriptError { step: number, offset: at, kind };
        if step_text.is_empty() {
            return Err(err(step_offset, ErrorKind::EmptyStep));
        }
        if step_text.len() > MAX_STEP_LEN {
            return Err(err(step_offset, ErrorKind::StepTooLong { len: step_text.len() }));
        }
        let action = parse_step(step_text).map_err(|(rel, kind)| err(step_offset + rel, kind))?;
        script.push(Step { action, text: step_text }).map_err(|_| err(step_offset, ErrorKind::TooManySteps))?;
    }
    Ok(script)
}

/// Parses one trimmed, non-empty step; errors carry an offset relative to it.
fn parse_step(step: &str) -> Result<Action<'_>, (usize, ErrorKind<'_>)> {
    let (verb, args, args_at) = match split_once_at(step, b':') {
        Some((verb, args)) => (verb, Some(args), verb.len() + 1),
        None => (step, None, step.len()),
    };
    // A verb is one word; whatever follows a space is garbage.
    if let Some(verb_len) = verb.bytes().position(is_space) {
        let (rest, lead) = trim_with_offset(verb.get(verb_len..).unwrap_or_default());
        let end = match args {
            Some(_) => step.len(),
            None => verb_len + lead + rest.len(),
        };
        let garbage = step.get(verb_len + lead..end).unwrap_or_default();
        return Err((verb_len + lead, ErrorKind::TrailingGarbage(garbage)));
    }
    let no_args = || match args {
        Some(_) => Err((args_at, ErrorKind::UnexpectedArgument { verb })),
        None => Ok(()),
    };
    let one_arg = |what| match args {
        None => Err((step.len(), ErrorKind::MissingArgument { verb, what })),
        Some(a) if is_blank_arg(a) => Err((args_at, ErrorKind::MissingArgument { verb, what })),
        Some(a) => Ok(a),
    };

    if let Some((device_name, event)) = split_once_at(verb, b'.') {
        if let (Some(device), Some(event)) = (PvDevice::from_name(device_name), PvEvent::from_name(event)) {
            no_args()?;
            return Ok(Action::Pvpanic(device, event));
        }
        if same(device_name, "hv") {
            return parse_hv(event, verb, args, args_at, step.len());
        }
        if same(device_name, "s390") {
            return parse_s390(event, verb, args, args_at, step.len());
        }
        if same(device_name, "power-button") {
            let ignore = if same(event, "ignore") {
                true
            } else if same(event, "off") {
                false
            } else {
                return Err((0, ErrorKind::UnknownVerb(verb)));
            };
            no_args()?;
            return Ok(Action::PowerButton { ignore });
        }
        if same(device_name, "psci") {
            let call =
                Psci::ALL.into_iter().find(|c| same(c.name(), event)).ok_or((0, ErrorKind::UnknownVerb(verb)))?;
            no_args()?;
            return Ok(Action::Psci(call));
        }
        if let Some(model) = Model::from_name(device_name) {
            return parse_watchdog(model, event, verb, args, args_at, step.len());
        }
        return Err((0, ErrorKind::UnknownVerb(verb)));
    }
    if same(verb, "fault") {
        let arg = single(verb, one_arg("a fault kind, e.g. ud")?, args_at)?;
        let fault = Fault::ALL.into_iter().find(|f| same(f.name(), arg));
        fault.map(Action::Fault).ok_or((args_at, ErrorKind::UnknownFault(arg)))
    } else if same(verb, "first-boot") {
        no_args()?;
        Ok(Action::FirstBoot)
    } else if same(verb, "feed") {
        parse_feed(verb, one_arg("a watchdog, every=<duration> and for=<duration>")?, args_at)
    } else if same(verb, "halt") {
        no_args()?;
        Ok(Action::Halt)
    } else if same(verb, "log") {
        Ok(Action::Log(one_arg("a text")?))
    } else if same(verb, "sleep") {
        let arg = single(verb, one_arg("a duration, e.g. 10ms")?, args_at)?;
        parse_duration_us(arg).map(Action::Sleep).map_err(|e| (args_at, duration_error(e, arg)))
    } else if same(verb, "exit") {
        let arg = single(verb, one_arg("an exit code")?, args_at)?;
        let code = parse_number(arg).ok_or((args_at, ErrorKind::BadNumber(arg)))?;
        if code > MAX_USER_EXIT_CODE {
            return Err((args_at, ErrorKind::ExitCodeOutOfRange(code)));
        }
        Ok(Action::Exit(code as u8))
    } else {
        Err((0, ErrorKind::UnknownVerb(verb)))
    }
}

type StepResult<'a> = Result<Action<'a>, (usize, ErrorKind<'a>)>;

/// Splits an argument list on commas, with each argument's offset.
fn split_args(args: &str, at: usize) -> impl Iterator<Item = (&str, usize)> {
    let mut offset = at;
    split_at_every(args, b',').map(move |raw| {
        let (arg, lead) = trim_with_offset(raw);
        let here = offset + lead;
        offset += raw.len() + 1;
        (arg, here)
    })
}

fn duration_arg(arg: &str, at: usize) -> Result<u64, (usize, ErrorKind<'_>)> {
    parse_duration_us(arg).map_err(|e| (at, duration_error(e, arg)))
}

/// `ib700.*` and `i6300esb.*`.
fn parse_watchdog<'a>(
    model: Model,
    op: &'a str,
    verb: &'a str,
    args: Option<&'a str>,
    args_at: usize,
    end: usize,
) -> StepResult<'a> {
    let no_args = |action| match args {
        Some(_) => Err((args_at, ErrorKind::UnexpectedArgument { verb })),
        None => Ok(action),
    };
    if same(op, "feed") {
        no_args(Action::WatchdogFeed(model))
    } else if same(op, "stop") {
        no_args(Action::WatchdogStop(model))
    } else if same(op, "arm") {
        {
            let Some(args) = args.filter(|a| !is_blank_arg(a)) else {
                return Err((end, ErrorKind::MissingArgument { verb, what: "a timeout, e.g. 2s" }));
            };
            match model {
                Model::Ib700 => {
                    let arg = single(verb, args, args_at)?;
                    let us = duration_arg(arg, args_at)?;
                    let timeout = ib700::Timeout::from_us(us).ok_or((args_at, ErrorKind::Ib700Timeout(arg)))?;
                    Ok(Action::WatchdogArm(watchdog::Timeout::Ib700(timeout)))
                }
                Model::I6300Esb => parse_esb_arm(verb, args, args_at),
                Model::Diag288 => {
                    let arg = single(verb, args, args_at)?;
                    let us = duration_arg(arg, args_at)?;
                    let timeout = diag288::Timeout::from_us(us).ok_or((args_at, ErrorKind::Diag288Timeout(arg)))?;
                    Ok(Action::WatchdogArm(watchdog::Timeout::Diag288(timeout)))
                }
            }
        }
    } else {
        Err((0, ErrorKind::UnknownVerb(verb)))
    }
}

/// `s390.disabled-wait:<address>[,<mask>]`, `s390.shutdown`.
fn parse_s390<'a>(op: &'a str, verb: &'a str, args: Option<&'a str>, args_at: usize, end: usize) -> StepResult<'a> {
    if same(op, "shutdown") {
        match args {
            Some(_) => Err((args_at, ErrorKind::UnexpectedArgument { verb })),
            None => Ok(Action::S390Shutdown),
        }
    } else if same(op, "disabled-wait") {
        {
            let what = "an address, e.g. 0x12340";
            let args = args.filter(|a| !is_blank_arg(a)).ok_or((end, ErrorKind::MissingArgument { verb, what }))?;
            let mut parts = split_args(args, args_at);
            let (addr, addr_at) = parts.next().unwrap_or(("", args_at));
            let address = parse_number(addr).ok_or((addr_at, ErrorKind::BadNumber(addr)))?;
            let mask = match parts.next() {
                Some((m, at)) => {
                    let mask = parse_number(m).ok_or((at, ErrorKind::BadNumber(m)))?;
                    if !psw::is_disabled_wait(mask) {
                        return Err((at, ErrorKind::NotDisabledWait(mask)));
                    }
                    mask
                }
                None => psw::DISABLED_WAIT,
            };
            if let Some((_, at)) = parts.next() {
                return Err((at, ErrorKind::TooManyArguments { verb, max: 2 }));
            }
            if crate::exit::is_reserved_wait_address(address) {
                return Err((addr_at, ErrorKind::ReservedWaitAddress(address)));
            }
            if psw::is_special_wait_address(address) {
                return Err((addr_at, ErrorKind::SpecialWaitAddress(address)));
            }
            if address > psw::address_limit(mask) {
                return Err((addr_at, ErrorKind::AddressTooWide { address, mask }));
            }
            Ok(Action::S390DisabledWait { address, mask })
        }
    } else {
        Err((0, ErrorKind::UnknownVerb(verb)))
    }
}

/// `hv.crash:<a1>,…,<a5>`, `hv.crash-or-pvpanic:…`, `hv.probe`.
fn parse_hv<'a>(op: &'a str, verb: &'a str, args: Option<&'a str>, args_at: usize, end: usize) -> StepResult<'a> {
    let fallback = if same(op, "probe") {
        return match args {
            Some(_) => Err((args_at, ErrorKind::UnexpectedArgument { verb })),
            None => Ok(Action::HvProbe),
        };
    } else if same(op, "crash") {
        false
    } else if same(op, "crash-or-pvpanic") {
        true
    } else {
        return Err((0, ErrorKind::UnknownVerb(verb)));
    };
    let wrong_count = ErrorKind::WrongArgumentCount { verb, expected: 5 };
    let args = args.ok_or((end, wrong_count))?;
    let mut values = [0u64; 5];
    let mut count = 0;
    for (arg, offset) in split_args(args, args_at) {
        let value = parse_number(arg).ok_or((offset, ErrorKind::BadNumber(arg)))?;
        *values.get_mut(count).ok_or((offset, wrong_count))? = value;
        count += 1;
    }
    if count != 5 {
        return Err((args_at, wrong_count));
    }
    Ok(Action::HvCrash { args: values, fallback })
}

/// `i6300esb.arm:<stage1>[,<stage2>][,no-reboot][,free-run]`.
fn parse_esb_arm<'a>(verb: &'a str, args: &'a str, at: usize) -> StepResult<'a> {
    let (mut stages, mut reboot, mut free_run) = (Vec::<u64, 2>::new(), true, false);
    for (arg, offset) in split_args(args, at) {
        if same(arg, "no-reboot") {
            reboot = false;
        } else if same(arg, "free-run") {
            free_run = true;
        } else if arg.bytes().next().is_some_and(|b| b.is_ascii_digit()) {
            let us = duration_arg(arg, offset)?;
            stages.push(us).map_err(|_| (offset, ErrorKind::TooManyArguments { verb, max: 4 }))?;
        } else {
            return Err((offset, ErrorKind::UnknownFlag { verb, flag: arg }));
        }
    }
    // Flags alone (`i6300esb.arm:no-reboot`) leave no stage: refused, never indexed.
    let Some(&stage1) = stages.first() else {
        return Err((
            at,
            ErrorKind::MissingArgument { verb, what: "a first-stage timeout before its flags, e.g. 300ms,no-reboot" },
        ));
    };
    let stage2 = stages.get(1).copied().unwrap_or(stage1);
    match i6300esb::Settings::new(stage1, stage2, reboot, free_run) {
        Ok(settings) => Ok(Action::WatchdogArm(watchdog::Timeout::I6300Esb(settings))),
        Err(i6300esb::ArmError::TooLong) => Err((at, ErrorKind::EsbTooLong(args))),
        Err(i6300esb::ArmError::Unrepresentable) => Err((at, ErrorKind::EsbUnrepresentable(args))),
    }
}

/// `feed:<watchdog>,every=<duration>,for=<duration>`.
fn parse_feed<'a>(verb: &'a str, args: &'a str, at: usize) -> StepResult<'a> {
    let mut parts = split_args(args, at);
    let (device, device_at) = parts.next().unwrap_or(("", at));
    let model = Model::from_name(device).ok_or((device_at, ErrorKind::UnknownDevice(device)))?;
    let (mut every, mut total) = (None, None);
    for (arg, offset) in parts {
        let (slot, value) = match split_once_at(arg, b'=') {
            Some((key, v)) if same(key, "every") => (&mut every, v),
            Some((key, v)) if same(key, "for") => (&mut total, v),
            _ => return Err((offset, ErrorKind::UnknownFlag { verb, flag: arg })),
        };
        if slot.is_some() {
            let key = if arg.starts_with("every") { "every" } else { "for" };
            return Err((offset, ErrorKind::NeedsKey { verb, key }));
        }
        *slot = Some(duration_arg(value, offset + arg.len() - value.len())?);
    }
    let every_us = every.ok_or((at, ErrorKind::NeedsKey { verb, key: "every" }))?;
    let for_us = total.ok_or((at, ErrorKind::NeedsKey { verb, key: "for" }))?;
    if every_us == 0 {
        return Err((at, ErrorKind::ZeroInterval));
    }
    Ok(Action::FeedFor { model, every_us, for_us })
}

/// Checks that an argument list holds exactly one argument and returns it.
fn single<'a>(verb: &'a str, args: &'a str, at: usize) -> Result<&'a str, (usize, ErrorKind<'a>)> {
    match args.bytes().position(|b| b == b',') {
        Some(comma) => Err((at + comma, ErrorKind::TooManyArguments { verb, max: 1 })),
        None => Ok(args),
    }
}

fn duration_error(e: DurationError, arg: &str) -> ErrorKind<'_> {
    match e {
        DurationError::BadNumber => ErrorKind::BadNumber(arg),
        DurationError::BadUnit => ErrorKind::BadDurationUnit(arg),
        DurationError::MissingUnit => ErrorKind::MissingDurationUnit(arg),
        DurationError::Overflow => ErrorKind::DurationTooLong(arg),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use std::string::{String, ToString};

    fn actions(text: &str) -> std::vec::Vec<Action<'_>> {
        parse(text).unwrap().iter().map(|s| s.action).collect()
    }

    fn error(text: &str) -> ScriptError<'_> {
        parse(text).unwrap_err()
    }

    #[test]
    fn parses_every_verb() {
        assert_eq!(
            actions(
                " pvpanic.panicked ; pvpanic-isa.crashloaded;pvpanic-pci.shutdown;sleep:10ms;exit:0x10;log:hello, world;halt "
            ),
            [
                Action::Pvpanic(PvDevice::Any, PvEvent::Panicked),
                Action::Pvpanic(PvDevice::Isa, PvEvent::CrashLoaded),
                Action::Pvpanic(PvDevice::Pci, PvEvent::Shutdown),
                Action::Sleep(10_000),
                Action::Exit(0x10),
                Action::Log("hello, world"),
                Action::Halt,
            ]
        );
    }

    #[test]
    fn keeps_step_text_for_the_log() {
        let script = parse("  sleep:1s ;\n halt").unwrap();
        assert_eq!(script[0].text, "sleep:1s");
        assert_eq!(script[1].text, "halt");
    }

    #[test]
    fn durations_in_every_unit() {
        assert_eq!(parse_duration_us("7us"), Ok(7));
        assert_eq!(parse_duration_us("7ms"), Ok(7_000));
        assert_eq!(parse_duration_us("7s"), Ok(7_000_000));
        assert_eq!(parse_duration_us("0x10ms"), Ok(16_000));
        assert_eq!(parse_duration_us("10h"), Err(DurationError::BadUnit));
        assert_eq!(parse_duration_us("10"), Err(DurationError::MissingUnit));
        assert_eq!(parse_duration_us("ms"), Err(DurationError::BadNumber));
        assert_eq!(parse_duration_us("1x2ms"), Err(DurationError::BadNumber));
        assert_eq!(parse_duration_us("18446744073709551615s"), Err(DurationError::Overflow));
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_number("0"), Some(0));
        assert_eq!(parse_number("0x7f"), Some(0x7f));
        assert_eq!(parse_number("18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_number("18446744073709551616"), None);
        assert_eq!(parse_number("12x"), None);
        assert_eq!(parse_number("0x"), None);
        assert_eq!(parse_number("-1"), None);
        assert_eq!(parse_number(""), None);
    }

    #[test]
    fn unknown_verb_names_step_and_position() {
        let e = error("pvpanic.panicked; pvpanic.explode");
        assert_eq!(e.step, 2);
        assert_eq!(e.offset, 18);
        assert_eq!(e.kind, ErrorKind::UnknownVerb("pvpanic.explode"));
        assert_eq!(
            e.to_string(),
            "script error: step 2 at byte 18: unknown verb 'pvpanic.explode' (see the README for the verbs)"
        );
        assert_eq!(error("bogus").kind, ErrorKind::UnknownVerb("bogus"));
        assert_eq!(error("foo.panicked").kind, ErrorKind::UnknownVerb("foo.panicked"));
    }

    #[test]
    fn bad_number_and_unit() {
        let e = error("exit:12x");
        assert_eq!((e.step, e.offset, e.kind), (1, 5, ErrorKind::BadNumber("12x")));
        assert_eq!(error("sleep:10h").kind, ErrorKind::BadDurationUnit("10h"));
        assert_eq!(error("sleep:10").kind, ErrorKind::MissingDurationUnit("10"));
        assert_eq!(error("exit:0x70").kind, ErrorKind::ExitCodeOutOfRange(0x70));
        assert_eq!(actions("exit:111"), [Action::Exit(111)]);
    }

    #[test]
    fn trailing_garbage() {
        let e = error("pvpanic.panicked junk");
        assert_eq!((e.offset, e.kind), (17, ErrorKind::TrailingGarbage("junk")));
        assert_eq!(error("halt now please").kind, ErrorKind::TrailingGarbage("now please"));
        assert_eq!(error("halt:1").kind, ErrorKind::UnexpectedArgument { verb: "halt" });
        assert_eq!(error("sleep:1ms,2ms").kind, ErrorKind::TooManyArguments { verb: "sleep", max: 1 });
    }

    #[test]
    fn missing_arguments() {
        assert_eq!(error("sleep").kind, ErrorKind::MissingArgument { verb: "sleep", what: "a duration, e.g. 10ms" });
        assert_eq!(error("exit:").kind, ErrorKind::MissingArgument { verb: "exit", what: "an exit code" });
        assert_eq!(error("log: ").kind, ErrorKind::MissingArgument { verb: "log", what: "a text" });
    }

    #[test]
    fn empty_steps_are_errors() {
        assert_eq!(error("pvpanic.panicked;;").kind, ErrorKind::EmptyStep);
        assert_eq!(error("pvpanic.panicked;").step, 2);
        assert_eq!(error(";halt").step, 1);
        assert!(is_blank("  \n\t"));
        assert!(!is_blank(" halt"));
    }

    #[test]
    fn limits() {
        let long_step = String::from("log:") + &"x".repeat(MAX_STEP_LEN);
        assert_eq!(error(&long_step).kind, ErrorKind::StepTooLong { len: MAX_STEP_LEN + 4 });
        let at_limit = String::from("log:") + &"x".repeat(MAX_STEP_LEN - 4);
        assert!(parse(&at_limit).is_ok());

        let many = ["halt"; MAX_STEPS + 1].join(";");
        let e = error(&many);
        assert_eq!((e.step, e.kind), (MAX_STEPS + 1, ErrorKind::TooManySteps));
        assert!(parse(&["halt"; MAX_STEPS].join(";")).is_ok());

        let huge = "halt;".repeat(MAX_SCRIPT_LEN);
        assert!(matches!(error(&huge).kind, ErrorKind::ScriptTooLong { .. }));
        assert_eq!(error("log:caf\u{e9}").kind, ErrorKind::NotAscii);
        assert_eq!(parse_bytes(b"log:\xff").unwrap_err().kind, ErrorKind::NotAscii);
        assert_eq!(parse_bytes(b"log:\xff").unwrap_err().offset, 4);
        assert!(parse_bytes(b"halt").is_ok());
    }

    #[test]
    fn watchdog_verbs() {
        let a = actions("ib700.arm:4s; ib700.feed; ib700.stop; i6300esb.feed; i6300esb.stop; first-boot");
        assert_eq!(a[0], Action::WatchdogArm(watchdog::Timeout::Ib700(ib700::Timeout::from_us(4_000_000).unwrap())));
        assert_eq!(a[1..3], [Action::WatchdogFeed(Model::Ib700), Action::WatchdogStop(Model::Ib700)]);
        assert_eq!(a[3].watchdog(), Some(Model::I6300Esb));
        assert_eq!(a[5], Action::FirstBoot);
        assert_eq!(error("ib700.arm:3s").kind, ErrorKind::Ib700Timeout("3s"));
        assert_eq!(
            error("ib700.arm").kind,
            ErrorKind::MissingArgument { verb: "ib700.arm", what: "a timeout, e.g. 2s" }
        );
        assert_eq!(error("ib700.kick").kind, ErrorKind::UnknownVerb("ib700.kick"));
    }

    #[test]
    fn i6300esb_arm_options() {
        // 1 s still fits the 1 MHz prescaler's 20 bits (up to 1.0066 s): exact.
        let Action::WatchdogArm(watchdog::Timeout::I6300Esb(s)) = actions("i6300esb.arm:1s")[0] else { panic!() };
        assert_eq!((s.prescaler, s.reboot, s.free_run), (i6300esb::Prescaler::Mhz1, true, false));
        assert_eq!(s.total_us(), 2_000_000);
        let Action::WatchdogArm(watchdog::Timeout::I6300Esb(s)) = actions("i6300esb.arm:2s")[0] else { panic!() };
        assert_eq!(s.prescaler, i6300esb::Prescaler::Khz1);
        assert!(s.total_us().abs_diff(4_000_000) < 1_000);
        let Action::WatchdogArm(watchdog::Timeout::I6300Esb(s)) =
            actions("i6300esb.arm:100ms, 300ms, no-reboot, free-run")[0]
        else {
            panic!()
        };
        assert_eq!((s.prescaler, s.reboot, s.free_run), (i6300esb::Prescaler::Mhz1, false, true));
        assert_eq!(s.total_us(), 400_000);
        assert_eq!(error("i6300esb.arm:1s,maybe").kind, ErrorKind::UnknownFlag { verb: "i6300esb.arm", flag: "maybe" });
        assert_eq!(error("i6300esb.arm:2000s").kind, ErrorKind::EsbTooLong("2000s"));
        assert_eq!(error("i6300esb.arm:2ms,100s").kind, ErrorKind::EsbUnrepresentable("2ms,100s"));
        assert!(matches!(error("i6300esb.arm:1s,2s,3s").kind, ErrorKind::TooManyArguments { .. }));
    }

    #[test]
    fn feed_for() {
        assert_eq!(
            actions("feed:i6300esb,every=500ms,for=3s"),
            [Action::FeedFor { model: Model::I6300Esb, every_us: 500_000, for_us: 3_000_000 }]
        );
        assert_eq!(
            actions("feed: ib700 , for=1s, every=1ms"),
            [Action::FeedFor { model: Model::Ib700, every_us: 1_000, for_us: 1_000_000 }]
        );
        assert_eq!(error("feed:pcwd,every=1s,for=2s").kind, ErrorKind::UnknownDevice("pcwd"));
        assert_eq!(error("feed:ib700,every=1s").kind, ErrorKind::NeedsKey { verb: "feed", key: "for" });
        assert_eq!(
            error("feed:ib700,every=1s,every=2s,for=1s").kind,
            ErrorKind::NeedsKey { verb: "feed", key: "every" }
        );
        assert_eq!(error("feed:ib700,every=0s,for=1s").kind, ErrorKind::ZeroInterval);
        assert_eq!(error("feed:ib700,every=x1s,for=1s").kind, ErrorKind::BadNumber("x1s"));
        let e = error("feed:ib700,every=1s,for=1h");
        assert_eq!((e.offset, e.kind), (24, ErrorKind::BadDurationUnit("1h")));
    }

    #[test]
    fn fault_and_hyperv_verbs() {
        assert_eq!(
            actions("fault:ud; fault:stack-overflow; fault:rust-panic; hv.probe"),
            [
                Action::Fault(Fault::InvalidOpcode),
                Action::Fault(Fault::StackOverflow),
                Action::Fault(Fault::RustPanic),
                Action::HvProbe
            ]
        );
        assert_eq!(error("fault:segv").kind, ErrorKind::UnknownFault("segv"));
        assert_eq!(
            actions("hv.crash:0x1e,0xfffffffffffffff0,0x20001,0x0,0x123456789abcdef0"),
            [Action::HvCrash {
                args: [0x1e, 0xffff_ffff_ffff_fff0, 0x20001, 0, 0x1234_5678_9abc_def0],
                fallback: false
            }]
        );
        assert_eq!(
            actions("hv.crash-or-pvpanic:1,2,3,4,5"),
            [Action::HvCrash { args: [1, 2, 3, 4, 5], fallback: true }]
        );
        let five = ErrorKind::WrongArgumentCount { verb: "hv.crash", expected: 5 };
        assert_eq!(error("hv.crash:1,2,3,4").kind, five);
        assert_eq!(error("hv.crash:1,2,3,4,5,6").kind, five);
        assert_eq!(error("hv.crash").kind, five);
        assert_eq!(error("hv.crash:1,2,x,4,5").kind, ErrorKind::BadNumber("x"));
        assert_eq!(error("hv.probe:1").kind, ErrorKind::UnexpectedArgument { verb: "hv.probe" });
        assert_eq!(error("hv.reset").kind, ErrorKind::UnknownVerb("hv.reset"));
    }

    #[test]
    fn s390_verbs() {
        assert_eq!(
            actions("s390.disabled-wait:0x12340; s390.disabled-wait:0x5678,0x0002000080000000; s390.shutdown"),
            [
                Action::S390DisabledWait { address: 0x12340, mask: 0x0002_0001_8000_0000 },
                Action::S390DisabledWait { address: 0x5678, mask: 0x0002_0000_8000_0000 },
                Action::S390Shutdown,
            ]
        );
        assert_eq!(
            error("s390.disabled-wait:0x1000,0x0302000180000000").kind,
            ErrorKind::NotDisabledWait(0x0302_0001_8000_0000)
        );
        assert_eq!(error("s390.disabled-wait:0x1000,0x180000000").kind, ErrorKind::NotDisabledWait(0x1_8000_0000));
        assert_eq!(error("s390.disabled-wait:0xbad7000").kind, ErrorKind::ReservedWaitAddress(0xbad7000));
        assert_eq!(error("s390.disabled-wait:0x1fff").kind, ErrorKind::SpecialWaitAddress(0x1fff));
        assert_eq!(
            error("s390.disabled-wait:0x80000000,0x0002000080000000").kind,
            ErrorKind::AddressTooWide { address: 0x8000_0000, mask: 0x0002_0000_8000_0000 }
        );
        assert!(matches!(error("s390.disabled-wait").kind, ErrorKind::MissingArgument { .. }));
        assert!(matches!(error("s390.shutdown:1").kind, ErrorKind::UnexpectedArgument { .. }));
        assert_eq!(
            actions("fault:operation; fault:specification"),
            [Action::Fault(Fault::Operation), Action::Fault(Fault::Specification)]
        );
    }

    #[test]
    fn every_step_knows_its_architecture() {
        use crate::Arch::{Aarch64, S390x, X86_64};
        let x86 = Some(Archs::of(X86_64));
        let s390 = Some(Archs::of(S390x));
        let arm = Some(Archs::of(Aarch64));
        let pci = Some(Archs::of(X86_64).and(Aarch64));
        let cases = [
            ("pvpanic.panicked", pci),
            ("pvpanic-pci.shutdown", pci),
            ("pvpanic-isa.crashloaded", x86),
            ("exit:1", pci),
            ("hv.probe", x86),
            ("hv.crash-or-pvpanic:1,2,3,4,5", x86),
            ("ib700.arm:2s", x86),
            ("i6300esb.stop", pci),
            ("feed:i6300esb,every=1s,for=2s", pci),
            ("fault:ud", x86),
            ("fault:stack-overflow", x86),
            ("fault:triple", x86),
            ("s390.disabled-wait:0x12340", s390),
            ("s390.shutdown", s390),
            ("diag288.arm:15s", s390),
            ("diag288.feed", s390),
            ("feed:diag288,every=5s,for=20s", s390),
            ("fault:operation", s390),
            ("fault:specification", s390),
            ("fault:undefined", arm),
            ("fault:data-abort", arm),
            ("psci.system-off", arm),
            ("psci.system-reset", arm),
            ("sleep:1ms", None),
            ("log:x", None),
            ("halt", None),
            ("first-boot", None),
            ("fault:rust-panic", None),
            ("fault:internal-panic", None),
            ("fault:internal-exception", None),
        ];
        for (step, archs) in cases {
            assert_eq!(actions(step)[0].archs(), archs, "{step}");
        }
        assert_eq!(Archs::of(X86_64).and(Aarch64).names(), "x86_64 and aarch64");
        assert_eq!(Archs::of(X86_64).and(Aarch64).iter().collect::<std::vec::Vec<_>>(), [X86_64, Aarch64]);
        assert_eq!(
            actions("psci.system-off; psci.system-reset"),
            [Action::Psci(Psci::SystemOff), Action::Psci(Psci::SystemReset)]
        );
        assert_eq!(error("psci.system-off:1").kind, ErrorKind::UnexpectedArgument { verb: "psci.system-off" });
        assert_eq!(error("psci.cpu-off").kind, ErrorKind::UnknownVerb("psci.cpu-off"));
        assert_eq!(actions("power-button.ignore")[0].archs(), x86);
        assert_eq!(
            actions("power-button.ignore; power-button.off"),
            [Action::PowerButton { ignore: true }, Action::PowerButton { ignore: false }]
        );
        assert_eq!(error("power-button.press").kind, ErrorKind::UnknownVerb("power-button.press"));
        assert_eq!(error("power-button.ignore:1").kind, ErrorKind::UnexpectedArgument { verb: "power-button.ignore" });
        for fault in Fault::ALL {
            let step = std::format!("fault:{}", fault.name());
            assert_eq!(actions(&step)[0].archs(), fault.archs(), "{step}");
        }
    }

    /// The messages are the same table for the log (defmt) and the host
    /// (Display); a few, rendered here, with their number formats.
    /// The console's plain text (`crate::text`) says what `Display` says,
    /// for every message.
    #[test]
    fn console_text_matches_display() {
        let scripts = [
            "bogus",
            "sleep:10",
            "sleep:10xs",
            "exit:999",
            "ib700.arm:3s",
            "i6300esb.arm:2000s",
            "s390.disabled-wait:0x1000,0x0302000180000000",
            "s390.disabled-wait:0xbad7000",
            "s390.disabled-wait:0x1fff",
            "s390.disabled-wait:0x80000000,0x0002000080000000",
            "fault:nope",
            "hv.crash:1,2",
            "halt:1",
            "log",
            "pvpanic.panicked x",
            ";",
            "diag288.arm:14s",
            "feed:ib700,every=0s,for=1s",
            "feed:nope,every=1s,for=1s",
            "i6300esb.arm:1s,bogus",
            "sleep:2000000s",
        ];
        for script in scripts {
            let e = error(script);
            let mut bytes = std::vec::Vec::new();
            crate::text::Render::render(&e, &mut |b| bytes.extend_from_slice(b));
            assert_eq!(std::string::String::from_utf8(bytes).unwrap(), e.to_string(), "{script}");
        }
    }

    #[test]
    fn error_messages() {
        let text = |script: &str| error(script).to_string();
        assert_eq!(
            text("s390.disabled-wait:0x1000,0x0302000180000000"),
            "script error: step 1 at byte 26: PSW mask 0x0302000180000000 is not a disabled wait (needs the wait bit 0x0002000000000000, and no I/O, external or machine-check bit)"
        );
        assert_eq!(
            text("halt; s390.disabled-wait:0x80000000,0x0002000080000000"),
            "script error: step 2 at byte 25: address 0x80000000 does not fit the addressing mode of mask 0x0002000080000000"
        );
        assert_eq!(
            text("sleep:1000001s"),
            "script error: step 1 at byte 6: duration '1000001s' is too long (the limit is 1000000s)"
        );
        assert_eq!(
            text("exit:0x70"),
            "script error: step 1 at byte 5: exit code 112 out of range (0..=111; higher values are the agent's own error codes)"
        );
        assert_eq!(
            ScriptError::too_long(&[b'x'; MAX_SCRIPT_LEN + 1], 1025).to_string(),
            "script error: step 1 at byte 1024: script is 1025 bytes, the limit is 1024"
        );
    }

    #[test]
    fn diag288_verbs() {
        assert_eq!(
            actions("diag288.arm:15s; diag288.feed; diag288.stop; feed:diag288,every=5s,for=20s")[0],
            Action::WatchdogArm(watchdog::Timeout::Diag288(diag288::Timeout::from_us(15_000_000).unwrap()))
        );
        assert_eq!(error("diag288.arm:14s").kind, ErrorKind::Diag288Timeout("14s"));
        assert_eq!(error("diag288.arm:15500ms").kind, ErrorKind::Diag288Timeout("15500ms"));
        assert!(parse("diag288.arm:16000ms").is_ok());
    }

    #[test]
    fn an_error_anywhere_rejects_the_whole_script() {
        assert!(parse("pvpanic.panicked; bogus").is_err());
        assert!(parse("pvpanic.panicked; sleep:1ms; exit:999").is_err());
    }

    /// The two scripts that used to panic (a flag where the first stage belongs).
    #[test]
    fn esb_flags_without_a_stage_are_refused() {
        for script in ["i6300esb.arm:no-reboot", "i6300esb.arm:free-run", "i6300esb.arm:free-run,no-reboot"] {
            let e = error(script);
            assert!(matches!(e.kind, ErrorKind::MissingArgument { verb: "i6300esb.arm", .. }), "{script}: {e:?}");
            assert_eq!((e.step, e.offset), (1, 13));
        }
        assert!(parse("i6300esb.arm:no-reboot,300ms").is_ok(), "a flag may come before the stage");
        let e = error("i6300esb.arm:1s,2s,3s");
        assert_eq!(e.kind, ErrorKind::TooManyArguments { verb: "i6300esb.arm", max: 4 });
    }

    #[test]
    fn numbers_agree_with_the_standard_parser() {
        // What `parse_number` did before it became one loop: an optional
        // 0x/0X, then only digits of the radix, through `from_str_radix`.
        fn reference(s: &str) -> Option<u64> {
            let (digits, radix) = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
                Some(hex) => (hex, 16),
                None => (s, 10),
            };
            if digits.is_empty() || !digits.bytes().all(|b| (b as char).is_digit(radix)) {
                return None;
            }
            u64::from_str_radix(digits, radix).ok()
        }
        let cases = [
            "",
            "0",
            "00",
            "007",
            "0x",
            "0X",
            "0x0",
            "0XAbC",
            "0xg",
            "0x0x1",
            "00x1",
            "x1",
            "1x",
            " 1",
            "1 ",
            "+1",
            "-1",
            "0x+1",
            "12a",
            "0xffffffffffffffff",
            "0x10000000000000000",
            "18446744073709551615",
            "18446744073709551616",
            "99999999999999999999",
            "0x00000000000000000001",
        ];
        for case in cases {
            assert_eq!(parse_number(case), reference(case), "{case:?}");
        }
        use proptest::prelude::*;
        proptest!(|(s in "(0[xX])?[0-9a-fA-FxX+ -]{0,22}")| prop_assert_eq!(parse_number(&s), reference(&s)));
    }

    #[test]
    fn names_compare_exactly() {
        assert!(same("pvpanic", "pvpanic"));
        assert!(same("", ""));
        assert!(!same("pvpanic", "pvpanic-pci"));
        assert!(!same("pvpanic-pci", "pvpanic"));
        assert!(!same("ms", "us"));
        assert!(!same("s", ""));
    }

    #[test]
    fn numbers_and_durations_at_their_edges() {
        assert_eq!(parse_number("0x"), None);
        assert_eq!(parse_number("0X"), None);
        assert_eq!(parse_number(""), None);
        assert_eq!(parse_number("0xffffffffffffffff"), Some(u64::MAX));
        assert_eq!(parse_number("0x10000000000000000"), None);
        assert_eq!(parse_number("+1"), None);
        assert_eq!(parse_number("-1"), None);
        assert_eq!(parse_duration_us("0x"), Err(DurationError::BadNumber));
        assert_eq!(parse_duration_us("0xs"), Err(DurationError::BadNumber));
        assert_eq!(parse_duration_us(""), Err(DurationError::BadNumber));
        assert_eq!(parse_duration_us("s"), Err(DurationError::BadNumber));
        // The duration limit, exactly and one past, in each unit.
        assert_eq!(parse_duration_us("1000000s"), Ok(MAX_DURATION_US));
        assert_eq!(parse_duration_us("1000001s"), Err(DurationError::Overflow));
        assert_eq!(parse_duration_us("1000000000ms"), Ok(MAX_DURATION_US));
        assert_eq!(parse_duration_us("1000000001ms"), Err(DurationError::Overflow));
        assert_eq!(parse_duration_us("1000000000000us"), Ok(MAX_DURATION_US));
        assert_eq!(parse_duration_us("1000000000001us"), Err(DurationError::Overflow));
        // Units that multiply past u64, and numbers past u64.
        assert_eq!(parse_duration_us("18446744073709552s"), Err(DurationError::Overflow));
        assert_eq!(parse_duration_us("18446744073709551615us"), Err(DurationError::Overflow));
        assert_eq!(parse_duration_us("18446744073709551616us"), Err(DurationError::BadNumber));
        assert_eq!(parse_duration_us("0xffffffffffffffffms"), Err(DurationError::Overflow));
        assert_eq!(error("sleep:18446744073709551616us").kind, ErrorKind::BadNumber("18446744073709551616us"));
        assert_eq!(error("sleep:1000001s").kind, ErrorKind::DurationTooLong("1000001s"));
        assert_eq!(
            error("feed:ib700,every=1s,for=99999999999999s").kind,
            ErrorKind::DurationTooLong("99999999999999s")
        );
        assert_eq!(error("exit:18446744073709551615").kind, ErrorKind::ExitCodeOutOfRange(u64::MAX));
        assert_eq!(error("exit:0x").kind, ErrorKind::BadNumber("0x"));
        assert_eq!(error("hv.crash:0x,1,2,3,4").kind, ErrorKind::BadNumber("0x"));
        assert_eq!(error("s390.disabled-wait:0x").kind, ErrorKind::BadNumber("0x"));
        assert_eq!(error("s390.disabled-wait:0x1000,0x").kind, ErrorKind::BadNumber("0x"));
        assert_eq!(error("i6300esb.arm:0xms").kind, ErrorKind::BadNumber("0xms"));
    }

    #[test]
    fn empty_arguments_and_separators() {
        for (script, step) in [(";", 1), (";;", 1), ("halt;;halt", 2), ("halt;", 2), (" ; ", 1), ("\n", 1)] {
            let e = error(script);
            assert_eq!((e.step, e.kind), (step, ErrorKind::EmptyStep), "{script:?}");
        }
        for script in ["sleep:", "sleep: ", "exit:", "fault:", "log:", "log: ", "feed:", "ib700.arm:", "i6300esb.arm:,"]
        {
            assert!(parse(script).is_err(), "{script:?} was accepted");
        }
        assert!(matches!(error("i6300esb.arm:,").kind, ErrorKind::UnknownFlag { flag: "", .. }));
        assert!(matches!(error("feed:,every=1s,for=1s").kind, ErrorKind::UnknownDevice("")));
        assert!(matches!(error("feed:ib700,,every=1s,for=1s").kind, ErrorKind::UnknownFlag { flag: "", .. }));
        assert!(matches!(error("hv.crash:,,,,").kind, ErrorKind::BadNumber("")));
        assert_eq!(error("sleep:1s,").kind, ErrorKind::TooManyArguments { verb: "sleep", max: 1 });
        assert_eq!(error(":").kind, ErrorKind::UnknownVerb(""));
        assert_eq!(error(".").kind, ErrorKind::UnknownVerb("."));
    }

    #[test]
    fn nul_and_non_ascii_bytes() {
        let e = parse_bytes(b"halt\0").unwrap_err();
        assert_eq!((e.step, e.kind), (1, ErrorKind::UnknownVerb("halt\0")));
        let e = parse_bytes(b"\0").unwrap_err();
        assert_eq!((e.step, e.offset), (1, 0));
        let e = parse_bytes(b"halt;log:\xc3\xa9").unwrap_err();
        assert_eq!((e.step, e.offset, e.kind), (2, 9, ErrorKind::NotAscii));
        let e = parse_bytes(b"halt;halt;\x80").unwrap_err();
        assert_eq!((e.step, e.offset, e.kind), (3, 10, ErrorKind::NotAscii));
        // Valid UTF-8 that is not ASCII is refused the same way.
        let e = parse("log:caf\u{e9}").unwrap_err();
        assert_eq!((e.step, e.offset, e.kind), (1, 7, ErrorKind::NotAscii));
    }

    #[test]
    fn every_limit_exactly_and_one_past() {
        // Script length: 1023 and 1024 bytes pass, 1025 does not.
        for len in [MAX_SCRIPT_LEN - 1, MAX_SCRIPT_LEN] {
            let text = padded_script(len);
            assert_eq!(text.len(), len);
            assert!(parse(&text).is_ok(), "{len} bytes refused");
        }
        let text = padded_script(MAX_SCRIPT_LEN + 1);
        let e = parse_bytes(text.as_bytes()).unwrap_err();
        assert_eq!(e.kind, ErrorKind::ScriptTooLong { len: MAX_SCRIPT_LEN + 1 });
        assert_eq!((e.step, e.offset), (step_at(text.as_bytes(), MAX_SCRIPT_LEN), MAX_SCRIPT_LEN));
        assert!(e.step >= 1);
        let e = ScriptError::too_long(&[b'x'; MAX_SCRIPT_LEN + 1], 5000);
        assert_eq!((e.step, e.kind), (1, ErrorKind::ScriptTooLong { len: 5000 }));
        // Step length: 127 and 128 pass, 129 does not.
        for len in [MAX_STEP_LEN - 1, MAX_STEP_LEN] {
            let step = String::from("log:") + &"y".repeat(len - 4);
            assert!(parse(&step).is_ok(), "a {len}-byte step refused");
        }
        let step = String::from("log:") + &"y".repeat(MAX_STEP_LEN + 1 - 4);
        assert_eq!(error(&step).kind, ErrorKind::StepTooLong { len: MAX_STEP_LEN + 1 });
        // Steps: 32 pass, 33 do not (also when the 33rd is empty or bad).
        assert_eq!(parse(&["halt"; MAX_STEPS].join(";")).unwrap().len(), MAX_STEPS);
        let too_many = ["halt"; MAX_STEPS + 1].join(";");
        let e = error(&too_many);
        assert_eq!((e.step, e.kind), (MAX_STEPS + 1, ErrorKind::TooManySteps));
        let trailing = ["halt"; MAX_STEPS].join(";") + ";";
        assert_eq!(error(&trailing).kind, ErrorKind::EmptyStep);
    }

    /// A valid script of exactly `len` bytes (`len` ≥ 8): `log:` steps of
    /// at most [`MAX_STEP_LEN`] bytes.
    fn padded_script(len: usize) -> String {
        let mut text = String::new();
        while text.len() < len {
            let sep = usize::from(!text.is_empty());
            let left = len - text.len() - sep;
            // Leave room for one more step of at least "log:x" after this one.
            let take = if left > MAX_STEP_LEN { (left - 6).min(MAX_STEP_LEN) } else { left };
            if sep == 1 {
                text.push(';');
            }
            text.push_str("log:");
            text.push_str(&"z".repeat(take - 4));
        }
        text
    }

    /// Property tests: arbitrary input never panics and every error points
    /// inside the input; whitespace around steps changes nothing.
    mod properties {
        use super::*;
        use proptest::prelude::*;
        use std::vec::Vec as StdVec;

        /// Valid steps of every verb, to build valid scripts from.
        const VALID_STEPS: &[&str] = &[
            "pvpanic.panicked",
            "pvpanic-isa.crashloaded",
            "pvpanic-pci.shutdown",
            "sleep:10ms",
            "sleep:0x10us",
            "exit:0x6f",
            "log:hello, world",
            "halt",
            "ib700.arm:2s",
            "ib700.feed",
            "ib700.stop",
            "i6300esb.arm:300ms,300ms,no-reboot",
            "i6300esb.arm:free-run,1s",
            "i6300esb.feed",
            "diag288.arm:15s",
            "diag288.stop",
            "feed:i6300esb,every=100ms,for=1s",
            "first-boot",
            "fault:ud",
            "fault:rust-panic",
            "hv.crash:1,2,3,4,5",
            "hv.crash-or-pvpanic:0x1e,0,0,0,0",
            "hv.probe",
            "s390.disabled-wait:0x12340",
            "s390.shutdown",
        ];

        fn check_error(input: &[u8], e: &ScriptError<'_>) {
            assert!(e.step >= 1, "{e:?} names no step");
            assert!(e.step <= input.iter().filter(|&&b| b == b';').count() + 1, "{e:?}: no such step");
            assert!(e.offset <= input.len(), "{e:?}: offset past the end of {} bytes", input.len());
            // Displaying an error never panics either.
            let _ = e.to_string();
        }

        fn check_any(input: &[u8]) {
            match parse_bytes(input) {
                Ok(script) => {
                    assert!(!script.is_empty() && script.len() <= MAX_STEPS);
                    assert!(input.len() <= MAX_SCRIPT_LEN && input.is_ascii());
                    for step in &script {
                        assert!(!step.text.is_empty() && step.text.len() <= MAX_STEP_LEN);
                    }
                }
                Err(e) => check_error(input, &e),
            }
        }

        /// Bytes drawn mostly from the script alphabet, so the parser gets
        /// deep, plus any byte at all.
        fn script_bytes() -> impl Strategy<Value = StdVec<u8>> {
            const ALPHABET: &[u8] = b"pvanic-sldhtkrmfbe.:;,= 0123456789xusf\t\n";
            let byte = |b: u8| if b < 224 { ALPHABET[usize::from(b) % ALPHABET.len()] } else { b };
            proptest::collection::vec(any::<u8>(), 0..1100).prop_map(move |v| v.into_iter().map(byte).collect())
        }

        fn whitespace() -> impl Strategy<Value = String> {
            proptest::collection::vec(proptest::sample::select(vec![' ', '\t', '\n', '\r']), 0..4)
                .prop_map(|v| v.into_iter().collect())
        }

        /// Runs `body` on a thread and fails (rather than hangs) if it does
        /// not end: the parser must never loop.
        fn bounded(name: &str, body: impl FnOnce() + Send + 'static) {
            let (done, finished) = std::sync::mpsc::channel();
            let worker = std::thread::spawn(move || {
                body();
                let _ = done.send(());
            });
            match finished.recv_timeout(std::time::Duration::from_secs(120)) {
                Ok(()) => worker.join().unwrap(),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    std::panic::resume_unwind(worker.join().unwrap_err())
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("{name}: the parser did not finish in 120 s"),
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic() {
            bounded("arbitrary bytes", || {
                let config = ProptestConfig { cases: 100_000, failure_persistence: None, ..ProptestConfig::default() };
                proptest!(config, |(input in script_bytes())| check_any(&input));
            });
        }

        #[test]
        fn mutated_valid_scripts_never_panic() {
            bounded("mutated scripts", || {
                let config = ProptestConfig { cases: 50_000, failure_persistence: None, ..ProptestConfig::default() };
                let steps = proptest::collection::vec(proptest::sample::select(VALID_STEPS), 1..40);
                proptest!(config, |(steps in steps, cut in any::<prop::sample::Index>(), byte in any::<u8>())| {
                    let mut input = steps.join(";").into_bytes();
                    let at = cut.index(input.len() + 1);
                    input.insert(at, byte);
                    check_any(&input);
                    input.truncate(at);
                    check_any(&input);
                });
            });
        }

        #[test]
        fn whitespace_around_steps_changes_nothing() {
            let config = ProptestConfig { cases: 20_000, failure_persistence: None, ..ProptestConfig::default() };
            let steps = proptest::collection::vec(
                (whitespace(), proptest::sample::select(VALID_STEPS), whitespace()),
                1..=MAX_STEPS,
            );
            proptest!(config, |(steps in steps)| {
                let plain: StdVec<&str> = steps.iter().map(|(_, step, _)| *step).collect();
                let plain = plain.join(";");
                let spaced: StdVec<String> = steps.iter().map(|(a, step, b)| std::format!("{a}{step}{b}")).collect();
                let spaced = spaced.join(";");
                prop_assume!(spaced.len() <= MAX_SCRIPT_LEN);
                let want: StdVec<_> = parse(&plain).unwrap().iter().map(|s| (s.action, s.text)).collect();
                let got: StdVec<_> = parse(&spaced).unwrap().iter().map(|s| (s.action, s.text)).collect();
                prop_assert_eq!(want, got);
            });
        }
    }
}
