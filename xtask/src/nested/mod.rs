//! The nested board: Hyper-V crash MSRs on a host whose KVM has no Hyper-V
//! emulation. (QEMU's `hv-crash` needs KVM's Hyper-V emulation, which a host
//! kernel built with `CONFIG_KVM_HYPERV=n` lacks; a Linux guest running its
//! own KVM has it.)
//!
//! The host QEMU runs a small Linux "L1" under TCG with an emulated AMD-V CPU
//! (`-cpu qemu64,+svm,+npt`). L1's `/init` ([`INIT_SCRIPT`]) loads `kvm_amd`
//! and starts the *host's own* `qemu-system-x86_64` inside L1 as "L2" with
//! `-accel kvm -cpu qemu64,hv-crash`, booting the agent. L1's kernel supplies
//! the KVM Hyper-V emulation, so L2 reports `GUEST_PANICKED` with
//! `info.type = "hyper-v"`.
//!
//! L1's serial ports carry everything the host needs:
//!
//! | L1 port | L1 side | host side |
//! |---|---|---|
//! | ttyS0 | kernel console, `/init` status lines, L2's stdout/stderr | file [`NestedRun::console`] |
//! | ttyS1 | L2's QMP monitor (`-chardev serial,path=/dev/ttyS1`) | unix socket [`NestedRun::qmp_socket`]: the host listens, L1 connects (`server=off`) |
//! | ttyS2 | L2's guest serial (`-serial`), byte-exact | file [`NestedRun::serial`] |
//!
//! So the host harness speaks QMP to L2 exactly as to a local QEMU
//! (greeting, `qmp_capabilities`, `cont`, events, `query-status`, `quit`).
//! Differences a runner must handle:
//!
//! * The socket reaches EOF only when *L1* exits (`/init` powers L1 off as
//!   soon as L2 exits, ~0.1 s later), and L1 always exits 0: L2's exit status
//!   is the `pvagent-l1: L2 exit N` console line ([`parse_console`]).
//! * QMP `timestamp`s come from L1's clock, which is off from the host's by
//!   up to ~±1.5 s (L1 reads the RTC at boot, whole seconds). Measure with the
//!   host's receive time, or correct by `host time of RESUME − its timestamp`.
//! * The greeting arrives ~3–3.5 s after spawning L1 (L1 boots under TCG),
//!   `qmp_capabilities` answers ~0.3 s later (L2 still creating its machine);
//!   the whole boot to a Hyper-V GUEST_PANICKED is ~3.5–4 s on an idle
//!   2-core host, and one L1 keeps a host core busy: allow ≥ 30 s timeouts.
//! * L2's guest serial is byte-exact but slow (~7 KB/s: every byte is a
//!   nested I/O exit emulated by TCG).
//! * L2 sees only L1 paths: the agent is `-kernel /run/l2/kernel`, its
//!   firmware one of the host QEMU's, copied into L1; no other host file
//!   reaches it. L2's QEMU errors are in the
//!   console ([`ConsoleReport::l2_output`]), L1's own failures as
//!   `pvagent-l1: error: …` ([`ConsoleReport::l1_error`]).
//!
//! Use: [`prepare`] once per harness run, then per boot create the QMP
//! listener, [`command`]`(&env, &run)`, spawn it, accept, and speak QMP
//! (the nested board's launcher does exactly that).
//!
//! [`prepare`] assembles L1's kernel and initramfs from Debian packages
//! (`linux-image-cloud-amd64`, `busybox-static`, fetched with `apt-get
//! download`, unpacked with `dpkg-deb -x`, never installed) and the host's
//! installed QEMU (binary, every library `ldd` lists, firmware), and caches
//! them. The agent image is *not* in the initramfs: [`command`] hands it
//! and L2's argument list to L1 via fw_cfg, so agent rebuilds never
//! invalidate the cache.
//!
//! Cache layout (`cache_root`, e.g. `target/pvagent-nested`):
//!
//! ```text
//! lock                          flock(2) held by prepare
//! apt-resolution.txt            apt state stamp + the resolved package versions
//! kernel/<package>_<version>/   vmlinuz, config, modules/<name>.ko (decompressed), load-order
//! busybox/<version>/            busybox, applets (`busybox --list-full`)
//! l1/<key>/initramfs.cpio       uncompressed newc; <key> = FNV-1a 64 of inputs.txt
//! l1/<key>/inputs.txt           every input: format, package versions, each host
//!                               file (path, size, mtime, inode), symlinks, own files' hashes
//! ```
//!
//! Invalidation: the package versions are re-resolved (`apt-cache`, ~1 s)
//! only when the apt lists or apt configuration change (their names, sizes
//! and mtimes form the stamp); a new version is downloaded once. The
//! initramfs key covers the host QEMU binary, its libraries, its firmware, the
//! packages, [`INIT_SCRIPT`] and the format version, so any `apt upgrade` of
//! QEMU or a library rebuilds it. Old keys and versions are deleted.

mod apt;
mod command;
mod console;
mod initramfs;
pub mod kvm;
mod modules;
mod qemu_files;

use std::ffi::OsStr;
use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{Context, Result, anyhow, bail};

pub use command::command;
pub use console::{ConsoleReport, parse_console};

use crate::util::find_program;
use apt::{ensure_busybox, ensure_kernel, resolve_packages};
use initramfs::{Entry, Tree};
use qemu_files::{find_firmware, ldd};

/// L1's `/init` (busybox sh).
pub const INIT_SCRIPT: &str = include_str!("../../nested/init.sh");

/// Bump when the initramfs layout or the way it is built changes.
const FORMAT: u32 = 1;

/// Debian meta package whose dependency names the L1 kernel package.
pub const KERNEL_META_PACKAGE: &str = "linux-image-cloud-amd64";
/// Debian package providing L1's userland.
pub const BUSYBOX_PACKAGE: &str = "busybox-static";

/// Kernel modules L1 loads (their dependencies are added automatically).
const MODULES: [&str; 2] = ["kvm_amd", "qemu_fw_cfg"];

/// Firmware L2 may load: (file name, required). Looked up in the host QEMU's
/// data directories (`-L help`) and stored at the same paths.
const FIRMWARE: [(&str, bool); 9] = [
    ("qboot.rom", true),
    ("pvh.bin", true),
    ("kvmvapic.bin", true),
    ("linuxboot_dma.bin", false),
    ("linuxboot.bin", false),
    ("multiboot_dma.bin", false),
    ("multiboot.bin", false),
    ("bios-256k.bin", false),
    ("bios.bin", false),
];

/// Where L1 puts the files the host passes through fw_cfg (the guest image,
/// named [`GUEST_FILE`]).
pub const L2_FILE_DIR: &str = "/run/l2";
/// Name of the guest image among the L2 files.
pub const GUEST_FILE: &str = "kernel";
/// fw_cfg name of L2's argument script.
pub const FW_CFG_ARGS: &str = "opt/pvagent/l2/args";
/// fw_cfg name prefix of L2's files.
pub const FW_CFG_FILE_PREFIX: &str = "opt/pvagent/l2/file/";
/// Prefix of the status lines `/init` prints on the console.
pub const CONSOLE_TAG: &str = "pvagent-l1: ";

/// Everything L1 needs, ready to boot.
#[derive(Clone, Debug)]
pub struct L1Env {
    /// The host QEMU: runs L1, and (the same path inside L1) runs L2.
    pub qemu: PathBuf,
    /// L1's kernel (bzImage).
    pub kernel: PathBuf,
    /// L1's initramfs (uncompressed newc cpio).
    pub initramfs: PathBuf,
    /// Cache key of the initramfs (16 hex digits).
    pub key: String,
    /// `<package> <version>` of the L1 kernel.
    pub kernel_package: String,
    /// `<package> <version>` of busybox.
    pub busybox_package: String,
    /// Firmware files present inside L1 (host paths = L1 paths).
    pub firmware: Vec<PathBuf>,
    /// qboot inside L1 (L2's default `-bios`).
    pub qboot: PathBuf,
    /// True if the initramfs came from the cache.
    pub cache_hit: bool,
}

/// One nested boot.
#[derive(Clone, Debug)]
pub struct NestedRun {
    /// The agent image (host path); L2 boots it as the L1 file
    /// [`GUEST_FILE`].
    pub guest_image: PathBuf,
    /// Host unix socket L1 connects its ttyS1 (L2's QMP) to. The caller must
    /// be listening before L1 is spawned.
    pub qmp_socket: PathBuf,
    /// Host file receiving L2's guest serial (byte-exact).
    pub serial: PathBuf,
    /// Host file receiving L1's console (kernel, `/init`, L2's stderr).
    pub console: PathBuf,
    /// L2's command line (`argv[0]` = the QEMU binary), with L1 paths: its
    /// QMP monitor on `/dev/ttyS1`, its serial port on `/dev/ttyS2`, the
    /// agent `-kernel` [`l2_file_path`]`(`[`GUEST_FILE`]`)`, firmware among
    /// [`L1Env::firmware`]. Any bytes except NUL; they reach L2 unchanged.
    pub l2_argv: Vec<String>,
}

/// L1 path of an L2 file ([`L2_FILE_DIR`]).
pub fn l2_file_path(name: &str) -> String {
    format!("{L2_FILE_DIR}/{name}")
}

// ───────────────────────────── probes ─────────────────────────────

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Can the nested board run here? `Err` says why not (for a SKIP reason).
/// Cheap when `cache_root` already holds a resolution; never downloads.
pub fn probe(cache_root: &Path, qemu: &str) -> std::result::Result<(), String> {
    if !cfg!(target_arch = "x86_64") {
        return Err("the nested board needs an x86_64 host (L1 runs the host's own QEMU)".into());
    }
    let Some(qemu_path) = find_program(qemu) else {
        return Err(format!("{qemu} not found in PATH"));
    };
    for tool in ["ldd", "dpkg-deb"] {
        if find_program(tool).is_none() {
            return Err(format!("`{tool}` not found (the nested board needs a Debian-based host)"));
        }
    }
    if let Err(e) = find_firmware(&qemu_path) {
        return Err(format!("{e:#}"));
    }
    apt::probe(cache_root)
}

// ───────────────────────────── prepare ─────────────────────────────

/// Assembles (or finds in the cache) L1's kernel and initramfs for the host
/// QEMU `qemu` (a name looked up in PATH, or a path). `log` gets progress
/// lines for slow steps (downloads, builds). Safe to call from several
/// processes at once (flock on `cache_root/lock`).
pub fn prepare(cache_root: &Path, qemu: &str, log: &mut dyn FnMut(&str)) -> Result<L1Env> {
    let qemu_path = find_program(qemu).ok_or_else(|| anyhow!("{qemu} not found in PATH"))?;
    let qemu_path = std::path::absolute(&qemu_path)?;
    fs::create_dir_all(cache_root).with_context(|| format!("creating {}", cache_root.display()))?;
    let lock = File::create(cache_root.join("lock"))?;
    // SAFETY: flock on a file descriptor we own; released when `lock` drops.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        bail!("flock {}: {}", cache_root.join("lock").display(), std::io::Error::last_os_error());
    }

    let res = resolve_packages(cache_root, log)?;
    let kdir = ensure_kernel(cache_root, &res, log)?;
    let bdir = ensure_busybox(cache_root, &res, log)?;

    // The tree of the initramfs.
    let mut t = Tree::default();
    for d in ["/dev", "/proc", "/sys", "/tmp", "/run", "/pvagent/modules"] {
        t.own_dir(Path::new(d))?;
    }
    t.insert(PathBuf::from("/dev/console"), Entry::CharDev { mode: 0o600, major: 5, minor: 1 })?;
    t.own_bytes(Path::new("/init"), INIT_SCRIPT.as_bytes().to_vec(), 0o755)?;
    t.own_file(Path::new("/bin/busybox"), &bdir.join("busybox"), 0o755)?;
    for applet in fs::read_to_string(bdir.join("applets"))?.lines() {
        let applet = applet.trim().trim_start_matches('/');
        if applet.is_empty() || applet == "bin/busybox" {
            continue;
        }
        let p = Path::new("/").join(applet);
        if !t.contains(&p)? {
            t.own_symlink(&p, "/bin/busybox")?;
        }
    }
    let order = fs::read_to_string(kdir.join("load-order"))?;
    for m in order.split_whitespace() {
        t.own_file(
            &Path::new("/pvagent/modules").join(format!("{m}.ko")),
            &kdir.join(format!("modules/{m}.ko")),
            0o644,
        )?;
    }
    t.own_bytes(Path::new("/pvagent/load-order"), order.into_bytes(), 0o644)?;

    t.add_host(&qemu_path)?;
    for lib in ldd(&qemu_path)? {
        t.add_host(&lib)?;
    }
    let firmware = find_firmware(&qemu_path)?;
    for p in &firmware {
        t.add_host(p)?;
    }
    let qboot = firmware.iter().find(|p| p.ends_with("qboot.rom")).cloned().expect("required");

    let mut inputs = format!(
        "format {FORMAT}\nkernel-package {}\nbusybox-package {}\nkernel {}\n",
        res.kernel_line(),
        res.busybox_line(),
        stat_line(&kdir.join("vmlinuz"))?
    );
    inputs.push_str(&t.fingerprint());
    let key = format!("{:016x}", fnv1a(inputs.as_bytes()));
    let l1_dir = cache_root.join("l1");
    let dir = l1_dir.join(&key);
    let initramfs = dir.join("initramfs.cpio");
    let cache_hit = initramfs.exists();
    if !cache_hit {
        log(&format!("nested: building L1 initramfs {key} ({} entries)", t.entries.len()));
        fs::create_dir_all(&l1_dir)?;
        let tmp = tempfile::Builder::new().prefix(".tmp-").tempdir_in(&l1_dir)?;
        t.write_cpio(&tmp.path().join("initramfs.cpio"))?;
        fs::write(tmp.path().join("inputs.txt"), &inputs)?;
        fs::rename(tmp.keep(), &dir).with_context(|| format!("renaming to {}", dir.display()))?;
    }
    remove_others(&l1_dir, &key);
    Ok(L1Env {
        qemu: qemu_path,
        kernel: kdir.join("vmlinuz"),
        initramfs,
        key,
        kernel_package: res.kernel_line(),
        busybox_package: res.busybox_line(),
        firmware,
        qboot,
        cache_hit,
    })
}

/// Deletes every entry of `dir` except `keep` (old cache generations).
fn remove_others(dir: &Path, keep: &str) {
    let Ok(rd) = fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        if e.file_name() != OsStr::new(keep) {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

fn fnv1a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn stat_line(p: &Path) -> Result<String> {
    let m = fs::metadata(p).with_context(|| format!("stat {}", p.display()))?;
    Ok(format!(
        "{} size={} mtime={}.{:09} ino={}:{}",
        p.display(),
        m.size(),
        m.mtime(),
        m.mtime_nsec(),
        m.dev(),
        m.ino()
    ))
}

fn run(cmd: &mut Command) -> Result<Output> {
    let shown = format!("{cmd:?}");
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("running {shown}"))?;
    if !out.status.success() {
        bail!("{shown} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(out)
}
