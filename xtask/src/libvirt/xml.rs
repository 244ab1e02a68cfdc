//! The one domain XML of every libvirt boot this tool makes: the matrix's
//! libvirt rows, the ad-hoc boot on a libvirt board and `cargo xtask
//! libvirt-xml` all write theirs here, so the XML the README shows is the
//! XML the matrix tests.
//!
//! What it holds, and why:
//!
//! * `<domain type='qemu'>` (TCG) or `'kvm'`, the board's machine, memory and
//!   emulator;
//! * the agent as `<kernel>` (x86_64: the PVH ELF behind SeaBIOS; s390x: the
//!   ELF) or as `<loader type='rom'>` (x86_64: the agent's ROM as the
//!   firmware);
//! * the script in `<sysinfo type='fwcfg'>` (fw_cfg `opt/pvagent/script`),
//!   with its commas doubled when the installed libvirt copies the entry
//!   into `-fw_cfg …,string=` without escaping them (libvirt 11.3.0 does;
//!   [`Commas`], checked by [`super::fw_cfg_commas`]), or as a file
//!   (`<entry … file=…/>`, any bytes), or on the kernel command line
//!   (`<cmdline>`, s390x);
//! * `<features><acpi/>` on x86_64: the agent answers the ACPI power button
//!   (`virsh shutdown --mode acpi`, watchdog action `shutdown`);
//! * the lifecycle actions (`on_crash`, …) and the devices the row names,
//!   where libvirt places them by default (the agent numbers bridges as
//!   firmware, SeaBIOS does behind `<kernel>`);
//! * the agent's console on a pty with a `<log file=…>`: `virsh console`
//!   shows it live, the file keeps all of it (the harness reads the file);
//! * `<seclabel type='static' model='dac' relabel='no'>` with label `+0:+0`:
//!   QEMU of this domain runs as root and libvirt changes no file's owner.
//!   Without it libvirt runs QEMU as `libvirt-qemu` and chowns the kernel,
//!   ROM and log files while the domain runs, so each would have to be
//!   reachable by that user through every parent directory; the harness's
//!   run directories (and a checkout under a home directory) are not, and
//!   changing their modes, or qemu.conf, would touch what is not the
//!   harness's.

use std::fmt::Write as _;
use std::path::PathBuf;

use crate::agent::SCRIPT_FW_CFG_NAME;
use crate::arch::Arch;

/// A device a domain can get, by its QEMU name (what a row's
/// `libvirt.devices` and `--device` list).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    /// `<panic model='isa'/>`: QEMU's `pvpanic` at port 0x505.
    Pvpanic,
    /// `<panic model='pvpanic'/>`: QEMU's `pvpanic-pci`.
    PvpanicPci,
    /// `<watchdog model='i6300esb'/>` (PCI).
    I6300esb,
    /// `<watchdog model='ib700'/>` (ISA; libvirt refuses it on q35).
    Ib700,
    /// `<watchdog model='diag288'/>` (s390x).
    Diag288,
}

impl Device {
    pub const ALL: [Device; 5] =
        [Device::Pvpanic, Device::PvpanicPci, Device::I6300esb, Device::Ib700, Device::Diag288];

    pub fn name(self) -> &'static str {
        match self {
            Device::Pvpanic => "pvpanic",
            Device::PvpanicPci => "pvpanic-pci",
            Device::I6300esb => "i6300esb",
            Device::Ib700 => "ib700",
            Device::Diag288 => "diag288",
        }
    }

    pub fn parse(name: &str) -> Result<Device, String> {
        Device::ALL.into_iter().find(|d| d.name() == name).ok_or_else(|| {
            format!(
                "unknown device `{name}` (a libvirt domain here can get {})",
                Device::ALL.map(Device::name).join(", ")
            )
        })
    }

    pub fn is_watchdog(self) -> bool {
        matches!(self, Device::I6300esb | Device::Ib700 | Device::Diag288)
    }

    /// Why a domain of `arch` on `machine` cannot have this device (`None`:
    /// it can).
    pub fn problem_on(self, arch: Arch, machine: &str) -> Option<String> {
        let machine_type = machine.split(',').next().unwrap_or_default();
        let q35 = machine_type == "q35" || machine_type.starts_with("pc-q35");
        match (self, arch) {
            (Device::Diag288, Arch::S390x) => None,
            (Device::Diag288, _) => Some("diag288 is s390x's watchdog".into()),
            (_, Arch::X86_64) if self == Device::Ib700 && q35 => Some(
                "libvirt refuses ib700 on q35 (an ISA watchdog on a PCIe machine): use an i440FX (`pc`) board".into(),
            ),
            (_, Arch::X86_64) => None,
            (_, a) => Some(format!("{} is not a device of libvirt's {a} domains here", self.name())),
        }
    }
}

/// Watchdog actions of `<watchdog action=…>`.
pub const WATCHDOG_ACTIONS: &[&str] = &["reset", "shutdown", "poweroff", "pause", "none", "dump", "inject-nmi"];
/// `<on_crash>` values.
pub const ON_CRASH: &[&str] =
    &["destroy", "restart", "preserve", "rename-restart", "coredump-destroy", "coredump-restart"];
/// `<on_poweroff>` and `<on_reboot>` values.
pub const ON_POWEROFF_REBOOT: &[&str] = &["destroy", "restart", "preserve", "rename-restart"];

/// What a row (or `--device`, `--watchdog-action`, `--on-crash`) asks of
/// the domain.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    pub devices: Vec<Device>,
    /// The watchdogs' action (`None`: libvirt's default, reset).
    pub watchdog_action: Option<String>,
    pub on_crash: Option<String>,
    pub on_poweroff: Option<String>,
    pub on_reboot: Option<String>,
}

impl Settings {
    /// Why these settings cannot be a domain of `arch` on `machine`
    /// (`None`: they can).
    pub fn problem(&self, arch: Arch, machine: &str) -> Option<String> {
        for (i, d) in self.devices.iter().enumerate() {
            if let Some(p) = d.problem_on(arch, machine) {
                return Some(p);
            }
            if self.devices[..i].contains(d) {
                return Some(format!("{} is listed twice", d.name()));
            }
        }
        self.actions_problem()
    }

    /// Why the actions are not libvirt's, or a watchdog action has no
    /// watchdog (`None`: fine), whatever the machine.
    pub fn actions_problem(&self) -> Option<String> {
        let bad = |v: &Option<String>, list: &[&str], what: &str| {
            v.as_ref()
                .filter(|v| !list.contains(&v.as_str()))
                .map(|v| format!("{what} `{v}` is not libvirt's (use {})", list.join(", ")))
        };
        if let Some(p) = bad(&self.watchdog_action, WATCHDOG_ACTIONS, "watchdog action")
            .or_else(|| bad(&self.on_crash, ON_CRASH, "on_crash"))
            .or_else(|| bad(&self.on_poweroff, ON_POWEROFF_REBOOT, "on_poweroff"))
            .or_else(|| bad(&self.on_reboot, ON_POWEROFF_REBOOT, "on_reboot"))
        {
            return Some(p);
        }
        if self.watchdog_action.is_some() && !self.devices.iter().any(|d| d.is_watchdog()) {
            return Some("a watchdog action needs a watchdog device (i6300esb, ib700 or diag288)".into());
        }
        None
    }
}

/// How the installed libvirt copies a fw_cfg `<entry>` into QEMU's
/// `-fw_cfg name=…,string=<value>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Commas {
    /// libvirt copies the value as it is (11.3.0 does): a `,` in it would
    /// end the option, so the XML carries it doubled (`,,`).
    Double,
    /// libvirt escapes the value itself: the XML carries the script as it is.
    AsIs,
}

/// How the agent boots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Boot {
    /// `<kernel>`: the agent's ELF.
    Kernel(PathBuf),
    /// `<loader type='rom'>`: the agent's ROM as the firmware (x86_64).
    Rom(PathBuf),
}

/// How the script reaches the agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScriptIn {
    /// `<sysinfo type='fwcfg'><entry name='opt/pvagent/script'>TEXT</entry>`.
    FwCfg(String, Commas),
    /// `<entry name='opt/pvagent/script' file='PATH'/>`: the file's bytes.
    FwCfgFile(PathBuf),
    /// `<cmdline>TEXT</cmdline>` (the kernel command line; s390x's only way).
    Cmdline(String),
}

/// One domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Domain {
    pub name: String,
    /// `<description>` (the harness marks its domains with it).
    pub description: Option<String>,
    pub arch: Arch,
    /// `qemu` (TCG) or `kvm`.
    pub domain_type: &'static str,
    pub machine: String,
    /// QEMU's `-m` syntax (`128M`).
    pub memory: String,
    /// `<emulator>` (`None`: libvirt's default for the architecture).
    pub emulator: Option<PathBuf>,
    pub boot: Boot,
    pub script: Option<ScriptIn>,
    pub settings: Settings,
    /// The console's `<log file=…>`.
    pub console_log: PathBuf,
    /// QEMU arguments libvirt has no element for, in libvirt's QEMU
    /// namespace (`<qemu:commandline>`): a run in virtual time's `-icount
    /// shift=0,sleep=off` and the board's `virtual_args`. libvirt passes
    /// them on after its own and marks the domain tainted (`custom-argv`,
    /// a line in the domain's log); nothing else changes.
    pub qemu_args: Vec<String>,
}

/// `<memory>` from QEMU's `-m` syntax: the number and libvirt's unit.
fn memory(m: &str) -> (String, &'static str) {
    let (num, unit) = match m.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&m[..i], c.to_ascii_uppercase()),
        _ => (m, 'M'),
    };
    let unit = match unit {
        'K' => "KiB",
        'G' => "GiB",
        'T' => "TiB",
        _ => "MiB",
    };
    (num.to_string(), unit)
}

/// XML text and attribute escaping.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

/// Why `text` cannot be carried in XML (`None`: it can): XML 1.0 has no
/// NUL and no other control character but tab, newline and carriage return.
pub fn text_problem(text: &str) -> Option<String> {
    text.chars().find(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r')).map(|c| {
        format!(
            "the script holds the control character {:?}, which XML cannot carry (deliver it as a file: \
             script_via = \"fw_cfg_file\")",
            c
        )
    })
}

impl Domain {
    /// The domain XML.
    pub fn xml(&self) -> String {
        let mut x = String::new();
        let p = |p: &PathBuf| escape(&p.to_string_lossy());
        let ns =
            if self.qemu_args.is_empty() { "" } else { " xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'" };
        let _ = writeln!(x, "<domain type='{}'{ns}>", self.domain_type);
        let _ = writeln!(x, "  <name>{}</name>", escape(&self.name));
        if let Some(d) = &self.description {
            let _ = writeln!(x, "  <description>{}</description>", escape(d));
        }
        let (mem, unit) = memory(&self.memory);
        let _ = writeln!(x, "  <memory unit='{unit}'>{mem}</memory>");
        x.push_str("  <os>\n");
        let _ = writeln!(x, "    <type arch='{}' machine='{}'>hvm</type>", self.arch, escape(&self.machine));
        match &self.boot {
            Boot::Kernel(k) => {
                let _ = writeln!(x, "    <kernel>{}</kernel>", p(k));
            }
            Boot::Rom(r) => {
                let _ = writeln!(x, "    <loader type='rom'>{}</loader>", p(r));
            }
        }
        if let Some(ScriptIn::Cmdline(s)) = &self.script {
            let _ = writeln!(x, "    <cmdline>{}</cmdline>", escape(s));
        }
        x.push_str("  </os>\n");
        match &self.script {
            Some(ScriptIn::FwCfg(s, commas)) => {
                let value = match commas {
                    Commas::Double => s.replace(',', ",,"),
                    Commas::AsIs => s.clone(),
                };
                let _ = writeln!(
                    x,
                    "  <sysinfo type='fwcfg'>\n    <entry name='{SCRIPT_FW_CFG_NAME}'>{}</entry>\n  </sysinfo>",
                    escape(&value)
                );
            }
            Some(ScriptIn::FwCfgFile(f)) => {
                let _ = writeln!(
                    x,
                    "  <sysinfo type='fwcfg'>\n    <entry name='{SCRIPT_FW_CFG_NAME}' file='{}'/>\n  </sysinfo>",
                    p(f)
                );
            }
            _ => {}
        }
        if self.arch == Arch::X86_64 {
            x.push_str("  <features>\n    <acpi/>\n  </features>\n");
        }
        for (tag, v) in [
            ("on_poweroff", &self.settings.on_poweroff),
            ("on_reboot", &self.settings.on_reboot),
            ("on_crash", &self.settings.on_crash),
        ] {
            if let Some(v) = v {
                let _ = writeln!(x, "  <{tag}>{v}</{tag}>");
            }
        }
        x.push_str("  <seclabel type='static' model='dac' relabel='no'>\n    <label>+0:+0</label>\n  </seclabel>\n");
        x.push_str("  <devices>\n");
        if let Some(e) = &self.emulator {
            let _ = writeln!(x, "    <emulator>{}</emulator>", p(e));
        }
        if self.arch == Arch::S390x {
            let _ = writeln!(
                x,
                "    <console type='pty'>\n      <log file='{}'/>\n      <target type='sclp' port='0'/>\n    </console>",
                p(&self.console_log)
            );
        } else {
            let _ = writeln!(
                x,
                "    <serial type='pty'>\n      <log file='{}'/>\n      <target port='0'/>\n    </serial>",
                p(&self.console_log)
            );
        }
        if self.arch == Arch::S390x {
            x.push_str("    <panic model='s390'/>\n");
        }
        for d in &self.settings.devices {
            let action = self.settings.watchdog_action.as_ref().map(|a| format!(" action='{a}'")).unwrap_or_default();
            let _ = match d {
                Device::Pvpanic => writeln!(x, "    <panic model='isa'/>"),
                Device::PvpanicPci => writeln!(x, "    <panic model='pvpanic'/>"),
                w => writeln!(x, "    <watchdog model='{}'{action}/>", w.name()),
            };
        }
        x.push_str("  </devices>\n");
        if !self.qemu_args.is_empty() {
            x.push_str("  <qemu:commandline>\n");
            for a in &self.qemu_args {
                let _ = writeln!(x, "    <qemu:arg value='{}'/>", escape(a));
            }
            x.push_str("  </qemu:commandline>\n");
        }
        x.push_str("</domain>\n");
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q35() -> Domain {
        Domain {
            name: "pvagent-1-2-libvirt-q35__x".into(),
            description: None,
            arch: Arch::X86_64,
            domain_type: "qemu",
            machine: "q35".into(),
            memory: "128M".into(),
            emulator: Some("/usr/bin/qemu-system-x86_64".into()),
            boot: Boot::Kernel("/w/target/x86_64-unknown-none/release/pvagent".into()),
            script: Some(ScriptIn::FwCfg("i6300esb.arm:300ms,300ms; log:a<b&'c'".into(), Commas::Double)),
            settings: Settings {
                devices: vec![Device::PvpanicPci, Device::I6300esb],
                watchdog_action: Some("inject-nmi".into()),
                on_crash: Some("preserve".into()),
                ..Settings::default()
            },
            console_log: "/tmp/d/console.log".into(),
            qemu_args: vec![],
        }
    }

    #[test]
    fn a_q35_kernel_domain() {
        assert_eq!(
            q35().xml(),
            "<domain type='qemu'>
  <name>pvagent-1-2-libvirt-q35__x</name>
  <memory unit='MiB'>128</memory>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>/w/target/x86_64-unknown-none/release/pvagent</kernel>
  </os>
  <sysinfo type='fwcfg'>
    <entry name='opt/pvagent/script'>i6300esb.arm:300ms,,300ms; log:a&lt;b&amp;&apos;c&apos;</entry>
  </sysinfo>
  <features>
    <acpi/>
  </features>
  <on_crash>preserve</on_crash>
  <seclabel type='static' model='dac' relabel='no'>
    <label>+0:+0</label>
  </seclabel>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <serial type='pty'>
      <log file='/tmp/d/console.log'/>
      <target port='0'/>
    </serial>
    <panic model='pvpanic'/>
    <watchdog model='i6300esb' action='inject-nmi'/>
  </devices>
</domain>
"
        );
    }

    #[test]
    fn commas_rom_file_and_s390x() {
        let mut d = q35();
        d.script = Some(ScriptIn::FwCfg("a,b".into(), Commas::AsIs));
        d.boot = Boot::Rom("/r/pvagent-x86_64.rom".into());
        d.description = Some("made by cargo xtask".into());
        d.settings = Settings::default();
        d.memory = "1G".into();
        let x = d.xml();
        assert!(x.contains("<entry name='opt/pvagent/script'>a,b</entry>"), "{x}");
        assert!(x.contains("<loader type='rom'>/r/pvagent-x86_64.rom</loader>") && !x.contains("<kernel>"), "{x}");
        assert!(x.contains("<description>made by cargo xtask</description>"), "{x}");
        assert!(x.contains("<memory unit='GiB'>1</memory>") && !x.contains("on_crash") && !x.contains("<panic"), "{x}");
        d.script = Some(ScriptIn::FwCfgFile("/d/script.bin".into()));
        assert!(d.xml().contains("<entry name='opt/pvagent/script' file='/d/script.bin'/>"));
        let s = Domain {
            arch: Arch::S390x,
            machine: "s390-ccw-virtio".into(),
            boot: Boot::Kernel("/k".into()),
            emulator: None,
            script: Some(ScriptIn::Cmdline("log:a,b; diag288.arm:15s".into())),
            settings: Settings {
                devices: vec![Device::Diag288],
                watchdog_action: Some("dump".into()),
                ..Settings::default()
            },
            ..q35()
        };
        let x = s.xml();
        for want in [
            "<type arch='s390x' machine='s390-ccw-virtio'>hvm</type>",
            "<cmdline>log:a,b; diag288.arm:15s</cmdline>",
            "<console type='pty'>\n      <log file='/tmp/d/console.log'/>\n      <target type='sclp' port='0'/>",
            "<panic model='s390'/>\n    <watchdog model='diag288' action='dump'/>",
        ] {
            assert!(x.contains(want), "{want}:\n{x}");
        }
        assert!(!x.contains("sysinfo") && !x.contains("acpi") && !x.contains("<emulator>"), "{x}");
    }

    #[test]
    fn virtual_time_goes_into_the_qemu_namespace() {
        assert!(!q35().xml().contains("qemu:"));
        let d = Domain { qemu_args: vec!["-icount".into(), "shift=0,sleep=off".into()], ..q35() };
        let x = d.xml();
        assert!(x.starts_with("<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>\n"), "{x}");
        assert!(
            x.ends_with(
                "  </devices>\n  <qemu:commandline>\n    <qemu:arg value='-icount'/>\n    \
                 <qemu:arg value='shift=0,sleep=off'/>\n  </qemu:commandline>\n</domain>\n"
            ),
            "{x}"
        );
    }

    #[test]
    fn settings_are_checked_against_the_machine() {
        let s = |devices: &[&str], action: Option<&str>| Settings {
            devices: devices.iter().map(|d| Device::parse(d).unwrap()).collect(),
            watchdog_action: action.map(String::from),
            ..Settings::default()
        };
        assert_eq!(s(&["ib700", "pvpanic"], Some("reset")).problem(Arch::X86_64, "pc"), None);
        assert!(s(&["ib700"], None).problem(Arch::X86_64, "q35").unwrap().contains("refuses ib700 on q35"));
        assert!(s(&["ib700"], None).problem(Arch::X86_64, "pc-q35-10.0").is_some());
        assert!(s(&["pvpanic"], None).problem(Arch::S390x, "s390-ccw-virtio").is_some());
        assert!(s(&["diag288"], None).problem(Arch::X86_64, "pc").unwrap().contains("s390x"));
        assert!(s(&["pvpanic"], Some("reset")).problem(Arch::X86_64, "pc").unwrap().contains("needs a watchdog"));
        assert!(s(&["i6300esb"], Some("bite")).problem(Arch::X86_64, "pc").unwrap().contains("inject-nmi"));
        assert!(s(&["pvpanic", "pvpanic"], None).problem(Arch::X86_64, "pc").unwrap().contains("twice"));
        let mut c = s(&[], None);
        c.on_crash = Some("coredump-restart".into());
        assert_eq!(c.problem(Arch::X86_64, "pc"), None);
        c.on_reboot = Some("coredump-destroy".into());
        assert!(c.problem(Arch::X86_64, "pc").unwrap().contains("on_reboot"));
        assert!(Device::parse("pvpanik").unwrap_err().contains("pvpanic, pvpanic-pci"));
        assert_eq!(text_problem("log:a\tb"), None);
        assert!(text_problem("x\0").unwrap().contains("fw_cfg_file"));
    }
}
