//! The pvagent image. On the bare-metal target this is the guest; on the host
//! it only explains how to build it (the host build exists for unit tests).
#![cfg_attr(image, no_std, no_main)]

// The entry point (`pvagent_main`, called by the architecture's start-up
// code) lives in `pvagent::arch`.
#[cfg(image)]
use pvagent as _;

#[cfg(image)]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    pvagent::agent::report_panic(info)
}

#[cfg(not(image))]
fn main() {
    eprintln!("pvagent is a bare-metal guest image: build it with `cargo xtask build`");
    std::process::exit(2);
}
