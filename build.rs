//! Marks the image builds (`cfg(image)`) and links them with their linker
//! script and defmt's; host builds (unit tests) need nothing.
//!
//! It also derives the build id (`PVAGENT_BUILD_ID`): a hash of everything
//! that shapes the image (sources, linker scripts, lock file, target,
//! profile). The agent logs it in its first line and keeps it in the symbol
//! `PVAGENT_BUILD_ID`, so `cargo xtask decode` can tell a log of another
//! build from one of this image.
use std::path::Path;

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
        ("none", "aarch64") => Some("linker-aarch64.ld"),
        _ => None,
    };
    if let Some(script) = script {
        println!("cargo::rustc-cfg=image");
        println!("cargo::rustc-link-arg-bins=-T{dir}/{script}");
        println!("cargo::rustc-link-arg-bins=-Tdefmt.x");
    }
    let mut hash = Fnv::default();
    for input in ["linker.ld", "linker-s390x.ld", "linker-aarch64.ld", "Cargo.lock", "Cargo.toml", "build.rs", "src"] {
        println!("cargo::rerun-if-changed={input}");
        hash_path(&mut hash, &Path::new(&dir).join(input));
    }
    for var in ["TARGET", "PROFILE", "DEFMT_LOG"] {
        println!("cargo::rerun-if-env-changed={var}");
        hash.add(std::env::var(var).unwrap_or_default().as_bytes());
    }
    println!("cargo::rustc-env=PVAGENT_BUILD_ID={:016x}", hash.0);
}

struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn add(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// Hashes a file (name and contents), or a directory's files in name order.
fn hash_path(hash: &mut Fnv, path: &Path) {
    if path.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(path).into_iter().flatten().flatten().map(|e| e.path()).collect();
        entries.sort();
        for entry in entries {
            hash_path(hash, &entry);
        }
    } else if let Ok(bytes) = std::fs::read(path) {
        hash.add(path.file_name().map(|n| n.as_encoded_bytes()).unwrap_or_default());
        hash.add(&bytes);
    }
}
