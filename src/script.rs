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

use core::fmt;
use heapless::Vec;

/// Longest script the agent accepts, in bytes.
pub const MAX_SCRIPT_LEN: usize = 1024;
/// Longest single step, in bytes (after trimming whitespace).
pub const MAX_STEP_LEN: usize = 128;
/// Most steps in one script.
pub const MAX_STEPS: usize = 32;
/// Highest code a script may pass to `exit:`; the codes above it are the
/// agent's own error exits (see [`crate::exit`]).
pub const MAX_USER_EXIT_CODE: u64 = 0x6f;

/// One pvpanic event, by the bit QEMU's device uses for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(target_os = "none", derive(defmt::Format))]
pub enum PvEvent {
    Panicked,
    CrashLoaded,
    Shutdown,
}

impl PvEvent {
    /// The bit written to the device (and advertised in its capability byte).
    pub const fn bit(self) -> u8 {
        match self {
            PvEvent::Panicked => 0x01,
            PvEvent::CrashLoaded => 0x02,
            PvEvent::Shutdown => 0x04,
        }
    }

    /// The name used in scripts and logs.
    pub const fn name(self) -> &'static str {
        match self {
            PvEvent::Panicked => "panicked",
            PvEvent::CrashLoaded => "crashloaded",
            PvEvent::Shutdown => "shutdown",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        [PvEvent::Panicked, PvEvent::CrashLoaded, PvEvent::Shutdown].into_iter().find(|e| e.name() == name)
    }
}

/// Which pvpanic device a step addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(target_os = "none", derive(defmt::Format))]
pub enum PvDevice {
    /// `pvpanic.<event>`: the ISA device if present, else the PCI one.
    Any,
    /// `pvpanic-isa.<event>`.
    Isa,
    /// `pvpanic-pci.<event>`.
    Pci,
}

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
}

/// A refused script: which step, where, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScriptError<'a> {
    /// 1-based step number (0 when the error concerns the whole script).
    pub step: usize,
    /// Byte offset in the script where the problem starts.
    pub offset: usize,
    pub kind: ErrorKind<'a>,
}

impl fmt::Display for ScriptError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.step == 0 {
            write!(f, "script error: ")?;
        } else {
            write!(f, "script error: step {} at byte {}: ", self.step, self.offset)?;
        }
        match self.kind {
            ErrorKind::ScriptTooLong { len } => {
                write!(f, "script is {len} bytes, the limit is {MAX_SCRIPT_LEN}")
            }
            ErrorKind::NotAscii => write!(f, "script contains a non-ASCII byte"),
            ErrorKind::TooManySteps => write!(f, "more than {MAX_STEPS} steps"),
            ErrorKind::EmptyStep => write!(f, "empty step (two ';' in a row, or a trailing ';')"),
            ErrorKind::StepTooLong { len } => {
                write!(f, "step is {len} bytes, the limit is {MAX_STEP_LEN}")
            }
            ErrorKind::UnknownVerb(v) => write!(f, "unknown verb '{v}' (see the README for the verbs)"),
            ErrorKind::TrailingGarbage(t) => write!(f, "unexpected text '{t}' after the verb"),
            ErrorKind::MissingArgument { verb, what } => write!(f, "'{verb}' needs {what}"),
            ErrorKind::UnexpectedArgument { verb } => write!(f, "'{verb}' takes no argument"),
            ErrorKind::TooManyArguments { verb, max } => {
                write!(f, "'{verb}' takes at most {max} argument(s)")
            }
            ErrorKind::BadNumber(n) => {
                write!(f, "bad number '{n}' (decimal, or hex with 0x)")
            }
            ErrorKind::BadDurationUnit(d) => {
                write!(f, "bad unit in duration '{d}' (use us, ms or s)")
            }
            ErrorKind::MissingDurationUnit(d) => {
                write!(f, "duration '{d}' has no unit (use us, ms or s)")
            }
            ErrorKind::DurationTooLong(d) => write!(f, "duration '{d}' is too long"),
            ErrorKind::ExitCodeOutOfRange(c) => write!(
                f,
                "exit code {c} out of range (0..={MAX_USER_EXIT_CODE}; higher values are the agent's own error codes)"
            ),
        }
    }
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// Returns the trimmed sub-slice and its offset in `s`.
fn trim_with_offset(s: &str) -> (&str, usize) {
    let bytes = s.as_bytes();
    let start = bytes.iter().position(|&b| !is_space(b)).unwrap_or(bytes.len());
    let end = bytes.iter().rposition(|&b| !is_space(b)).map_or(start, |p| p + 1);
    (&s[start..end], start)
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
    let (digits, radix) = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => (hex, 16),
        None => (s, 10),
    };
    if digits.is_empty() || !digits.bytes().all(|b| (b as char).is_digit(radix)) {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
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
        2 + s[2..].bytes().position(|b| !b.is_ascii_hexdigit()).unwrap_or(s.len() - 2)
    } else {
        s.bytes().position(|b| !b.is_ascii_digit()).unwrap_or(s.len())
    };
    // A hex number swallows the 's' of nothing, but "0x10s" is fine: 's' is
    // not a hex digit. "0x1ms" is ambiguous-free for the same reason.
    let (num, unit) = s.split_at(unit_at);
    let value = parse_number(num).ok_or(DurationError::BadNumber)?;
    let scale = match unit {
        "us" => 1,
        "ms" => 1_000,
        "s" => 1_000_000,
        "" => return Err(DurationError::MissingUnit),
        _ => {
            // "12x3ms": the number is followed by garbage, not by a unit.
            if unit.bytes().any(|b| b.is_ascii_digit()) {
                return Err(DurationError::BadNumber);
            }
            return Err(DurationError::BadUnit);
        }
    };
    value.checked_mul(scale).ok_or(DurationError::Overflow)
}

/// Parses a script as read from fw_cfg or the command line (raw bytes).
pub fn parse_bytes(bytes: &[u8]) -> Result<Script<'_>, ScriptError<'_>> {
    if bytes.len() > MAX_SCRIPT_LEN {
        return Err(ScriptError { step: 0, offset: 0, kind: ErrorKind::ScriptTooLong { len: bytes.len() } });
    }
    match core::str::from_utf8(bytes) {
        Ok(text) => parse(text),
        Err(e) => Err(ScriptError { step: 0, offset: e.valid_up_to(), kind: ErrorKind::NotAscii }),
    }
}

/// Parses a whole script. Nothing in it may run unless this returns `Ok`.
pub fn parse(text: &str) -> Result<Script<'_>, ScriptError<'_>> {
    let whole = |kind| ScriptError { step: 0, offset: 0, kind };
    if text.len() > MAX_SCRIPT_LEN {
        return Err(whole(ErrorKind::ScriptTooLong { len: text.len() }));
    }
    if let Some(pos) = text.bytes().position(|b| !b.is_ascii()) {
        return Err(ScriptError { step: 0, offset: pos, kind: ErrorKind::NotAscii });
    }
    let mut script = Script::new();
    let mut offset = 0;
    for (index, raw) in text.split(';').enumerate() {
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
    let (verb, args, args_at) = match step.find(':') {
        Some(colon) => (&step[..colon], Some(&step[colon + 1..]), colon + 1),
        None => (step, None, step.len()),
    };
    // A verb is one word; whatever follows a space is garbage.
    let verb_len = verb.bytes().position(is_space).unwrap_or(verb.len());
    if verb_len < verb.len() {
        let (rest, lead) = trim_with_offset(&verb[verb_len..]);
        let end = match args {
            Some(_) => step.len(),
            None => verb_len + lead + rest.len(),
        };
        return Err((verb_len + lead, ErrorKind::TrailingGarbage(&step[verb_len + lead..end])));
    }
    let no_args = || match args {
        Some(_) => Err((args_at, ErrorKind::UnexpectedArgument { verb })),
        None => Ok(()),
    };
    let one_arg = |what| match args {
        None => Err((step.len(), ErrorKind::MissingArgument { verb, what })),
        Some(a) if a.trim().is_empty() => Err((args_at, ErrorKind::MissingArgument { verb, what })),
        Some(a) => Ok(a),
    };

    if let Some((device, event)) = verb.split_once('.') {
        let device = match device {
            "pvpanic" => Some(PvDevice::Any),
            "pvpanic-isa" => Some(PvDevice::Isa),
            "pvpanic-pci" => Some(PvDevice::Pci),
            _ => None,
        };
        if let (Some(device), Some(event)) = (device, PvEvent::from_name(event)) {
            no_args()?;
            return Ok(Action::Pvpanic(device, event));
        }
        return Err((0, ErrorKind::UnknownVerb(verb)));
    }
    match verb {
        "halt" => {
            no_args()?;
            Ok(Action::Halt)
        }
        "log" => Ok(Action::Log(one_arg("a text")?)),
        "sleep" => {
            let arg = single(verb, one_arg("a duration, e.g. 10ms")?, args_at)?;
            parse_duration_us(arg).map(Action::Sleep).map_err(|e| (args_at, duration_error(e, arg)))
        }
        "exit" => {
            let arg = single(verb, one_arg("an exit code")?, args_at)?;
            let code = parse_number(arg).ok_or((args_at, ErrorKind::BadNumber(arg)))?;
            if code > MAX_USER_EXIT_CODE {
                return Err((args_at, ErrorKind::ExitCodeOutOfRange(code)));
            }
            Ok(Action::Exit(code as u8))
        }
        _ => Err((0, ErrorKind::UnknownVerb(verb))),
    }
}

/// Checks that an argument list holds exactly one argument and returns it.
fn single<'a>(verb: &'a str, args: &'a str, at: usize) -> Result<&'a str, (usize, ErrorKind<'a>)> {
    match args.find(',') {
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
    fn an_error_anywhere_rejects_the_whole_script() {
        assert!(parse("pvpanic.panicked; bogus").is_err());
        assert!(parse("pvpanic.panicked; sleep:1ms; exit:999").is_err());
    }
}
