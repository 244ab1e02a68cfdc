//! The nested board: Hyper-V crash MSRs on a host whose KVM has no Hyper-V
//! emulation (qemu-facts.md §6, §14).
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
//! * L2 sees only L1 paths: the agent is `-kernel /run/l2/kernel`; other host
//!   files go through [`NestedRun::files`]. L2's QEMU errors are in the
//!   console ([`ConsoleReport::l2_output`]), L1's own failures as
//!   `pvagent-l1: error: …` ([`ConsoleReport::l1_error`]).
//!
//! Use: `prepare` once per harness run, then per boot create the QMP
//! listener, `command(&env, &run)`, spawn it, accept, and speak QMP.
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

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{BufWriter, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{Context, Result, anyhow, bail};

/// L1's `/init` (busybox sh).
pub const INIT_SCRIPT: &str = include_str!("../nested/init.sh");

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

/// Where L1 puts the files passed with [`NestedRun::files`] (and the guest
/// image, named [`GUEST_FILE`]).
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
    /// The agent image (host path); L2 boots it with `-kernel`.
    pub guest_image: PathBuf,
    /// Host unix socket L1 connects its ttyS1 (L2's QMP) to. The caller must
    /// be listening before L1 is spawned.
    pub qmp_socket: PathBuf,
    /// Host file receiving L2's guest serial (byte-exact).
    pub serial: PathBuf,
    /// Host file receiving L1's console (kernel, `/init`, L2's stderr).
    pub console: PathBuf,
    /// L2 `-machine`.
    pub l2_machine: String,
    /// L2 `-cpu` (must keep `hv-crash` for the Hyper-V event).
    pub l2_cpu: String,
    /// L2 `-m`.
    pub l2_memory: String,
    /// L2 `-bios` (an L1 path, one of [`L1Env::firmware`]); `None`: qboot.
    pub l2_bios: Option<PathBuf>,
    /// Further L2 arguments (board and scenario arguments, the script's
    /// `-fw_cfg …,string=…`, `-action …`). Any bytes except NUL; they reach L2
    /// unchanged. Paths in them are L1 paths: host files must be passed with
    /// [`NestedRun::files`].
    pub l2_args: Vec<OsString>,
    /// Extra host files for L2: (name, host path); inside L1 the file is
    /// `/run/l2/<name>` ([`l2_file_path`]). Names: `[A-Za-z0-9._-]`, at most 35.
    pub files: Vec<(String, PathBuf)>,
    /// L1 memory in MiB.
    pub l1_memory_mib: u32,
    /// Extra L1 kernel command-line words (e.g. `loglevel=7` to debug).
    pub l1_append: Vec<String>,
}

impl NestedRun {
    /// A run with the defaults of qemu-facts §14: L2 `-M pc`,
    /// `-cpu qemu64,hv-crash`, `-m 32M`, qboot; L1 1024 MiB.
    pub fn new(guest_image: &Path, qmp_socket: &Path, serial: &Path, console: &Path) -> NestedRun {
        NestedRun {
            guest_image: guest_image.to_path_buf(),
            qmp_socket: qmp_socket.to_path_buf(),
            serial: serial.to_path_buf(),
            console: console.to_path_buf(),
            l2_machine: "pc".into(),
            l2_cpu: "qemu64,hv-crash".into(),
            l2_memory: "32M".into(),
            l2_bios: None,
            l2_args: Vec::new(),
            files: Vec::new(),
            l1_memory_mib: 1024,
            l1_append: Vec::new(),
        }
    }
}

/// L1 path of an L2 file passed with [`NestedRun::files`].
pub fn l2_file_path(name: &str) -> String {
    format!("{L2_FILE_DIR}/{name}")
}

// ───────────────────────────── command lines ─────────────────────────────

/// Escapes a value for QEMU's `key=value,…` syntax (`,` → `,,`).
fn qemu_opt(value: &OsStr) -> OsString {
    let mut out = Vec::with_capacity(value.len());
    for &b in value.as_bytes() {
        out.push(b);
        if b == b',' {
            out.push(b',');
        }
    }
    OsString::from_vec(out)
}

fn cat(parts: &[&OsStr]) -> OsString {
    let mut s = OsString::new();
    for p in parts {
        s.push(p);
    }
    s
}

fn valid_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 55 - FW_CFG_FILE_PREFIX.len()
        && name != "."
        && name != ".."
        && name != "args.sh"
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// L2's full argument list (`argv[0]` = the QEMU binary, an L1 path).
pub fn l2_argv(env: &L1Env, run: &NestedRun) -> Vec<OsString> {
    let mut a: Vec<OsString> = vec![env.qemu.clone().into()];
    let mut push = |xs: &[&str]| a.extend(xs.iter().map(OsString::from));
    push(&["-nodefaults", "-no-user-config", "-display", "none", "-S", "-accel", "kvm"]);
    push(&["-machine", &run.l2_machine, "-cpu", &run.l2_cpu, "-m", &run.l2_memory]);
    push(&["-chardev", "serial,id=pvagent_qmp,path=/dev/ttyS1", "-mon", "chardev=pvagent_qmp,mode=control"]);
    push(&["-chardev", "serial,id=pvagent_ser,path=/dev/ttyS2", "-serial", "chardev:pvagent_ser"]);
    a.push("-bios".into());
    a.push(run.l2_bios.clone().unwrap_or_else(|| env.qboot.clone()).into());
    a.extend(run.l2_args.iter().cloned());
    a.push("-kernel".into());
    a.push(l2_file_path(GUEST_FILE).into());
    a
}

/// Quotes one argument for sh: `'…'`, with `'` written as `'\''`.
fn sh_quote(arg: &OsStr, out: &mut Vec<u8>) {
    out.push(b'\'');
    for &b in arg.as_bytes() {
        if b == b'\'' {
            out.extend_from_slice(b"'\\''");
        } else {
            out.push(b);
        }
    }
    out.push(b'\'');
}

/// The script `/init` sources: one `l2_file NAME` per file, then
/// `set -- <L2 argv>`.
pub fn args_script(argv: &[OsString], file_names: &[&str]) -> Vec<u8> {
    let mut s = b"# L2 command (generated by xtask/src/nested.rs)\n".to_vec();
    for n in file_names {
        s.extend_from_slice(b"l2_file ");
        sh_quote(OsStr::new(n), &mut s);
        s.push(b'\n');
    }
    s.extend_from_slice(b"set --");
    for a in argv {
        s.extend_from_slice(b" \\\n    ");
        sh_quote(a, &mut s);
    }
    s.push(b'\n');
    s
}

/// The host command line (`argv[0]` = the host QEMU) that boots L1, which runs
/// L2. The caller must already listen on `run.qmp_socket`.
pub fn command(env: &L1Env, run: &NestedRun) -> Result<Vec<OsString>> {
    let mut names: Vec<&str> = vec![GUEST_FILE];
    for (n, _) in &run.files {
        if !valid_file_name(n) || names.contains(&n.as_str()) {
            bail!("nested: bad or duplicate L2 file name `{n}` (use [A-Za-z0-9._-], at most 35, not `kernel`)");
        }
        names.push(n);
    }
    if let Some(b) = &run.l2_bios
        && !env.firmware.contains(b)
    {
        bail!(
            "nested: L2 -bios {} is not inside L1 (available: {})",
            b.display(),
            env.firmware.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        );
    }
    if run.l2_args.iter().any(|a| a.as_bytes().contains(&0)) {
        bail!("nested: an L2 argument contains a NUL byte");
    }
    if run.qmp_socket.as_os_str().len() >= 108 {
        bail!("nested: socket path too long: {}", run.qmp_socket.display());
    }
    let script = args_script(&l2_argv(env, run), &names);
    // One argv element is limited to 128 KiB (MAX_ARG_STRLEN).
    if script.len() > 120 * 1024 {
        bail!("nested: the L2 argument list is too long ({} bytes)", script.len());
    }

    let mut a: Vec<OsString> = vec![env.qemu.clone().into()];
    let mut push = |xs: &[&str]| a.extend(xs.iter().map(OsString::from));
    push(&["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"]);
    push(&["-accel", "tcg", "-machine", "pc", "-cpu", "qemu64,+svm,+npt", "-smp", "1"]);
    push(&["-m", &run.l1_memory_mib.to_string()]);
    a.push("-kernel".into());
    a.push(env.kernel.clone().into());
    a.push("-initrd".into());
    a.push(env.initramfs.clone().into());
    // cryptomgr.notests saves ~0.5 s of crypto self-tests under TCG;
    // tsc=reliable keeps a loaded host from making L1 drop the TSC clocksource.
    let mut append = vec![
        "console=ttyS0",
        "quiet",
        "panic=-1",
        "8250.nr_uarts=3",
        "cryptomgr.notests",
        "mitigations=off",
        "tsc=reliable",
    ];
    append.extend(run.l1_append.iter().map(String::as_str));
    a.push("-append".into());
    a.push(append.join(" ").into());
    let chardev = |id: &str, kind: &str, path: &Path, tail: &str| -> [OsString; 4] {
        let spec = cat(&[OsStr::new(&format!("{kind},id={id},path=")), &qemu_opt(path.as_os_str()), OsStr::new(tail)]);
        ["-chardev".into(), spec, "-serial".into(), format!("chardev:{id}").into()]
    };
    a.extend(chardev("l1console", "file", &run.console, ""));
    a.extend(chardev("l2qmp", "socket", &run.qmp_socket, ",server=off"));
    a.extend(chardev("l2serial", "file", &run.serial, ""));
    a.push("-fw_cfg".into());
    a.push(cat(&[OsStr::new(&format!("name={FW_CFG_ARGS},string=")), &qemu_opt(OsStr::from_bytes(&script))]));
    let files = std::iter::once((GUEST_FILE, run.guest_image.as_path()))
        .chain(run.files.iter().map(|(n, p)| (n.as_str(), p.as_path())));
    for (name, path) in files {
        a.push("-fw_cfg".into());
        a.push(cat(&[OsStr::new(&format!("name={FW_CFG_FILE_PREFIX}{name},file=")), &qemu_opt(path.as_os_str())]));
    }
    Ok(a)
}

// ───────────────────────────── console ─────────────────────────────

/// What L1's console says about the run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConsoleReport {
    /// `/init` reached (the kernel booted).
    pub init_reached: bool,
    /// `/init` failed before or instead of running L2.
    pub l1_error: Option<String>,
    /// L2 was started.
    pub l2_started: bool,
    /// L2's exit status (as the shell reports it: 128 + signal if killed).
    pub l2_exit: Option<i32>,
    /// What L2 printed (stdout/stderr), with kernel and `/init` lines removed.
    pub l2_output: String,
    /// L1's uptime (s) at each `/init` status line, e.g. `("L2 start", 2.27)`.
    pub l1_times: Vec<(String, f64)>,
}

/// Parses L1's console (the file of [`NestedRun::console`]).
pub fn parse_console(bytes: &[u8]) -> ConsoleReport {
    let text = String::from_utf8_lossy(bytes);
    let mut r = ConsoleReport::default();
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(msg) = line.strip_prefix(CONSOLE_TAG) {
            // `<what> [<uptime>]`
            let (msg, up) = match msg.rsplit_once(" [") {
                Some((m, t)) if t.ends_with(']') => (m, t.trim_end_matches(']').parse::<f64>().ok()),
                _ => (msg, None),
            };
            if let Some(up) = up {
                r.l1_times.push((msg.to_string(), up));
            }
            if msg == "init" {
                r.init_reached = true;
            } else if let Some(e) = msg.strip_prefix("error: ") {
                r.l1_error.get_or_insert_with(|| e.to_string());
            } else if msg == "L2 start" {
                r.l2_started = true;
            } else if let Some(n) = msg.strip_prefix("L2 exit ") {
                r.l2_exit = n.trim().parse().ok();
            }
        } else if r.l2_started && r.l2_exit.is_none() && !is_kernel_line(line) {
            r.l2_output.push_str(line);
            r.l2_output.push('\n');
        }
    }
    r
}

/// `[    4.123456] …` (printk time stamps are on in Debian's kernels).
fn is_kernel_line(line: &str) -> bool {
    let Some(rest) = line.strip_prefix('[') else {
        return false;
    };
    let Some((stamp, _)) = rest.split_once(']') else {
        return false;
    };
    let stamp = stamp.trim();
    !stamp.is_empty() && stamp.chars().all(|c| c.is_ascii_digit() || c == '.')
}

// ───────────────────────────── probes ─────────────────────────────

/// Finds `binary` in PATH (or checks it if it contains a `/`).
pub fn find_in_path(binary: &str) -> Option<PathBuf> {
    crate::util::find_program(binary)
}

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
    let Some(qemu_path) = find_in_path(qemu) else {
        return Err(format!("{qemu} not found in PATH"));
    };
    for tool in ["ldd", "dpkg-deb"] {
        if find_in_path(tool).is_none() {
            return Err(format!("`{tool}` not found (the nested board needs a Debian-based host)"));
        }
    }
    if let Err(e) = find_firmware(&qemu_path) {
        return Err(format!("{e:#}"));
    }
    let cached = fs::read_to_string(cache_root.join("apt-resolution.txt"))
        .ok()
        .and_then(|t| Resolution::parse(&t))
        .is_some_and(|r| cache_root.join("kernel").join(r.kernel_dir()).join("complete").exists());
    if cached {
        return Ok(());
    }
    for tool in ["apt-get", "apt-cache"] {
        if find_in_path(tool).is_none() {
            return Err(format!(
                "`{tool}` not found: the nested board fetches {KERNEL_META_PACKAGE} and {BUSYBOX_PACKAGE} with apt"
            ));
        }
    }
    match apt_show(&[KERNEL_META_PACKAGE]) {
        Ok(s) if !s.is_empty() => Ok(()),
        _ if is_root() => Ok(()), // prepare runs `apt-get update` first
        _ => Err(format!(
            "apt knows no {KERNEL_META_PACKAGE} (run `apt-get update` as root; \
             the nested board needs Debian's cloud kernel for L1)"
        )),
    }
}

const KVMIO: libc::c_ulong = 0xAE;
const KVM_CHECK_EXTENSION: libc::c_ulong = (KVMIO << 8) | 0x03;
/// `_IOWR(KVMIO, 0x02, struct kvm_msr_list)` (the struct is one u32 + array).
const KVM_GET_MSR_INDEX_LIST: libc::c_ulong = 0xC004_AE02;
const KVM_CAP_HYPERV: libc::c_ulong = 44;
const HV_X64_MSR_CRASH_CTL: u32 = 0x4000_0105;

/// Can the *direct* board (`-accel kvm -cpu …,hv-crash` on this host) emit the
/// Hyper-V crash event? Checks `/dev/kvm`, `KVM_CAP_HYPERV` and that KVM
/// lists the crash-control MSR (QEMU's own conditions for `hv-crash`).
pub fn direct_hyperv_available() -> std::result::Result<(), String> {
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(|e| format!("/dev/kvm is not usable: {e}"))?;
    let fd = f.as_raw_fd();
    // SAFETY: KVM_CHECK_EXTENSION takes an integer argument and returns an int.
    let cap = unsafe { libc::ioctl(fd, KVM_CHECK_EXTENSION as _, KVM_CAP_HYPERV) };
    if cap <= 0 {
        return Err("this host's KVM has no Hyper-V emulation (KVM_CAP_HYPERV = 0)".into());
    }
    if !kvm_msr_index_list(fd)?.contains(&HV_X64_MSR_CRASH_CTL) {
        return Err("this host's KVM has Hyper-V but not the crash MSRs (no HV_X64_MSR_CRASH_CTL)".into());
    }
    Ok(())
}

/// `KVM_GET_MSR_INDEX_LIST` on an open `/dev/kvm`: the MSRs KVM saves and
/// restores (QEMU enables `hv-crash` only if CRASH_CTL is among them).
fn kvm_msr_index_list(fd: libc::c_int) -> std::result::Result<Vec<u32>, String> {
    // struct kvm_msr_list { __u32 nmsrs; __u32 indices[]; }: ask for the
    // count first (E2BIG), then fetch.
    let mut buf: Vec<u32> = vec![0; 1];
    // SAFETY: nmsrs = 0 with a 4-byte buffer: the kernel only writes nmsrs.
    unsafe { libc::ioctl(fd, KVM_GET_MSR_INDEX_LIST as _, buf.as_mut_ptr()) };
    let n = buf[0] as usize;
    if n == 0 || n > 65536 {
        return Err("KVM_GET_MSR_INDEX_LIST failed".into());
    }
    buf = vec![0; n + 1];
    buf[0] = n as u32;
    // SAFETY: the buffer has room for nmsrs = n entries after the count.
    let r = unsafe { libc::ioctl(fd, KVM_GET_MSR_INDEX_LIST as _, buf.as_mut_ptr()) };
    if r < 0 {
        return Err(format!("KVM_GET_MSR_INDEX_LIST failed: {}", std::io::Error::last_os_error()));
    }
    let got = (buf[0] as usize).min(n);
    Ok(buf[1..=got].to_vec())
}

// ───────────────────────────── prepare ─────────────────────────────

/// Assembles (or finds in the cache) L1's kernel and initramfs for the host
/// QEMU `qemu` (a name looked up in PATH, or a path). `log` gets progress
/// lines for slow steps (downloads, builds). Safe to call from several
/// processes at once (flock on `cache_root/lock`).
pub fn prepare(cache_root: &Path, qemu: &str, log: &mut dyn FnMut(&str)) -> Result<L1Env> {
    let qemu_path = find_in_path(qemu).ok_or_else(|| anyhow!("{qemu} not found in PATH"))?;
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

/// The libraries `ldd` lists for `binary` (including the dynamic loader).
fn ldd(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = run(Command::new("ldd").arg(binary))?;
    parse_ldd(&String::from_utf8_lossy(&out.stdout))
}

fn parse_ldd(text: &str) -> Result<Vec<PathBuf>> {
    let mut libs = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.contains("=> not found") {
            bail!("ldd: {line}");
        }
        let path = match line.split_once("=>") {
            Some((_, rhs)) => rhs.split_whitespace().next().unwrap_or(""),
            None => line.split_whitespace().next().unwrap_or(""),
        };
        // linux-vdso.so.1 (and `statically linked`) have no file.
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

/// The [`FIRMWARE`] files present in QEMU's data directories.
fn find_firmware(qemu: &Path) -> Result<Vec<PathBuf>> {
    let dirs = firmware_dirs(qemu)?;
    let mut found = Vec::new();
    for (name, required) in FIRMWARE {
        match dirs.iter().map(|d| d.join(name)).find(|p| p.exists()) {
            Some(p) => found.push(p),
            None if required => bail!(
                "{name} not found in {}'s data directories ({})",
                qemu.display(),
                dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
            ),
            None => {}
        }
    }
    Ok(found)
}

/// QEMU's firmware search path (`-L help`).
fn firmware_dirs(qemu: &Path) -> Result<Vec<PathBuf>> {
    let out = run(Command::new(qemu).args(["-L", "help"]).stderr(Stdio::piped()))?;
    let dirs: Vec<PathBuf> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with('/'))
        .map(PathBuf::from)
        .collect();
    if dirs.is_empty() {
        bail!("{} -L help listed no data directory", qemu.display());
    }
    Ok(dirs)
}

// ───────────────────────────── apt ─────────────────────────────

#[derive(Clone, Debug, PartialEq, Eq)]
struct Resolution {
    stamp: String,
    kernel: (String, String),
    busybox: (String, String),
}

impl Resolution {
    fn render(&self) -> String {
        format!("stamp {}\nkernel {}\nbusybox {}\n", self.stamp, self.kernel_line(), self.busybox_line())
    }

    fn parse(text: &str) -> Option<Resolution> {
        let mut stamp = None;
        let mut kernel = None;
        let mut busybox = None;
        for line in text.lines() {
            let mut w = line.split_whitespace();
            match (w.next(), w.next(), w.next()) {
                (Some("stamp"), Some(s), None) => stamp = Some(s.to_string()),
                (Some("kernel"), Some(p), Some(v)) => kernel = Some((p.to_string(), v.to_string())),
                (Some("busybox"), Some(p), Some(v)) => busybox = Some((p.to_string(), v.to_string())),
                _ => {}
            }
        }
        Some(Resolution { stamp: stamp?, kernel: kernel?, busybox: busybox? })
    }

    fn kernel_line(&self) -> String {
        format!("{} {}", self.kernel.0, self.kernel.1)
    }

    fn busybox_line(&self) -> String {
        format!("{} {}", self.busybox.0, self.busybox.1)
    }

    fn kernel_dir(&self) -> String {
        dir_name(&format!("{}_{}", self.kernel.0, self.kernel.1))
    }

    fn busybox_dir(&self) -> String {
        dir_name(&self.busybox.1)
    }
}

/// A version as a directory name (`:` of epochs → `%3a`, as apt does).
fn dir_name(s: &str) -> String {
    s.replace(':', "%3a").replace('/', "_")
}

/// Names, sizes and mtimes of apt's lists and configuration: changes exactly
/// when a candidate version may have changed.
fn apt_stamp() -> String {
    let mut s = String::new();
    for dir in ["/var/lib/apt/lists", "/etc/apt/sources.list.d", "/etc/apt/preferences.d"] {
        let Ok(rd) = fs::read_dir(dir) else {
            continue;
        };
        let mut names: Vec<_> = rd.flatten().map(|e| e.path()).collect();
        names.sort();
        for p in names {
            if let Ok(m) = fs::metadata(&p) {
                s.push_str(&format!("{} {} {}.{}\n", p.display(), m.size(), m.mtime(), m.mtime_nsec()));
            }
        }
    }
    for f in ["/etc/apt/sources.list", "/etc/apt/preferences"] {
        if let Ok(l) = stat_line(Path::new(f)) {
            s.push_str(&l);
            s.push('\n');
        }
    }
    format!("{:016x}", fnv1a(s.as_bytes()))
}

/// `apt-cache show --no-all-versions PKG…` (candidate stanzas).
fn apt_show(pkgs: &[&str]) -> Result<String> {
    let out = run(Command::new("apt-cache").args(["show", "--no-all-versions"]).args(pkgs))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Parses deb822 stanzas into (Package, Version, Depends).
fn parse_stanzas(text: &str) -> Vec<BTreeMap<String, String>> {
    let mut out = Vec::new();
    let mut cur: BTreeMap<String, String> = BTreeMap::new();
    let mut last: Option<String> = None;
    for line in text.lines() {
        if line.trim().is_empty() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            last = None;
        } else if line.starts_with([' ', '\t']) {
            if let Some(v) = last.as_ref().and_then(|k| cur.get_mut(k)) {
                v.push('\n');
                v.push_str(line.trim());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            cur.insert(k.trim().to_string(), v.trim().to_string());
            last = Some(k.trim().to_string());
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The concrete kernel package the meta package depends on.
fn kernel_dependency(meta_stanza: &BTreeMap<String, String>) -> Option<String> {
    meta_stanza
        .get("Depends")?
        .split([',', '|'])
        .map(|d| d.split_whitespace().next().unwrap_or(""))
        .find(|d| d.starts_with("linux-image-"))
        .map(String::from)
}

fn resolve_now() -> Result<Resolution> {
    let stamp = apt_stamp();
    let meta = parse_stanzas(&apt_show(&[KERNEL_META_PACKAGE])?);
    let kpkg = meta
        .first()
        .and_then(kernel_dependency)
        .ok_or_else(|| anyhow!("{KERNEL_META_PACKAGE} has no linux-image-* dependency"))?;
    let stanzas = parse_stanzas(&apt_show(&[&kpkg, BUSYBOX_PACKAGE])?);
    let version = |p: &str| -> Result<(String, String)> {
        let s = stanzas
            .iter()
            .find(|s| s.get("Package").map(String::as_str) == Some(p))
            .ok_or_else(|| anyhow!("apt-cache show lists no {p}"))?;
        let v = s.get("Version").ok_or_else(|| anyhow!("{p} has no Version"))?;
        Ok((p.to_string(), v.clone()))
    };
    Ok(Resolution { stamp, kernel: version(&kpkg)?, busybox: version(BUSYBOX_PACKAGE)? })
}

fn apt_update(log: &mut dyn FnMut(&str)) -> Result<()> {
    if !is_root() {
        bail!("apt-get update needs root (run it once: `sudo apt-get update`)");
    }
    log("nested: apt-get update");
    run(Command::new("apt-get").args(["-q", "update"]))?;
    Ok(())
}

/// The package versions to use: the cached resolution while apt's state is
/// unchanged, else the current candidates (`apt-get update` first if apt
/// knows nothing about them).
fn resolve_packages(cache_root: &Path, log: &mut dyn FnMut(&str)) -> Result<Resolution> {
    let file = cache_root.join("apt-resolution.txt");
    let stamp = apt_stamp();
    if let Some(r) = fs::read_to_string(&file).ok().and_then(|t| Resolution::parse(&t))
        && r.stamp == stamp
    {
        return Ok(r);
    }
    let r = match resolve_now() {
        Ok(r) => r,
        Err(first) => {
            apt_update(log).with_context(|| format!("{first:#}"))?;
            resolve_now()?
        }
    };
    fs::write(&file, r.render())?;
    Ok(r)
}

/// Downloads `pkg=version` into `dir`; on failure (stale lists) updates once.
fn download(dir: &Path, pkg: &str, version: &str, log: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    log(&format!("nested: downloading {pkg} {version}"));
    let get = || {
        run(Command::new("apt-get")
            .current_dir(dir)
            .args(["-q", "-o", "APT::Sandbox::User=root", "download"])
            .arg(format!("{pkg}={version}")))
    };
    if let Err(e) = get() {
        apt_update(log).with_context(|| format!("{e:#}"))?;
        get()?;
    }
    fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension() == Some(OsStr::new("deb")))
        .ok_or_else(|| anyhow!("apt-get download {pkg} produced no .deb"))
}

fn extract_deb(deb: &Path, into: &Path) -> Result<()> {
    run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(into))?;
    Ok(())
}

/// One package of the cache, unpacked into `<kind>/<dir_name>/`: reused when
/// its `complete` marker is there, else downloaded, extracted into a
/// staging directory, filled by `fill(extracted, out)`, marked complete and
/// moved into place (older generations removed).
fn cached_package(
    cache_root: &Path,
    kind: &str,
    dir_name: String,
    package: &(String, String),
    complete_line: String,
    log: &mut dyn FnMut(&str),
    fill: impl FnOnce(&Path, &Path) -> Result<()>,
) -> Result<PathBuf> {
    let parent = cache_root.join(kind);
    let dir = parent.join(dir_name);
    if dir.join("complete").exists() {
        return Ok(dir);
    }
    fs::create_dir_all(&parent)?;
    let tmp = tempfile::Builder::new().prefix(".tmp-").tempdir_in(&parent)?;
    let dl = tmp.path().join("deb");
    let x = tmp.path().join("x");
    let out = tmp.path().join("out");
    for d in [&dl, &x, &out] {
        fs::create_dir_all(d)?;
    }
    let deb = download(&dl, &package.0, &package.1, log)?;
    extract_deb(&deb, &x)?;
    fill(&x, &out)?;
    fs::write(out.join("complete"), format!("{complete_line}\n"))?;
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&out, &dir)?;
    remove_others_except(&parent, &dir);
    Ok(dir)
}

/// The kernel package unpacked into `kernel/<pkg>_<ver>/`: vmlinuz, config,
/// the needed modules (decompressed) and their load order.
fn ensure_kernel(cache_root: &Path, res: &Resolution, log: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    cached_package(cache_root, "kernel", res.kernel_dir(), &res.kernel, res.kernel_line(), log, |x, out| {
        fs::create_dir_all(out.join("modules"))?;
        let boot = x.join("boot");
        let find = |prefix: &str| -> Result<PathBuf> {
            fs::read_dir(&boot)
                .with_context(|| format!("{} has no /boot", res.kernel.0))?
                .flatten()
                .map(|e| e.path())
                .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(prefix)))
                .ok_or_else(|| anyhow!("{} has no /boot/{prefix}*", res.kernel.0))
        };
        let vmlinuz = find("vmlinuz-")?;
        let config = find("config-")?;
        let config_text = fs::read_to_string(&config)?;
        if config_text.lines().any(|l| l.trim() == "# CONFIG_KVM_HYPERV is not set") {
            bail!("{} is built without CONFIG_KVM_HYPERV: L1 could not emulate the Hyper-V crash MSRs", res.kernel.0);
        }
        let kver =
            vmlinuz.file_name().and_then(|n| n.to_str()).unwrap_or("").trim_start_matches("vmlinuz-").to_string();
        let moddir = [x.join("lib/modules").join(&kver), x.join("usr/lib/modules").join(&kver)]
            .into_iter()
            .find(|p| p.is_dir())
            .ok_or_else(|| anyhow!("{} has no lib/modules/{kver}", res.kernel.0))?;
        let index = module_index(&moddir)?;
        let mut order = Vec::new();
        for m in MODULES {
            module_order(&index, &normalize_module(m), &mut order, 0)?;
        }
        for m in &order {
            let data = read_module(&index[m])?;
            fs::write(out.join(format!("modules/{m}.ko")), data)?;
        }
        fs::copy(&vmlinuz, out.join("vmlinuz"))?;
        fs::copy(&config, out.join("config"))?;
        fs::write(out.join("load-order"), order.join("\n") + "\n")?;
        Ok(())
    })
}

/// Removes sibling cache generations (not temp dirs of concurrent builders:
/// those are under the lock anyway).
fn remove_others_except(parent: &Path, keep: &Path) {
    if let Some(name) = keep.file_name().and_then(|n| n.to_str()) {
        remove_others(parent, name);
    }
}

/// busybox-static unpacked into `busybox/<ver>/`: the binary and its applet list.
fn ensure_busybox(cache_root: &Path, res: &Resolution, log: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    cached_package(cache_root, "busybox", res.busybox_dir(), &res.busybox, res.busybox_line(), log, |x, out| {
        let bin = ["bin/busybox", "usr/bin/busybox"]
            .iter()
            .map(|p| x.join(p))
            .find(|p| p.is_file())
            .ok_or_else(|| anyhow!("{} has no bin/busybox", res.busybox.0))?;
        fs::copy(&bin, out.join("busybox"))?;
        fs::set_permissions(out.join("busybox"), fs::Permissions::from_mode(0o755))?;
        let list = run(Command::new(out.join("busybox")).arg("--list-full"))?;
        fs::write(out.join("applets"), &list.stdout)?;
        Ok(())
    })
}

// ───────────────────────────── kernel modules ─────────────────────────────

/// `kvm-amd` and `kvm_amd` are the same module.
fn normalize_module(name: &str) -> String {
    name.replace('-', "_")
}

/// Module name → file, for every `*.ko[.xz|.zst|.gz]` under `dir`.
fn module_index(dir: &Path) -> Result<BTreeMap<String, PathBuf>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d)?.flatten() {
            let p = e.path();
            if e.file_type()?.is_dir() {
                stack.push(p);
                continue;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            for ext in [".ko", ".ko.xz", ".ko.zst", ".ko.gz"] {
                if let Some(stem) = name.strip_suffix(ext) {
                    out.insert(normalize_module(stem), p.clone());
                }
            }
        }
    }
    Ok(out)
}

/// A module's bytes, decompressed (busybox insmod hands them to
/// init_module(2) as they are).
fn read_module(p: &Path) -> Result<Vec<u8>> {
    let name = p.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        Some("xz")
    } else if name.ends_with(".zst") {
        Some("zstd")
    } else if name.ends_with(".gz") {
        Some("gzip")
    } else {
        None
    };
    match tool {
        None => Ok(fs::read(p)?),
        Some(t) => Ok(run(Command::new(t).arg("-dc").arg(p)).with_context(|| format!("decompressing {name}"))?.stdout),
    }
}

/// The `depends=` of a module's `.modinfo`.
fn module_depends(data: &[u8]) -> Vec<String> {
    data.split(|&b| b == 0)
        .filter_map(|s| s.strip_prefix(b"depends="))
        .flat_map(|d| String::from_utf8_lossy(d).split(',').map(|x| normalize_module(x.trim())).collect::<Vec<_>>())
        .filter(|d| !d.is_empty())
        .collect()
}

/// Appends `name` after its dependencies (depth-first).
fn module_order(index: &BTreeMap<String, PathBuf>, name: &str, order: &mut Vec<String>, depth: u32) -> Result<()> {
    if order.iter().any(|m| m == name) {
        return Ok(());
    }
    if depth > 32 {
        bail!("module dependency loop at {name}");
    }
    let file = index.get(name).ok_or_else(|| anyhow!("the L1 kernel has no module {name}"))?;
    for dep in module_depends(&read_module(file)?) {
        module_order(index, &dep, order, depth + 1)?;
    }
    order.push(name.to_string());
    Ok(())
}

// ───────────────────────────── initramfs tree + cpio ─────────────────────────────

#[derive(Clone, Debug)]
enum Entry {
    Dir { mode: u32 },
    File { src: PathBuf, mode: u32, size: u64, stamp: String },
    Bytes { data: Vec<u8>, mode: u32 },
    Symlink { target: OsString },
    CharDev { mode: u32, major: u32, minor: u32 },
}

/// The initramfs as absolute paths → entries. Paths are canonical within
/// the tree: a symlinked directory (e.g. `/lib` → `usr/lib` on a merged-/usr
/// host) is stored as a symlink and everything below it at the target, the
/// way the host has it.
#[derive(Default)]
struct Tree {
    entries: BTreeMap<PathBuf, Entry>,
}

/// `base/rel` with `.` and `..` removed lexically (`base` is canonical).
fn join_normalized(base: &Path, rel: &Path) -> PathBuf {
    let mut out = if rel.is_absolute() { PathBuf::from("/") } else { base.to_path_buf() };
    for c in rel.components() {
        match c {
            Component::RootDir | Component::Prefix(_) | Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
        }
    }
    out
}

impl Tree {
    fn insert(&mut self, p: PathBuf, e: Entry) -> Result<()> {
        if let Some(old) = self.entries.get(&p) {
            match (old, &e) {
                (Entry::Dir { .. }, Entry::Dir { .. }) => return Ok(()),
                _ => bail!("initramfs: {} added twice", p.display()),
            }
        }
        self.entries.insert(p, e);
        Ok(())
    }

    /// Canonical form of directory `dir`, adding the directories and
    /// symlinks on the way (from the host if `host`).
    fn dir(&mut self, dir: &Path, host: bool, depth: u32) -> Result<PathBuf> {
        if depth > 40 {
            bail!("initramfs: too many symlinks at {}", dir.display());
        }
        let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
            return Ok(PathBuf::from("/"));
        };
        let parent = self.dir(parent, host, depth + 1)?;
        let cand = parent.join(name);
        match self.entries.get(&cand) {
            Some(Entry::Dir { .. }) => return Ok(cand),
            Some(Entry::Symlink { target }) => {
                let t = join_normalized(&parent, Path::new(target));
                return self.dir(&t, host, depth + 1);
            }
            Some(_) => bail!("initramfs: {} is not a directory", cand.display()),
            None => {}
        }
        if host {
            let m = fs::symlink_metadata(&cand).with_context(|| format!("stat {}", cand.display()))?;
            if m.file_type().is_symlink() {
                let target = fs::read_link(&cand)?;
                self.insert(cand, Entry::Symlink { target: target.clone().into() })?;
                return self.dir(&join_normalized(&parent, &target), host, depth + 1);
            }
            if !m.is_dir() {
                bail!("{} is not a directory", cand.display());
            }
        }
        self.insert(cand.clone(), Entry::Dir { mode: 0o755 })?;
        Ok(cand)
    }

    /// Canonical path of `p` (its directory resolved, not `p` itself).
    fn place(&mut self, p: &Path, host: bool) -> Result<PathBuf> {
        let parent = p.parent().ok_or_else(|| anyhow!("initramfs: bad path {}", p.display()))?;
        let name = p.file_name().ok_or_else(|| anyhow!("initramfs: bad path {}", p.display()))?;
        Ok(self.dir(parent, host, 0)?.join(name))
    }

    fn contains(&mut self, p: &Path) -> Result<bool> {
        let c = self.place(p, false)?;
        Ok(self.entries.contains_key(&c))
    }

    fn own_dir(&mut self, p: &Path) -> Result<()> {
        self.dir(p, false, 0).map(|_| ())
    }

    fn own_bytes(&mut self, p: &Path, data: Vec<u8>, mode: u32) -> Result<()> {
        let c = self.place(p, false)?;
        self.insert(c, Entry::Bytes { data, mode })
    }

    fn own_symlink(&mut self, p: &Path, target: &str) -> Result<()> {
        let c = self.place(p, false)?;
        self.insert(c, Entry::Symlink { target: target.into() })
    }

    fn own_file(&mut self, p: &Path, src: &Path, mode: u32) -> Result<()> {
        let m = fs::metadata(src).with_context(|| format!("stat {}", src.display()))?;
        let c = self.place(p, false)?;
        self.insert(c, Entry::File { src: src.to_path_buf(), mode, size: m.size(), stamp: stat_line(src)? })
    }

    /// Adds host file `p` at the same path, with the symlinks leading to it.
    fn add_host(&mut self, p: &Path) -> Result<()> {
        let mut p = p.to_path_buf();
        for _ in 0..40 {
            let c = self.place(&p, true)?;
            if let Some(e) = self.entries.get(&c) {
                match e {
                    Entry::Symlink { target } => {
                        p = join_normalized(c.parent().expect("absolute"), Path::new(target));
                        continue;
                    }
                    _ => return Ok(()),
                }
            }
            let m = fs::symlink_metadata(&c).with_context(|| format!("stat {}", c.display()))?;
            if m.file_type().is_symlink() {
                let target = fs::read_link(&c)?;
                self.insert(c.clone(), Entry::Symlink { target: target.clone().into() })?;
                p = join_normalized(c.parent().expect("absolute"), &target);
                continue;
            }
            if !m.is_file() {
                bail!("{} is not a regular file", c.display());
            }
            let stamp = stat_line(&c)?;
            let mode = m.permissions().mode() & 0o7777;
            return self.insert(c.clone(), Entry::File { src: c, mode, size: m.size(), stamp });
        }
        bail!("too many symlinks at {}", p.display())
    }

    /// One line per entry: what the cache key covers.
    fn fingerprint(&self) -> String {
        let mut s = String::new();
        for (p, e) in &self.entries {
            let line = match e {
                Entry::Dir { mode } => format!("dir {} {mode:o}", p.display()),
                Entry::File { mode, stamp, .. } => format!("file {} {mode:o} {stamp}", p.display()),
                Entry::Bytes { data, mode } => format!("bytes {} {mode:o} {:016x}", p.display(), fnv1a(data)),
                Entry::Symlink { target } => format!("symlink {} -> {}", p.display(), Path::new(target).display()),
                Entry::CharDev { mode, major, minor } => format!("chardev {} {mode:o} {major}:{minor}", p.display()),
            };
            s.push_str(&line);
            s.push('\n');
        }
        s
    }

    fn write_cpio(&self, out: &Path) -> Result<()> {
        let f = File::create(out).with_context(|| format!("creating {}", out.display()))?;
        let mut w = Cpio::new(BufWriter::with_capacity(1 << 20, f));
        for (p, e) in &self.entries {
            let name = p.strip_prefix("/").unwrap_or(p).as_os_str().as_bytes();
            match e {
                Entry::Dir { mode } => w.entry(name, 0o040000 | mode, 0, &[])?,
                Entry::Bytes { data, mode } => w.entry(name, 0o100000 | mode, 0, data)?,
                Entry::Symlink { target } => w.entry(name, 0o120777, 0, target.as_bytes())?,
                Entry::CharDev { mode, major, minor } => {
                    w.entry(name, 0o020000 | mode, (u64::from(*major) << 32) | u64::from(*minor), &[])?
                }
                Entry::File { src, mode, size, .. } => {
                    let mut data = Vec::with_capacity(*size as usize);
                    File::open(src)
                        .and_then(|mut f| f.read_to_end(&mut data))
                        .with_context(|| format!("reading {}", src.display()))?;
                    if data.len() as u64 != *size {
                        bail!("{} changed while building the initramfs", src.display());
                    }
                    w.entry(name, 0o100000 | mode, 0, &data)?;
                }
            }
        }
        w.finish()?.flush()?;
        Ok(())
    }
}

/// A newc ("070701") cpio writer, the format the kernel unpacks.
pub struct Cpio<W: Write> {
    w: W,
    ino: u32,
}

impl<W: Write> Cpio<W> {
    pub fn new(w: W) -> Cpio<W> {
        Cpio { w, ino: 1 }
    }

    /// One entry; `rdev` = major << 32 | minor (device nodes only). Names
    /// are relative (`usr/bin/x`); times and owners are 0.
    pub fn entry(&mut self, name: &[u8], mode: u32, rdev: u64, data: &[u8]) -> std::io::Result<()> {
        let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
        let fields = [
            self.ino,
            mode,
            0,
            0,
            nlink,
            0,
            data.len() as u32,
            0,
            0,
            (rdev >> 32) as u32,
            rdev as u32,
            name.len() as u32 + 1,
            0,
        ];
        self.ino += 1;
        let mut h = String::with_capacity(110);
        h.push_str("070701");
        for f in fields {
            h.push_str(&format!("{f:08X}"));
        }
        self.w.write_all(h.as_bytes())?;
        self.w.write_all(name)?;
        self.w.write_all(&[0])?;
        self.pad(110 + name.len() + 1)?;
        self.w.write_all(data)?;
        self.pad(data.len())
    }

    fn pad(&mut self, len: usize) -> std::io::Result<()> {
        let n = (4 - len % 4) % 4;
        self.w.write_all(&[0u8; 3][..n])
    }

    /// Writes the trailer and returns the writer.
    pub fn finish(mut self) -> std::io::Result<W> {
        self.entry(b"TRAILER!!!", 0, 0, &[])?;
        Ok(self.w)
    }
}

/// Names of the files L1 will find (for tests and diagnostics).
pub fn cpio_names(data: &[u8]) -> Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    let mut pos = 0usize;
    let field = |pos: usize, i: usize| -> Result<usize> {
        let s = data.get(pos + 6 + 8 * i..pos + 14 + 8 * i).ok_or_else(|| anyhow!("cpio: truncated"))?;
        Ok(usize::from_str_radix(std::str::from_utf8(s)?, 16)?)
    };
    loop {
        if data.get(pos..pos + 6) != Some(b"070701") {
            bail!("cpio: bad magic at {pos}");
        }
        let size = field(pos, 6)?;
        let namesize = field(pos, 11)?;
        let name = data.get(pos + 110..pos + 110 + namesize - 1).ok_or_else(|| anyhow!("cpio: truncated"))?;
        let name = String::from_utf8_lossy(name).into_owned();
        pos += (110 + namesize).div_ceil(4) * 4;
        pos += size.div_ceil(4) * 4;
        if name == "TRAILER!!!" {
            return Ok(out);
        }
        out.insert(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sh_quoting_roundtrips_through_sh() {
        let args: Vec<OsString> = ["plain", "with space", "it's", "a,b,,c", "$HOME `x` \"q\"", "new\nline", ""]
            .iter()
            .map(OsString::from)
            .chain([OsString::from_vec(vec![0xff, b'\'', 0x80])])
            .collect();
        let mut script = b"l2_file() { :; }\n".to_vec();
        script.extend(args_script(&args, &["kernel"]));
        script.extend_from_slice(b"for a in \"$@\"; do printf '%s\\0' \"$a\"; done\n");
        let out = Command::new("sh").arg("-c").arg(OsStr::from_bytes(&script)).output().expect("sh");
        assert!(out.status.success());
        let got: Vec<OsString> = out.stdout.split(|&b| b == 0).map(|s| OsString::from_vec(s.to_vec())).collect();
        let mut want = args.clone();
        want.push(OsString::new()); // after the last NUL
        assert_eq!(got, want);
    }

    fn env() -> L1Env {
        L1Env {
            qemu: "/usr/bin/qemu-system-x86_64".into(),
            kernel: "/c/kernel/vmlinuz".into(),
            initramfs: "/c/l1/k/initramfs.cpio".into(),
            key: "0".into(),
            kernel_package: String::new(),
            busybox_package: String::new(),
            firmware: vec!["/usr/share/qemu/qboot.rom".into(), "/usr/share/seabios/bios-256k.bin".into()],
            qboot: "/usr/share/qemu/qboot.rom".into(),
            cache_hit: true,
        }
    }

    #[test]
    fn command_escapes_and_validates() {
        let mut r =
            NestedRun::new(Path::new("/a,b/agent"), Path::new("/t/q.sock"), Path::new("/r/ser"), Path::new("/r/con"));
        r.l2_args = vec!["-fw_cfg".into(), "name=opt/pvagent/script,string=x,,y".into()];
        let a = command(&env(), &r).unwrap();
        let s: Vec<String> = a.iter().map(|x| x.to_string_lossy().into_owned()).collect();
        assert!(s.contains(&"name=opt/pvagent/l2/file/kernel,file=/a,,b/agent".to_string()));
        assert!(s.contains(&"socket,id=l2qmp,path=/t/q.sock,server=off".to_string()));
        let args = s.iter().find(|x| x.starts_with("name=opt/pvagent/l2/args,string=")).unwrap();
        // The script's own commas are doubled again for -fw_cfg.
        assert!(args.contains("'name=opt/pvagent/script,,string=x,,,,y'"));
        assert!(args.contains("'-kernel' \\\n    '/run/l2/kernel'"));
        r.files.push(("bad/name".into(), "/x".into()));
        assert!(command(&env(), &r).is_err());
        r.files.clear();
        r.l2_bios = Some("/nonexistent.rom".into());
        assert!(command(&env(), &r).is_err());
        r.l2_bios = Some("/usr/share/seabios/bios-256k.bin".into());
        assert!(command(&env(), &r).is_ok());
    }

    #[test]
    fn console_parsing() {
        let text = b"[    0.000000] Linux version 6.1\r\npvagent-l1: init [1.88]\r\npvagent-l1: L2 start [2.27]\r\n\
            qemu-system-x86_64: warning: x\r\n[    5.1] kvm: something\r\npvagent-l1: L2 exit 33 [3.29]\r\n";
        let r = parse_console(text);
        assert!(r.init_reached && r.l2_started);
        assert_eq!(r.l2_exit, Some(33));
        assert_eq!(r.l2_output, "qemu-system-x86_64: warning: x\n");
        assert_eq!(r.l1_error, None);
        assert_eq!(r.l1_times[1], ("L2 start".to_string(), 2.27));
        let r = parse_console(b"pvagent-l1: init\npvagent-l1: error: insmod kvm failed []\n");
        assert_eq!(r.l1_error.as_deref(), Some("insmod kvm failed"));
        assert!(!r.l2_started);
    }

    #[test]
    fn ldd_parsing() {
        let t = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x1)\n\
                 \t/lib64/ld-linux-x86-64.so.2 (0x2)\n";
        assert_eq!(
            parse_ldd(t).unwrap(),
            vec![PathBuf::from("/lib/x86_64-linux-gnu/libz.so.1"), PathBuf::from("/lib64/ld-linux-x86-64.so.2")]
        );
        assert!(parse_ldd("\tlibfoo.so => not found\n").is_err());
    }

    #[test]
    fn apt_parsing() {
        let s = parse_stanzas(
            "Package: linux-image-cloud-amd64\nVersion: 6.1.192-2\nDepends: linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)\n\n",
        );
        assert_eq!(kernel_dependency(&s[0]).as_deref(), Some("linux-image-6.1.0-56-cloud-amd64"));
        let r = Resolution {
            stamp: "ab".into(),
            kernel: ("linux-image-x".into(), "6.1-2".into()),
            busybox: ("busybox-static".into(), "1:1.35".into()),
        };
        assert_eq!(Resolution::parse(&r.render()), Some(r.clone()));
        assert_eq!(r.busybox_dir(), "1%3a1.35");
    }

    #[test]
    fn kvm_msr_list_when_kvm_is_usable() {
        // Runs wherever /dev/kvm opens; every KVM saves IA32_SYSENTER_CS (0x174).
        let Ok(f) = fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") else {
            return;
        };
        let msrs = kvm_msr_index_list(f.as_raw_fd()).unwrap();
        assert!(msrs.contains(&0x174), "{msrs:x?}");
    }

    #[test]
    fn module_depends_parsing() {
        let modinfo = b"\0license=GPL\0depends=kvm,irq-bypass\0name=kvm_amd\0";
        assert_eq!(module_depends(modinfo), vec!["kvm".to_string(), "irq_bypass".to_string()]);
        assert!(module_depends(b"\0depends=\0").is_empty());
    }

    #[test]
    fn cpio_layout_and_symlinked_dirs() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        fs::create_dir_all(root.join("usr/lib")).unwrap();
        std::os::unix::fs::symlink("usr/lib", root.join("lib")).unwrap();
        fs::write(root.join("usr/lib/libx.so.1.2"), b"abcde").unwrap();
        std::os::unix::fs::symlink("libx.so.1.2", root.join("usr/lib/libx.so.1")).unwrap();
        let mut t = Tree::default();
        t.add_host(&root.join("lib/libx.so.1")).unwrap();
        t.own_bytes(Path::new("/init"), b"#!/bin/sh\n".to_vec(), 0o755).unwrap();
        let out = root.join("out.cpio");
        t.write_cpio(&out).unwrap();
        let data = fs::read(&out).unwrap();
        assert_eq!(data.len() % 4, 0);
        let names = cpio_names(&data).unwrap();
        let rel = |p: &str| root.join(p).strip_prefix("/").unwrap().to_string_lossy().into_owned();
        assert!(names.contains(&rel("lib")));
        assert!(names.contains(&rel("usr/lib/libx.so.1")));
        assert!(names.contains(&rel("usr/lib/libx.so.1.2")));
        assert!(names.contains("init"));
        assert!(!names.contains(&rel("lib/libx.so.1")));
        // Parents come before children.
        let keys: Vec<_> = t.entries.keys().collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
    }
}
