//! The agent's log: defmt frames on the console, decoded on the host by
//! `cargo xtask` with the image's symbols. The architecture's console
//! decides how a frame travels (raw bytes on x86's COM1, a text line on
//! s390x's SCLP console).

use crate::arch::Console;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};

struct State {
    console: Option<Console>,
    encoder: defmt::Encoder,
}

struct Shared(UnsafeCell<State>);

// SAFETY: the agent runs on one CPU; `TAKEN` serialises the logger's users.
unsafe impl Sync for Shared {}

static STATE: Shared = Shared(UnsafeCell::new(State { console: None, encoder: defmt::Encoder::new() }));
static TAKEN: AtomicBool = AtomicBool::new(false);

/// Opens the console. Logging before this (or with no console) is dropped.
pub fn init() {
    let console = Console::open();
    with_state(|state| state.console = console);
}

fn with_state<R>(f: impl FnOnce(&mut State) -> R) -> R {
    // SAFETY: one CPU, and every caller holds the logger (or runs before
    // logging starts); no two `&mut State` are alive at once except when an
    // exception handler logs in the middle of a frame, which at worst
    // garbles that frame (the decoder resynchronises at the next one).
    f(unsafe { &mut *STATE.0.get() })
}

#[defmt::global_logger]
struct Logger;

// SAFETY: acquire/release bracket every frame; see `with_state`.
unsafe impl defmt::Logger for Logger {
    fn acquire() {
        // A nested acquire can only come from an exception while logging:
        // carry on rather than hang, the host decoder skips the broken frame.
        TAKEN.swap(true, Ordering::Acquire);
        with_state(|s| {
            let State { console, encoder } = s;
            encoder.start_frame(|bytes| emit(console, bytes));
        });
    }

    unsafe fn flush() {}

    unsafe fn release() {
        with_state(|s| {
            let State { console, encoder } = s;
            encoder.end_frame(|bytes| emit(console, bytes));
            if let Some(console) = console {
                console.end_frame();
            }
        });
        TAKEN.store(false, Ordering::Release);
    }

    unsafe fn write(bytes: &[u8]) {
        with_state(|s| {
            let State { console, encoder } = s;
            encoder.write(bytes, |out| emit(console, out));
        });
    }
}

fn emit(console: &mut Option<Console>, bytes: &[u8]) {
    if let Some(console) = console {
        console.write(bytes);
    }
}
