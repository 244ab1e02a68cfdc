//! Cases: one concrete run each, board × scenario × variant, expanded from
//! the validated table in file order and filtered by `--board` and
//! `--scenario` globs, each on its clock (the row's, else the board's, unless
//! `--clock`/`PVAGENT_CLOCK` forces one).

use std::sync::Arc;

use crate::clock::Clock;
use crate::config::{Board, Scenario, Scenarios, ScriptVia, Variant};
use crate::util::{Version, glob_match};

/// One concrete run: board × scenario × variant.
#[derive(Clone, Debug)]
pub struct Case {
    pub board: Arc<Board>,
    pub scenario: Arc<Scenario>,
    pub variant: Option<Variant>,
    /// The clock the case runs on.
    pub clock: Clock,
    /// Why `clock` is not the one asked for (a forced virtual clock on a
    /// board that cannot run it).
    pub clock_note: Option<String>,
}

/// The clock of `scenario` on `board`: `forced`, else the row's, else the
/// board's. A board that cannot run in virtual time (KVM) keeps real time
/// under a forced virtual clock, with the reason (the table validation
/// refuses it everywhere else).
pub fn resolve_clock(board: &Board, scenario: &Scenario, forced: Option<Clock>) -> (Clock, Option<String>) {
    let want = forced.or(scenario.clock).unwrap_or(board.clock);
    match (want, board.virtual_time_problem()) {
        (Clock::Virtual, Some(why)) => {
            (Clock::Real, Some(format!("real time: board {} cannot run in virtual time ({why})", board.name)))
        }
        _ => (want, None),
    }
}

impl Case {
    /// `scenario` or `scenario/variant`.
    pub fn id(&self) -> String {
        match &self.variant {
            Some(v) => format!("{}/{}", self.scenario.name, v.name),
            None => self.scenario.name.clone(),
        }
    }

    /// `board::scenario/variant`, the e2e trial name.
    pub fn full_name(&self) -> String {
        format!("{}::{}", self.board.name, self.id())
    }

    /// The highest of the scenario's and the variant's `min_qemu`.
    pub fn min_qemu(&self) -> Option<Version> {
        let v = self.variant.as_ref().and_then(|v| v.min_qemu);
        match (self.scenario.min_qemu, v) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    /// Scenario arguments followed by the variant's.
    pub fn extra_args(&self) -> Vec<String> {
        let mut args = self.scenario.args.clone();
        if let Some(v) = &self.variant {
            args.extend(v.args.iter().cloned());
        }
        args
    }

    /// How the script reaches the agent: the scenario's `script_via`, else
    /// the board's default.
    pub fn script_via(&self) -> ScriptVia {
        self.scenario.script_via.unwrap_or(self.board.script_via)
    }
}

/// Expands the table into cases, board-major, in file order. `boards` and
/// `globs` filter (empty = all); a glob matches the case id, the scenario
/// name or the full name (`board::id`). `clock`: every case's clock
/// (`None`: each row's, else its board's).
pub fn expand_cases(
    boards: &[Board],
    table: &Scenarios,
    board_filter: &[String],
    globs: &[String],
    clock: Option<Clock>,
) -> Result<Vec<Case>, String> {
    for b in board_filter {
        if !boards.iter().any(|x| &x.name == b) {
            return Err(format!(
                "unknown board `{b}` (known: {})",
                boards.iter().map(|b| b.name.as_str()).collect::<Vec<_>>().join(", ")
            ));
        }
    }
    let mut cases = Vec::new();
    for board in boards {
        if !board_filter.is_empty() && !board_filter.contains(&board.name) {
            continue;
        }
        let board = Arc::new(board.clone());
        for s in &table.scenarios {
            if !s.boards.contains(&board.name) {
                continue;
            }
            let vars: Vec<Option<Variant>> = if s.variants.is_empty() {
                vec![None]
            } else {
                s.variants
                    .iter()
                    .map(|v| table.variants[v].clone())
                    .filter(|v| v.boards.as_ref().is_none_or(|b| b.contains(&board.name)))
                    .map(Some)
                    .collect()
            };
            for variant in vars {
                let (clock, clock_note) = resolve_clock(&board, s, clock);
                let case = Case { board: board.clone(), scenario: s.clone(), variant, clock, clock_note };
                let id = case.id();
                if globs.is_empty()
                    || globs
                        .iter()
                        .any(|g| glob_match(g, &id) || glob_match(g, &s.name) || glob_match(g, &case.full_name()))
                {
                    cases.push(case);
                }
            }
        }
    }
    Ok(cases)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::fixtures::{GOOD, GROUPED, LIST, boards, mixed_boards, parse, parse_with};

    #[test]
    fn a_script_list_runs_once_per_entry() {
        let t = parse(LIST).unwrap();
        let cases = expand_cases(&boards(), &t, &[], &[], None).unwrap();
        assert_eq!(cases.len(), 3);
    }

    #[test]
    fn good_table() {
        let t = parse(GOOD).unwrap();
        let cases = expand_cases(&boards(), &t, &[], &[], None).unwrap();
        let names: Vec<String> = cases.iter().map(|c| c.full_name()).collect();
        assert_eq!(names, vec!["pc::p/isa", "pc::p/pci"]);
        assert_eq!(cases[1].min_qemu(), Some(Version::new(6, 0, 0)));
        assert_eq!(cases[0].min_qemu(), Some(Version::new(5, 0, 0)));
        assert_eq!(cases[1].extra_args(), vec!["-action", "panic=pause", "-device", "pvpanic-pci"]);
        let only_pci = expand_cases(&boards(), &t, &[], &["*pci".into()], None).unwrap();
        assert_eq!(only_pci.len(), 1);
        assert!(expand_cases(&boards(), &t, &["nope".into()], &[], None).is_err());
    }

    #[test]
    fn clocks_row_board_and_forced() {
        let mut b = mixed_boards();
        b[1].clock = Clock::Virtual; // fast: virtual by default
        b[2].accel = "kvm".into(); // micro: cannot run in virtual time
        let t = parse_with(GROUPED, &b).unwrap();
        let clocks = |forced| -> Vec<(String, Clock, bool)> {
            expand_cases(&b, &t, &[], &["p/isa".into()], forced)
                .unwrap()
                .iter()
                .map(|c| (c.board.name.clone(), c.clock, c.clock_note.is_some()))
                .collect()
        };
        let v = |n: &str, c, note| (n.to_string(), c, note);
        assert_eq!(
            clocks(None),
            [v("pc", Clock::Real, false), v("fast", Clock::Virtual, false), v("micro", Clock::Real, false)]
        );
        assert_eq!(
            clocks(Some(Clock::Real)),
            [v("pc", Clock::Real, false), v("fast", Clock::Real, false), v("micro", Clock::Real, false)]
        );
        assert_eq!(
            clocks(Some(Clock::Virtual)),
            [v("pc", Clock::Virtual, false), v("fast", Clock::Virtual, false), v("micro", Clock::Real, true)]
        );
        let micro = expand_cases(&b, &t, &["micro".into()], &["p/isa".into()], Some(Clock::Virtual)).unwrap();
        assert_eq!(
            micro[0].clock_note.as_deref(),
            Some(
                "real time: board micro cannot run in virtual time (-icount needs TCG, and this board's accel is \"kvm\")"
            )
        );
        // A row's own clock wins over the board's, a forced one over both.
        let mut row = (*t.scenarios[0]).clone();
        row.clock = Some(Clock::Real);
        assert_eq!(resolve_clock(&b[1], &row, None), (Clock::Real, None));
        assert_eq!(resolve_clock(&b[1], &row, Some(Clock::Virtual)), (Clock::Virtual, None));
    }

    #[test]
    fn groups_variant_boards_and_per_board_script_via() {
        let b = mixed_boards();
        let t = parse_with(GROUPED, &b).unwrap();
        let cases = expand_cases(&b, &t, &[], &[], None).unwrap();
        let names: Vec<String> = cases.iter().map(|c| c.full_name()).collect();
        assert_eq!(
            names,
            vec![
                "pc::p/isa",
                "pc::p/pci",
                "pc::a",
                "fast::p/isa",
                "fast::p/pci",
                "micro::p/isa",
                "micro::a",
                "s390::s"
            ]
        );
        let via: Vec<ScriptVia> = cases.iter().map(|c| c.script_via()).collect();
        assert_eq!(via[0], ScriptVia::FwCfg);
        assert_eq!(via[2], ScriptVia::Append);
        assert_eq!(via[7], ScriptVia::Append, "s390x default");
    }
}
