//! `[scripts.LIST]` tables of scenarios.toml: named lists of scripts. A row
//! with `scripts = "LIST"` runs once per entry (the expansion is in
//! `scenario.rs`).

use std::collections::BTreeMap;

use serde::Deserialize;

use super::board::{Board, NAME_FIX, ScriptVia, board_subset, valid_name};
use crate::error::{ConfigError, Place};

/// One script of a `[scripts.LIST]` table: a row that names the list runs
/// once per entry, as `<row>.<key>`.
#[derive(Clone, Debug)]
pub struct ScriptEntry {
    pub key: String,
    pub script: String,
    /// Added to the row's `log_contains`.
    pub log_contains: Vec<String>,
    /// Overrides the row's `script_via`.
    pub script_via: Option<ScriptVia>,
    /// Only on these boards (groups expanded); `None`: the row's boards.
    pub boards: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScriptEntryDef {
    script: String,
    #[serde(default)]
    log_contains: Vec<String>,
    script_via: Option<ScriptVia>,
    boards: Option<Vec<String>>,
}

/// The named lists, by name.
pub type ScriptLists = BTreeMap<String, Vec<ScriptEntry>>;

/// A NUL byte reaches the agent only through a file (`script_via =
/// "fw_cfg_file"`): QEMU's `string=` and `-append` end at it.
pub(super) fn nul_problem(script: &str, via: Option<ScriptVia>) -> Option<&'static str> {
    (script.contains('\0') && via != Some(ScriptVia::FwCfgFile))
        .then_some("contains a NUL byte, which only script_via = \"fw_cfg_file\" can deliver")
}

/// Parses the `[scripts.LIST]` tables (`file` is the scenario file's place):
/// each key a script, or a table `{ script, log_contains, script_via, boards }`.
pub(super) fn parse_lists(
    file: &Place,
    value: Option<&toml::Value>,
    boards: &[Board],
    errors: &mut Vec<ConfigError>,
) -> ScriptLists {
    let mut lists = BTreeMap::new();
    let fix_shape = "write [scripts.NAME] tables whose entries are `key = \"script\"` or \
                     `key = { script = \"…\", log_contains = [..], script_via = \"…\", boards = [..] }`";
    let tables = match value {
        None => return lists,
        Some(toml::Value::Table(t)) => t,
        Some(_) => {
            errors.push(file.error("`scripts` must be a table of tables", fix_shape));
            return lists;
        }
    };
    for (list, entries) in tables {
        let at = file.within(format!("scripts.{list}"));
        if !valid_name(list) {
            errors.push(at.error("invalid name", NAME_FIX));
            continue;
        }
        let Some(entries) = entries.as_table() else {
            errors.push(at.error("must be a table", fix_shape));
            continue;
        };
        if entries.is_empty() {
            errors.push(at.error("has no scripts", "add entries or remove the table"));
        }
        let mut out = Vec::new();
        for (key, v) in entries {
            let at = file.within(format!("scripts.{list}.{key}"));
            match parse_entry(&at, key, v, boards, fix_shape) {
                Ok(e) => out.push(e),
                Err(e) => errors.push(e),
            }
        }
        lists.insert(list.clone(), out);
    }
    lists
}

fn parse_entry(
    at: &Place,
    key: &str,
    value: &toml::Value,
    boards: &[Board],
    fix_shape: &str,
) -> Result<ScriptEntry, ConfigError> {
    if !valid_name(key) {
        return Err(at.error("invalid key", NAME_FIX));
    }
    let def = match value {
        toml::Value::String(script) => {
            ScriptEntryDef { script: script.clone(), log_contains: Vec::new(), script_via: None, boards: None }
        }
        other => at.deserialize::<ScriptEntryDef>(other.clone(), fix_shape)?,
    };
    if def.script.trim().is_empty() {
        return Err(at.error("the script is empty (that is the no-script case, not a script)", "write a script"));
    }
    if let Some(p) = nul_problem(&def.script, def.script_via) {
        return Err(at.error(format!("the script {p}"), "set script_via = \"fw_cfg_file\" in the entry"));
    }
    if def.log_contains.iter().any(String::is_empty) {
        return Err(at.error("`log_contains` has an empty string", "remove it"));
    }
    let boards = def.boards.as_deref().map(|l| board_subset(l, boards)).transpose();
    Ok(ScriptEntry {
        key: key.to_string(),
        script: def.script,
        log_contains: def.log_contains,
        script_via: def.script_via,
        boards: boards.map_err(|p| at.problem(Some("boards"), p))?,
    })
}

/// Removes a row's `scripts = "LIST"` (`row` is the row's place) and returns
/// that list's entries.
pub(super) fn take_list<'a>(
    row: &Place,
    value: &mut toml::Value,
    lists: &'a ScriptLists,
) -> Result<Option<&'a [ScriptEntry]>, ConfigError> {
    let Some(name) = value.as_table_mut().and_then(|t| t.remove("scripts")) else { return Ok(None) };
    let Some(name) = name.as_str() else {
        return Err(row.field("scripts", "must be a string", "write scripts = \"LIST\" naming a [scripts.LIST] table"));
    };
    if value.get("script").is_some() {
        return Err(row.error("has both `script` and `scripts`", "keep one of them"));
    }
    match lists.get(name) {
        Some(entries) => Ok(Some(entries)),
        None => Err(row.field(
            "scripts",
            format!("no [scripts.{name}] table"),
            format!(
                "use one of: {} (or add [scripts.{name}])",
                if lists.is_empty() {
                    "(none defined)".to_string()
                } else {
                    lists.keys().cloned().collect::<Vec<_>>().join(", ")
                }
            ),
        )),
    }
}
