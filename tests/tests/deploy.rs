//! The deployment files, checked by what can run here (there is no Docker engine or cluster):
//! the Dockerfile, docker compose and Kubernetes manifests name only binaries, files, ports,
//! environment variables and configuration keys that exist — every service's command line,
//! environment and configuration file is run through the binary's own `--check-config`, which
//! fails on an unknown key — and the Grafana dashboard and Prometheus rules name only metrics
//! the running services register (scraped from `/metrics`); the rules pass promtool's checks
//! and unit tests.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};
use trailguard_common::config::TopicRole;
use trailguard_tests::{admin_addr, http_get, repo, Run};

/// The binaries the image carries.
const BINARIES: [&str; 3] = ["ingest", "detect", "remediate"];

/// What the operator supplies through `.env` or a Secret, for the checks.
fn operator_env() -> BTreeMap<String, String> {
    [
        (
            "TRAILGUARD_SIGNING_KEY",
            "an-operator-signing-key-0123456789abcdef",
        ),
        (
            "TRAILGUARD_WEBHOOK_URL",
            "https://hooks.example.com/trailguard",
        ),
        (
            "TRAILGUARD_SQS_QUEUE_URL",
            "https://sqs.us-east-1.amazonaws.com/123456789012/trail",
        ),
        ("AWS_REGION", "us-east-1"),
        ("HOME", "/home/operator"),
        ("TRAILGUARD_KAFKA_INGEST_PASSWORD", "ingest-broker-password"),
        ("TRAILGUARD_KAFKA_DETECT_PASSWORD", "detect-broker-password"),
        (
            "TRAILGUARD_KAFKA_REMEDIATE_PASSWORD",
            "remediate-broker-password",
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// YAML (every document of a file) as JSON, with merge keys applied and tags kept as
/// `{"!tag": value}`.
fn yaml_docs(path: &Path) -> Result<Vec<Value>> {
    use serde::Deserialize;
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    let mut docs = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let mut value = serde_yaml_ng::Value::deserialize(doc)
            .with_context(|| format!("{} does not parse", path.display()))?;
        value.apply_merge()?;
        if !value.is_null() {
            docs.push(to_json(value));
        }
    }
    Ok(docs)
}

fn to_json(value: serde_yaml_ng::Value) -> Value {
    use serde_yaml_ng::Value as Y;
    match value {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => serde_json::to_value(n).unwrap_or(Value::Null),
        Y::String(s) => Value::String(s),
        Y::Sequence(items) => Value::Array(items.into_iter().map(to_json).collect()),
        Y::Mapping(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| {
                    let key = match k {
                        Y::String(s) => s,
                        other => serde_yaml_ng::to_string(&other)
                            .unwrap_or_default()
                            .trim()
                            .to_string(),
                    };
                    (key, to_json(v))
                })
                .collect(),
        ),
        Y::Tagged(tagged) => json!({ tagged.tag.to_string(): to_json(tagged.value) }),
    }
}

/// Compose's `${NAME}`, `${NAME:-default}` and `${NAME:?error}` against `env`.
fn interpolate(text: &str, env: &BTreeMap<String, String>) -> Result<String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..]
            .find('}')
            .with_context(|| format!("unclosed ${{ in {text}"))?
            + start;
        let inner = &rest[start + 2..end];
        let (name, value) = if let Some((name, default)) = inner.split_once(":-") {
            (name, env.get(name).cloned().unwrap_or(default.to_string()))
        } else if let Some((name, error)) = inner.split_once(":?") {
            let value = env
                .get(name)
                .cloned()
                .with_context(|| format!("{name} is required: {error}"))?;
            (name, value)
        } else {
            let value = env
                .get(inner)
                .cloned()
                .with_context(|| format!("{inner} is not set"))?;
            (inner, value)
        };
        ensure!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad variable name {name}"
        );
        out.push_str(&value);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Runs `args` (binary first) with `--check-config`, in an environment holding only `env`
/// (and PATH), container paths mapped to files of the repository. Returns the effective
/// configuration.
fn check_config(
    args: &[String],
    env: &BTreeMap<String, String>,
    files: &BTreeMap<String, PathBuf>,
) -> Result<Value> {
    let binary = args.first().context("empty command")?;
    ensure!(
        BINARIES.contains(&binary.as_str()),
        "command runs {binary}, which the image does not have"
    );
    let map = |s: &String| -> String {
        files
            .get(s)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| s.clone())
    };
    let dir = PathBuf::from(std::env::var("TRAILGUARD_TEST_BIN_DIR")?);
    let output = Command::new(dir.join(binary))
        .args(args[1..].iter().map(map))
        .arg("--check-config")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (k, map(v))))
        .output()?;
    ensure!(
        output.status.success(),
        "{args:?} rejects its configuration: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(serde_json::from_slice(&output.stdout)?)
}

fn port_of(listen: &Value) -> Result<u16> {
    let listen = listen.as_str().context("admin.listen")?;
    Ok(listen.rsplit(':').next().unwrap_or_default().parse()?)
}

/// Seconds of a duration as the binaries print it (`20s`, `5m`, `1h 30m`).
fn seconds(duration: &Value) -> Result<u64> {
    let text = duration.as_str().context("a duration")?;
    Ok(humantime::parse_duration(text)?.as_secs())
}

/// The drain timeout of a service's effective configuration (ingest has none of its own).
fn drain_seconds(binary: &str, cfg: &Value) -> Result<u64> {
    match binary {
        "detect" => seconds(&cfg["detect"]["drain_timeout"]),
        "remediate" => seconds(&cfg["remediate"]["drain_timeout"]),
        _ => Ok(0),
    }
}

fn workspace_version() -> Result<String> {
    let text = std::fs::read_to_string(repo().join("Cargo.toml"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("version = \""))
        .map(|v| v.trim_end_matches('"').to_string())
        .context("workspace version")
}

fn as_strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The topics of an effective configuration and the role of each.
fn topics_of(cfg: &Value) -> Vec<(String, TopicRole)> {
    cfg["kafka"]["topics"]
        .as_object()
        .map(|topics| {
            topics
                .iter()
                .filter_map(|(key, name)| {
                    let name = name.as_str().filter(|n| !n.is_empty())?;
                    Some((name.to_string(), TopicRole::from_key(key)?))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The Dockerfile builds the three binaries from this repository, runs as a non-root user,
/// exposes the admin ports, and bakes in no secret; `make image` builds it.
#[test]
fn dockerfile_builds_what_exists() -> Result<()> {
    let root = repo();
    let text = std::fs::read_to_string(root.join("Dockerfile"))?;
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    let stages: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("FROM "))
        .collect();
    ensure!(stages.len() >= 2, "a multi-stage build: {stages:?}");
    for stage in &stages {
        let image = stage.split_whitespace().next().unwrap_or_default();
        ensure!(
            image.contains(':') && !image.ends_with(":latest"),
            "{image}: pin a tag"
        );
    }
    // Every COPY from the build context exists.
    for line in lines.iter().filter(|l| l.starts_with("COPY ")) {
        if line.contains("--from=") {
            continue;
        }
        let parts: Vec<&str> = line.split_whitespace().skip(1).collect();
        for source in &parts[..parts.len() - 1] {
            ensure!(
                root.join(source).exists(),
                "COPY {source}: not in the repository"
            );
        }
    }
    // It builds the three packages and copies the three binaries.
    for binary in BINARIES {
        let manifest = std::fs::read_to_string(root.join(binary).join("Cargo.toml"))?;
        ensure!(
            manifest.contains(&format!("name = \"{binary}\"")),
            "{binary} is not a [[bin]] of {binary}/Cargo.toml"
        );
        ensure!(
            text.contains(&format!("-p trailguard-{binary}")),
            "builds {binary}"
        );
        ensure!(
            text.contains(&format!("target/release/{binary}")),
            "copies {binary}"
        );
    }
    // A numeric non-root user (Kubernetes' runAsNonRoot checks it without a passwd lookup).
    let user = lines
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .context("no USER")?;
    let uid: u32 = user.split(':').next().unwrap_or_default().parse()?;
    ensure!(uid != 0, "runs as root");
    let exposed: BTreeSet<u16> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("EXPOSE "))
        .flat_map(|l| l.split_whitespace().map(|p| p.parse::<u16>()))
        .collect::<Result<_, _>>()?;
    ensure!(exposed == BTreeSet::from([9101, 9102, 9103]), "{exposed:?}");
    for line in &lines {
        let upper = line.to_ascii_uppercase();
        if upper.starts_with("ENV ") || upper.starts_with("ARG ") {
            for word in ["KEY", "SECRET", "PASSWORD", "TOKEN", "WEBHOOK"] {
                ensure!(!upper.contains(word), "a secret in the image: {line}");
            }
        }
    }
    let makefile = std::fs::read_to_string(root.join("Makefile"))?;
    ensure!(
        makefile.contains("\nimage:") && makefile.contains("docker build"),
        "make image"
    );
    let ignore = std::fs::read_to_string(root.join(".dockerignore"))?;
    ensure!(
        ignore.lines().any(|l| l.trim() == "target"),
        ".dockerignore"
    );
    Ok(())
}

/// One compose service of ours, as the checks need it.
struct ComposeService {
    command: Vec<String>,
    env: BTreeMap<String, String>,
    files: BTreeMap<String, PathBuf>,
    ports: Vec<String>,
    grace: Option<u64>,
}

fn compose_service(
    name: &str,
    service: &Value,
    dir: &Path,
    operator: &BTreeMap<String, String>,
) -> Result<ComposeService> {
    let command = as_strings(&service["command"]);
    let mut env = BTreeMap::new();
    if let Some(vars) = service["environment"].as_object() {
        for (key, value) in vars {
            let value = match value {
                Value::String(s) => interpolate(s, operator)?,
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                other => bail!("{name}: {key} = {other}"),
            };
            env.insert(key.clone(), value);
        }
    }
    let mut files = BTreeMap::new();
    for volume in as_strings(&service["volumes"]) {
        let volume = interpolate(&volume, operator)?;
        let mut parts = volume.split(':');
        let (Some(host), Some(container)) = (parts.next(), parts.next()) else {
            bail!("{name}: volume {volume}");
        };
        if host.starts_with('.') {
            let path = dir.join(host);
            ensure!(path.exists(), "{name}: {host} does not exist");
            files.insert(container.to_string(), path);
        }
    }
    let grace = service["stop_grace_period"]
        .as_str()
        .map(|g| seconds(&json!(g)))
        .transpose()?;
    Ok(ComposeService {
        command,
        env,
        files,
        ports: as_strings(&service["ports"]),
        grace,
    })
}

/// Applies a compose override file: `command` replaced, `environment` merged (`!reset` keys
/// removed), a service set to `!reset` dropped.
fn apply_override(base: &mut Value, over: &Value) {
    let Some(services) = over["services"].as_object() else {
        return;
    };
    for (name, service) in services {
        if service.get("!reset").is_some() {
            if let Some(all) = base["services"].as_object_mut() {
                all.remove(name);
            }
            continue;
        }
        let target = &mut base["services"][name];
        if let Some(fields) = service.as_object() {
            for (key, value) in fields {
                match key.as_str() {
                    "environment" => {
                        if let Some(vars) = value.as_object() {
                            for (var, v) in vars {
                                if v.get("!reset").is_some() {
                                    if let Some(env) = target["environment"].as_object_mut() {
                                        env.remove(var);
                                    }
                                } else {
                                    target["environment"][var] = v.clone();
                                }
                            }
                        }
                    }
                    "volumes" | "ports" if value.get("!reset").is_some() => {
                        target[key] = value["!reset"].clone();
                    }
                    "volumes" | "ports" => {
                        let mut merged = target[key].as_array().cloned().unwrap_or_default();
                        merged.extend(value.as_array().cloned().unwrap_or_default());
                        target[key] = Value::Array(merged);
                    }
                    _ => target[key] = value.clone(),
                }
            }
        }
    }
}

/// Checks one compose project (the base file, or base + an override).
fn check_compose(project: &Value, dir: &Path, operator: &BTreeMap<String, String>) -> Result<()> {
    let version = workspace_version()?;
    let services = project["services"].as_object().context("no services")?;
    let prometheus = yaml_docs(&dir.join("prometheus.yml"))?.remove(0);
    let init = std::fs::read_to_string(dir.join("kafka-init.sh"))?;
    let kafka = &services["kafka"];
    ensure!(
        kafka["image"]
            .as_str()
            .is_some_and(|i| i.starts_with("apache/kafka:")),
        "Apache Kafka's official image"
    );
    ensure!(
        kafka["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller",
        "KRaft mode"
    );
    ensure!(
        kafka["environment"]["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false",
        "topics are created, never auto-created"
    );
    let advertised = kafka["environment"]["KAFKA_ADVERTISED_LISTENERS"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut ours = 0;
    let mut usernames = BTreeSet::new();
    for (name, service) in services {
        for port in as_strings(&service["ports"]) {
            ensure!(
                port.starts_with("127.0.0.1:"),
                "{name}: port {port} must be bound to 127.0.0.1, not published to the network"
            );
        }
        let image = interpolate(service["image"].as_str().unwrap_or_default(), operator)?;
        let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or_default();
        ensure!(
            !tag.is_empty() && tag != "latest",
            "{name}: pin the image tag ({image})"
        );
        if !image.starts_with("trailguard:") {
            for volume in as_strings(&service["volumes"]) {
                let host = volume.split(':').next().unwrap_or_default();
                if host.starts_with('.') {
                    ensure!(dir.join(host).exists(), "{name}: {host} does not exist");
                }
            }
            continue;
        }
        ours += 1;
        ensure!(
            image == format!("trailguard:{version}"),
            "{name}: {image} is not the image `make image` builds (trailguard:{version})"
        );
        let svc = compose_service(name, service, dir, operator)?;
        let cfg = check_config(&svc.command, &svc.env, &svc.files)
            .with_context(|| format!("compose service {name}"))?;
        let binary = svc.command[0].as_str();
        let port = port_of(&cfg["admin"]["listen"])?;
        ensure!(
            cfg["admin"]["listen"]
                .as_str()
                .is_some_and(|l| l.starts_with("0.0.0.0:")),
            "{name}: the admin endpoint must listen beyond the container"
        );
        ensure!(
            svc.ports.iter().any(|p| p.ends_with(&format!(":{port}"))),
            "{name}: admin port {port} not published ({:?})",
            svc.ports
        );
        let target = format!("{name}:{port}");
        let scraped = prometheus["scrape_configs"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|job| {
                job["job_name"] == format!("trailguard-{binary}").as_str()
                    && job["static_configs"][0]["targets"]
                        .as_array()
                        .is_some_and(|t| t.iter().any(|t| t == target.as_str()))
            });
        ensure!(
            scraped,
            "prometheus.yml does not scrape {target} as trailguard-{binary}"
        );
        let brokers = cfg["kafka"]["brokers"].as_str().unwrap_or_default();
        ensure!(
            advertised.contains(&format!("://{brokers}")),
            "{name}: brokers {brokers} are not what Kafka advertises ({advertised})"
        );
        let client = &cfg["kafka"]["client"];
        if let Some(user) = client["sasl_username"].as_str() {
            ensure!(
                client["security_protocol"] == "SASL_PLAINTEXT"
                    && client["sasl_mechanism"] == "SCRAM-SHA-512",
                "{name}: SCRAM over the SASL listener"
            );
            ensure!(
                usernames.insert(user.to_string()),
                "{name}: each service has its own broker user ({user} is taken)"
            );
        }
        ensure!(
            cfg["kafka"]["create_topics"] == false,
            "{name}: compose creates topics in kafka-init"
        );
        for (topic, role) in topics_of(&cfg) {
            // The services' own settings for the topic (min.insync.replicas is computed
            // from the replication factor in the script).
            let settings: BTreeMap<&str, String> = role.settings(1).into_iter().collect();
            let policy = &settings["cleanup.policy"];
            let line = match settings.get("retention.ms") {
                Some(ms) => format!("create {topic} {policy} {ms}\n"),
                None => format!("create {topic} {policy}\n"),
            };
            ensure!(
                init.contains(&line),
                "kafka-init.sh does not create {topic} as the services would: {line}"
            );
        }
        let partitions = cfg["kafka"]["partitions"].as_u64().unwrap_or_default();
        ensure!(
            services["kafka-init"]["environment"]["PARTITIONS"] == partitions.to_string().as_str(),
            "kafka-init's partitions differ from {name}'s kafka.partitions"
        );
        if let Some(grace) = svc.grace {
            ensure!(
                grace > drain_seconds(binary, &cfg)?,
                "{name}: stop_grace_period must outlast the drain timeout"
            );
        }
    }
    ensure!(ours == 3, "the three services");
    Ok(())
}

#[test]
fn compose_runs_what_exists() -> Result<()> {
    let dir = repo().join("deploy/compose");
    let operator = operator_env();
    let base = yaml_docs(&dir.join("compose.yaml"))?.remove(0);
    check_compose(&base, &dir, &operator).context("compose.yaml")?;
    let mut aws = base.clone();
    apply_override(
        &mut aws,
        &yaml_docs(&dir.join("compose.aws.yaml"))?.remove(0),
    );
    ensure!(
        aws["services"].get("moto").is_none(),
        "real AWS has no moto"
    );
    ensure!(
        as_strings(&aws["services"]["ingest"]["command"]).contains(&"sqs".to_string()),
        "ingest reads the trail's notifications"
    );
    check_compose(&aws, &dir, &operator).context("compose.yaml + compose.aws.yaml")?;
    // With real AWS the broker is locked down: SCRAM and the standard authorizer, no anonymous
    // listener beyond the broker's loopback, the ACLs of deploy/kafka-acls.sh set by kafka-init.
    let kafka = &aws["services"]["kafka"]["environment"];
    ensure!(
        kafka["KAFKA_AUTHORIZER_CLASS_NAME"]
            == "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
            && kafka["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"] == "false",
        "compose.aws.yaml: the standard authorizer, deny by default"
    );
    let map = kafka["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"]
        .as_str()
        .unwrap_or_default();
    for listener in kafka["KAFKA_LISTENERS"]
        .as_str()
        .unwrap_or_default()
        .split(',')
    {
        let (name, address) = listener.split_once("://").unwrap_or_default();
        let plain = map.contains(&format!("{name}:PLAINTEXT"));
        ensure!(
            !plain || address.starts_with("127.0.0.1:"),
            "compose.aws.yaml: the unauthenticated listener {listener} must stay on loopback"
        );
    }
    ensure!(
        as_strings(&aws["services"]["kafka"]["ports"]).is_empty(),
        "compose.aws.yaml: the broker publishes no port"
    );
    let users: BTreeSet<&str> = BINARIES
        .iter()
        .filter_map(|b| {
            aws["services"][*b]["environment"]["TRAILGUARD_KAFKA__CLIENT__SASL_USERNAME"].as_str()
        })
        .collect();
    ensure!(
        users == BTreeSet::from(BINARIES),
        "compose.aws.yaml: each service connects as its own user, as deploy/kafka-acls.sh names them ({users:?})"
    );
    let init = &aws["services"]["kafka-init"];
    ensure!(
        init["network_mode"] == "service:kafka"
            && as_strings(&init["volumes"])
                .iter()
                .any(|v| v.starts_with("../kafka-acls.sh:"))
            && dir.join("../kafka-acls.sh").exists(),
        "compose.aws.yaml: kafka-init sets the ACLs of deploy/kafka-acls.sh over the loopback"
    );
    // The operator's settings are all named in .env.example.
    let example = std::fs::read_to_string(dir.join(".env.example"))?;
    for var in [
        "TRAILGUARD_SIGNING_KEY",
        "TRAILGUARD_WEBHOOK_URL",
        "TRAILGUARD_SQS_QUEUE_URL",
        "TRAILGUARD_KAFKA_INGEST_PASSWORD",
        "TRAILGUARD_KAFKA_DETECT_PASSWORD",
        "TRAILGUARD_KAFKA_REMEDIATE_PASSWORD",
    ] {
        ensure!(
            example.contains(&format!("{var}=")),
            ".env.example lacks {var}"
        );
    }
    // Without the signing key compose refuses to start rather than run unsigned.
    let mut missing = operator.clone();
    missing.remove("TRAILGUARD_SIGNING_KEY");
    ensure!(check_compose(&base, &dir, &missing).is_err());
    Ok(())
}

#[test]
fn kubernetes_manifests_run_what_exists() -> Result<()> {
    let dir = repo().join("deploy/kubernetes");
    let kustomization = yaml_docs(&dir.join("kustomization.yaml"))?.remove(0);
    let mut docs = Vec::new();
    for resource in as_strings(&kustomization["resources"]) {
        docs.extend(yaml_docs(&dir.join(&resource)).with_context(|| resource.clone())?);
    }
    let of_kind =
        |kind: &str| -> Vec<&Value> { docs.iter().filter(|d| d["kind"] == kind).collect() };
    let config_maps = of_kind("ConfigMap");
    let secret = yaml_docs(&dir.join("secret.example.yaml"))?.remove(0);
    ensure!(
        !docs.iter().any(|d| d["kind"] == "Secret"),
        "secrets are not applied from the repository"
    );
    let accounts = of_kind("ServiceAccount");
    let services = of_kind("Service");
    let image_name = kustomization["images"][0]["name"]
        .as_str()
        .unwrap_or_default();
    let uid: u64 = {
        let text = std::fs::read_to_string(repo().join("Dockerfile"))?;
        let user = text
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("USER "))
            .context("USER")?;
        user.split(':').next().unwrap_or_default().parse()?
    };
    let tmp = std::env::temp_dir().join(format!("k8s-config-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let deployments = of_kind("Deployment");
    ensure!(deployments.len() == 3, "a Deployment per service");
    for deployment in deployments {
        let name = deployment["metadata"]["name"].as_str().unwrap_or_default();
        let pod = &deployment["spec"]["template"];
        let container = &pod["spec"]["containers"][0];
        ensure!(
            container["image"] == image_name,
            "{name}: image {}",
            container["image"]
        );
        let args = as_strings(&container["args"]);
        let binary = args.first().cloned().unwrap_or_default();
        // Environment: values, or keys of the Secret.
        let mut env = BTreeMap::new();
        for var in container["env"].as_array().into_iter().flatten() {
            let key = var["name"].as_str().unwrap_or_default().to_string();
            let value = if let Some(v) = var["value"].as_str() {
                v.to_string()
            } else {
                let r = &var["valueFrom"]["secretKeyRef"];
                ensure!(
                    r["name"] == secret["metadata"]["name"],
                    "{name}: {key} from an unknown Secret"
                );
                let k = r["key"].as_str().unwrap_or_default();
                let example = secret["stringData"][k]
                    .as_str()
                    .with_context(|| format!("{name}: {key}: the Secret has no key {k}"))?;
                // The example's signing key is a placeholder the services refuse: the operator
                // creates the real Secret with a random one.
                if k == "signing-key" {
                    "5be1c0a7d93f4e2b8a6c1d0e9f7b3a5c2e4d6f8a0b1c3e5d7f9a2b4c6d8e0f1a".to_string()
                } else {
                    example.to_string()
                }
            };
            env.insert(key, value);
        }
        // Configuration files: the ConfigMap mounted at /etc/trailguard.
        let mount = container["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["mountPath"] == "/etc/trailguard")
            .with_context(|| format!("{name}: no /etc/trailguard mount"))?;
        let volume = pod["spec"]["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == mount["name"])
            .with_context(|| format!("{name}: no volume {}", mount["name"]))?;
        let map_name = &volume["configMap"]["name"];
        let map = config_maps
            .iter()
            .find(|m| &m["metadata"]["name"] == map_name)
            .with_context(|| format!("{name}: no ConfigMap {map_name}"))?;
        let mut files = BTreeMap::new();
        for (key, text) in map["data"].as_object().into_iter().flatten() {
            let path = tmp.join(key);
            std::fs::write(&path, text.as_str().unwrap_or_default())?;
            files.insert(format!("/etc/trailguard/{key}"), path);
        }
        let cfg =
            check_config(&args, &env, &files).with_context(|| format!("Deployment {name}"))?;
        ensure!(
            env.get("TRAILGUARD_CONFIG")
                .is_some_and(|p| files.contains_key(p)),
            "{name}: TRAILGUARD_CONFIG names no file of the ConfigMap"
        );
        // The role remediate assumes in the accounts is one its IAM policy lets it assume.
        if let Some(template) = cfg["aws"]["role_arn_template"].as_str() {
            let role = template.replace("{account}", "123456789012");
            ensure!(
                assumable_roles("remediate")?
                    .iter()
                    .any(|pattern| wildcard(pattern, &role)),
                "{name}: aws.role_arn_template {template} is not a role deploy/iam/{binary}.json may assume"
            );
        }
        // Ports, probes, scrape annotations, the Service.
        let port = port_of(&cfg["admin"]["listen"])?;
        let ports = &container["ports"][0];
        ensure!(
            ports["containerPort"] == port && ports["name"] == "admin",
            "{name}: containerPort {} is not admin.listen's {port}",
            ports["containerPort"]
        );
        for probe in ["readinessProbe", "livenessProbe"] {
            let get = &container[probe]["httpGet"];
            ensure!(
                get["path"] == "/healthz" && get["port"] == "admin",
                "{name}: {probe} must GET /healthz on the admin port"
            );
        }
        let annotations = &pod["metadata"]["annotations"];
        ensure!(
            annotations["prometheus.io/scrape"] == "true"
                && annotations["prometheus.io/port"] == port.to_string().as_str()
                && annotations["prometheus.io/path"] == "/metrics",
            "{name}: scrape annotations"
        );
        let labels = &pod["metadata"]["labels"];
        ensure!(
            services.iter().any(|s| {
                s["spec"]["ports"][0]["targetPort"] == "admin"
                    && s["spec"]["selector"]
                        .as_object()
                        .is_some_and(|sel| sel.iter().all(|(k, v)| &labels[k] == v))
            }),
            "{name}: no Service selects it on the admin port"
        );
        // Graceful termination outlasts the drain.
        let grace = pod["spec"]["terminationGracePeriodSeconds"]
            .as_u64()
            .context("terminationGracePeriodSeconds")?;
        ensure!(
            grace > drain_seconds(&binary, &cfg)?,
            "{name}: terminationGracePeriodSeconds {grace} must outlast the drain timeout"
        );
        // Non-root as the image's user, resources set.
        let security = &pod["spec"]["securityContext"];
        ensure!(
            security["runAsNonRoot"] == true && security["runAsUser"] == uid,
            "{name}: runs as the image's non-root user"
        );
        ensure!(
            container["resources"]["requests"].is_object()
                && container["resources"]["limits"]["memory"].is_string(),
            "{name}: resources"
        );
        // IAM through IRSA for the services that call AWS.
        let account = pod["spec"]["serviceAccountName"]
            .as_str()
            .unwrap_or_default();
        let sa = accounts
            .iter()
            .find(|a| a["metadata"]["name"] == account)
            .with_context(|| format!("{name}: no ServiceAccount {account}"))?;
        if binary != "detect" {
            ensure!(
                sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
                    .as_str()
                    .is_some_and(|a| a.starts_with("arn:aws:iam::")),
                "{name}: IRSA role annotation"
            );
        }
        // Consumers beyond the partitions stand idle.
        if binary != "ingest" {
            let replicas = deployment["spec"]["replicas"].as_u64().unwrap_or(1);
            let partitions = cfg["kafka"]["partitions"].as_u64().unwrap_or_default();
            ensure!(
                replicas <= partitions,
                "{name}: {replicas} replicas for {partitions} partitions"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
    // The ServiceMonitor selects the Services' labels and port.
    let monitor = of_kind("ServiceMonitor");
    ensure!(monitor.len() == 1);
    let selector = monitor[0]["spec"]["selector"]["matchLabels"]
        .as_object()
        .context("ServiceMonitor selector")?;
    ensure!(services.iter().all(|s| selector
        .iter()
        .all(|(k, v)| &s["metadata"]["labels"][k] == v)));
    ensure!(monitor[0]["spec"]["endpoints"][0]["port"] == "admin");
    Ok(())
}

/// The `sts:AssumeRole` resources `deploy/iam/<service>.json` allows.
fn assumable_roles(service: &str) -> Result<Vec<String>> {
    let policy: Value = serde_json::from_str(&std::fs::read_to_string(
        repo().join(format!("deploy/iam/{service}.json")),
    )?)?;
    let one_or_many = |v: &Value| match v.as_str() {
        Some(s) => vec![s.to_string()],
        None => as_strings(v),
    };
    let mut out = Vec::new();
    for st in policy["Statement"].as_array().into_iter().flatten() {
        let actions = one_or_many(&st["Action"]);
        if st["Effect"] == "Allow" && actions.iter().any(|a| a == "sts:AssumeRole") {
            out.extend(one_or_many(&st["Resource"]));
        }
    }
    Ok(out)
}

/// `*` matches any run of characters.
fn wildcard(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, tail)) => {
            text.starts_with(head)
                && (0..=text.len() - head.len()).any(|i| {
                    text.is_char_boundary(head.len() + i) && wildcard(tail, &text[head.len() + i..])
                })
        }
    }
}

/// The MSK examples are configurations the services accept.
#[test]
fn msk_examples_are_valid_configuration() -> Result<()> {
    let dir = repo().join("deploy/msk");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let env = BTreeMap::from([(
            "TRAILGUARD_KAFKA__CLIENT__SASL_PASSWORD".to_string(),
            "from-a-secret".to_string(),
        )]);
        for binary in ["detect", "remediate"] {
            let mut env = env.clone();
            env.insert("TRAILGUARD_SIGNING__KEY_ID".into(), "k".into());
            env.insert(
                "TRAILGUARD_SIGNING__KEY".into(),
                "an-operator-signing-key-0123456789abcdef".into(),
            );
            let args = vec![
                binary.to_string(),
                "--config".into(),
                path.display().to_string(),
            ];
            let cfg = check_config(&args, &env, &BTreeMap::new())
                .with_context(|| path.display().to_string())?;
            ensure!(
                cfg["kafka"]["client"]["security.protocol"]
                    .as_str()
                    .is_some_and(|p| p.ends_with("SSL"))
                    || cfg["kafka"]["msk_iam"]["enabled"] == true,
                "{}: MSK is reached over TLS",
                path.display()
            );
        }
        checked += 1;
    }
    ensure!(checked >= 3, "TLS, SCRAM and IAM examples");
    let policy: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("iam-policy.json"))?)?;
    ensure!(policy["Statement"]
        .as_array()
        .is_some_and(|s| !s.is_empty()));
    Ok(())
}

/// Metric names in PromQL: every `trailguard_*` identifier.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("trailguard_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// Names of the metric families a scrape exposes (histograms also as their series names).
fn scraped_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            names.insert(name.to_string());
            if kind == "histogram" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
        }
    }
    names
}

/// Every metric the Grafana dashboard and the alert rules query is one the services register,
/// as scraped from `/metrics` of the three running over a real trail bucket; and
/// docs/metrics.md lists exactly the metrics they register.
#[tokio::test(flavor = "multi_thread")]
async fn dashboards_and_rules_query_registered_metrics() -> Result<()> {
    let run = Run::new("metrics")?;
    // A trail bucket holding a file of the demo sample, read by `ingest s3` (which stays up, polling).
    let client = trailguard_tests::s3().await?;
    let bucket = format!("metrics-{}", std::process::id());
    client.create_bucket().bucket(&bucket).send().await?;
    let sample = std::fs::read(repo().join("deploy/demo/sample/02-signin-failures.json"))?;
    let key = "AWSLogs/123456789012/CloudTrail/us-east-1/2024/05/01/123456789012_CloudTrail_us-east-1_20240501T0000Z_metrics.json";
    client
        .put_object()
        .bucket(&bucket)
        .key(key)
        .body(sample.into())
        .send()
        .await?;
    // And a damaged one, which goes to the dead-letter topic.
    client
        .put_object()
        .bucket(&bucket)
        .key(key.replace("T0000Z_metrics", "T0005Z_damaged"))
        .body(b"{\"Records\": [".to_vec().into())
        .send()
        .await?;
    let endpoint = trailguard_tests::aws_endpoint()?;
    let mut ingest = run.spawn_ingest(&["s3", "--bucket", &bucket, "--aws-endpoint", &endpoint])?;
    let detect = run.spawn("detect", &[])?;
    let remediate = run.spawn("remediate", &["--aws-endpoint", &endpoint])?;
    // An unsigned alert, so the rejection counters have something besides zeros.
    trailguard_tests::produce(&run.topic("alerts"), "x", br#"{"not":"an alert"}"#).await?;

    let mut names = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    let services = [&ingest, &detect, &remediate];
    let wanted = [
        "trailguard_ingest_checkpoint_timestamp_seconds",
        "trailguard_kafka_consumer_lag_records",
        "trailguard_aws_calls_total",
        "trailguard_detect_alerts_total",
        "trailguard_ingest_dead_letters_total",
    ];
    loop {
        names.clear();
        for service in services {
            if let Some(addr) = admin_addr(&service.log()) {
                if let Ok(text) = http_get(&addr, "/metrics") {
                    names.extend(scraped_names(&text));
                }
            }
        }
        if wanted.iter().all(|w| names.contains(*w)) {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "not every metric showed up: {names:?}\ningest: {}",
            ingest.log()
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    for service in services {
        let addr = admin_addr(&service.log()).context("admin address")?;
        let health = http_get(&addr, "/healthz")?;
        ensure!(
            health.starts_with("HTTP/1.1 200") || health.starts_with("HTTP/1.0 200"),
            "/healthz of {addr}: {health}"
        );
    }
    ingest.stop("-TERM")?;
    drop((detect, remediate));
    let ours: BTreeSet<String> = names
        .iter()
        .filter(|n| n.starts_with("trailguard_"))
        .cloned()
        .collect();

    // The dashboard.
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(
        repo().join("deploy/grafana/trailguard.json"),
    )?)?;
    let mut queried = BTreeSet::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            queried.extend(metric_names(target["expr"].as_str().unwrap_or_default()));
        }
    }
    ensure!(queried.len() > 10, "the dashboard queries {queried:?}");
    let unknown: Vec<_> = queried.difference(&ours).collect();
    ensure!(
        unknown.is_empty(),
        "the dashboard queries unregistered metrics: {unknown:?}"
    );
    // The alert rules.
    let rules = yaml_docs(&repo().join("deploy/prometheus/alerts.yml"))?.remove(0);
    let mut alerted = BTreeSet::new();
    for group in rules["groups"].as_array().into_iter().flatten() {
        for rule in group["rules"].as_array().into_iter().flatten() {
            alerted.extend(metric_names(rule["expr"].as_str().unwrap_or_default()));
        }
    }
    let unknown: Vec<_> = alerted.difference(&ours).collect();
    ensure!(
        unknown.is_empty(),
        "the alert rules query unregistered metrics: {unknown:?}"
    );
    // The catalogue lists every family, and nothing else.
    let catalogue = std::fs::read_to_string(repo().join("docs/metrics.md"))?;
    let documented: BTreeSet<String> = catalogue
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .filter(|n| n.starts_with("trailguard_"))
        .map(str::to_string)
        .collect();
    let families: BTreeSet<String> = ours
        .iter()
        .filter(|n| {
            !["_bucket", "_sum", "_count"]
                .iter()
                .any(|s| n.ends_with(s) && ours.contains(n.trim_end_matches(s)))
        })
        .cloned()
        .collect();
    let undocumented: Vec<_> = families.difference(&documented).collect();
    let stale: Vec<_> = documented.difference(&families).collect();
    ensure!(
        undocumented.is_empty() && stale.is_empty(),
        "docs/metrics.md: undocumented {undocumented:?}, not registered {stale:?}"
    );
    Ok(())
}

/// promtool checks the rules and the compose Prometheus configuration, and the rules' unit
/// tests (each alert fires when it should and not before) pass.
#[test]
fn alert_rules_pass_promtool() -> Result<()> {
    let promtool = std::env::var("TRAILGUARD_TEST_PROMTOOL")
        .context("TRAILGUARD_TEST_PROMTOOL (deploy/local/install.sh installs promtool)")?;
    let dir = repo().join("deploy/prometheus");
    for args in [
        vec!["check", "rules", "alerts.yml"],
        vec!["test", "rules", "alerts.test.yml"],
    ] {
        let out = Command::new(&promtool)
            .args(&args)
            .current_dir(&dir)
            .output()?;
        ensure!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = Command::new(&promtool)
        .args(["check", "config", "prometheus.yml"])
        .current_dir(repo().join("deploy/compose"))
        .output()?;
    ensure!(
        out.status.success(),
        "promtool check config: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every alert the rules define has a unit test.
    let rules = yaml_docs(&dir.join("alerts.yml"))?.remove(0);
    let tests = std::fs::read_to_string(dir.join("alerts.test.yml"))?;
    for group in rules["groups"].as_array().into_iter().flatten() {
        for rule in group["rules"].as_array().into_iter().flatten() {
            let name = rule["alert"].as_str().unwrap_or_default();
            ensure!(
                tests.contains(&format!("alertname: {name}\n")),
                "{name} has no unit test in alerts.test.yml"
            );
        }
    }
    Ok(())
}
