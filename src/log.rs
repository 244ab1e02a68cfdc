//! The agent's log: defmt frames on the console, decoded on the host by
//! `cargo xtask` with the image's symbols.

use crate::serial::Serial;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};

struct State {
    console: Option<Serial>,
    encoder: defmt::Encoder,
}

struct Shared(UnsafeCell<State>);

// SAFETY: the agent runs on one CPU; `TAKEN` serialises the logger's users.
unsafe impl Sync for Shared {}

static STATE: Shared = Shared(UnsafeCell::new(State { console: None, encoder: defmt::Encoder::new() }));
static TAKEN: AtomicBool = AtomicBool::new(false);

/// Opens the console. Logging before this (or with no console) is dropped.
pub fn init() {
    let console = Serial::com1();
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

fn emit(console: &mut Option<Serial>, bytes: &[u8]) {
    if let Some(console) = console {
        console.write(bytes);
    }
}
