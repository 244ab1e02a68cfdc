//! L1's console: what `/init` and L2 said ([`parse_console`]).

use super::CONSOLE_TAG;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
