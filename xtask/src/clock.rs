//! Which clock a run's guest lives on: the host's (`real`) or QEMU's
//! instruction counter (`virtual`, `-icount shift=0,sleep=off`). A leaf
//! module: boards (`clock = …`), rows (`clock = …`), the cases, the QEMU
//! command line and the reports all name a clock through this type.
//!
//! What the icount options do (QEMU 10.0, TCG only; KVM refuses them):
//!
//! * `shift=N`: every guest instruction advances virtual time by 2^N ns.
//!   `shift=0` is a 1 GHz guest: its TSC and timers follow the instruction
//!   count, not the host. (`shift=auto` adjusts N to the host's speed and
//!   needs `sleep=on`.)
//! * `sleep=off`: when every vCPU is idle (`hlt`, an enabled wait PSW),
//!   virtual time jumps straight to the next timer deadline instead of
//!   waiting for the host clock. A 30 s watchdog fires as soon as the guest
//!   halts. With no timer pending, virtual time stands still.
//! * `align=on`: slows the vCPU down so that virtual time does not run ahead
//!   of the host's; incompatible with `sleep=off`, and the opposite of what
//!   these runs want. Not used.
//!
//! The guest's own clocks stay consistent with each other under icount (the
//! agent's TSC calibration and sleeps, the watchdogs' timers, s390x's TOD
//! clock all count the same virtual nanoseconds), and the same run gives the
//! same guest times on every host. QMP event timestamps stay host time.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The clock of a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Clock {
    /// The guest's time is the host's (QEMU's default).
    #[default]
    Real,
    /// The guest's time is QEMU's instruction counter (`-icount
    /// shift=0,sleep=off`): decoupled from the host, deterministic.
    Virtual,
}

impl Clock {
    pub const ALL: [Clock; 2] = [Clock::Real, Clock::Virtual];

    /// The QEMU arguments of a run in virtual time (none for real time).
    pub const ICOUNT: [&'static str; 2] = ["-icount", "shift=0,sleep=off"];

    /// The name boards, rows, `--clock` and `PVAGENT_CLOCK` use.
    pub const fn as_str(self) -> &'static str {
        match self {
            Clock::Real => "real",
            Clock::Virtual => "virtual",
        }
    }

    /// `real` or `virtual` (as [`Clock::as_str`]); the error says what is
    /// accepted.
    pub fn parse(s: &str) -> Result<Clock, String> {
        Clock::ALL
            .into_iter()
            .find(|c| c.as_str() == s.trim())
            .ok_or_else(|| format!("unknown clock \"{s}\" (use \"real\" or \"virtual\")"))
    }
}

impl fmt::Display for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// The environment variable that forces every row's clock in `cargo xtask
/// test` (and `qemu-run`, like `--clock`).
pub const CLOCK_ENV: &str = "PVAGENT_CLOCK";

/// The clock forced by [`CLOCK_ENV`], if it is set (and not empty).
pub fn forced_from_env() -> Result<Option<Clock>, String> {
    match std::env::var(CLOCK_ENV) {
        Ok(v) if !v.trim().is_empty() => Clock::parse(&v).map(Some).map_err(|e| format!("{CLOCK_ENV}: {e}")),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(Clock::parse("virtual"), Ok(Clock::Virtual));
        assert_eq!(Clock::parse(" real\n"), Ok(Clock::Real));
        assert!(Clock::parse("icount").unwrap_err().contains("use \"real\" or \"virtual\""));
        assert_eq!(Clock::default(), Clock::Real);
        assert_eq!(Clock::Virtual.to_string(), "virtual");
        assert_eq!(format!("[{:<7}]", Clock::Real), "[real   ]");
        assert_eq!(serde_json::to_value(Clock::Virtual).unwrap(), "virtual");
    }
}
