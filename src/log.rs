//! The agent's log: defmt frames on the console, decoded on the host by
//! `cargo xtask` with the image's symbols, and plain-text lines for a
//! person.
//!
//! # The console's format (every architecture)
//!
//! The console carries text lines only, so a person can read it as it is
//! (`virsh console`, a serial log file) and an ASCII-only console (s390x's
//! SCLP) carries it unchanged:
//! - `pvagent: <text>` (`pvagent: warning: …`, `pvagent: error: …`): what
//!   a person needs without a decoder (the banner, each step as it runs,
//!   the outcome, every error), from [`crate::say!`]; the decoder shows
//!   them among the frames' lines, at their level;
//! - `D:<hex>`: the defmt frames, hex-encoded (a long frame continues on
//!   the next `D:` line); `cargo xtask decode` joins the `D:` lines and
//!   decodes them.
//!
//! Lines end with CR LF.
//!
//! # Re-entrancy
//!
//! There is one CPU, but interrupt handlers log too: an NMI on x86_64 and a
//! restart interrupt on s390x (both QEMU's watchdog action `inject-nmi`), a
//! CPU exception, a program check. One can arrive while a frame is being
//! written. The logger's state (encoder and console) is touched only by
//! the *owner*: the context whose `acquire` found the logger free, until its
//! `release`. An `acquire` that finds it taken opens a *dropped* frame: that
//! frame's `acquire`, `write`s and `release` touch nothing but counters, so
//! the interrupted frame is left intact and no second `&mut State` is ever
//! made. After the owner's frame ends, one line says how many were dropped.
//!
//! A CPU exception handler never returns to the code it interrupted, so a
//! frame that code had open would never end and the handler's lines (what
//! the user needs most) would all be dropped. [`abandon_interrupted_frame`],
//! called on the way into such a handler, ends that frame (the decoder sees
//! it cut short), hands the logger to the handler and says so in the log.
//! It cannot when the interrupted code was inside the logger itself, with
//! the state borrowed (only a fault in the encoder or the console, or a
//! stack overflow there, could do that): then the handler's lines are
//! dropped too; the crash is still reported (pvpanic, an exit code, a wait
//! address).

use crate::arch::Console;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

struct State {
    console: Option<Console>,
    encoder: defmt::Encoder,
    /// Hex characters on the current `D:` line (0: no line open).
    hex_on_line: usize,
}

/// Hex characters per `D:` line (SCLP's console takes 960-byte lines).
const HEX_PER_LINE: usize = 900;
/// What ends a line.
const NEWLINE: &[u8] = b"\r\n";
/// The prefix of a person's line.
const SAY_PREFIX: &[u8] = b"pvagent: ";

/// A person's line's level: info (no word), warning or error.
#[derive(Clone, Copy)]
pub enum Level {
    Info,
    Warn,
    Error,
}

struct Shared(UnsafeCell<State>);

// SAFETY: the agent runs on one CPU, so "another thread" can only be an
// interrupt handler; `with_state` is the only way to the state and its
// callers' ownership rules (below) keep any two `&mut State` from existing.
unsafe impl Sync for Shared {}

static STATE: Shared = Shared(UnsafeCell::new(State { console: None, encoder: defmt::Encoder::new(), hex_on_line: 0 }));
/// The logger has an owner (a frame is open, or `init` runs).
static TAKEN: AtomicBool = AtomicBool::new(false);
/// The owner is inside `with_state`: a `&mut State` is alive.
static BORROWED: AtomicBool = AtomicBool::new(false);
/// Dropped frames that are open now (interrupt handlers nest).
static NESTED: AtomicU32 = AtomicU32::new(0);
/// Dropped frames not yet reported in the log.
static DROPPED: AtomicU32 = AtomicU32::new(0);

/// Opens the console. Logging before this (or with no console) is dropped.
pub fn init() {
    if TAKEN.swap(true, Ordering::AcqRel) {
        // Called from a handler that interrupted a frame: the logger is in
        // use, so it is already initialised.
        return;
    }
    // SAFETY: this context took the logger just now, so it is the owner.
    unsafe {
        with_state(|state| {
            if state.console.is_none() {
                state.console = Console::open();
            }
        })
    };
    TAKEN.store(false, Ordering::Release);
}

/// Ends the open frame on the console and frees the logger: the owner's
/// release, and the hand-over in [`abandon_interrupted_frame`].
///
/// # Safety
///
/// As [`with_state`]: the caller is the logger's owner and no other
/// `&mut State` is alive.
unsafe fn end_frame_and_free() {
    // SAFETY: this function's contract.
    unsafe {
        with_state(|s| {
            let State { console, encoder, hex_on_line } = s;
            encoder.end_frame(|bytes| emit(console, hex_on_line, bytes));
            end_line(console, hex_on_line);
        })
    };
    TAKEN.store(false, Ordering::Release);
}

/// Runs `f` on the logger's state.
///
/// # Safety
///
/// The caller must be the owner: it took `TAKEN` (from false to true)
/// itself and has not given it back, or took over through
/// [`abandon_interrupted_frame`]; and it is not running inside a dropped
/// frame (`NESTED` is 0). Nested contexts never call this, and the owner
/// cannot run while one of them does, so no other `&mut State` is alive.
unsafe fn with_state<R>(f: impl FnOnce(&mut State) -> R) -> R {
    // The swap keeps the state accesses below from moving above it, the
    // release store keeps them from moving below it: a handler that sees
    // BORROWED clear knows no reference is alive.
    BORROWED.swap(true, Ordering::AcqRel);
    // SAFETY: by this function's contract, the only `&mut State`.
    let result = f(unsafe { &mut *STATE.0.get() });
    BORROWED.store(false, Ordering::Release);
    result
}

/// Ends the frame that the interrupted code had open, if any, and makes
/// the caller the logger's owner, so a handler that never returns still
/// gets its lines out. Does nothing when the logger is free, and nothing
/// (the handler's lines will be dropped) when the interrupted code was
/// inside the logger with its state borrowed.
///
/// # Safety
///
/// Call it only from a handler that never returns to the code it
/// interrupted, before it logs: neither the interrupted context (which
/// may own the logger) nor any handler it interrupted in turn may ever run
/// again, since their frames are ended or forgotten here.
pub unsafe fn abandon_interrupted_frame() {
    if !TAKEN.load(Ordering::Acquire) || BORROWED.load(Ordering::Acquire) {
        return;
    }
    // Dropped frames of handlers that will never return count as dropped.
    let nested = NESTED.swap(0, Ordering::AcqRel);
    DROPPED.fetch_add(nested, Ordering::Relaxed);
    // SAFETY: the owner will never run again (this function's contract)
    // and holds no `&mut State` (BORROWED is clear, and only the owner sets
    // it); the contexts of dropped frames hold none by construction. This
    // context takes the owner's place, with NESTED back at 0.
    unsafe { end_frame_and_free() };
    defmt::warn!("the log line above was cut short by the exception below (the decoder may show it as malformed)");
}

/// Logs how many frames were dropped since the last report.
fn report_dropped() {
    let dropped = DROPPED.swap(0, Ordering::AcqRel);
    if dropped > 0 {
        defmt::warn!(
            "{=u32} log line(s) dropped: an interrupt handler (NMI, restart interrupt, CPU exception) logged while another line was being written",
            dropped
        );
    }
}

#[defmt::global_logger]
struct Logger;

// SAFETY: `acquire` makes one context the owner; every other context
// between it and the owner's `release` (an interrupt handler, or a `Format`
// impl that logs) gets a dropped frame whose calls touch nothing shared but
// atomics. Only the owner reaches the state, through `with_state`.
unsafe impl defmt::Logger for Logger {
    fn acquire() {
        if TAKEN.swap(true, Ordering::AcqRel) {
            NESTED.fetch_add(1, Ordering::AcqRel);
            return;
        }
        // SAFETY: this context took the logger just now: it is the owner,
        // and no dropped frame is open (they exist only while it is taken).
        unsafe {
            with_state(|s| {
                let State { console, encoder, hex_on_line } = s;
                encoder.start_frame(|bytes| emit(console, hex_on_line, bytes));
            })
        };
    }

    unsafe fn flush() {}

    unsafe fn release() {
        // A dropped frame is the innermost one: the contexts around it
        // cannot run until its handler has returned.
        if NESTED.load(Ordering::Acquire) > 0 {
            NESTED.fetch_sub(1, Ordering::AcqRel);
            DROPPED.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // SAFETY: NESTED is 0, so this is the owner's release (defmt pairs
        // it with the owner's acquire).
        unsafe { end_frame_and_free() };
        report_dropped();
    }

    unsafe fn write(bytes: &[u8]) {
        if NESTED.load(Ordering::Acquire) > 0 {
            return;
        }
        // SAFETY: NESTED is 0, and defmt calls `write` only between an
        // acquire and its release: this is the owner.
        unsafe {
            with_state(|s| {
                let State { console, encoder, hex_on_line } = s;
                encoder.write(bytes, |out| emit(console, hex_on_line, out));
            })
        };
    }
}

/// Writes frame bytes as hex on `D:` lines.
fn emit(console: &mut Option<Console>, hex_on_line: &mut usize, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let Some(console) = console else {
        return;
    };
    for &b in bytes {
        if *hex_on_line + 2 > HEX_PER_LINE {
            console.write(NEWLINE);
            *hex_on_line = 0;
        }
        if *hex_on_line == 0 {
            console.write(b"D:");
        }
        console.write(&[HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]);
        *hex_on_line += 2;
    }
}

/// Ends the open `D:` line, if any.
fn end_line(console: &mut Option<Console>, hex_on_line: &mut usize) {
    if *hex_on_line > 0 {
        if let Some(console) = console {
            console.write(NEWLINE);
        }
        *hex_on_line = 0;
    }
}

/// Writes one `pvagent: <text>` line for a person: `fmt` (defmt's
/// placeholder syntax) with `args`, see [`crate::text`]. Like a frame, it
/// is dropped (and counted) when an interrupt handler comes while the
/// logger is in use.
pub fn say(level: Level, fmt: &str, args: &[crate::text::Arg<'_>]) {
    if TAKEN.swap(true, Ordering::AcqRel) {
        DROPPED.fetch_add(1, Ordering::Relaxed);
        return;
    }
    // SAFETY: this context took the logger just now: it is the owner, and
    // no dropped frame is open (they exist only while it is taken).
    unsafe {
        with_state(|s| {
            let State { console, hex_on_line, .. } = s;
            end_line(console, hex_on_line);
            if let Some(console) = console {
                console.write(SAY_PREFIX);
                console.write(match level {
                    Level::Info => b"",
                    Level::Warn => b"warning: ",
                    Level::Error => b"error: ",
                });
                crate::text::render(&mut |bytes| console.write(bytes), fmt, args);
                console.write(NEWLINE);
            }
        })
    };
    TAKEN.store(false, Ordering::Release);
}

/// Logs a line as plain text, a `pvagent:` line a person reads (see
/// [`say`]), instead of a defmt frame: for the banner, the steps, the
/// outcome and every error. Same syntax as defmt's `info!`, `warn!` and
/// `error!` (the level first: `say!(error, "…", …)`).
#[macro_export]
macro_rules! say {
    (info, $($rest:tt)*) => { $crate::say!(@ $crate::log::Level::Info, $($rest)*) };
    (warn, $($rest:tt)*) => { $crate::say!(@ $crate::log::Level::Warn, $($rest)*) };
    (error, $($rest:tt)*) => { $crate::say!(@ $crate::log::Level::Error, $($rest)*) };
    (@ $level:expr, $fmt:literal $(, $arg:expr)* $(,)?) => {
        $crate::log::say($level, $fmt, &[$($crate::text::ToArg::to_arg(&$arg)),*])
    };
}
