//! The command-line contract: `--help` documents the flags, bad configuration fails at start-up
//! naming the key, and no service starts on it.

use anyhow::Result;
use trailguard_tests::Run;

#[test]
fn help_documents_the_contract() -> Result<()> {
    let run = Run::new("cli")?;
    for (binary, args) in [
        ("ingest", vec!["--help"]),
        ("ingest", vec!["files", "--help"]),
        ("detect", vec!["--help"]),
        ("remediate", vec!["--help"]),
    ] {
        let out = run.command(binary, &args)?.output()?;
        assert!(out.status.success(), "{binary} {args:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        for flag in ["--brokers", "--config"] {
            assert!(
                text.contains(flag),
                "{binary} {args:?} does not document {flag}:\n{text}"
            );
        }
    }
    Ok(())
}

#[test]
fn bad_configuration_names_the_key() -> Result<()> {
    let run = Run::new("cli-bad")?;
    let dir = std::env::temp_dir().join(&run.id);
    std::fs::create_dir_all(&dir)?;
    let cases = [
        (
            "detect",
            "[policies.console_signin_failures]\nthreshold = 1\n",
            "policies.console_signin_failures.threshold",
        ),
        (
            "detect",
            "[policies.console_signin_failures]\nwindow = \"soon\"\n",
            "window",
        ),
        (
            "remediate",
            "[remediate]\ndefault_mode = \"sometimes\"\n",
            "default_mode",
        ),
        ("remediate", "[kafka]\nbrokerz = \"x:1\"\n", "brokerz"),
        (
            "ingest",
            "[publish]\nmax_in_flight = 0\n",
            "publish.max_in_flight",
        ),
        // Durations past what a date can be moved by: refused at start-up, not a panic at the
        // first record (ingest) or the first state pruning (detect).
        (
            "ingest",
            "[publish]\ndedup_horizon = \"1000000years\"\n",
            "publish.dedup_horizon",
        ),
        (
            "detect",
            "[policies.anomaly]\nstate_ttl = \"1000000years\"\n",
            "policies.anomaly.state_ttl",
        ),
        (
            "detect",
            "[policies.anomaly]\ndormant_after = \"1000000years\"\n",
            "policies.anomaly.dormant_after",
        ),
        (
            "detect",
            "[[policies.custom]]\nid = \"impossible-travel\"\nfilters = [{ field = \"event_name\", op = \"equals\", value = \"A\" }]\n",
            "policies.custom[0].id",
        ),
    ];
    for (i, (binary, toml, key)) in cases.into_iter().enumerate() {
        let path = dir.join(format!("{i}.toml"));
        std::fs::write(&path, toml)?;
        let path = path.to_string_lossy().into_owned();
        let mut args = vec!["--config", path.as_str()];
        if binary == "ingest" {
            args.extend(["files", "/dev/null"]);
        }
        let out = run.command(binary, &args)?.output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{binary} accepted {toml}");
        assert!(
            stderr.contains(key),
            "{binary}: error does not name {key}: {stderr}"
        );
    }
    let out = run
        .command("remediate", &[])?
        .env("TRAILGUARD_KAFAK__BROKERS", "x:1")
        .output()?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("TRAILGUARD_KAFAK__BROKERS"));
    let out = run
        .command("detect", &["--brokers", "localhost"])?
        .output()?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("kafka.brokers"));
    Ok(())
}
