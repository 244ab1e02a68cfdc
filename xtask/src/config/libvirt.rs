//! A row's `libvirt` table (rows on libvirt boards): what the domain gets
//! (devices, watchdog action, lifecycle actions) and what libvirt must
//! report (its own events, the final `virsh domstate --reason`, core
//! dumps), strictly validated.

use serde::Deserialize;

use crate::error::{ConfigError, Place};
use crate::libvirt::events::{GONE, event_name_problem, state_problem};
use crate::libvirt::xml::{Device, Settings};
use crate::matcher::ExpectEntry;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LibvirtDef {
    #[serde(default)]
    devices: Vec<String>,
    watchdog_action: Option<String>,
    on_crash: Option<String>,
    on_poweroff: Option<String>,
    on_reboot: Option<String>,
    #[serde(default)]
    events: Vec<toml::Value>,
    #[serde(default)]
    ignore: Vec<String>,
    state: String,
    #[serde(default)]
    core_dumps: u32,
    #[serde(default)]
    virsh_console: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventDef {
    event: String,
    min: Option<u32>,
    max: Option<u32>,
    optional: Option<bool>,
}

/// What libvirt must report for a row.
#[derive(Clone, Debug, PartialEq)]
pub struct LibvirtChecks {
    /// libvirt's own events after the resume, exactly and in order.
    pub events: Vec<ExpectEntry>,
    /// Events neither required nor forbidden.
    pub ignore: Vec<String>,
    /// The final `virsh domstate --reason` (`state:reason`), or `gone`.
    pub state: String,
    /// How many core files libvirt must have written for the domain, each an
    /// ELF core.
    pub core_dumps: u32,
    /// `virsh console` is attached before the resume, and the row's
    /// `console_contains` must be in what it showed too.
    pub virsh_console: bool,
}

/// A row's `libvirt` table, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct LibvirtRow {
    pub settings: Settings,
    pub checks: LibvirtChecks,
}

const FIX: &str = "write libvirt = { devices = [\"pvpanic-pci\"], on_crash = \"preserve\", events = \
                   [\"crashed:panicked\"], state = \"crashed:panicked\" } (see the top of scenarios.toml)";

/// Validates a row's `libvirt` table (the devices against the boards later,
/// in the scenario's board checks).
pub fn validate(row: &Place, value: toml::Value, errs: &mut Vec<ConfigError>) -> Option<LibvirtRow> {
    let d: LibvirtDef = match row.deserialize_field("libvirt", value, FIX) {
        Ok(d) => d,
        Err(e) => {
            errs.push(e);
            return None;
        }
    };
    let at = row.within("field `libvirt`");
    let before = errs.len();
    let mut devices = Vec::new();
    for name in &d.devices {
        match Device::parse(name) {
            Ok(dev) => devices.push(dev),
            Err(m) => errs.push(at.field("devices", m, "use QEMU's device names")),
        }
    }
    let settings = Settings {
        devices,
        watchdog_action: d.watchdog_action,
        on_crash: d.on_crash,
        on_poweroff: d.on_poweroff,
        on_reboot: d.on_reboot,
    };
    // Devices per machine are checked with the boards; the actions here.
    if let Some(p) = settings.actions_problem() {
        let field = if p.contains("watchdog") { "watchdog_action" } else { "on_crash" };
        let field = if p.starts_with("on_poweroff") {
            "on_poweroff"
        } else if p.starts_with("on_reboot") {
            "on_reboot"
        } else {
            field
        };
        errs.push(at.field(field, p, "use one of the values it names, or remove it"));
    }
    let mut events = Vec::new();
    for (i, e) in d.events.into_iter().enumerate() {
        let place = at.within(format!("field `events` entry {}", i + 1));
        let entry = match e {
            toml::Value::String(s) => Ok(ExpectEntry::new(&s)),
            v => place
                .deserialize::<EventDef>(v, "write \"crashed:panicked\" or { event = \"reboot\", min = 1, max = 2 }")
                .and_then(|d| {
                    if d.optional.is_some() && d.min.is_some() {
                        return Err(place.error("both `optional` and `min` are set", "keep one"));
                    }
                    let min = if d.optional == Some(true) { 0 } else { d.min.unwrap_or(1) };
                    let max = d.max.unwrap_or(min.max(1));
                    if max == 0 || max < min {
                        return Err(place.error(
                            format!("min = {min}, max = {max} can never match"),
                            "use 0 <= min <= max and max >= 1",
                        ));
                    }
                    Ok(ExpectEntry { min, max, ..ExpectEntry::new(&d.event) })
                }),
        };
        match entry {
            Ok(e) => match event_name_problem(&e.event) {
                Some(p) => errs.push(place.error(format!("unknown libvirt event: {p}"), "use virsh's names")),
                None => events.push(e),
            },
            Err(e) => errs.push(e),
        }
    }
    for ev in &d.ignore {
        if let Some(p) = event_name_problem(ev) {
            errs.push(at.field("ignore", format!("unknown libvirt event: {p}"), "use virsh's names"));
        } else if events.iter().any(|e| &e.event == ev) {
            errs.push(at.field("ignore", format!("`{ev}` is both expected and ignored"), "keep one"));
        }
    }
    if let Some(p) = state_problem(&d.state) {
        errs.push(at.field(
            "state",
            p,
            format!(
                "write the final `virsh domstate --reason` as STATE:REASON, or \"{GONE}\" for a domain libvirt stopped"
            ),
        ));
    }
    if d.core_dumps > 0
        && !matches!(settings.on_crash.as_deref(), Some("coredump-destroy" | "coredump-restart"))
        && settings.watchdog_action.as_deref() != Some("dump")
    {
        errs.push(at.field(
            "core_dumps",
            format!(
                "is {}, but libvirt writes core dumps only for on_crash = \"coredump-*\" or watchdog action \"dump\"",
                d.core_dumps
            ),
            "set one of them, or remove `core_dumps`",
        ));
    }
    (errs.len() == before).then_some(LibvirtRow {
        settings,
        checks: LibvirtChecks {
            events,
            ignore: d.ignore,
            state: d.state,
            core_dumps: d.core_dumps,
            virsh_console: d.virsh_console,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::fixtures::PC;
    use crate::config::{Board, End, HostStep, load_boards};
    use std::path::Path;

    const LV_Q35: &str = "name = \"lq\"\ndescription = \"d\"\narch = \"x86_64\"\nbinary = \"qemu-system-x86_64\"\n\
                          machine = \"q35\"\naccel = \"tcg\"\nmemory = \"128M\"\npackage = \"qemu-system-x86\"\n\
                          kind = \"libvirt\"\ngroups = [\"lv\"]\n";

    /// `pc` (a QEMU board), `lq` (libvirt q35), `lp` (libvirt pc), `ls`
    /// (libvirt s390x); @lv: the libvirt ones.
    fn boards() -> Vec<Board> {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: String| std::fs::write(dir.path().join(format!("{name}.toml")), text).unwrap();
        write("pc", PC.to_string());
        write("lq", LV_Q35.to_string());
        write("lp", LV_Q35.replace("\"lq\"", "\"lp\"").replace("\"q35\"", "\"pc\""));
        write(
            "ls",
            LV_Q35
                .replace("\"lq\"", "\"ls\"")
                .replace("\"q35\"", "\"s390-ccw-virtio\"")
                .replace("x86_64", "s390x")
                .replace("qemu-system-x86\"", "qemu-system-s390x\""),
        );
        load_boards(dir.path(), dir.path()).unwrap()
    }

    fn table(rows: &str) -> Result<crate::config::Scenarios, String> {
        crate::config::fixtures::parse_with(rows, &boards())
    }

    const ROW: &str = r#"
[[scenario]]
name = "r"
script = "pvpanic.panicked"
boards = ["@lv"]
libvirt = { devices = ["pvpanic-pci"], on_crash = "destroy", events = ["crashed:panicked", "stopped:crashed"], state = "gone" }
expect = [ { event = "GUEST_PANICKED" } ]
end = { stopped = true }
"#;

    #[test]
    fn libvirt_boards_and_their_rows() {
        let b = boards();
        assert_eq!(b.iter().filter(|b| b.launch.kind == crate::config::BoardKind::Libvirt).count(), 3);
        // Virtual time under libvirt (through <qemu:commandline>), but no
        // QEMU arguments of the board's own.
        let v = crate::config::parse_board(
            Path::new("boards/lq.toml"),
            &format!("{LV_Q35}clock = \"virtual\"\nvirtual_args = [\"-machine\", \"pit=off\"]\n"),
            Path::new("/w"),
        )
        .unwrap();
        assert_eq!((v.clock, v.virtual_time_problem()), (crate::clock::Clock::Virtual, None));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("lq.toml"), format!("{LV_Q35}args = [\"-device\", \"pvpanic\"]\n")).unwrap();
        let e = load_boards(dir.path(), dir.path()).unwrap_err();
        assert!(e.contains("`args`: is set; a libvirt board's QEMU command line is libvirt's"), "{e}");
        std::fs::write(dir.path().join("lq.toml"), format!("{LV_Q35}ram = \"memfd\"\n")).unwrap();
        let e = load_boards(dir.path(), dir.path()).unwrap_err();
        assert!(e.contains("`ram`: is set; a libvirt board's QEMU command line is libvirt's"), "{e}");

        // ib700 is refused on the q35 board only; diag288 runs on s390x only.
        let e = table(&ROW.replace("[\"pvpanic-pci\"]", "[\"ib700\"]")).unwrap_err();
        assert!(e.contains("board `lq` (x86_64 q35): libvirt refuses ib700 on q35"), "{e}");
        assert!(e.contains("board `ls`") && !e.contains("board `lp`"), "{e}");
        let t = table(&ROW.replace("@lv", "lq")).unwrap();
        let s = &t.scenarios[0];
        assert_eq!((s.end.clone(), s.libvirt.as_ref().unwrap().checks.state.as_str()), (End::Stopped, "gone"));

        let fails = |edit: &dyn Fn(&str) -> String, want: &str| {
            let e = table(&edit(ROW)).unwrap_err();
            assert!(e.contains(want), "{want}: {e}");
        };
        fails(&|r| r.replace("[\"@lv\"]", "[\"lq\", \"pc\"]"), "mixes libvirt boards (lq) with others (pc)");
        fails(&|r| r.replace("end = { stopped = true }", "end = { exit = 0 }"), "an exit status on a libvirt board");
        fails(&|r| format!("{r}args = [\"-device\", \"pvpanic\"]\n"), "libvirt makes the QEMU command line");
        fails(
            &|r| {
                format!(
                    "[variants.v]\nargs = [\"-device\", \"pvpanic\"]\n{}",
                    r.replace("boards = [", "variants = [\"v\"]\nboards = [")
                )
            },
            "variants add QEMU arguments",
        );
        fails(
            &|r| r.lines().filter(|l| !l.starts_with("libvirt =")).collect::<Vec<_>>().join("\n"),
            "`libvirt`: is missing; the row runs on libvirt boards",
        );
        fails(&|r| r.replace("state = \"gone\"", "state = \"gone\", virsh_console = true"), "no `console_contains`");
        // The other way round: what only libvirt boards have.
        fails(&|r| r.replace("[\"@lv\"]", "[\"pc\"]"), "none of the row's boards is a libvirt board");
        let local = "[[scenario]]\nname = \"l\"\nboards = [\"pc\"]\nexpect = []\n";
        let e = table(&format!("{local}end = {{ stopped = true }}\n")).unwrap_err();
        assert!(e.contains("{ stopped = true } is for libvirt boards"), "{e}");
        let e = table(&format!(
            "{local}end = {{ status = \"running\" }}\nhost_actions = [{{ after_log = \"x\", virsh = [\"shutdown\"] }}]\n"
        ))
        .unwrap_err();
        assert!(e.contains("a `virsh` action needs libvirt boards"), "{e}");
    }

    #[test]
    fn host_actions() {
        let row = |actions: &str| {
            table(&format!(
                "[[scenario]]\nname = \"a\"\nboards = [\"lq\"]\nlibvirt = {{ state = \"running:unpaused\" }}\nexpect = []\n\
                 end = {{ status = \"running\" }}\nhost_actions = [{actions}]\n"
            ))
        };
        let t = row(r#"{ after_log = "armed", virsh = ["shutdown", "--mode", "acpi"] },
                       { after_log = "ignored", execute = "system_powerdown" }"#)
        .unwrap();
        let a = &t.scenarios[0].host_actions;
        assert_eq!(a[0].step, HostStep::Virsh(vec!["shutdown".into(), "--mode".into(), "acpi".into()]));
        assert!(matches!(&a[1].step, HostStep::Qmp(c) if c.execute == "system_powerdown"));
        assert_eq!(
            (a[0].to_string(), a[1].to_string()),
            ("virsh shutdown --mode acpi".into(), "QMP system_powerdown".into())
        );
        for (bad, want) in [
            (r#"{ after_log = "x" }"#, "exactly one of `virsh` and `execute`"),
            (r#"{ after_log = "x", virsh = ["a"], execute = "b" }"#, "exactly one of"),
            (r#"{ after_log = "", virsh = ["a"] }"#, "`after_log`: is empty"),
            (r#"{ after_log = "x", virsh = ["--mode"] }"#, "needs a virsh command first"),
            (r#"{ after_log = "x", execute = "cont" }"#, "sent by the runner itself"),
            (r#"{ after_log = "x", virsh = ["a"], wait = 1 }"#, "wait"),
        ] {
            let e = row(bad).unwrap_err();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    fn check(table: &str) -> Result<LibvirtRow, String> {
        let v: toml::Value = toml::from_str::<toml::Table>(&format!("libvirt = {table}")).unwrap()["libvirt"].clone();
        let mut errs = Vec::new();
        let r = validate(&Place::new("s.toml").within("scenario `x`"), v, &mut errs);
        if errs.is_empty() { Ok(r.unwrap()) } else { Err(crate::error::join(&errs)) }
    }

    #[test]
    fn a_row_table_and_its_errors() {
        let r = check(
            r#"{ devices = ["pvpanic-pci", "i6300esb"], watchdog_action = "dump", on_crash = "preserve",
                 events = ["watchdog:pause", { event = "reboot", optional = true }], ignore = ["suspended:watchdog"],
                 state = "running:unpaused", core_dumps = 1 }"#,
        )
        .unwrap();
        assert_eq!(r.settings.devices, [Device::PvpanicPci, Device::I6300esb]);
        assert_eq!(
            r.checks.events.iter().map(|e| (e.event.as_str(), e.min)).collect::<Vec<_>>(),
            [("watchdog:pause", 1), ("reboot", 0)]
        );
        assert_eq!(
            (r.checks.state.as_str(), r.checks.core_dumps, r.checks.virsh_console),
            ("running:unpaused", 1, false)
        );
        assert_eq!(check(r#"{ state = "gone" }"#).unwrap().settings, Settings::default());
        let e = check(r#"{ state = "crashed:panicked", evnts = [] }"#).unwrap_err();
        assert!(e.contains("evnts") && e.contains("fix:"), "{e}");
        let e = check(r#"{ events = ["crashed"] }"#).unwrap_err();
        assert!(e.contains("state"), "{e}");
        let e = check(r#"{ devices = ["pvpanik"], events = ["crashed:exploded"], state = "crashed" }"#).unwrap_err();
        assert!(e.contains("unknown device `pvpanik`"), "{e}");
        assert!(e.contains("entry 1: unknown libvirt event: `crashed` detail `exploded`"), "{e}");
        assert!(e.contains("field `state`: `crashed` is not STATE:REASON"), "{e}");
        let e = check(r#"{ devices = ["pvpanic"], watchdog_action = "reset", state = "gone" }"#).unwrap_err();
        assert!(e.contains("`watchdog_action`: a watchdog action needs a watchdog device"), "{e}");
        let e = check(r#"{ on_crash = "explode", state = "gone" }"#).unwrap_err();
        assert!(e.contains("on_crash `explode`"), "{e}");
        let e = check(r#"{ on_crash = "preserve", state = "gone", core_dumps = 1 }"#).unwrap_err();
        assert!(e.contains("`core_dumps`"), "{e}");
        let e = check(r#"{ events = ["reboot"], ignore = ["reboot", "nap"], state = "gone" }"#).unwrap_err();
        assert!(e.contains("both expected and ignored") && e.contains("event `nap`"), "{e}");
        let e = check(r#"{ events = [{ event = "reboot", min = 2, max = 1 }], state = "gone" }"#).unwrap_err();
        assert!(e.contains("can never match"), "{e}");
    }
}
