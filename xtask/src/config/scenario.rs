//! `scenarios.toml`: the `[variants.NAME]` tables and the `[[scenario]]`
//! rows (a row naming a `[scripts.LIST]` becomes one row per entry), checked
//! against the boards. The `expect` entries are validated by
//! [`crate::matcher::expect`], the `timing` entries by [`crate::timing`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::board::{Board, BoardKind, NAME_FIX, ScriptVia, board_subset, expand_board_list, valid_name};
use super::libvirt::{self as libvirt_row, LibvirtRow};
use super::scripts::{self, ScriptEntry, nul_problem};
use crate::arch::Arch;
use crate::clock::Clock;
use crate::error::{ConfigError, Place};
use crate::guest_timing::{GuestTimingCheck, model_exists_on, validate_guest_timing};
use crate::matcher::expect::{ExpectEntry, validate_expect, validate_ignore};
use crate::timing::{TimingCheck, validate_timing};
use crate::util::{Version, parse_duration};

/// QEMU `RunState` values (`query-status` → `status`).
pub const RUN_STATES: &[&str] = &[
    "debug",
    "inmigrate",
    "internal-error",
    "io-error",
    "paused",
    "postmigrate",
    "prelaunch",
    "finish-migrate",
    "restore-vm",
    "running",
    "save-vm",
    "shutdown",
    "suspended",
    "watchdog",
    "guest-panicked",
    "colo",
];

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_SETTLE: Duration = Duration::from_millis(300);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VariantDef {
    #[serde(default)]
    description: String,
    args: Vec<String>,
    min_qemu: Option<String>,
    boards: Option<Vec<String>>,
}

/// A named set of extra QEMU arguments; a scenario runs once per variant.
#[derive(Clone, Debug)]
pub struct Variant {
    pub name: String,
    pub description: String,
    pub args: Vec<String>,
    pub min_qemu: Option<Version>,
    /// Boards the variant exists on (`@group`s expanded); `None`: all. A row
    /// runs the variant on the boards in both lists.
    pub boards: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioDef {
    name: String,
    #[serde(default)]
    description: String,
    script: Option<String>,
    script_via: Option<ScriptVia>,
    boards: Option<Vec<String>>,
    #[serde(default)]
    variants: Vec<String>,
    #[serde(default)]
    args: Vec<String>,
    min_qemu: Option<String>,
    #[serde(default)]
    qmp_before_cont: Vec<toml::Value>,
    timeout: Option<String>,
    settle: Option<String>,
    #[serde(default)]
    expect: Vec<toml::Value>,
    #[serde(default)]
    ignore: Vec<String>,
    end: toml::Value,
    #[serde(default)]
    log_contains: Vec<String>,
    #[serde(default)]
    stderr_contains: Vec<String>,
    #[serde(default)]
    timing: Vec<toml::Value>,
    clock: Option<Clock>,
    #[serde(default)]
    guest_timing: Vec<toml::Value>,
    libvirt: Option<toml::Value>,
    #[serde(default)]
    console_contains: Vec<String>,
    #[serde(default)]
    host_actions: Vec<toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HostActionDef {
    after_log: String,
    virsh: Option<Vec<String>>,
    execute: Option<String>,
    arguments: Option<toml::Table>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QmpCommandDef {
    execute: String,
    arguments: Option<toml::Table>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EndDef {
    exit: Option<i64>,
    status: Option<String>,
    stopped: Option<bool>,
}

/// How a run must end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// QEMU exits by itself with this status.
    Exit(i32),
    /// QEMU stays up; `query-status` reports this run state.
    Status(String),
    /// libvirt stops the domain by itself (libvirt boards: QEMU's exit
    /// status is libvirt's, never reported).
    Stopped,
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Exit(c) => write!(f, "exit {c}"),
            End::Status(s) => write!(f, "status {s}"),
            End::Stopped => write!(f, "stopped"),
        }
    }
}

/// What a host action does.
#[derive(Clone, Debug, PartialEq)]
pub enum HostStep {
    /// `virsh <args[0]> <domain> <args[1..]>` (libvirt boards).
    Virsh(Vec<String>),
    /// A QMP command (through libvirt's passthrough on libvirt boards).
    Qmp(QmpCommand),
}

/// Something the host does to the guest once the agent's log shows a line.
#[derive(Clone, Debug, PartialEq)]
pub struct HostAction {
    /// A substring of the decoded agent log (`agent.log`) that must appear
    /// first (after the previous action's).
    pub after_log: String,
    pub step: HostStep,
}

impl std::fmt::Display for HostAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.step {
            HostStep::Virsh(a) => write!(f, "virsh {}", a.join(" ")),
            HostStep::Qmp(c) => write!(f, "QMP {}", c.execute),
        }
    }
}

/// A QMP command sent between `qmp_capabilities` and `cont`.
#[derive(Clone, Debug, PartialEq)]
pub struct QmpCommand {
    pub execute: String,
    pub arguments: Option<serde_json::Value>,
}

/// One validated `[[scenario]]` row.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    /// `None`: the agent gets no script at all.
    pub script: Option<String>,
    /// `None`: each board's default (see `Case::script_via`).
    pub script_via: Option<ScriptVia>,
    pub boards: Vec<String>,
    pub variants: Vec<String>,
    pub args: Vec<String>,
    pub min_qemu: Option<Version>,
    pub qmp_before_cont: Vec<QmpCommand>,
    pub timeout: Duration,
    pub settle: Duration,
    pub expect: Vec<ExpectEntry>,
    pub ignore: Vec<String>,
    pub end: End,
    pub log_contains: Vec<String>,
    /// Substrings QEMU's stderr must contain.
    pub stderr_contains: Vec<String>,
    /// Timing assertions between matched events.
    pub timing: Vec<TimingCheck>,
    /// The row's clock (`None`: each board's).
    pub clock: Option<Clock>,
    /// Guest-time assertions on watchdog expiries, from the agent's log.
    pub guest_timing: Vec<GuestTimingCheck>,
    /// From a `[scripts]` entry's `boards`: the row runs only on those of
    /// its boards (applied when its groups are expanded).
    pub only_boards: Option<Vec<String>>,
    /// The domain and libvirt's report (rows on libvirt boards).
    pub libvirt: Option<LibvirtRow>,
    /// Substrings of the agent's plain-text console lines (`pvagent: …`).
    pub console_contains: Vec<String>,
    /// What the host does once the agent's log shows a line.
    pub host_actions: Vec<HostAction>,
}

/// The whole validated table.
#[derive(Clone, Debug)]
pub struct Scenarios {
    pub variants: BTreeMap<String, Variant>,
    pub scenarios: Vec<Arc<Scenario>>,
}

fn toml_to_json(v: &toml::Value) -> Result<serde_json::Value, String> {
    use serde_json::Value as J;
    Ok(match v {
        toml::Value::String(s) => J::String(s.clone()),
        toml::Value::Integer(i) => J::from(*i),
        toml::Value::Boolean(b) => J::Bool(*b),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(J::Number)
            .ok_or_else(|| format!("float {f} cannot be sent as JSON"))?,
        toml::Value::Datetime(d) => J::String(d.to_string()),
        toml::Value::Array(a) => J::Array(a.iter().map(toml_to_json).collect::<Result<_, _>>()?),
        toml::Value::Table(t) => {
            J::Object(t.iter().map(|(k, v)| Ok((k.clone(), toml_to_json(v)?))).collect::<Result<_, String>>()?)
        }
    })
}

fn one_of(list: &[&str]) -> String {
    list.join(", ")
}

/// Parses and validates `scenarios.toml` against the known boards; every
/// error is collected.
pub fn parse(file: &Path, text: &str, boards: &[Board]) -> Result<Scenarios, Vec<ConfigError>> {
    let at = Place::new(file.display().to_string());
    let doc = at.parse_toml(text).map_err(|e| vec![e])?;
    let mut errors = Vec::new();
    for key in doc.keys() {
        if key != "variants" && key != "scenario" && key != "scripts" {
            errors.push(at.error(
                format!("unknown top-level key `{key}`"),
                "the file holds only [variants.NAME] and [scripts.NAME] tables and [[scenario]] rows",
            ));
        }
    }
    let variants = parse_variants(&at, doc.get("variants"), boards, &mut errors);
    let lists = scripts::parse_lists(&at, doc.get("scripts"), boards, &mut errors);

    let rows: Vec<toml::Value> = match doc.get("scenario") {
        None => Vec::new(),
        Some(toml::Value::Array(a)) => a.clone(),
        Some(_) => {
            errors.push(
                at.error("`scenario` must be an array of tables", "write each scenario as a [[scenario]] section"),
            );
            Vec::new()
        }
    };
    let board_names: Vec<&str> = boards.iter().map(|b| b.name.as_str()).collect();
    // Names of all defined variants, valid or not (a broken variant is
    // reported once, not again at every scenario that uses it).
    let variant_names: Vec<&str> = match doc.get("variants") {
        Some(toml::Value::Table(t)) => t.keys().map(|s| s.as_str()).collect(),
        _ => Vec::new(),
    };
    let mut seen = BTreeSet::new();
    let mut scenarios = Vec::new();
    for (idx, mut row) in rows.into_iter().enumerate() {
        let label = row
            .get("name")
            .and_then(|n| n.as_str())
            .map(|n| format!("scenario `{n}`"))
            .unwrap_or_else(|| format!("scenario #{}", idx + 1));
        let row_at = at.within(label);
        let list = match scripts::take_list(&row_at, &mut row, &lists) {
            Ok(list) => list,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        let s = match validate_scenario(&row_at, row, &board_names, &variant_names, list.is_some()) {
            Ok(s) => s,
            Err(mut e) => {
                errors.append(&mut e);
                continue;
            }
        };
        let expanded = match list {
            Some(entries) => expand_script_list(&at, &s, entries),
            None => vec![(row_at, s)],
        };
        for (place, mut s) in expanded {
            let mut board_errors = resolve_scenario_boards(&place, &mut s, boards, &variants);
            if !board_errors.is_empty() {
                errors.append(&mut board_errors);
            } else if !seen.insert(s.name.clone()) {
                errors.push(place.error("duplicate name", "give every scenario a unique `name`"));
            } else if !s.boards.is_empty() {
                scenarios.push(Arc::new(s));
            }
        }
    }
    if errors.is_empty() { Ok(Scenarios { variants, scenarios }) } else { Err(errors) }
}

/// The `[variants.NAME]` tables.
fn parse_variants(
    file: &Place,
    value: Option<&toml::Value>,
    boards: &[Board],
    errors: &mut Vec<ConfigError>,
) -> BTreeMap<String, Variant> {
    let mut variants = BTreeMap::new();
    let table = match value {
        None => return variants,
        Some(toml::Value::Table(t)) => t,
        Some(_) => {
            errors.push(file.error("`variants` must be a table", "write [variants.NAME] sections"));
            return variants;
        }
    };
    for (name, v) in table {
        let at = file.within(format!("variant `{name}`"));
        if !valid_name(name) {
            errors.push(at.error("invalid name", NAME_FIX));
            continue;
        }
        let def: VariantDef = match at.deserialize(
            v.clone(),
            "a variant has `args = [...]` and optionally `description`, `min_qemu` and `boards`",
        ) {
            Ok(d) => d,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        let min_qemu = match def.min_qemu.as_deref().map(Version::parse).transpose() {
            Ok(v) => v,
            Err(e) => {
                errors.push(at.field("min_qemu", e, "write e.g. min_qemu = \"9.1\""));
                continue;
            }
        };
        let vboards = match def.boards.as_deref().map(|l| board_subset(l, boards)).transpose() {
            Ok(b) => b,
            Err(p) => {
                errors.push(at.problem(Some("boards"), p));
                continue;
            }
        };
        variants.insert(
            name.clone(),
            Variant { name: name.clone(), description: def.description, args: def.args, min_qemu, boards: vboards },
        );
    }
    variants
}

fn validate_scenario(
    at: &Place,
    row: toml::Value,
    board_names: &[&str],
    variant_names: &[&str],
    has_script_list: bool,
) -> Result<Scenario, Vec<ConfigError>> {
    let def: ScenarioDef = at
        .deserialize(row, "see the field list at the top of scenarios.toml (required: name, end)")
        .map_err(|e| vec![e])?;
    let mut errs = Vec::new();
    if !valid_name(&def.name) {
        errs.push(at.field("name", format!("\"{}\" is not a valid name", def.name), NAME_FIX));
    }
    let boards = match def.boards {
        Some(b) => {
            if b.is_empty() {
                errs.push(at.field(
                    "boards",
                    "is empty",
                    format!("list boards from: {}, or omit `boards` for all", one_of(board_names)),
                ));
            }
            // `@group` entries are expanded (and checked) by resolve_scenario_boards.
            for name in b.iter().filter(|n| !n.starts_with('@')) {
                if !board_names.contains(&name.as_str()) {
                    errs.push(at.field(
                        "boards",
                        format!("unknown board `{name}`"),
                        format!("use one of: {} (or add boards/{name}.toml)", one_of(board_names)),
                    ));
                }
            }
            b
        }
        None => board_names.iter().map(|s| s.to_string()).collect(),
    };
    let mut seen_variants = BTreeSet::new();
    for v in &def.variants {
        if !variant_names.contains(&v.as_str()) {
            errs.push(at.field(
                "variants",
                format!("unknown variant `{v}`"),
                format!("define [variants.{v}] or use one of: {}", one_of(variant_names)),
            ));
        }
        if !seen_variants.insert(v) {
            errs.push(at.field("variants", format!("variant `{v}` is listed twice"), "list each variant once"));
        }
    }
    let min_qemu = match def.min_qemu.as_deref().map(Version::parse).transpose() {
        Ok(v) => v,
        Err(e) => {
            errs.push(at.field("min_qemu", e, "write e.g. min_qemu = \"9.1\""));
            None
        }
    };
    let mut dur = |field: &str, v: Option<String>, default: Duration| match v {
        None => default,
        Some(s) => match parse_duration(&s) {
            Ok(d) if d.is_zero() && field == "timeout" => {
                errs.push(at.field(field, "must be greater than zero", "write e.g. \"10s\""));
                default
            }
            Ok(d) => d,
            Err(e) => {
                errs.push(at.field(field, e, "write e.g. \"300ms\" or \"10s\""));
                default
            }
        },
    };
    let timeout = dur("timeout", def.timeout, DEFAULT_TIMEOUT);
    let settle = dur("settle", def.settle, DEFAULT_SETTLE);
    let qmp_before_cont = validate_qmp_commands(at, def.qmp_before_cont, &mut errs);
    let expect = validate_expect(at, def.expect, &mut errs);
    validate_ignore(at, &def.ignore, &expect, &mut errs);
    let end = validate_end(at, def.end, &mut errs);
    for (field, list) in [
        ("log_contains", &def.log_contains),
        ("stderr_contains", &def.stderr_contains),
        ("console_contains", &def.console_contains),
    ] {
        if list.iter().any(String::is_empty) {
            errs.push(at.field(field, "contains an empty string", "remove it"));
        }
    }
    let libvirt = def.libvirt.and_then(|v| libvirt_row::validate(at, v, &mut errs));
    let host_actions = validate_host_actions(at, def.host_actions, &mut errs);
    let timing = validate_timing(at, def.timing, &expect, &def.ignore, &mut errs);
    let guest_timing = validate_guest_timing(at, def.guest_timing, &mut errs);
    if def.clock == Some(Clock::Virtual) && !timing.is_empty() {
        errs.push(at.field(
            "clock",
            "is \"virtual\", but the row's `timing` entries measure QMP timestamps, which are host time",
            VIRTUAL_TIMING_FIX,
        ));
    }
    let script = def.script.filter(|s| !s.trim().is_empty());
    let script_via = def.script_via;
    if script.is_none() && !has_script_list && def.script_via.is_some() {
        errs.push(at.field("script_via", "is set but there is no script", "remove `script_via` or add a `script`"));
    }
    if let Some(p) = script.as_deref().and_then(|s| nul_problem(s, script_via)) {
        errs.push(at.field("script", p, "remove it, or set script_via = \"fw_cfg_file\""));
    }
    match (errs.is_empty(), end) {
        (true, Some(end)) => Ok(Scenario {
            name: def.name,
            description: def.description,
            script,
            script_via,
            boards,
            variants: def.variants,
            args: def.args,
            min_qemu,
            qmp_before_cont,
            timeout,
            settle,
            expect,
            ignore: def.ignore,
            end,
            log_contains: def.log_contains,
            stderr_contains: def.stderr_contains,
            timing,
            clock: def.clock,
            guest_timing,
            only_boards: None,
            libvirt,
            console_contains: def.console_contains,
            host_actions,
        }),
        _ => Err(errs),
    }
}

fn validate_host_actions(at: &Place, defs: Vec<toml::Value>, errs: &mut Vec<ConfigError>) -> Vec<HostAction> {
    let fix = "write { after_log = \"script finished\", virsh = [\"shutdown\", \"--mode\", \"acpi\"] } or \
               { after_log = \"…\", execute = \"system_powerdown\" }";
    let mut out = Vec::new();
    for (i, v) in defs.into_iter().enumerate() {
        let place = at.within(format!("field `host_actions` entry {}", i + 1));
        let d: HostActionDef = match place.deserialize(v, fix) {
            Ok(d) => d,
            Err(e) => {
                errs.push(e);
                continue;
            }
        };
        if d.after_log.is_empty() {
            errs.push(place.field("after_log", "is empty", "name a line of the agent's log to wait for"));
            continue;
        }
        let step = match (d.virsh, d.execute) {
            (Some(a), None) if d.arguments.is_none() => {
                if a.first().is_none_or(|c| c.is_empty() || c.starts_with('-')) {
                    errs.push(place.field(
                        "virsh",
                        "needs a virsh command first (the domain goes right after it)",
                        "e.g. virsh = [\"shutdown\", \"--mode\", \"acpi\"]",
                    ));
                    continue;
                }
                HostStep::Virsh(a)
            }
            (None, Some(execute)) => {
                let cmd = toml::Value::Table(toml::Table::from_iter(
                    [("execute".to_string(), toml::Value::String(execute))]
                        .into_iter()
                        .chain(d.arguments.map(|a| ("arguments".to_string(), toml::Value::Table(a)))),
                ));
                match validate_qmp_commands(&place, vec![cmd], errs).pop() {
                    Some(c) => HostStep::Qmp(c),
                    None => continue,
                }
            }
            _ => {
                errs.push(
                    place.error("needs exactly one of `virsh` and `execute` (`arguments` goes with `execute`)", fix),
                );
                continue;
            }
        };
        out.push(HostAction { after_log: d.after_log, step });
    }
    out
}

fn validate_qmp_commands(at: &Place, defs: Vec<toml::Value>, errs: &mut Vec<ConfigError>) -> Vec<QmpCommand> {
    let mut out = Vec::new();
    for (i, c) in defs.into_iter().enumerate() {
        let c: QmpCommandDef = match at
            .within(format!("field `qmp_before_cont` entry {}", i + 1))
            .deserialize(c, "write { execute = \"set-action\", arguments = { panic = \"pause\" } }")
        {
            Ok(c) => c,
            Err(e) => {
                errs.push(e);
                continue;
            }
        };
        if c.execute.trim().is_empty() {
            errs.push(at.field(
                "qmp_before_cont",
                format!("entry {} has an empty `execute`", i + 1),
                "name a QMP command",
            ));
            continue;
        }
        if matches!(c.execute.as_str(), "cont" | "quit" | "qmp_capabilities") {
            errs.push(at.field(
                "qmp_before_cont",
                format!("entry {}: `{}` is sent by the runner itself", i + 1, c.execute),
                "remove it",
            ));
            continue;
        }
        let arguments = match c.arguments.map(|t| toml_to_json(&toml::Value::Table(t))) {
            None => None,
            Some(Ok(j)) => Some(j),
            Some(Err(e)) => {
                errs.push(at.field("qmp_before_cont", e, "use integers, strings and booleans"));
                None
            }
        };
        out.push(QmpCommand { execute: c.execute, arguments });
    }
    out
}

fn validate_end(at: &Place, value: toml::Value, errs: &mut Vec<ConfigError>) -> Option<End> {
    let end_fix = "write end = { exit = N } (QEMU's exit status), end = { status = \"RUNSTATE\" } or, on libvirt \
                   boards, end = { stopped = true }";
    match at.deserialize_field::<EndDef>("end", value, end_fix) {
        Err(e) => {
            errs.push(e);
            None
        }
        Ok(EndDef { exit: None, status: None, stopped: Some(true) }) => Some(End::Stopped),
        Ok(EndDef { exit: None, status: None, stopped: Some(false) }) => {
            errs.push(at.field("end", "stopped = false says nothing", end_fix));
            None
        }
        Ok(EndDef { exit: Some(code), status: None, stopped: None }) => {
            if (0..=255).contains(&code) {
                Some(End::Exit(code as i32))
            } else {
                errs.push(at.field("end", format!("exit status {code} is outside 0..=255"), end_fix));
                None
            }
        }
        Ok(EndDef { exit: None, status: Some(s), stopped: None }) => {
            if RUN_STATES.contains(&s.as_str()) {
                Some(End::Status(s))
            } else {
                errs.push(at.field(
                    "end",
                    format!("unknown run state \"{s}\""),
                    format!("use one of: {}", one_of(RUN_STATES)),
                ));
                None
            }
        }
        Ok(_) => {
            errs.push(at.field("end", "needs exactly one of `exit`, `status` and `stopped`", end_fix));
            None
        }
    }
}

/// One scenario per list entry, named `<row>.<key>`, each with its place in
/// `file` for messages. Boards are narrowed after the row's `@group`s are
/// expanded (in [`resolve_scenario_boards`]), so an entry's `boards` is kept
/// aside here.
fn expand_script_list(file: &Place, row: &Scenario, entries: &[ScriptEntry]) -> Vec<(Place, Scenario)> {
    entries
        .iter()
        .map(|e| {
            let mut s = row.clone();
            s.name = format!("{}.{}", row.name, e.key);
            s.script = Some(e.script.clone());
            s.script_via = e.script_via.or(row.script_via);
            s.log_contains.extend(e.log_contains.iter().cloned());
            s.only_boards = e.boards.clone();
            (file.within(format!("scenario `{}` (from [scripts] entry `{}`)", s.name, e.key)), s)
        })
        .collect()
}

/// What a row on libvirt boards must (and a row on other boards must not)
/// have: the `libvirt` table instead of `args` and variants, no exit status,
/// devices the boards' machines take.
fn libvirt_problems(at: &Place, s: &Scenario, boards: &[Board]) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let of_row: Vec<&Board> = s.boards.iter().filter_map(|n| boards.iter().find(|b| &b.name == n)).collect();
    let (lv, other): (Vec<&Board>, Vec<&Board>) = of_row.iter().partition(|b| b.launch.kind == BoardKind::Libvirt);
    let names = |bs: &[&Board]| bs.iter().map(|b| b.name.as_str()).collect::<Vec<_>>().join(", ");
    if !lv.is_empty() && !other.is_empty() {
        errors.push(at.field(
            "boards",
            format!("mixes libvirt boards ({}) with others ({})", names(&lv), names(&other)),
            "give the libvirt boards rows of their own: a domain (`libvirt`) and a QEMU command line (`args`) \
             describe different things",
        ));
        return errors;
    }
    if lv.is_empty() {
        if s.libvirt.is_some() {
            errors.push(at.field("libvirt", "is set, but none of the row's boards is a libvirt board", "remove it"));
        }
        if s.end == End::Stopped {
            errors.push(at.field(
                "end",
                "{ stopped = true } is for libvirt boards; QEMU here exits with a status",
                "write end = { exit = N } or { status = \"RUNSTATE\" }",
            ));
        }
        if s.host_actions.iter().any(|a| matches!(a.step, HostStep::Virsh(_))) {
            errors.push(at.field(
                "host_actions",
                "a `virsh` action needs libvirt boards",
                "use `execute` (a QMP command), or run the row on a libvirt board",
            ));
        }
        return errors;
    }
    let Some(row) = &s.libvirt else {
        errors.push(at.field(
            "libvirt",
            format!("is missing; the row runs on libvirt boards ({}), whose report it must assert", names(&lv)),
            "add libvirt = { devices = [...], events = [...], state = \"...\" } (see the top of scenarios.toml)",
        ));
        return errors;
    };
    if !s.args.is_empty() {
        errors.push(at.field(
            "args",
            "is set, but libvirt makes the QEMU command line of a libvirt board",
            "describe the domain in `libvirt` (devices, watchdog_action, on_crash)",
        ));
    }
    if !s.variants.is_empty() {
        errors.push(at.field(
            "variants",
            "variants add QEMU arguments, and libvirt makes the QEMU command line of a libvirt board",
            "list the devices in `libvirt.devices`, one row per case",
        ));
    }
    if let End::Exit(_) = s.end {
        errors.push(at.field(
            "end",
            "an exit status on a libvirt board: libvirt runs QEMU with -no-shutdown and ends it with SIGTERM, so \
             QEMU's exit status is libvirt's",
            "write end = { stopped = true } (libvirt stopped the domain; `libvirt.state` says how) or \
             { status = \"RUNSTATE\" }",
        ));
    }
    if row.checks.virsh_console && s.console_contains.is_empty() {
        errors.push(at.field(
            "libvirt",
            "virsh_console = true, but there is no `console_contains` to find in what it shows",
            "add console_contains = [\"pvagent: …\"]",
        ));
    }
    for b in lv {
        if let Some(p) = row.settings.problem(b.arch, &b.machine) {
            errors.push(at.field(
                "libvirt",
                format!("board `{}` ({} {}): {p}", b.name, b.arch, b.machine),
                format!("remove `{}` from `boards`, or the device", b.name),
            ));
        }
    }
    errors
}

/// The fix for QMP `timing` in virtual time.
const VIRTUAL_TIMING_FIX: &str = "time the guest instead (`guest_timing`, from the agent's log; watchdogs under \
     inject-nmi), or run the row in real time (clock = \"real\")";

/// Expands the row's board groups and checks that every board of the row
/// can deliver its script, run on the row's clock and have the watchdogs
/// of its `guest_timing`, and that each variant runs somewhere.
fn resolve_scenario_boards(
    at: &Place,
    s: &mut Scenario,
    boards: &[Board],
    variants: &BTreeMap<String, Variant>,
) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    match expand_board_list(&s.boards, boards) {
        Ok(b) => s.boards = b,
        Err(p) => return vec![at.problem(Some("boards"), p)],
    }
    if let Some(only) = &s.only_boards {
        s.boards.retain(|b| only.contains(b));
    }
    errors.extend(libvirt_problems(at, s, boards));
    if s.script.is_some() {
        for name in &s.boards {
            let Some(b) = boards.iter().find(|b| &b.name == name) else { continue };
            let via = s.script_via.unwrap_or(b.script_via);
            if let Some(p) = b.script_via_problem(via) {
                errors.push(at.field(
                    "script_via",
                    format!("board `{name}` cannot take the script through {}: {p}", via.name()),
                    format!(
                        "remove `{name}` from `boards`, or {}",
                        if s.script_via.is_some() { "remove `script_via`" } else { "set `script_via`" }
                    ),
                ));
            }
        }
    }
    for name in &s.boards {
        let Some(b) = boards.iter().find(|b| &b.name == name) else { continue };
        let clock = s.clock.unwrap_or(b.clock);
        if clock == Clock::Virtual {
            if let Some(why) = b.virtual_time_problem() {
                errors.push(at.field(
                    "clock",
                    format!("board `{name}` cannot run in virtual time: {why}"),
                    format!("remove `{name}` from `boards`, or remove `clock`"),
                ));
            } else if s.clock.is_none() && !s.timing.is_empty() {
                errors.push(at.field(
                    "timing",
                    format!(
                        "board `{name}` runs in virtual time (clock = \"virtual\" in {}), and QMP timestamps are \
                         host time",
                        b.file.display()
                    ),
                    format!("{VIRTUAL_TIMING_FIX}, or remove `{name}` from `boards`"),
                ));
            }
        }
        if b.arch == Arch::Aarch64 && !s.guest_timing.is_empty() {
            errors.push(at.field(
                "guest_timing",
                format!(
                    "board `{name}` is aarch64, and QEMU's virt machine has no NMI: under inject-nmi the guest never \
                     learns of the expiry, so the agent cannot time it"
                ),
                format!("time the expiry over QMP (`timing`, in real time), or remove `{name}` from `boards`"),
            ));
            continue;
        }
        for g in &s.guest_timing {
            if !model_exists_on(g.watchdog, b.arch) {
                errors.push(at.field(
                    "guest_timing",
                    format!(
                        "board `{name}` is {}, and {} exists on {} only",
                        b.arch,
                        g.watchdog.name(),
                        g.watchdog.archs().names()
                    ),
                    format!("remove `{name}` from `boards`, or the entry"),
                ));
            }
        }
    }
    if !s.guest_timing.is_empty() {
        let variant_args = s.variants.iter().filter_map(|v| variants.get(v)).flat_map(|v| v.args.iter());
        let qmp = s.qmp_before_cont.iter().filter_map(|c| c.arguments.as_ref()).map(|a| a.to_string());
        let nmi = s.args.iter().chain(variant_args).any(|a| a.contains("watchdog=inject-nmi"))
            || qmp.into_iter().any(|a| a.contains("inject-nmi"))
            || s.libvirt.as_ref().is_some_and(|l| l.settings.watchdog_action.as_deref() == Some("inject-nmi"));
        if !nmi {
            errors.push(at.field(
                "guest_timing",
                "the agent times an expiry only when the guest survives it, under QEMU's watchdog action \
                 inject-nmi (an NMI on x86_64, a restart interrupt on s390x), and this row does not set it",
                "add \"-action\", \"watchdog=inject-nmi\" to `args`",
            ));
        }
    }
    for v in &s.variants {
        if let Some(Variant { boards: Some(vb), .. }) = variants.get(v)
            && !s.boards.iter().any(|b| vb.contains(b))
        {
            errors.push(at.field(
                "variants",
                format!("variant `{v}` runs only on {} and so on none of this row's boards", vb.join(", ")),
                format!("remove `{v}` or add one of those boards"),
            ));
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Board;
    use crate::config::fixtures::{GOOD, GROUPED, LIST, TIMED, err_of, mixed_boards, parse_with};
    use crate::timing::{Bound, DEFAULT_TOLERANCE, EventRef};

    fn parse(text: &str) -> Result<Scenarios, String> {
        crate::config::fixtures::parse(text)
    }

    #[test]
    fn a_script_list_runs_once_per_entry() {
        let t = parse(LIST).unwrap();
        let names: Vec<&str> = t.scenarios.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["m.nul", "m.one", "m.two"]);
        let two = &t.scenarios[2];
        assert_eq!(two.script.as_deref(), Some("exit:0x"));
        assert_eq!(two.log_contains, ["script error", "bad number"]);
        assert_eq!(two.script_via, None);
        let nul = &t.scenarios[0];
        assert_eq!((nul.script.as_deref(), nul.script_via), (Some("halt\0"), Some(ScriptVia::FwCfgFile)));
    }

    #[test]
    fn script_list_errors_name_the_problem() {
        let e = parse(&LIST.replace("scripts = \"bad\"", "scripts = \"worse\"")).unwrap_err();
        assert!(e.contains("no [scripts.worse] table") && e.contains("use one of: bad"), "{e}");
        let e = parse(&LIST.replace(", script_via = \"fw_cfg_file\"", "")).unwrap_err();
        assert!(e.contains("scripts.bad.nul") && e.contains("NUL byte"), "{e}");
        let e = parse(&LIST.replace("scripts = \"bad\"", "scripts = \"bad\"\nscript = \"halt\"")).unwrap_err();
        assert!(e.contains("both `script` and `scripts`"), "{e}");
        let e = parse(&LIST.replace("one = \"bogus\"", "one = \" \"")).unwrap_err();
        assert!(e.contains("scripts.bad.one") && e.contains("empty"), "{e}");
        let e = parse(&LIST.replace("one = \"bogus\"", "one = { scrpt = \"x\" }")).unwrap_err();
        assert!(e.contains("scripts.bad.one") && e.contains("scrpt"), "{e}");
        // A row made from a list entry is named with the file, like every row.
        let e = parse(&format!("[[scenario]]\nname = \"m.one\"\nend = {{ exit = 0 }}\n{LIST}")).unwrap_err();
        assert_eq!(
            e,
            "scenarios.toml: scenario `m.one` (from [scripts] entry `one`): duplicate name\n  \
             fix: give every scenario a unique `name`"
        );
        let e = parse(&LIST.replace("nul = {", "nul = { boards = [\"@none\"],")).unwrap_err();
        assert!(e.starts_with("scenarios.toml: scripts.bad.nul: field `boards`: unknown board group `@none`"), "{e}");
    }

    #[test]
    fn good_table() {
        let t = parse(GOOD).unwrap();
        let s = &t.scenarios[0];
        assert_eq!(s.boards, vec!["pc"]);
        assert_eq!(s.expect[1].min, 0);
        assert_eq!(s.expect[1].max, 1);
        assert_eq!((s.expect[2].min, s.expect[2].max), (1, 2));
        assert_eq!(s.end, End::Status("guest-panicked".into()));
        assert_eq!(s.timeout, DEFAULT_TIMEOUT);
        assert_eq!(s.script_via, None);
        assert_eq!(s.qmp_before_cont[0].arguments, Some(serde_json::json!({"panic": "pause"})));
    }

    #[test]
    fn unknown_field_names_scenario_and_field() {
        let e = err_of("[[scenario]]\nname = \"x\"\nexpcet = []\nend = { exit = 0 }\n");
        assert!(e.contains("scenario `x`"), "{e}");
        assert!(e.contains("expcet"), "{e}");
        assert!(e.contains("fix:"), "{e}");
    }

    #[test]
    fn unknown_board_and_variant() {
        let e = err_of("[[scenario]]\nname = \"x\"\nboards = [\"pcc\"]\nvariants = [\"v\"]\nend = { exit = 0 }\n");
        assert!(e.contains("unknown board `pcc`") && e.contains("use one of: pc"), "{e}");
        assert!(e.contains("unknown variant `v`") && e.contains("[variants.v]"), "{e}");
    }

    #[test]
    fn bad_event_duration_version_end() {
        let e = err_of(
            r#"[[scenario]]
name = "x"
timeout = "10h"
settle = "fast"
min_qemu = "nine"
expect = [{ event = "GUEST_PANICED" }]
end = { status = "crashed" }
"#,
        );
        assert!(e.contains("GUEST_PANICED"), "{e}");
        assert!(e.contains("`timeout`") && e.contains("unknown unit"), "{e}");
        assert!(e.contains("`settle`"), "{e}");
        assert!(e.contains("`min_qemu`"), "{e}");
        assert!(e.contains("unknown run state \"crashed\""), "{e}");
    }

    #[test]
    fn end_needs_exactly_one() {
        let e = err_of("[[scenario]]\nname = \"x\"\nend = { exit = 0, status = \"running\" }\n");
        assert!(e.contains("exactly one"), "{e}");
        let e = err_of("[[scenario]]\nname = \"x\"\nend = { exit = 300 }\n");
        assert!(e.contains("0..=255"), "{e}");
        let e = err_of("[[scenario]]\nname = \"x\"\n");
        assert!(e.contains("end"), "{e}");
        let e = err_of("[[scenario]]\nname = \"x\"\nend = { exit = 0, code = 1 }\n");
        assert!(e.starts_with("scenarios.toml: scenario `x`: field `end`: unknown field `code`"), "{e}");
    }

    #[test]
    fn timing_entries() {
        let t = parse(TIMED).unwrap();
        let s = &t.scenarios[0];
        assert_eq!(s.stderr_contains, vec!["watchdog: timer fired"]);
        assert_eq!(s.timing.len(), 4);
        assert_eq!(
            s.timing[0].bound,
            Bound::Around { expect: Duration::from_millis(500), tolerance: DEFAULT_TOLERANCE }
        );
        assert_eq!(s.timing[1].to, EventRef { event: "WATCHDOG".into(), occurrence: 2 });
        assert!(matches!(s.timing[1].bound, Bound::Around { tolerance, .. } if tolerance.percent == 1.0));
        // An ignored event can occur any number of times.
        assert_eq!(s.timing[2].to.occurrence, 3);
        assert_eq!(s.timing[3].bound, Bound::Range { min: None, max: Some(Duration::from_millis(999)) });
    }

    #[test]
    fn timing_errors() {
        let with = |entry: &str| err_of(&TIMED.replace(r#"{ from = "WATCHDOG", to = "STOP#3", min = "1s" },"#, entry));
        let cases = [
            (r#"{ from = "WATCHDOG#3", to = "STOP" , min = "1s" },"#, "at most 2 WATCHDOG"),
            (r#"{ from = "RESET", to = "WATCHDOG", min = "1s" },"#, "neither in `expect` nor in `ignore`"),
            (r#"{ from = "BOGUS", to = "WATCHDOG", min = "1s" },"#, "not a watched event"),
            (r#"{ from = "watchdog", to = "STOP", min = "1s" },"#, "not an event reference"),
            (r#"{ from = "WATCHDOG#0", to = "STOP", min = "1s" },"#, "≥ 1"),
            (r#"{ from = "WATCHDOG", to = "STOP", expect = "1s", min = "1s" },"#, "not both or neither"),
            (r#"{ from = "WATCHDOG", to = "STOP" },"#, "not both or neither"),
            (r#"{ from = "WATCHDOG", to = "STOP", min = "1s", tolerance = "5%" },"#, "only goes with `expect`"),
            (r#"{ from = "WATCHDOG", to = "STOP", min = "2s", max = "1s" },"#, "greater than `max`"),
            (r#"{ from = "WATCHDOG", to = "WATCHDOG#1", min = "1s" },"#, "the same event"),
            (r#"{ from = "WATCHDOG", to = "STOP", expect = "1s", tolerance = "5" },"#, "not a tolerance"),
            (r#"{ from = "WATCHDOG", to = "STOP", expect = "1h" },"#, "unknown unit"),
            (r#"{ from = "WATCHDOG", to = "STOP", expect = "1s", tolerence = "5%" },"#, "tolerence"),
        ];
        for (entry, want) in cases {
            let e = with(entry);
            assert!(e.contains("scenario `t`: field `timing` entry 3") && e.contains(want), "{entry}: {e}");
            assert!(e.contains("fix:"), "{e}");
        }
        let e = with(r#"{ from = "WATCHDOG#3", to = "STOP" , min = "1s" },"#);
        assert_eq!(
            e,
            "scenarios.toml: scenario `t`: field `timing` entry 3: `from`: `WATCHDOG#3` asks for occurrence 3 \
             but `expect` allows at most 2 WATCHDOG\n  fix: use an occurrence from 1 to 2"
        );
        let e = err_of(&TIMED.replace(r#"stderr_contains = ["watchdog: timer fired"]"#, r#"stderr_contains = [""]"#));
        assert!(e.contains("`stderr_contains`: contains an empty string"), "{e}");
    }

    #[test]
    fn min_max_and_ignore_conflicts() {
        let e = err_of(
            "[[scenario]]\nname = \"x\"\nexpect = [{ event = \"RESET\", min = 3, max = 2 }]\nend = { exit = 0 }\n",
        );
        assert!(e.contains("never match"), "{e}");
        let e = err_of(
            "[[scenario]]\nname = \"x\"\nexpect = [{ event = \"STOP\" }]\nignore = [\"STOP\"]\nend = { exit = 0 }\n",
        );
        assert!(e.contains("both expected and ignored"), "{e}");
        let e = err_of(
            "[[scenario]]\nname = \"x\"\nexpect = [{ event = \"STOP\", data = { x = 1.5 } }]\nend = { exit = 0 }\n",
        );
        assert!(e.contains("float"), "{e}");
    }

    #[test]
    fn absent_fields() {
        let t = parse(
            "[[scenario]]\nname = \"x\"\nexpect = [{ event = \"GUEST_PANICKED\", data = { action = \"pause\" }, \
             absent = [\"info\"] }]\nend = { exit = 0 }\n",
        )
        .unwrap();
        assert_eq!(t.scenarios[0].expect[0].absent, ["info"]);
        let e = err_of(
            "[[scenario]]\nname = \"x\"\nexpect = [{ event = \"GUEST_PANICKED\", data = { info = { arg1 = 1 } }, \
             absent = [\"info.arg1\"] }]\nend = { exit = 0 }\n",
        );
        assert!(e.contains("field `absent`: \"info.arg1\" is also required by `data`") && e.contains("fix:"), "{e}");
        let e = err_of(
            "[[scenario]]\nname = \"x\"\nexpect = [{ event = \"GUEST_PANICKED\", absent = [\"info.\"] }]\nend = { exit = 0 }\n",
        );
        assert!(e.contains("\"info.\" is not a payload field"), "{e}");
    }

    #[test]
    fn duplicate_names_and_bad_toplevel() {
        let e =
            err_of("[[scenario]]\nname = \"x\"\nend = { exit = 0 }\n[[scenario]]\nname = \"x\"\nend = { exit = 0 }\n");
        assert!(e.contains("duplicate"), "{e}");
        let e = err_of("[variant.x]\nargs = []\n");
        assert!(e.contains("unknown top-level key `variant`"), "{e}");
        let e = err_of("[[scenario]]\nname = \"x\"\nend = { exit = 0 }\n[[scenario\n");
        assert!(e.contains("invalid TOML"), "{e}");
    }

    #[test]
    fn groups_and_variant_boards() {
        let t = parse_with(GROUPED, &mixed_boards()).unwrap();
        assert_eq!(t.scenarios[0].boards, vec!["pc", "fast", "micro"]);
        assert_eq!(t.variants["pci"].boards.as_deref(), Some(&["pc".to_string(), "fast".to_string()][..]));
    }

    #[test]
    fn impossible_script_via_and_unknown_groups() {
        let b = mixed_boards();
        let parse = |text: &str| parse_with(text, &b);
        // -append on a firmware-booted board.
        let e = parse(&GROUPED.replace(r#"boards = ["pc", "micro"]"#, r#"boards = ["pc", "fast"]"#)).unwrap_err();
        assert!(
            e.contains("scenario `a`: field `script_via`: board `fast`") && e.contains("-append needs -kernel"),
            "{e}"
        );
        assert!(e.contains("fix: remove `fast` from `boards`"), "{e}");
        // fw_cfg (the x86 rows' explicit choice) on s390x.
        let e =
            parse(&GROUPED.replace("boards = [\"s390\"]", "boards = [\"s390\"]\nscript_via = \"fw_cfg\"")).unwrap_err();
        assert!(e.contains("board `s390`") && e.contains("no fw_cfg"), "{e}");
        let e = parse(&GROUPED.replace("@x86", "@x68")).unwrap_err();
        assert!(e.contains("unknown board group `@x68`") && e.contains("@pci, @x86"), "{e}");
        let e = parse(&GROUPED.replace("@pci", "@nope")).unwrap_err();
        assert!(e.contains("variant `pci`: field `boards`") && e.contains("unknown board group"), "{e}");
        let e = parse(&GROUPED.replace(r#"boards = ["@x86"]"#, r#"boards = ["micro"]"#)).unwrap_err();
        assert!(e.contains("variant `pci` runs only on pc, fast"), "{e}");
    }

    const VIRTUAL_ROW: &str = r#"
[variants.nmi]
args = ["-action", "watchdog=inject-nmi"]

[[scenario]]
name = "w"
script = "ib700.arm:30s"
boards = ["pc"]
args = ["-device", "ib700", "-action", "watchdog=inject-nmi"]
clock = "virtual"
expect = [{ event = "WATCHDOG" }]
end = { status = "running" }
guest_timing = [{ watchdog = "ib700", since = "arm", expect = "30s" }]
"#;

    #[test]
    fn clocks_and_guest_timing() {
        let mut b = mixed_boards();
        let parse = |text: &str, b: &[Board]| parse_with(text, b);
        let t = parse(VIRTUAL_ROW, &b).unwrap();
        let s = &t.scenarios[0];
        assert_eq!((s.clock, s.guest_timing.len()), (Some(Clock::Virtual), 1));
        assert_eq!(s.guest_timing[0].expect, Duration::from_secs(30));
        // QMP timing cannot be judged in virtual time.
        let timed = VIRTUAL_ROW.replace(
            "guest_timing =",
            "timing = [{ from = \"RESUME\", to = \"WATCHDOG\", expect = \"30s\" }]\nguest_timing =",
        );
        let e = parse(&timed, &b).unwrap_err();
        assert!(e.contains("scenario `w`: field `clock`: is \"virtual\", but the row's `timing` entries"), "{e}");
        assert!(e.contains("fix: time the guest instead (`guest_timing`"), "{e}");
        assert!(parse(&timed.replace("clock = \"virtual\"", "clock = \"real\""), &b).is_ok());
        // A board whose default is virtual: the row must say clock = "real".
        b[0].clock = Clock::Virtual;
        let unset = timed.replace("clock = \"virtual\"\n", "");
        let e = parse(&unset, &b).unwrap_err();
        assert!(
            e.contains("field `timing`: board `pc` runs in virtual time (clock = \"virtual\" in boards/pc.toml)"),
            "{e}"
        );
        assert!(parse(&timed.replace("clock = \"virtual\"", "clock = \"real\""), &b).is_ok());
        b[0].clock = Clock::Real;
        // A board under KVM cannot run in virtual time.
        b[0].accel = "kvm".into();
        let e = parse(VIRTUAL_ROW, &b).unwrap_err();
        assert!(e.contains("field `clock`: board `pc` cannot run in virtual time: -icount needs TCG"), "{e}");
        assert!(e.contains("fix: remove `pc` from `boards`, or remove `clock`"), "{e}");
        b[0].accel = "tcg".into();
        // The watchdog must exist on every board of the row.
        let e = parse(&VIRTUAL_ROW.replace("boards = [\"pc\"]", "boards = [\"pc\", \"s390\"]"), &b).unwrap_err();
        assert!(e.contains("field `guest_timing`: board `s390` is s390x, and ib700 exists on x86_64 only"), "{e}");
        // aarch64's virt has no NMI: the guest never times an expiry, even of
        // a watchdog that exists there.
        let mut with_virt = b.clone();
        with_virt.push(
            crate::config::parse_board(Path::new("boards/virt.toml"), crate::config::fixtures::VIRT, Path::new("/w"))
                .unwrap(),
        );
        let esb = VIRTUAL_ROW.replace("ib700", "i6300esb").replace("boards = [\"pc\"]", "boards = [\"pc\", \"virt\"]");
        let e = parse(&esb, &with_virt).unwrap_err();
        assert!(e.contains("field `guest_timing`: board `virt` is aarch64, and QEMU's virt machine has no NMI"), "{e}");
        assert!(e.contains("fix: time the expiry over QMP (`timing`, in real time)"), "{e}");
        assert!(parse(&esb.replace(", \"virt\"]", "]"), &with_virt).is_ok());
        // The guest must survive the expiry: inject-nmi in args, a variant or QMP.
        let quiet = VIRTUAL_ROW.replace(", \"-action\", \"watchdog=inject-nmi\"]", "]");
        let e = parse(&quiet, &b).unwrap_err();
        assert!(e.contains("field `guest_timing`: the agent times an expiry only when the guest survives it"), "{e}");
        assert!(e.contains("fix: add \"-action\", \"watchdog=inject-nmi\" to `args`"), "{e}");
        assert!(parse(&quiet.replace("clock =", "variants = [\"nmi\"]\nclock ="), &b).is_ok());
        let qmp = "qmp_before_cont = [{ execute = \"watchdog-set-action\", arguments = { action = \"inject-nmi\" } }]\nclock =";
        assert!(parse(&quiet.replace("clock =", qmp), &b).is_ok());
        let e = parse(&VIRTUAL_ROW.replace("clock = \"virtual\"", "clock = \"sometimes\""), &b).unwrap_err();
        assert!(e.contains("scenario `w`") && e.contains("sometimes") && e.contains("fix:"), "{e}");
    }

    #[test]
    fn timing_from_the_cont_resume() {
        let row = |t: &str| {
            format!(
                "[[scenario]]\nname = \"w\"\nexpect = [{{ event = \"WATCHDOG\" }}]\nend = {{ status = \"running\" }}\n\
                 timing = [{t}]\n"
            )
        };
        let t = parse(&row(r#"{ from = "RESUME", to = "WATCHDOG", expect = "15s" }"#)).unwrap();
        assert_eq!(t.scenarios[0].timing[0].from, EventRef { event: "RESUME".into(), occurrence: 1 });
        let e = err_of(&row(r#"{ from = "RESUME#2", to = "WATCHDOG", expect = "15s" }"#));
        assert!(e.contains("at most 1 RESUME"), "{e}");
    }
}
