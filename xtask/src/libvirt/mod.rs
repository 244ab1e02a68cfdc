//! libvirt as a client of QEMU: the boards of `kind = "libvirt"` boot the
//! agent in a transient libvirt domain instead of a QEMU command line of
//! ours. This module is libvirt's side of it, driven through `virsh` (the
//! client every libvirt install has; the harness links no libvirt library):
//!
//! * [`daemons`]: virtlogd and libvirtd, started by the harness when none
//!   answers, stopped at its end;
//! * [`xml`]: the domain XML (the one generator of the matrix and of
//!   `cargo xtask libvirt-xml`);
//! * [`events`]: what `virsh event`, `virsh qemu-monitor-event` and `virsh
//!   domstate --reason` print, as data;
//! * [`bridge`]: one run's domain: the two event watchers, the QMP layer
//!   handed to the runner, libvirt's own events and the final state.
//!
//! The launcher (`launch/libvirt.rs`) puts these together for the runner.
//! Every domain of the harness is named `pvagent-<pid>-<n>-…` and carries
//! [`MARKER`] as its description; it is destroyed at the end of its run, on
//! Ctrl-C/SIGTERM/SIGHUP (the stop hook of [`crate::qemu`]), and, should the
//! harness have been killed outright, by the next harness that starts
//! libvirt ([`daemons::ensure`]).

pub mod bridge;
pub mod daemons;
pub mod events;
pub mod xml;

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

pub use xml::Commas;

/// The libvirt connection the harness uses (as root, `qemu:///session` is
/// the same system daemon).
pub const URI: &str = "qemu:///system";

/// The description of every domain the harness creates: how a later harness
/// tells a leftover domain of its own from a user's.
pub const MARKER: &str = "pvagent test domain, made and destroyed by cargo xtask";

/// How long one ordinary `virsh` command may take.
pub const VIRSH_TIMEOUT: Duration = Duration::from_secs(30);

/// Where libvirt writes core dumps (`auto_dump_path` in qemu.conf).
const QEMU_CONF: &str = "/etc/libvirt/qemu.conf";
const DEFAULT_DUMP_PATH: &str = "/var/lib/libvirt/qemu/dump";
/// Where libvirt's QEMU driver keeps each domain's log.
pub const DOMAIN_LOG_DIR: &str = "/var/log/libvirt/qemu";
/// Where it keeps the running domains' state (`<name>.pid`: QEMU's pid).
pub const RUN_DIR: &str = "/run/libvirt/qemu";

/// A `virsh -c URI …` command (`LC_ALL=C`: virsh's words are parsed).
pub fn virsh_command(args: &[&str]) -> Command {
    let mut c = Command::new("virsh");
    c.arg("-c").arg(URI).args(args).env("LC_ALL", "C").stdin(Stdio::null());
    c
}

/// Runs `virsh -c URI args…` and returns its stdout, or an error with its
/// stderr; killed after `timeout`.
pub fn virsh(args: &[&str], timeout: Duration) -> Result<String> {
    let shown = format!("virsh {}", args.join(" "));
    let mut child = virsh_command(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting `{shown}` (is libvirt-clients installed?)"))?;
    let (mut out, mut err) = (child.stdout.take().expect("piped"), child.stderr.take().expect("piped"));
    let reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("`{shown}` did not finish within {} s (killed)", timeout.as_secs());
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stdout = String::from_utf8_lossy(&reader.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&err_reader.join().unwrap_or_default()).trim().to_string();
    if !status.success() {
        let why = if stderr.is_empty() { format!("{status}") } else { stderr.replace('\n', " | ") };
        bail!("`{shown}` failed: {why}");
    }
    Ok(stdout)
}

/// Does a virsh error say the domain does not exist (any more)?
pub fn is_no_domain(e: &anyhow::Error) -> bool {
    let s = format!("{e:#}");
    s.contains("failed to get domain") || s.contains("Domain not found") || s.contains("domain is not running")
}

// ───────────────────────────── our domains ─────────────────────────────

static DOMAINS: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
static NEXT: AtomicU64 = AtomicU64::new(1);

/// A fresh name for a domain of this harness: `pvagent-<pid>-<n>-<what>`
/// (`what` cut to letters, digits, `-`, `_`, `.`; at most 100 bytes).
pub fn domain_name(what: &str) -> String {
    let what: String =
        what.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).take(72).collect();
    format!("pvagent-{}-{}-{what}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The pid a domain name of ours carries (`pvagent-<pid>-…`).
pub fn pid_of_name(name: &str) -> Option<i32> {
    name.strip_prefix("pvagent-")?.split('-').next()?.parse().ok()
}

/// Remembers a live domain of ours (destroyed by [`destroy_all`] on a stop
/// signal); the stop hook is installed on the first call.
pub fn register(name: &str) {
    install_stop_hook();
    DOMAINS.lock().unwrap_or_else(|e| e.into_inner()).insert(name.to_string());
}

/// Makes a stop signal destroy our domains and stop the daemons we started
/// (once per process: on the first domain, or the first daemon started).
pub(crate) fn install_stop_hook() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| crate::qemu::on_stop(stop_hook));
}

/// Forgets a domain that is gone.
pub fn unregister(name: &str) {
    DOMAINS.lock().unwrap_or_else(|e| e.into_inner()).remove(name);
}

/// Destroys a domain (transient: it is gone then). A domain that does not
/// exist is fine.
pub fn destroy(name: &str) -> Result<()> {
    match virsh(&["destroy", name], VIRSH_TIMEOUT) {
        Ok(_) => Ok(()),
        Err(e) if is_no_domain(&e) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Destroys every registered domain at once (each `virsh destroy` takes
/// about 1.5 s: libvirt waits for QEMU to exit after its SIGTERM), and
/// removes libvirt's logs of them.
pub fn destroy_all() {
    let names: Vec<String> =
        std::mem::take(&mut *DOMAINS.lock().unwrap_or_else(|e| e.into_inner())).into_iter().collect();
    let threads: Vec<_> = names
        .into_iter()
        .map(|n| {
            std::thread::spawn(move || {
                if destroy(&n).is_ok() {
                    let _ = std::fs::remove_file(Path::new(DOMAIN_LOG_DIR).join(format!("{n}.log")));
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

/// Removes what a harness that no longer runs (pid `pid`) left of its
/// domains in libvirt's directories: their logs (`pvagent-<pid>-<n>-….log`)
/// and core files (`<id>-pvagent-<pid>-…`). Returns how many.
pub fn remove_files_of(pid: i32) -> usize {
    remove_files_in(&PathBuf::from(DOMAIN_LOG_DIR), &dump_dir(), pid)
}

/// [`remove_files_of`] with the log and dump directories given.
fn remove_files_in(logs: &Path, dumps: &Path, pid: i32) -> usize {
    let prefix = format!("pvagent-{pid}-");
    let mut removed = 0;
    for (dir, strip_id) in [(logs, false), (dumps, true)] {
        let Ok(rd) = std::fs::read_dir(dir) else { continue };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let rest = if strip_id {
                match name.split_once('-') {
                    Some((id, rest)) if id.chars().all(|c| c.is_ascii_digit()) => rest.to_string(),
                    _ => continue,
                }
            } else {
                name
            };
            let ours = rest
                .strip_prefix(&prefix)
                .and_then(|r| r.split('-').next())
                .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
            if ours && std::fs::remove_file(e.path()).is_ok() {
                removed += 1;
            }
        }
    }
    removed
}

/// On a stop signal: our domains, then the daemons we started.
fn stop_hook() {
    destroy_all();
    daemons::stop();
}

// ───────────────────────────── what libvirt does ─────────────────────────────

static COMMAS: Mutex<Option<Result<Commas, String>>> = Mutex::new(None);

/// How the installed libvirt writes a fw_cfg string entry into QEMU's
/// command line, found once per process by asking it (`virsh
/// domxml-to-native qemu-argv` of a domain whose entry holds `a,b`): as it
/// is (`string=a,b`: the XML must double commas) or escaped
/// (`string=a,,b`). Needs libvirt answering.
pub fn fw_cfg_commas() -> Result<Commas, String> {
    let mut m = COMMAS.lock().unwrap_or_else(|e| e.into_inner());
    m.get_or_insert_with(|| probe_commas().map_err(|e| format!("{e:#}"))).clone()
}

fn probe_commas() -> Result<Commas> {
    let dir = tempfile::tempdir()?;
    let probe = xml::Domain {
        name: "pvagent-probe-commas".into(),
        description: None,
        arch: crate::arch::Arch::X86_64,
        domain_type: "qemu",
        machine: "pc".into(),
        memory: "16M".into(),
        emulator: None,
        boot: xml::Boot::Kernel(dir.path().join("kernel")),
        script: Some(xml::ScriptIn::FwCfg("pvagent-comma-probe:a,b".into(), Commas::AsIs)),
        settings: xml::Settings::default(),
        console_log: dir.path().join("console.log"),
        qemu_args: Vec::new(),
    };
    let file = dir.path().join("probe.xml");
    std::fs::write(&file, probe.xml())?;
    let argv = virsh(&["domxml-to-native", "qemu-argv", &file.to_string_lossy()], VIRSH_TIMEOUT)
        .context("asking libvirt how it writes a fw_cfg entry")?;
    commas_from_argv(&argv)
}

/// [`Commas`] from the QEMU command line libvirt made of the probe.
pub fn commas_from_argv(argv: &str) -> Result<Commas> {
    if argv.contains("string=pvagent-comma-probe:a,,b") {
        Ok(Commas::AsIs)
    } else if argv.contains("string=pvagent-comma-probe:a,b") {
        Ok(Commas::Double)
    } else {
        Err(anyhow!(
            "libvirt's command line for a fw_cfg entry `pvagent-comma-probe:a,b` holds neither `string=…a,b` nor \
             `string=…a,,b`: {}",
            crate::util::excerpt(argv, 3, 300)
        ))
    }
}

/// `virsh version` → `(libvirt, QEMU)` versions as libvirt reports them
/// (`11.3.0`, `10.0.2`), once per process.
pub fn versions() -> Result<(String, String), String> {
    static V: Mutex<Option<Result<(String, String), String>>> = Mutex::new(None);
    let mut v = V.lock().unwrap_or_else(|e| e.into_inner());
    v.get_or_insert_with(|| {
        let out = virsh(&["version"], VIRSH_TIMEOUT).map_err(|e| format!("{e:#}"))?;
        Ok(parse_version(&out))
    })
    .clone()
}

/// The libvirt and hypervisor versions of `virsh version`'s output
/// (`Using library: libvirt 11.3.0`, `Running hypervisor: QEMU 10.0.2`).
pub fn parse_version(out: &str) -> (String, String) {
    let after = |prefix: &str| {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|r| r.split_whitespace().last())
            .unwrap_or("?")
            .to_string()
    };
    let daemon = after("Running against daemon:");
    let lib = if daemon != "?" { daemon } else { after("Using library: libvirt") };
    (lib, after("Running hypervisor: QEMU"))
}

/// The directory libvirt writes core dumps to: `auto_dump_path` of
/// qemu.conf, else libvirt's default.
pub fn dump_dir() -> PathBuf {
    let conf = std::fs::read_to_string(QEMU_CONF).unwrap_or_default();
    PathBuf::from(auto_dump_path(&conf).unwrap_or_else(|| DEFAULT_DUMP_PATH.to_string()))
}

/// `auto_dump_path = "…"` of a qemu.conf (comments skipped).
pub fn auto_dump_path(conf: &str) -> Option<String> {
    conf.lines().map(str::trim).filter(|l| !l.starts_with('#')).find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == "auto_dump_path").then(|| v.trim().trim_matches('"').to_string())
    })
}

/// The files libvirt names for a domain's dumps: `<id>-<name, cut to 20
/// characters>-<time>` (`virDomainDefGetShortName`).
pub fn dump_prefix(id: u32, name: &str) -> String {
    format!("{id}-{}-", name.chars().take(20).collect::<String>())
}

/// Whether `path` starts like an ELF core file (`e_type` ET_CORE).
pub fn is_elf_core(path: &Path) -> bool {
    let mut head = [0u8; 18];
    let Ok(mut f) = std::fs::File::open(path) else { return false };
    if f.read_exact(&mut head).is_err() || &head[..4] != b"\x7fELF" {
        return false;
    }
    let e_type =
        if head[5] == 2 { u16::from_be_bytes([head[16], head[17]]) } else { u16::from_le_bytes([head[16], head[17]]) };
    e_type == 4
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_pids() {
        let n = domain_name("libvirt-q35::panicked/x y");
        assert!(n.starts_with(&format!("pvagent-{}-", std::process::id())), "{n}");
        assert!(n.ends_with("-libvirt-q35__panicked_x_y"), "{n}");
        assert_eq!(pid_of_name(&n), Some(std::process::id() as i32));
        assert_eq!(pid_of_name("pvagent-probe-commas"), None);
        assert_eq!(pid_of_name("web1"), None);
        assert!(domain_name(&"x".repeat(300)).len() <= 100);
    }

    #[test]
    fn what_virsh_says() {
        let argv = "LC_ALL=C /usr/bin/qemu-system-x86_64 -name guest=p -fw_cfg 'name=opt/pvagent/script,string=pvagent-comma-probe:a,b' -nodefaults";
        assert_eq!(commas_from_argv(argv).unwrap(), Commas::Double);
        assert_eq!(commas_from_argv(&argv.replace("a,b", "a,,b")).unwrap(), Commas::AsIs);
        assert!(commas_from_argv("-fw_cfg name=x").is_err());
        let v = "Compiled against library: libvirt 11.3.0\nUsing library: libvirt 11.3.0\nUsing API: QEMU 11.3.0\n\
                 Running hypervisor: QEMU 10.0.2\nRunning against daemon: 11.3.0\n";
        assert_eq!(parse_version(v), ("11.3.0".into(), "10.0.2".into()));
        assert_eq!(
            auto_dump_path("#auto_dump_path = \"/x\"\nauto_dump_path = \"/srv/dumps\"\n").as_deref(),
            Some("/srv/dumps")
        );
        assert_eq!(auto_dump_path("#auto_dump_path = \"/var/lib/libvirt/qemu/dump\"\n"), None);
        assert_eq!(dump_prefix(8, "pvagent-123-4-libvirt-q35__x"), "8-pvagent-123-4-libvir-");
    }

    #[test]
    fn files_of_a_dead_harness() {
        let (logs, dumps) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        for f in ["pvagent-42-1-libvirt-q35-x.log", "pvagent-42-x.log", "pvagent-421-1-y.log", "web.log"] {
            std::fs::write(logs.path().join(f), "").unwrap();
        }
        for f in ["8-pvagent-42-3-libvir-2026-11-30-04:44:20", "9-pvagent-43-1-libvir-2026", "x-pvagent-42-1-a"] {
            std::fs::write(dumps.path().join(f), "").unwrap();
        }
        assert_eq!(remove_files_in(logs.path(), dumps.path(), 42), 2);
        let left = |d: &Path| {
            let mut v: Vec<String> =
                std::fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
            v.sort();
            v
        };
        assert_eq!(left(logs.path()), ["pvagent-42-x.log", "pvagent-421-1-y.log", "web.log"]);
        assert_eq!(left(dumps.path()), ["9-pvagent-43-1-libvir-2026", "x-pvagent-42-1-a"]);
    }

    #[test]
    fn elf_cores() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("core");
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        h[5] = 1;
        h[16] = 4;
        std::fs::write(&f, &h).unwrap();
        assert!(is_elf_core(&f));
        h[16] = 2;
        std::fs::write(&f, &h).unwrap();
        assert!(!is_elf_core(&f));
        h[5] = 2;
        h[16] = 0;
        h[17] = 4;
        std::fs::write(&f, &h).unwrap();
        assert!(is_elf_core(&f));
        assert!(!is_elf_core(&d.path().join("none")));
    }
}
