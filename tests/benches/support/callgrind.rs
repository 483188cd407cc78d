//! Instruction counts for `make bench`, shared by the benches that `#[path]` this file in.
//!
//! Wall-clock figures on a shared machine move by a third between runs; the instructions a
//! piece of code executes do not. A bench reruns itself under valgrind's callgrind with
//! [`UNDER`] set, on a smaller input, and callgrind counts only what runs inside one named
//! function (`--collect-atstart=no --toggle-collect`): the core being measured, without the
//! corpus building around it. The name must be unique in the binary — callgrind toggles on
//! every function that matches, and a nested match would turn counting off.

use std::process::{Command, Stdio};

/// Set in the rerun: the bench builds its input, runs the counted function once and stops.
pub const UNDER: &str = "TRAILGUARD_BENCH_UNDER_CALLGRIND";

/// Whether this run is the rerun under callgrind.
pub fn is_rerun() -> bool {
    std::env::var_os(UNDER).is_some()
}

/// Instructions executed inside `function` (and all it calls) when this bench reruns under
/// callgrind with `env` added; why not, when valgrind is missing, the count is turned off
/// (`TRAILGUARD_BENCH_CALLGRIND=0`) or the rerun fails.
pub fn instructions(function: &str, env: &[(&str, String)]) -> Result<u64, String> {
    if std::env::var("TRAILGUARD_BENCH_CALLGRIND").as_deref() == Ok("0") {
        return Err("turned off by TRAILGUARD_BENCH_CALLGRIND=0".into());
    }
    // `cargo test --all-targets` runs the benches once, unoptimized, as a smoke test: a debug
    // build's count means nothing and would take minutes under valgrind.
    if cfg!(debug_assertions) {
        return Err("a debug build (`make bench` counts in release)".into());
    }
    let exe = std::env::current_exe().map_err(|e| format!("no path to this bench: {e}"))?;
    let dir = tempfile::tempdir().map_err(|e| format!("no temporary directory: {e}"))?;
    let out = dir.path().join("callgrind.out");
    let status = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg("--collect-atstart=no")
        .arg(format!("--toggle-collect=*{function}*"))
        .arg(exe)
        .arg("--bench")
        .env(UNDER, "1")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match status {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err("valgrind is not installed (`apt-get install valgrind`)".into())
        }
        Err(e) => return Err(format!("valgrind did not start: {e}")),
        Ok(s) if !s.success() => return Err(format!("the rerun under valgrind failed ({s})")),
        Ok(_) => {}
    }
    let text = std::fs::read_to_string(&out).map_err(|e| format!("no callgrind output: {e}"))?;
    // `totals:` (or `summary:` in older valgrind) holds the events of the whole run: with
    // collection toggled, only the function's.
    text.lines()
        .find_map(|l| {
            l.strip_prefix("totals:")
                .or_else(|| l.strip_prefix("summary:"))
        })
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .filter(|&n: &u64| n > 0)
        .ok_or_else(|| format!("callgrind counted nothing in `{function}`"))
}
