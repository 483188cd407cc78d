//! Hostile and broken inputs through the `ingest` binary and the real broker: each has a clear
//! outcome (published, or dead-lettered with its kind and where it was), nothing good around it
//! is lost, no input panics the process, and memory stays bounded. Inputs are generated here:
//! deep JSON, a 200 MB record, bytes that are not UTF-8, NUL bytes, `1e999999`, duplicate keys,
//! a 1 MB `eventName`, a far-future time, records without ids, a launch of 1,200 instances,
//! a decompression bomb, a truncated gzip, symbolic-link loops, stdin that is not JSON, and
//! 10⁵ source addresses for one principal.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use trailguard_tests::{read_topic, Record, Run};

const TIMEOUT: Duration = Duration::from_secs(120);
const SETTLE: Duration = Duration::from_secs(2);

/// A valid CloudTrail record of `name` by user `user`, with `extra` fields merged in.
fn record(id: &str, name: &str, extra: Value) -> Value {
    let mut r = json!({
        "eventVersion": "1.08", "eventTime": "2024-01-01T00:00:00Z",
        "eventSource": "iam.amazonaws.com", "eventName": name, "awsRegion": "us-east-1",
        "sourceIPAddress": "198.51.100.1", "eventID": id, "recipientAccountId": "111122223333",
        "userIdentity": {"type": "IAMUser", "arn": "arn:aws:iam::111122223333:user/u", "accountId": "111122223333", "userName": "u"}
    });
    if let (Some(r), Some(extra)) = (r.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            r.insert(k.clone(), v.clone());
        }
    }
    r
}

fn gzip(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(bytes)?;
    Ok(gz.finish()?)
}

/// The peak resident memory of a running process (`VmHWM`), in kB.
fn peak_rss_kb(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// How `ingest files` ended, what it printed, and its peak resident memory.
struct Outcome {
    status: std::process::ExitStatus,
    summary: Value,
    stderr: String,
    peak_rss_mb: u64,
}

/// Runs `ingest files --summary json ARGS`, watching its peak resident memory (VmHWM) until
/// it exits; `stdin` is fed to it when given.
fn ingest(run: &Run, args: &[&str], stdin: Option<&Path>) -> Result<Outcome> {
    ingest_with(run, args, stdin, &[])
}

/// [`ingest`], with settings in the environment.
fn ingest_with(
    run: &Run,
    args: &[&str],
    stdin: Option<&Path>,
    env: &[(&str, &str)],
) -> Result<Outcome> {
    let log = std::env::temp_dir().join(format!("{}-ingest-{}.log", run.id, std::process::id()));
    let mut all = vec!["files", "--summary", "json"];
    all.extend_from_slice(args);
    let mut command = run.command("ingest", &all)?;
    command.envs(env.iter().copied());
    command
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log)?);
    match stdin {
        Some(path) => command.stdin(std::fs::File::open(path)?),
        None => command.stdin(std::process::Stdio::null()),
    };
    let mut child = command.spawn()?;
    let mut peak_kb = 0;
    let deadline = Instant::now() + Duration::from_secs(300);
    let status = loop {
        peak_kb = peak_kb.max(peak_rss_kb(child.id()).unwrap_or(0));
        if let Some(status) = child.try_wait()? {
            break status;
        }
        ensure!(Instant::now() < deadline, "ingest did not finish");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stdout = String::new();
    if let Some(mut out) = child.stdout.take() {
        std::io::Read::read_to_string(&mut out, &mut stdout)?;
    }
    Ok(Outcome {
        status,
        summary: serde_json::from_str(&stdout).unwrap_or(Value::Null),
        stderr: std::fs::read_to_string(&log).unwrap_or_default(),
        peak_rss_mb: peak_kb / 1024,
    })
}

fn header<'a>(record: &'a Record, name: &str) -> &'a str {
    record.headers.get(name).map(String::as_str).unwrap_or("")
}

/// Dead letters by (kind, index).
fn dead_letters(run: &Run, expected: usize) -> Result<Vec<Record>> {
    read_topic(&run.topic("dlq"), TIMEOUT, SETTLE, |r| r.len() >= expected)
}

fn activities(run: &Run, expected: usize) -> Result<Vec<Value>> {
    let records = read_topic(&run.topic("activities"), TIMEOUT, SETTLE, |r| {
        r.len() >= expected
    })?;
    records
        .iter()
        .map(|r| Ok(serde_json::from_slice(&r.value)?))
        .collect()
}

/// The lines of the hostile NDJSON file (numbered from 1 in the comments).
fn hostile_lines() -> Vec<Vec<u8>> {
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let future = chrono::Utc::now() + chrono::Duration::days(3650);
    let no_id = |ip: &str| {
        let mut r = record(
            "",
            "ConsoleLogin",
            json!({
            "eventSource": "signin.amazonaws.com", "eventType": "AwsConsoleSignIn",
            "sourceIPAddress": ip, "responseElements": {"ConsoleLogin": "Failure"},
            "errorMessage": "Failed authentication"}),
        );
        if let Some(o) = r.as_object_mut() {
            o.remove("eventID");
        }
        r.to_string()
    };
    let launch = record(
        "launch",
        "RunInstances",
        json!({
            "eventSource": "ec2.amazonaws.com",
            "requestParameters": {"instancesSet": {"items": [{"imageId": "ami-1", "minCount": 1200, "maxCount": 1200}]}},
            "responseElements": {"instancesSet": {"items": (0..1200).map(|i| json!({
                "instanceId": format!("i-{i:017x}"), "instanceType": "m5.large",
                "networkInterfaceSet": {"items": [{"networkInterfaceId": "eni-1", "description": "d".repeat(300)}]},
                "tagSet": {"items": [{"key": "k", "value": "v".repeat(400)}]}
            })).collect::<Vec<_>>()}}
        }),
    );
    vec![
        record("good-1", "ListUsers", json!({})).to_string().into_bytes(),
        // 2: nested 100,000 deep inside the parameters.
        format!(r#"{{"eventVersion":"1.08","eventTime":"2024-01-01T00:00:00Z","eventSource":"iam.amazonaws.com","eventName":"X","eventID":"deep","userIdentity":{{"type":"Root"}},"requestParameters":{deep}}}"#).into_bytes(),
        // 3: a byte that is not UTF-8.
        b"{\"eventName\":\"\xff\xfe\",\"eventSource\":\"iam.amazonaws.com\"}".to_vec(),
        // 4: a raw NUL inside a string.
        b"{\"eventName\":\"a\x00b\",\"eventSource\":\"iam.amazonaws.com\"}".to_vec(),
        // 5: a number no float holds.
        record("big-number", "X", json!({})).to_string().replace("\"X\"", "\"X\",\"requestParameters\":{\"n\":1e999999}").into_bytes(),
        // 6: a duplicate top-level key.
        record("dup", "ListUsers", json!({})).to_string().replacen('{', "{\"eventName\":\"DeleteUser\",", 1).into_bytes(),
        // 7: a 1 MB event name.
        record("long-name", &"A".repeat(1 << 20), json!({})).to_string().into_bytes(),
        // 8: ten years ahead.
        record("future", "DeleteTrail", json!({"eventTime": future.to_rfc3339()})).to_string().into_bytes(),
        // 9, 10: two failed sign-ins without ids, alike in every field.
        no_id("203.0.113.9").into_bytes(),
        no_id("203.0.113.9").into_bytes(),
        // 11: a launch too large for one message.
        launch.to_string().into_bytes(),
        // 12: a depth-100,000 array as the record itself.
        deep.clone().into_bytes(),
        record("good-2", "ListRoles", json!({})).to_string().into_bytes(),
        // 14: one log file on one line holding two id-less records alike in every field.
        format!(
            r#"{{"Records":[{},{}]}}"#,
            no_id("203.0.113.10"),
            no_id("203.0.113.10")
        )
        .into_bytes(),
    ]
}

/// One NDJSON file of hostile records between good ones: each hostile line is dead-lettered
/// with its kind and line, or published in a form detection can use; every good line is
/// published.
#[test]
fn hostile_records_cost_only_themselves() -> Result<()> {
    let run = Run::new("hostile-records")?;
    let dir = tempfile::tempdir()?;
    let lines = hostile_lines();
    let path = dir.path().join("hostile.jsonl");
    std::fs::write(&path, lines.join(&b'\n'))?;
    let out = ingest(&run, &[path.to_str().context("path")?], None)?;
    ensure!(out.status.success(), "ingest failed: {}", out.stderr);
    ensure!(!out.stderr.contains("panicked"), "{}", out.stderr);

    let dlq = dead_letters(&run, 8)?;
    let got: BTreeMap<String, String> = dlq
        .iter()
        .map(|r| {
            (
                header(r, "trailguard.index").to_string(),
                header(r, "trailguard.error_kind").to_string(),
            )
        })
        .collect();
    let expected: BTreeMap<String, String> = [
        ("2", "malformed_record"),
        ("3", "invalid_utf8"),
        ("4", "invalid_json"),
        ("5", "malformed_record"),
        ("6", "malformed_record"),
        ("7", "too_large"),
        ("8", "bad_event_time"),
        ("12", "malformed_record"),
    ]
    .into_iter()
    .map(|(i, k)| (i.to_string(), k.to_string()))
    .collect();
    assert_eq!(got, expected, "{}", out.summary);
    for letter in &dlq {
        assert!(header(letter, "trailguard.source").ends_with("hostile.jsonl"));
        assert!(!header(letter, "trailguard.reason").is_empty());
    }
    // The 1 MB name is too large even trimmed: its dead letter points at the file and line.
    let long = dlq
        .iter()
        .find(|r| header(r, "trailguard.index") == "7")
        .context("line 7")?;
    assert_eq!(header(long, "trailguard.pointer"), "true");
    let pointer: Value = serde_json::from_slice(&long.value)?;
    assert!(
        pointer["pointer"]
            .as_str()
            .is_some_and(|p| p.ends_with("hostile.jsonl")),
        "{pointer}"
    );
    assert_eq!(pointer["index"], 7);

    let published = activities(&run, 7)?;
    let names: Vec<&str> = published
        .iter()
        .filter_map(|a| a["event_name"].as_str())
        .collect();
    assert_eq!(names.len(), 7, "{names:?}");
    for name in ["ListUsers", "ListRoles", "RunInstances"] {
        assert!(names.contains(&name), "{name} in {names:?}");
    }
    // Every sign-in failure, though alike: they arrived apart, on two lines or within one.
    assert_eq!(names.iter().filter(|n| **n == "ConsoleLogin").count(), 4);
    // The launch, trimmed to fit, still counts its instances.
    let launch = published
        .iter()
        .find(|a| a["event_name"] == "RunInstances")
        .context("launch")?;
    assert_eq!(
        launch["trimmed"][0],
        "responseElements: nested detail removed"
    );
    assert_eq!(
        launch["response_elements"]["instancesSet"]["items"]
            .as_array()
            .map(Vec::len),
        Some(1200)
    );
    Ok(())
}

/// A file or stdin streamed (larger than `files.stream_above_bytes`) gives exactly what it
/// gives read whole: the same activities and the same dead letters, line by line — also for
/// lines too large to parse, which a file streamed reads through without holding and stdin
/// streamed keeps, in parts — plain and gzip.
#[test]
fn a_streamed_file_reads_as_a_whole_one() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut lines = hostile_lines();
    for i in 0..2000 {
        let name = if i % 2 == 0 { "ListUsers" } else { "GetObject" };
        let mut bulk = record(&format!("bulk-{i}"), name, json!({}));
        if i % 10 == 0 {
            // No id of its own: its place among the file's records goes into its id, so the
            // ids say whether both ways counted the records (and the long lines) alike.
            if let Some(o) = bulk.as_object_mut() {
                o.remove("eventID");
            }
        }
        lines.push(bulk.to_string().into_bytes());
    }
    // An activity larger than a dead letter may be (100 kB below), within the record limit:
    // trimmed to fit, either way.
    let bulky = json!({"requestParameters": {"policyDocument": "p".repeat(200_000)}});
    lines.push(
        record("bulky", "PutUserPolicy", bulky)
            .to_string()
            .into_bytes(),
    );
    lines.push(b"not json at all".to_vec());
    let text = lines.join(&b'\n');
    let plain = dir.path().join("stream.jsonl");
    std::fs::write(&plain, &text)?;
    let packed = dir.path().join("stream.jsonl.gz");
    std::fs::write(&packed, gzip(&text)?)?;
    // 512 KiB: the 1 MB name and the launch are lines too large to keep; a dead letter over
    // 100 kB is a pointer, whichever way the line was read.
    let small_records = ("TRAILGUARD_PUBLISH__MAX_RECORD_BYTES", "524288");
    let small_letters = ("TRAILGUARD_PUBLISH__MAX_DEAD_LETTER_BYTES", "100000");
    /// A run's summary (but its time), activities, and dead letters (line, kind, part,
    /// value).
    type Outcome = (Value, Vec<String>, Vec<(String, String, String, Vec<u8>)>);
    // gzip on stdin is read whole whatever its size (where it breaks off, only the whole
    // path can keep every byte of it).
    let read = |name: &str, path: &Path, stdin: bool, stream: bool| -> Result<Outcome> {
        let gzip_stdin = stdin && path.extension().is_some_and(|e| e == "gz");
        let run = Run::new(name)?;
        let above = if stream { "0" } else { "1000000000" };
        let env = [
            small_records,
            small_letters,
            ("TRAILGUARD_FILES__STREAM_ABOVE_BYTES", above),
        ];
        let out = if stdin {
            ingest_with(&run, &[], Some(path), &env)?
        } else {
            ingest_with(&run, &[path.to_str().context("path")?], None, &env)?
        };
        // stdin that held parts it could not read fails the run, after keeping them.
        ensure!(
            out.status.success() != stdin,
            "ingest exited {}: {}",
            out.status,
            out.stderr
        );
        let said = if stdin {
            "streaming stdin"
        } else {
            "streaming a large file"
        };
        ensure!(
            out.stderr.contains(said) == (stream && !gzip_stdin),
            "streamed {stream}? {}",
            out.stderr
        );
        let published = out.summary["published"].as_u64().unwrap_or_default() as usize;
        let dead = out.summary["dead_lettered"].as_u64().unwrap_or_default() as usize;
        // Whole activities, not just their ids: streamed ones are serialized elsewhere.
        let mut ids: Vec<String> = activities(&run, published)?
            .iter()
            .map(|a| a.to_string())
            .collect();
        ids.sort();
        ensure!(
            ids.iter().filter(|a| a.contains("\"trimmed\"")).count() == 1,
            "the bulky activity is trimmed"
        );
        let mut letters: Vec<_> = dead_letters(&run, dead)?
            .iter()
            .map(|r| {
                let at = |name: &str| header(r, name).to_string();
                let (line, kind) = (at("trailguard.index"), at("trailguard.error_kind"));
                (line, kind, at("trailguard.part"), r.value.clone())
            })
            .collect();
        letters.sort();
        let mut summary = out.summary;
        if let Some(o) = summary.as_object_mut() {
            o.remove("seconds");
        }
        Ok((summary, ids, letters))
    };
    for (label, path) in [("plain", &plain), ("gzip", &packed)] {
        for stdin in [false, true] {
            let label = format!("{label}{}", if stdin { "-stdin" } else { "" });
            let whole = read(&format!("stream-whole-{label}"), path, stdin, false)?;
            let streamed = read(&format!("stream-streamed-{label}"), path, stdin, true)?;
            assert!(whole.1.len() > 2000, "{label}: {}", whole.0);
            let seven: Vec<_> = whole.2.iter().filter(|l| l.0 == "7").collect();
            assert!(
                !seven.is_empty() && seven.iter().all(|l| l.1 == "too_large"),
                "{label}"
            );
            if stdin {
                // Nothing names stdin: the line too large is kept, in parts, either way.
                assert!(seven.len() > 1, "{label}: {} parts", seven.len());
            } else {
                let pointer: Value = serde_json::from_slice(&seven[0].3)?;
                let size = pointer["size_bytes"].as_u64();
                assert!(size > Some(1 << 20), "{label}: {pointer}");
            }
            assert!(streamed == whole, "{label}: streamed and whole differ");
        }
    }
    Ok(())
}

/// A gzip bomb (1 GB of spaces after a valid record, about 1 MB compressed) is cut off at the
/// bomb limit: the record before it is published, the file dead-lettered as `too_large`, and
/// memory stays under 200 MB. A truncated gzip gives the records before the break.
#[test]
fn bombs_and_truncated_gzip_are_bounded() -> Result<()> {
    let run = Run::new("hostile-gzip")?;
    let dir = tempfile::tempdir()?;
    // Gzip members concatenate: one member of 1 MB of spaces, repeated, is 1 GB decompressed.
    let head = gzip(
        format!(
            "{{\"Records\":[{},",
            record("before-bomb", "ListUsers", json!({}))
        )
        .as_bytes(),
    )?;
    let spaces = gzip(&vec![b' '; 1 << 20])?;
    let mut bomb = head;
    for _ in 0..1024 {
        bomb.extend_from_slice(&spaces);
    }
    bomb.extend(gzip(b"]}")?);
    ensure!(bomb.len() < 2 << 20, "bomb of {} bytes", bomb.len());
    let bomb_path = dir.path().join("bomb.json.gz");
    std::fs::write(&bomb_path, &bomb)?;
    let out = ingest(&run, &[bomb_path.to_str().context("path")?], None)?;
    ensure!(out.status.success(), "{}", out.stderr);
    assert!(out.peak_rss_mb < 200, "peak RSS {} MB", out.peak_rss_mb);
    assert_eq!(out.summary["published"], 1, "{}", out.summary);
    let dlq = dead_letters(&run, 1)?;
    assert_eq!(header(&dlq[0], "trailguard.error_kind"), "too_large");
    assert!(
        header(&dlq[0], "trailguard.reason").contains("bomb"),
        "{}",
        header(&dlq[0], "trailguard.reason")
    );

    let cut_run = Run::new("hostile-cut")?;
    let many: Vec<String> = (0..3000)
        .map(|i| record(&format!("cut-{i}"), "ListUsers", json!({})).to_string())
        .collect();
    let whole = gzip(format!("{{\"Records\":[{}]}}", many.join(",")).as_bytes())?;
    let cut_path = dir.path().join("cut.json.gz");
    std::fs::write(&cut_path, &whole[..whole.len() / 2])?;
    let out = ingest(&cut_run, &[cut_path.to_str().context("path")?], None)?;
    ensure!(out.status.success(), "{}", out.stderr);
    let published = out.summary["published"].as_u64().unwrap_or_default();
    assert!(published > 100 && published < 3000, "{}", out.summary);
    let dlq = dead_letters(&cut_run, 1)?;
    assert_eq!(header(&dlq[0], "trailguard.error_kind"), "bad_gzip");
    assert!(
        header(&dlq[0], "trailguard.reason").contains(&format!("{published} records before it")),
        "{}",
        header(&dlq[0], "trailguard.reason")
    );
    Ok(())
}

/// A 200 MB single-line record is dead-lettered unparsed, as a pointer naming its file and
/// line; the records around it are published, and the file is never held in memory.
#[test]
fn a_huge_record_is_refused_unparsed() -> Result<()> {
    let run = Run::new("hostile-huge")?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("huge.jsonl");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path)?);
    writeln!(file, "{}", record("a", "ListUsers", json!({})))?;
    write!(
        file,
        r#"{{"eventName":"X","eventSource":"iam.amazonaws.com","requestParameters":{{"a":""#
    )?;
    let chunk = vec![b'x'; 1 << 20];
    for _ in 0..200 {
        file.write_all(&chunk)?;
    }
    writeln!(file, r#""}}}}"#)?;
    writeln!(file, "{}", record("b", "ListRoles", json!({})))?;
    file.flush()?;
    drop(file);
    let out = ingest(&run, &[path.to_str().context("path")?], None)?;
    ensure!(out.status.success(), "{}", out.stderr);
    assert_eq!(out.summary["published"], 2, "{}", out.summary);
    // The file (200 MB) is streamed: the huge line is read through, never held.
    assert!(out.peak_rss_mb < 120, "peak RSS {} MB", out.peak_rss_mb);
    let dlq = dead_letters(&run, 1)?;
    assert_eq!(header(&dlq[0], "trailguard.error_kind"), "too_large");
    assert_eq!(header(&dlq[0], "trailguard.index"), "2");
    let pointer: Value = serde_json::from_slice(&dlq[0].value)?;
    assert!(
        pointer["pointer"]
            .as_str()
            .is_some_and(|p| p.ends_with("huge.jsonl")),
        "{pointer}"
    );
    Ok(())
}

/// A document larger than `publish.max_decompressed_bytes` is read up to the limit, as a
/// file and on stdin, and never held whole: the records before the cut are published, and the
/// input is dead-lettered once, as a pointer saying so.
#[test]
fn an_input_past_the_limit_is_read_up_to_it() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("large.json");
    // A log file of one document (not NDJSON: it is read whole), ≈ 6 MB.
    let records: Vec<String> = (0..6_000)
        .map(|i| {
            let extra = json!({"requestParameters": {"pad": "p".repeat(900)}});
            record(&format!("large-{i}"), "ListUsers", extra).to_string()
        })
        .collect();
    let head = "{\"Records\": [\n";
    std::fs::write(&path, format!("{head}{}\n]}}", records.join(",\n")))?;
    // The records wholly within the first 4 MiB.
    let mut end = head.len();
    let fit = records
        .iter()
        .take_while(|r| {
            end += r.len();
            let within = end <= 4 << 20;
            end += 2;
            within
        })
        .count() as u64;
    let env = [
        ("TRAILGUARD_PUBLISH__MAX_RECORD_BYTES", "1048576"),
        ("TRAILGUARD_PUBLISH__MAX_DECOMPRESSED_BYTES", "4194304"),
        ("TRAILGUARD_FILES__STREAM_ABOVE_BYTES", "1048576"),
    ];
    for stdin in [false, true] {
        let run = Run::new(if stdin {
            "hostile-cap-stdin"
        } else {
            "hostile-cap"
        })?;
        let out = if stdin {
            ingest_with(&run, &[], Some(&path), &env)?
        } else {
            ingest_with(&run, &[path.to_str().context("path")?], None, &env)?
        };
        // stdin cannot be read again: what it could not read fails the run, after keeping it.
        ensure!(out.status.success() != stdin, "{}", out.stderr);
        assert!(fit > 1_000 && fit < 6_000, "{fit}");
        if stdin {
            // A failed run prints no summary: count what reached the topic.
            ensure!(out.status.code() != Some(101), "panicked: {}", out.stderr);
            assert_eq!(activities(&run, fit as usize)?.len() as u64, fit);
        } else {
            assert_eq!(
                out.summary["published"].as_u64(),
                Some(fit),
                "{}",
                out.summary
            );
            assert_eq!(out.summary["inputs_dead_lettered"], 1, "{}", out.summary);
        }
        let dlq = dead_letters(&run, 1)?;
        assert_eq!(dlq.len(), 1);
        assert_eq!(header(&dlq[0], "trailguard.error_kind"), "too_large");
        let reason = header(&dlq[0], "trailguard.reason");
        assert!(
            reason.contains("publish.max_decompressed_bytes")
                && reason.contains(&format!("{fit} records before it")),
            "{reason}"
        );
        let pointer: Value = serde_json::from_slice(&dlq[0].value)?;
        let named = if stdin { "stdin" } else { "large.json" };
        assert!(
            pointer["pointer"]
                .as_str()
                .is_some_and(|p| p.ends_with(named)),
            "{pointer}"
        );
    }
    Ok(())
}

/// 150 MB of NDJSON on stdin is streamed, not held: its records are published and memory
/// stays far below its size.
#[test]
fn large_stdin_is_streamed_in_bounded_memory() -> Result<()> {
    let run = Run::new("hostile-big-stdin")?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("big.jsonl");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path)?);
    writeln!(file, "{}", record("first", "ListUsers", json!({})))?;
    let mut blank = vec![b' '; 1 << 20];
    blank.push(b'\n');
    for _ in 0..150 {
        file.write_all(&blank)?;
    }
    writeln!(file, "{}", record("last", "ListRoles", json!({})))?;
    file.flush()?;
    drop(file);
    let size = std::fs::metadata(&path)?.len();
    let out = ingest(&run, &[], Some(&path))?;
    ensure!(out.status.success(), "{}", out.stderr);
    assert!(out.stderr.contains("streaming stdin"), "{}", out.stderr);
    assert_eq!(out.summary["published"], 2, "{}", out.summary);
    assert_eq!(out.summary["bytes"].as_u64(), Some(size), "{}", out.summary);
    // About 40 MB of ingest, the 32 MiB read before deciding to stream, a few chunks (read
    // whole, it was over 180 MB).
    assert!(out.peak_rss_mb < 110, "peak RSS {} MB", out.peak_rss_mb);
    Ok(())
}

/// stdin that is not CloudTrail JSON is kept whole on the dead-letter topic, in parts when it is
/// larger than one message, and the run fails.
#[test]
fn unreadable_stdin_is_kept_in_parts_and_fails_the_run() -> Result<()> {
    let run = Run::new("hostile-stdin")?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("stdin.txt");
    let mut text = String::from("{ this is not json ");
    while text.len() < 2_500_000 {
        text.push_str("and it goes on for a while; ");
    }
    std::fs::write(&path, &text)?;
    let out = ingest(&run, &["-"], Some(&path))?;
    ensure!(!out.status.success(), "must fail: {}", out.stderr);
    ensure!(out.status.code() != Some(101), "panicked: {}", out.stderr);
    assert!(out.stderr.contains("stdin"), "{}", out.stderr);
    let dlq = dead_letters(&run, 3)?;
    assert_eq!(dlq.len(), 3, "2.5 MB in parts of at most 900 kB");
    let mut kept = Vec::new();
    for (i, part) in dlq.iter().enumerate() {
        assert_eq!(header(part, "trailguard.source"), "stdin");
        assert_eq!(header(part, "trailguard.part"), (i + 1).to_string());
        assert_eq!(header(part, "trailguard.parts"), "3");
        kept.extend_from_slice(&part.value);
    }
    assert_eq!(kept, text.as_bytes(), "the parts are the input");
    Ok(())
}

/// Symbolic links in a directory walk are followed; a loop is counted as skipped, a link to
/// nothing dead-lettered by name — never silently ignored.
#[test]
fn symbolic_links_are_followed_and_loops_counted() -> Result<()> {
    let run = Run::new("hostile-links")?;
    let logs = tempfile::tempdir()?;
    std::fs::write(
        logs.path().join("real.json"),
        json!({"Records": [record("linked", "ListUsers", json!({}))]}).to_string(),
    )?;
    let tree = tempfile::tempdir()?;
    std::os::unix::fs::symlink(logs.path().join("real.json"), tree.path().join("a.json"))?;
    std::os::unix::fs::symlink(tree.path(), tree.path().join("loop"))?;
    let out = ingest(&run, &[tree.path().to_str().context("path")?], None)?;
    ensure!(out.status.success(), "{}", out.stderr);
    assert_eq!(out.summary["published"], 1, "{}", out.summary);
    assert_eq!(
        out.summary["inputs_skipped"], 1,
        "the loop: {}",
        out.summary
    );
    Ok(())
}

/// 10⁵ distinct source addresses for one principal: every activity is published, and detect,
/// whose per-principal state is bounded, evaluates them all in bounded memory.
#[test]
fn a_hundred_thousand_addresses_for_one_principal() -> Result<()> {
    let run = Run::new("hostile-addresses")?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("addresses.jsonl");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path)?);
    let n = 100_000;
    for i in 0..n {
        let ip = format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255);
        let time = format!(
            "2024-01-01T{:02}:{:02}:{:02}Z",
            (i / 3600) % 24,
            (i / 60) % 60,
            i % 60
        );
        let r = record(
            &format!("addr-{i}"),
            "GetUser",
            json!({"sourceIPAddress": ip, "eventTime": time}),
        );
        writeln!(file, "{r}")?;
    }
    file.flush()?;
    drop(file);
    let out = ingest(&run, &[path.to_str().context("path")?], None)?;
    ensure!(out.status.success(), "{}", out.stderr);
    assert_eq!(out.summary["published"], n, "{}", out.summary);
    let mut detect = run.spawn("detect", &[])?;
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut peak_mb = 0;
    loop {
        let log = detect.log();
        peak_mb = peak_rss_kb(detect.child.id()).map_or(peak_mb, |kb| kb / 1024);
        let evaluated = trailguard_tests::admin_addr(&log)
            .and_then(|addr| trailguard_tests::http_get(&addr, "/metrics").ok())
            .and_then(|m| {
                trailguard_tests::sample_value(
                    &m,
                    "trailguard_detect_activities_total{result=\"evaluated\"}",
                )
            })
            .unwrap_or(0.0);
        if evaluated as u64 >= n {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "detect evaluated {evaluated} of {n}:\n{log}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(peak_mb < 300, "detect's peak RSS {peak_mb} MB");
    detect.stop("-TERM")?;
    Ok(())
}

/// A topic that takes smaller records than ingest's own limit (`max.message.bytes` set low by
/// an operator): ingest reads the limit at start and trims to fit, so the broker never refuses
/// a record for its size — which would otherwise fail every run on that file.
#[tokio::test(flavor = "multi_thread")]
async fn records_are_fitted_to_the_topics_limit() -> Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::config::ClientConfig;
    let run = Run::new("hostile-limit")?;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", trailguard_tests::brokers()?)
        .create()?;
    let activities_topic = run.topic("activities");
    let topic = NewTopic::new(&activities_topic, 3, TopicReplication::Fixed(1))
        .set("max.message.bytes", "60000");
    for result in admin.create_topics([&topic], &AdminOptions::new()).await? {
        result.map_err(|(name, code)| anyhow::anyhow!("creating {name}: {code}"))?;
    }
    // Hex that does not compress: a launch of 400 instances is ~200 kB even compressed.
    let noise = |i: u64, n: u64| {
        (0..n)
            .map(|k| {
                format!(
                    "{:016x}",
                    (i * 7919 + k).wrapping_mul(0x9E37_79B9_7F4A_7C15)
                )
            })
            .collect::<String>()
    };
    let launch = record(
        "launch-small-topic",
        "RunInstances",
        json!({
            "eventSource": "ec2.amazonaws.com",
            "responseElements": {"instancesSet": {"items": (0..400u64).map(|i| json!({
                "instanceId": format!("i-{i:017x}"), "instanceType": "m5.large",
                "tagSet": {"items": [{"key": "k", "value": noise(i, 30)}]}
            })).collect::<Vec<_>>()}}
        }),
    );
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("launch.json");
    std::fs::write(
        &path,
        json!({"Records": [record("small", "ListUsers", json!({})), launch]}).to_string(),
    )?;
    let out =
        tokio::task::block_in_place(|| ingest(&run, &[path.to_str().context("path")?], None))?;
    ensure!(out.status.success(), "ingest failed: {}", out.stderr);
    assert_eq!(out.summary["published"], 2, "{}", out.summary);
    let published = tokio::task::block_in_place(|| activities(&run, 2))?;
    let launch = published
        .iter()
        .find(|a| a["event_name"] == "RunInstances")
        .context("launch")?;
    assert_eq!(
        launch["trimmed"][0],
        "responseElements: nested detail removed"
    );
    Ok(())
}

/// A CloudTrail record as one NDJSON line.
fn stdin_record(i: usize) -> String {
    json!({
        "eventVersion": "1.08", "eventTime": "2024-05-01T00:00:00Z",
        "eventSource": "s3.amazonaws.com", "eventName": "ListBuckets",
        "awsRegion": "us-east-1", "sourceIPAddress": "192.0.2.1",
        "eventID": format!("00000000-0000-4000-8000-{i:012}"),
        "userIdentity": {"type": "IAMUser", "arn": "arn:aws:iam::111111111111:user/u"},
    })
    .to_string()
}

/// `ingest files --summary json -` with stdin a pipe the test holds, once ingest says it reads
/// it; its log.
fn ingest_reading_stdin(
    run: &Run,
    above: &str,
) -> Result<(
    std::process::Child,
    std::process::ChildStdin,
    std::path::PathBuf,
)> {
    let log = std::env::temp_dir().join(format!("{}-ingest.log", run.id));
    let mut child = run
        .command("ingest", &["files", "--summary", "json", "-"])?
        .env("TRAILGUARD_FILES__STREAM_ABOVE_BYTES", above)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log)?)
        .spawn()?;
    let stdin = child.stdin.take().context("stdin")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("reading stdin")
    {
        ensure!(Instant::now() < deadline, "ingest never read stdin");
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((child, stdin, log))
}

/// Sends SIGTERM to `child` and waits at most 20 s for it to stop.
fn terminate(child: &mut std::process::Child, log: &Path) -> Result<std::process::ExitStatus> {
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    ensure!(sent.success(), "kill failed");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            anyhow::bail!(
                "ingest did not stop within 20 s of SIGTERM with stdin open; log: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// stdin that stops coming without ending (a stuck upstream, `tail -f`): SIGTERM stops
/// ingest within seconds, and every whole record it read is published — read whole (stdin
/// small so far) and streamed (past `files.stream_above_bytes`) — the part of a line it read
/// without its end is dead-lettered with the reason, not dropped.
#[test]
fn a_stalled_stdin_stops_on_sigterm_keeping_what_it_read() -> Result<()> {
    for (records, above) in [(3usize, "33554432"), (400, "4096")] {
        let run = Run::new("hostile-stalled-stdin")?;
        let (mut child, mut stdin, log) = ingest_reading_stdin(&run, above)?;
        for i in 0..records {
            writeln!(stdin, "{}", stdin_record(i))?;
        }
        // Half a line more, and then nothing: the pipe stays open.
        write!(stdin, "{{\"eventVersion\": \"1.08\", \"eventTi")?;
        stdin.flush()?;
        // Published as it is read, when streamed; read whole, it waits for the end.
        std::thread::sleep(Duration::from_secs(2));
        ensure!(child.try_wait()?.is_none(), "ingest ended with stdin open");
        let status = terminate(&mut child, &log)?;
        drop(stdin);
        // A failure naming the cut line's dead letter (stdin cannot be read again).
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        ensure!(
            status.code() == Some(1),
            "{records} records: {status}; log: {log}"
        );
        ensure!(
            log.contains("INTERRUPTED")
                && log.contains(&format!("published {records} activities"))
                && log.contains("a shutdown cut stdin short"),
            "{records} records: the summary and the error; log: {log}"
        );
        let published = read_topic(
            &run.topic("activities"),
            Duration::from_secs(30),
            Duration::from_secs(1),
            |r| r.len() >= records,
        )?;
        ensure!(published.len() == records, "{} published", published.len());
        let dead = read_topic(
            &run.topic("dlq"),
            Duration::from_secs(30),
            Duration::from_secs(1),
            |r| !r.is_empty(),
        )?;
        ensure!(
            dead.len() == 1
                && dead[0]
                    .value
                    .starts_with(b"{\"eventVersion\": \"1.08\", \"eventTi")
                && header(&dead[0], "trailguard.error_kind") == "invalid_json",
            "{records} records: the cut line's dead letter: {:?}",
            dead.iter()
                .map(|r| (String::from_utf8_lossy(&r.value).into_owned(), &r.headers))
                .collect::<Vec<_>>()
        );
    }
    Ok(())
}

/// stdin that keeps flowing (`zcat huge.gz | ingest files -`): SIGTERM stops ingest within
/// seconds all the same — it reads no more, and publishes what it read, whole lines only.
#[test]
fn a_flowing_stdin_stops_on_sigterm() -> Result<()> {
    let run = Run::new("hostile-flowing-stdin")?;
    let (mut child, mut stdin, log) = ingest_reading_stdin(&run, "4096")?;
    let writing = std::thread::spawn(move || {
        // Until ingest stops reading: then the pipe breaks.
        (0..)
            .try_for_each(|i| writeln!(stdin, "{}", stdin_record(i)))
            .err()
    });
    std::thread::sleep(Duration::from_secs(3));
    ensure!(
        child.try_wait()?.is_none(),
        "ingest ended with stdin flowing"
    );
    let status = terminate(&mut child, &log)?;
    ensure!(writing.join().is_ok(), "the writer panicked");
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    let mut stdout = String::new();
    if let Some(mut out) = child.stdout.take() {
        std::io::Read::read_to_string(&mut out, &mut stdout)?;
    }
    // Interrupted (130, the summary on stdout) — or, when the shutdown cut a line, a failure
    // naming its dead letter (1, the summary in the log).
    let count: usize = match status.code() {
        Some(130) => {
            let summary: Value = serde_json::from_str(&stdout)?;
            ensure!(summary["interrupted"] == true, "{summary}");
            summary["published"].as_u64().context("published")? as usize
        }
        Some(1) if log.contains("INTERRUPTED") => log
            .split("published ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .context("the summary's count")?,
        _ => anyhow::bail!("{status}; log: {log}"),
    };
    // What the summary says was published is on the topic: none of what was read is lost.
    ensure!(count > 0, "nothing published; log: {log}");
    let published = read_topic(
        &run.topic("activities"),
        Duration::from_secs(60),
        Duration::from_secs(2),
        |r| r.len() >= count,
    )?;
    ensure!(
        published.len() == count,
        "{} on the topic, {count} in the summary",
        published.len()
    );
    Ok(())
}
