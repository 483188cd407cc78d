//! What splitting an input costs beyond its own bytes, as the process's peak resident memory
//! (Linux's VmHWM, reset before each case): it must not grow with how many records the input
//! holds. A hostile input of millions of tiny records (`[1,1,…]`, two bytes a record) once cost
//! a list entry per record — 16 bytes for its text, more for what was gathered about it — so a
//! few megabytes of gzip could take gigabytes to read.
//!
//! One test, its cases in turn: the peak is the whole process's, and nothing else runs in it.

use trailguard_ingest::split::{split_each, Limits, MOST_BAD_SEQUENCES};

/// Records in each case: 2,000,000 once cost a list of ≈ 32 MB (their texts) and ≈ 128 MB
/// (what was gathered about each).
const RECORDS: usize = 2_000_000;

type Fallible<T> = Result<T, Box<dyn std::error::Error>>;

/// A field of /proc/self/status, in bytes.
fn status(field: &str) -> Fallible<usize> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .ok_or_else(|| format!("no {field} in /proc/self/status"))?;
    let kib: usize = line.trim().trim_end_matches("kB").trim().parse()?;
    Ok(kib * 1024)
}

/// The most resident memory the process held while `input` was split (each record counted,
/// none kept), beyond what it held before; and how many records and failed parts it gave.
fn cost_of(input: &[u8]) -> Fallible<(usize, usize)> {
    // Writing 5 resets the peak to what is resident now.
    std::fs::write("/proc/self/clear_refs", "5")?;
    let before = status("VmHWM:")?;
    let mut parts = 0usize;
    split_each(input, Limits::default(), &mut |item| {
        parts += 1;
        drop(item);
    });
    Ok((status("VmHWM:")?.saturating_sub(before), parts))
}

/// `records` tiny records (`1`) between `open` and `close`, and `tail` after them, built in one
/// allocation of its size (no larger temporary leaves memory behind to be reused unseen).
fn input(open: &[u8], records: usize, tail: &[u8], close: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(open.len() + records * 2 + tail.len() + close.len());
    bytes.extend_from_slice(open);
    for i in 0..records {
        bytes.extend_from_slice(if i == 0 { b"1" } else { b",1" });
    }
    bytes.extend_from_slice(tail);
    bytes.extend_from_slice(close);
    bytes
}

#[test]
fn what_splitting_costs_does_not_grow_with_the_records() -> Fallible<()> {
    const MIB: usize = 1 << 20;
    let bad = MOST_BAD_SEQUENCES / 2;
    let lines = {
        // Eight lines, arrays and log files in turn, a quarter of a million records each.
        let each = RECORDS / 8;
        let mut bytes = Vec::with_capacity(RECORDS * 2 + 64);
        for line in 0..8 {
            let (open, close): (&[u8], &[u8]) = if line % 2 == 0 {
                (b"[", b"]\n")
            } else {
                (b"{\"Records\":[", b"]}\n")
            };
            bytes.extend_from_slice(&input(open, each, b"", close));
        }
        bytes
    };
    let bad_tail: Vec<u8> = std::iter::repeat_n(&b",\"\xff\""[..], bad)
        .flatten()
        .copied()
        .collect();
    let cases: Vec<(&str, Vec<u8>, usize, usize)> = vec![
        (
            "a log file",
            input(b"{\"Records\":[", RECORDS, b"", b"]}"),
            RECORDS,
            4 * MIB,
        ),
        (
            "an array",
            input(b"[", RECORDS, b"", b"]"),
            RECORDS,
            4 * MIB,
        ),
        (
            "NDJSON lines of arrays and log files",
            lines,
            RECORDS,
            4 * MIB,
        ),
        (
            // Read again record by record (the records before the break are kept): a bounded
            // reading buffer, and each record's own text while it is handed over.
            "a log file cut off",
            input(b"{\"Records\":[", RECORDS, b"", b""),
            RECORDS + 1,
            4 * MIB,
        ),
        (
            // Read with each bad sequence replaced: a copy of the text (counted below), and
            // where each bad sequence was.
            "a log file with bytes that are not UTF-8",
            input(b"{\"Records\":[", RECORDS, &bad_tail, b"]}"),
            RECORDS + bad,
            4 * MIB,
        ),
    ];
    for (what, input, parts, most) in cases {
        // A copy of its text is what a document with bad bytes may cost beyond the rest.
        let most = if what.contains("UTF-8") {
            most + input.len() + bad * 3
        } else {
            most
        };
        let (cost, found) = cost_of(&input)?;
        println!(
            "{what}: {} bytes, {found} parts, {cost} bytes more resident at most",
            input.len()
        );
        assert_eq!(found, parts, "{what}");
        assert!(
            cost <= most,
            "{what}: {cost} bytes more resident while split (at most {most}; the input is {})",
            input.len()
        );
    }
    Ok(())
}
