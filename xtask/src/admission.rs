//! Admission of concurrent runs: a case starts only when the host has a CPU
//! to spare.
//!
//! `--jobs` caps how many QEMUs exist at once, but most watchdog cases spend
//! their time waiting with the guest halted (almost no CPU), while booting
//! and the agent's busy-wait `sleep`/`feed` steps take a whole CPU. Starting
//! cases blindly up to `--jobs` on a small machine starves the busy ones, and
//! the agent's timing (its TSC is calibrated in a 5 ms window at the first
//! `sleep`/`feed`) suffers. So, on top of the cap, a new case starts only
//!
//! * when none of ours is running, or
//! * when at least [`IDLE_CPUS_NEEDED`] CPUs were idle host-wide (any
//!   process's load counts, from `/proc/stat`) during a window of at least
//!   [`WINDOW`] that began after the previous start.
//!
//! A window that saw more idle CPUs than that admits more than one case
//! at once: one more per [`START_COST`] CPUs to spare, up to [`MAX_BURST`]
//! (one start per window paced the ~600 short rows at the end of the
//! matrix at about 13-17 a second while a CPU stood idle).
//!
//! `PVAGENT_CPU_GATE=<n>` changes the idle CPUs needed (e.g. `0.5`); without
//! `/proc/stat`, or with `PVAGENT_CPU_GATE=off`, only the cap applies.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Idle CPUs (host-wide) needed to start one more case.
pub const IDLE_CPUS_NEEDED: f64 = 0.5;
/// Shortest measurement window (also the least spacing between two starts).
/// 150 ms capped a 369-run matrix at about 6.5 starts a second (≥ 55 s);
/// 50 ms (5 jiffies of `/proc/stat` per CPU) still sees a QEMU's start-up.
pub const WINDOW: Duration = Duration::from_millis(50);
const POLL: Duration = Duration::from_millis(25);
/// What one start is taken to cost for a moment (a QEMU's start-up takes
/// most of a CPU for a few tens of ms): a window that saw
/// `needed + k × START_COST` idle CPUs admits up to `k` more cases at once
/// (at most [`MAX_BURST`] in all), each of which would have been admitted
/// by a window of its own.
pub const START_COST: f64 = 0.5;
/// Most cases one window admits.
pub const MAX_BURST: u32 = 4;

/// Aggregate CPU jiffies from `/proc/stat` (`idle` includes iowait).
#[derive(Clone, Copy, Debug)]
struct CpuTimes {
    idle: u64,
    total: u64,
}

fn parse_proc_stat(text: &str) -> Option<CpuTimes> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).map(|x| x.parse().ok()).collect::<Option<_>>()?;
    if v.len() < 5 {
        return None;
    }
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total = v.iter().take(8).sum();
    Some(CpuTimes { idle: v[3] + v[4], total })
}

fn read_cpu_times() -> Option<CpuTimes> {
    parse_proc_stat(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// How many CPUs were idle between two samples.
fn idle_cpus(a: CpuTimes, b: CpuTimes, cpus: usize) -> f64 {
    let total = b.total.saturating_sub(a.total);
    if total == 0 {
        return 0.0;
    }
    b.idle.saturating_sub(a.idle) as f64 / total as f64 * cpus as f64
}

struct State {
    running: usize,
    /// Start of the current measurement window.
    window: Option<(Instant, CpuTimes)>,
    /// The newest `/proc/stat` sample, shared by the waiting cases: at most
    /// one read per [`POLL`] for all of them, however many wait.
    sample: Option<(Instant, CpuTimes)>,
    /// Starts the last window still allows without a window of their own
    /// (see [`START_COST`]), and when it allowed them: they lapse after two
    /// polls.
    spare: Option<(u32, Instant)>,
}

impl State {
    /// `/proc/stat` now, or the shared sample if it is younger than [`POLL`].
    fn cpu_times(&mut self, now: Instant) -> Option<CpuTimes> {
        if let Some((at, t)) = self.sample
            && now.duration_since(at) < POLL
        {
            return Some(t);
        }
        let t = read_cpu_times()?;
        self.sample = Some((now, t));
        Some(t)
    }
}

/// The gate every case passes before it starts its QEMU.
pub struct Admission {
    state: Mutex<State>,
}

/// Held while a case runs.
pub struct Ticket<'a> {
    gate: &'a Admission,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let mut st = self.gate.state.lock().unwrap_or_else(|e| e.into_inner());
        st.running -= 1;
    }
}

/// Idle CPUs needed, `None` = no gate (`PVAGENT_CPU_GATE`).
fn idle_needed() -> Option<f64> {
    match std::env::var("PVAGENT_CPU_GATE") {
        Err(_) => Some(IDLE_CPUS_NEEDED),
        Ok(v) if matches!(v.trim(), "off" | "0" | "no") => None,
        Ok(v) => Some(v.trim().parse::<f64>().ok().filter(|x| *x > 0.0).unwrap_or(IDLE_CPUS_NEEDED)),
    }
}

impl Admission {
    pub const fn new() -> Admission {
        Admission { state: Mutex::new(State { running: 0, window: None, sample: None, spare: None }) }
    }

    /// Waits until a case may start.
    pub fn enter(&self) -> Ticket<'_> {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        let needed = idle_needed();
        loop {
            {
                let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
                let now = Instant::now();
                if let Some((n, at)) = st.spare
                    && n > 0
                    && now.duration_since(at) < 2 * POLL
                {
                    // One of the starts the last window allowed at once.
                    st.spare = Some((n - 1, at));
                    st.running += 1;
                    return Ticket { gate: self };
                }
                let admit = if let (false, Some(needed)) = (st.running == 0, needed) {
                    match st.window {
                        // A window younger than WINDOW admits nothing: no
                        // need to look at /proc/stat.
                        Some((since, _)) if now.duration_since(since) < WINDOW => false,
                        window => match (window, st.cpu_times(now)) {
                            (_, None) => true,
                            (None, Some(t)) => {
                                st.window = Some((now, t));
                                false
                            }
                            (Some((_, a)), Some(b)) => {
                                let idle = idle_cpus(a, b, cpus);
                                let more = ((idle - needed) / START_COST).floor().clamp(0.0, f64::from(MAX_BURST - 1));
                                st.spare = Some((more as u32, now));
                                idle >= needed
                            }
                        },
                    }
                } else {
                    true
                };
                if admit {
                    st.running += 1;
                    // The next start needs a window that sees this one's
                    // load: from a fresh sample.
                    st.sample = None;
                    st.window = st.cpu_times(now).map(|t| (now, t));
                    return Ticket { gate: self };
                }
                // Keep the window short and recent: restart it when it
                // grew long without admitting anything.
                if let Some((since, _)) = st.window
                    && now.duration_since(since) >= 4 * WINDOW
                {
                    st.window = st.cpu_times(now).map(|t| (now, t));
                }
            }
            std::thread::sleep(POLL);
        }
    }
}

impl Default for Admission {
    fn default() -> Self {
        Admission::new()
    }
}

/// The process-wide gate (the table runner and the e2e harness share it).
pub static ADMISSION: Admission = Admission::new();

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat() {
        let a = parse_proc_stat("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4 5\n").unwrap();
        assert_eq!((a.idle, a.total), (850, 1000));
        let b = CpuTimes { idle: 850 + 150, total: 1000 + 200 };
        assert!((idle_cpus(a, b, 2) - 1.5).abs() < 1e-9);
        assert_eq!(idle_cpus(a, a, 2), 0.0);
        assert!(parse_proc_stat("intr 1 2 3").is_none());
        assert!(parse_proc_stat("cpu  1 2").is_none());
    }

    #[test]
    fn a_window_with_cpus_to_spare_admits_several() {
        let gate = Admission::new();
        let _first = gate.enter();
        {
            let mut st = gate.state.lock().unwrap();
            st.spare = Some((2, Instant::now()));
        }
        let start = Instant::now();
        let _a = gate.enter();
        let _b = gate.enter();
        assert!(start.elapsed() < WINDOW, "the two spare starts waited");
        assert_eq!(gate.state.lock().unwrap().spare.map(|s| s.0), Some(0));
    }

    #[test]
    fn first_case_is_admitted_at_once() {
        let gate = Admission::new();
        let start = Instant::now();
        let t = gate.enter();
        assert!(start.elapsed() < WINDOW);
        drop(t);
        let _t = gate.enter();
        assert!(start.elapsed() < WINDOW);
    }
}
