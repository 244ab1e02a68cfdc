//! Marks the image builds (`cfg(image)`) and links them with their linker
//! script and defmt's; host builds (unit tests) need nothing.
fn main() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo::rustc-check-cfg=cfg(image)");
    // x86_64: x86_64-unknown-none. s390x: s390x-unknown-linux-gnu's `core`,
    // no_std (there is no stable bare-metal s390x target).
    let script = match (os.as_str(), arch.as_str()) {
        ("none", "x86_64") => Some("linker.ld"),
        (_, "s390x") => Some("linker-s390x.ld"),
        _ => None,
    };
    if let Some(script) = script {
        println!("cargo::rustc-cfg=image");
        println!("cargo::rustc-link-arg-bins=-T{dir}/{script}");
        println!("cargo::rustc-link-arg-bins=-Tdefmt.x");
    }
    println!("cargo::rerun-if-changed=linker.ld");
    println!("cargo::rerun-if-changed=linker-s390x.ld");
}
