//! CPU time from `/proc`, shared by the benches that `#[path]` this file in: beside a rate,
//! the CPU a record costs (user + system, every thread) is less bound to what else the shared
//! machine runs.

// Each bench reads some of whose CPU time, not all.
#![allow(dead_code)]

/// Whose CPU time [`cpu_seconds`] reads.
pub enum Whose<'a> {
    /// This process's.
    Own,
    /// Its children's that have ended and been waited for.
    Children,
    /// A running process's, by pid.
    Process(&'a str),
}

/// CPU seconds (user + system) so far, from `/proc/<pid>/stat`; 0 where it cannot be read.
pub fn cpu_seconds(whose: Whose<'_>) -> f64 {
    let pid = match whose {
        Whose::Process(pid) => pid,
        Whose::Own | Whose::Children => "self",
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // utime, stime, cutime, cstime are fields 14–17; `fields` starts at field 3.
    let at = |field: usize| -> f64 {
        fields
            .get(field - 3)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let ticks = match whose {
        Whose::Own | Whose::Process(_) => at(14) + at(15),
        Whose::Children => at(16) + at(17),
    };
    // Clock ticks: 100 a second on Linux (`getconf CLK_TCK`).
    ticks / 100.0
}
