//! The pvagent image. On the bare-metal target this is the guest; on the host
//! it only explains how to build it (the host build exists for unit tests).
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod image {
    use pvagent::arch::pvh::BootInfo;

    /// Called by the architecture's entry stub on the agent's own stack.
    #[unsafe(no_mangle)]
    extern "C" fn pvagent_main(start_info: u32) -> ! {
        pvagent::agent::run(BootInfo::from_start_info(start_info))
    }

    #[panic_handler]
    fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
        pvagent::agent::report_panic(info)
    }
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("pvagent is a bare-metal guest image: build it with `cargo xtask build`");
    std::process::exit(2);
}
