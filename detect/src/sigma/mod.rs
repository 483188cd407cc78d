//! Sigma rules on the live stream: every rule for AWS CloudTrail (`logsource: {product: aws,
//! service: cloudtrail}`) under the configured paths becomes a policy, `sigma-<rule id>` (or
//! `sigma-<file stem>` for a rule without an id), evaluated against each activity under
//! CloudTrail's own field names ([`view::CloudTrailView`]) with the same folding, signing and
//! remediation as the built-in policies.
//!
//! ```toml
//! [policies.sigma]
//! paths = ["/opt/sigma/rules/cloud/aws"]
//! # skip_unsupported = false
//! [policies.sigma.rules."8a7b2c1d-…"]
//! enabled = true
//! severity = "high"
//! actions = ["notify", "require_sign_in"]
//! allow_principals = ["arn:aws:iam::111111111111:role/deployer"]
//! ```
//!
//! Matching is rsigma's (`rsigma-eval`, pinned: see the crate decision in `docs/sigma.md`):
//! case-insensitive, wildcards, modifiers, conditions, and its index of rules by field value,
//! so a rule costs nothing for events it cannot match. What is ours: which rules load (only
//! constructs whose meaning on CloudTrail is right — anything else stops start-up naming the
//! file and the construct, or with `skip_unsupported` is skipped with a warning), the fields
//! ([`view`]), and the alerts.

pub mod correlation;
pub mod route;
pub mod view;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use rsigma_parser::ast::{CorrelationRule, Detection, Modifier, SigmaRule, Status};
use serde::{Deserialize, Serialize};
use trailguard_common::contract::{stable_id, ActionKind, Alert, AlertKind, Entity, Severity};
use trailguard_common::Activity;

use crate::policy::{allowed, requested, who, AlertBuilder, PolicyMeta};

/// `[policies.sigma]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SigmaConfig {
    /// Files and directories (searched recursively for `.yml`/`.yaml`) to load rules from.
    pub paths: Vec<PathBuf>,
    /// Skip a rule that cannot be loaded (one warning per rule, counted in
    /// `trailguard_detect_sigma_rules{state="skipped"}`) instead of refusing to start.
    pub skip_unsupported: bool,
    /// Per-rule settings, keyed by the rule's id (or file stem, for a rule without one).
    pub rules: BTreeMap<String, SigmaRuleConfig>,
}

/// Settings of one Sigma rule.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SigmaRuleConfig {
    /// Evaluate it (default true).
    pub enabled: Option<bool>,
    /// Severity instead of the one its `level` gives.
    pub severity: Option<Severity>,
    /// Governance actions to request (default: notify).
    pub actions: Option<Vec<ActionKind>>,
    /// Principals whose activity it ignores (ARNs or principal keys; bare names: IAM users).
    pub allow_principals: Vec<String>,
}

/// A correlation read from a file, before its references are resolved.
struct Parsed {
    rule: CorrelationRule,
    /// Whether it has a `condition` (a temporal one without needs all its rules).
    condition_given: bool,
}

/// What a correlation's reference names.
enum Reference {
    /// A loaded rule (index in `rules`).
    Rule(usize),
    /// Another correlation.
    Correlation,
    /// A rule switched off in its settings.
    Disabled,
    /// A rule not loaded (refused, skipped, deprecated).
    Skipped,
    /// Nothing loaded: another log source's rule, or a typo.
    Unknown,
}

/// A loaded correlation with what loading needs of it.
struct LoadedCorrelation {
    loaded: correlation::Correlation,
    /// `generate`: the rules it refers to alert on their own too.
    generate: bool,
    /// Its id and name, which other correlations may refer to.
    names: Vec<String>,
}

/// One rule loaded as a policy.
#[derive(Debug, Clone)]
pub struct LoadedRule {
    /// Policy id: `sigma-<rule id or file stem>`.
    pub policy_id: String,
    /// The key of its settings: its id, or its file stem.
    pub key: String,
    /// Its title.
    pub title: String,
    /// Its `name`, when it has one (correlations may refer to it).
    pub name: Option<String>,
    /// Where it was read.
    pub file: PathBuf,
    /// Severity of its alerts.
    pub severity: Severity,
    /// Actions its alerts request.
    pub actions: Vec<ActionKind>,
    /// Principals it ignores.
    pub allow_principals: Vec<String>,
    /// ATT&CK tactic and technique from its `attack.*` tags (empty when it has none).
    pub mitre: (String, String, String),
    /// Alerts on its own: referred to by no correlation, or by one with `generate: true`.
    pub generates: bool,
    /// The correlations referring to it: (correlation index, its position in their rules).
    pub correlations: Vec<(usize, u8)>,
}

/// A rule not loaded, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Skipped {
    /// Where it was read.
    pub file: PathBuf,
    /// Its title (or the file name, when it could not be parsed).
    pub rule: String,
    /// Why.
    pub reason: String,
}

/// The loaded rules, compiled.
pub struct SigmaRules {
    /// The rules compiled, by the event name they require ([`route`]).
    engines: route::Routed,
    rules: Vec<LoadedRule>,
    /// Rule id (or title, for a rule without one) → index in `rules`.
    by_key: HashMap<String, usize>,
    skipped: Vec<Skipped>,
    /// Keys of the rules switched off in their settings, or deprecated by their authors.
    disabled: Vec<String>,
    /// The rules accepted so far, compiled into the engine together at the end.
    accepted: Vec<SigmaRule>,
    /// Files read that hold no rule for CloudTrail (other log sources), for the listing.
    other_sources: usize,
    /// The correlation rules loaded.
    correlations: Vec<LoadedCorrelation>,
    /// Correlation policy id → index in `correlations`.
    correlation_by_policy: HashMap<String, usize>,
    /// Ids, names and titles of CloudTrail rules read but not loaded (switched off, skipped,
    /// refused, in a file refused whole), which a correlation may name.
    unloaded_names: Vec<String>,
}

impl std::fmt::Debug for SigmaRules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigmaRules")
            .field("rules", &self.rules.len())
            .field("skipped", &self.skipped.len())
            .finish()
    }
}

/// Most bytes read from one rule file (a rule is a few kilobytes; a larger file is not one).
const MAX_RULE_BYTES: u64 = 1 << 20;
/// Most rule files read from the configured paths.
const MAX_FILES: usize = 20_000;

impl SigmaRules {
    /// No rules.
    pub fn none() -> Self {
        SigmaRules {
            engines: route::Routed::none(),
            rules: Vec::new(),
            by_key: HashMap::new(),
            skipped: Vec::new(),
            disabled: Vec::new(),
            accepted: Vec::new(),
            other_sources: 0,
            correlations: Vec::new(),
            correlation_by_policy: HashMap::new(),
            unloaded_names: Vec::new(),
        }
    }

    /// Loads every CloudTrail rule under `cfg.paths`. Errors name the file and the construct
    /// (unless `skip_unsupported`), or the key of a setting that names no loaded rule.
    pub fn load(cfg: &SigmaConfig) -> Result<Self, trailguard_common::Error> {
        let mut out = Self::none();
        let mut files = Vec::new();
        for (i, path) in cfg.paths.iter().enumerate() {
            let key = format!("policies.sigma.paths[{i}]");
            collect_files(path, &mut files)
                .map_err(|e| trailguard_common::Error::config(&key, e))?;
            if files.len() > MAX_FILES {
                return Err(trailguard_common::Error::config(
                    &key,
                    format!("more than {MAX_FILES} rule files"),
                ));
            }
        }
        files.sort();
        files.dedup();
        let mut seen_policy: HashMap<String, PathBuf> = HashMap::new();
        // Filters, and correlations that could not be read, with the rules they name.
        let mut references: Vec<(PathBuf, Vec<String>, String)> = Vec::new();
        // Correlations, resolved once every rule is read: (file, whether the file holds
        // CloudTrail rules, the correlation).
        let mut correlations: Vec<(PathBuf, bool, Parsed)> = Vec::new();
        for file in &files {
            match load_file(file) {
                Ok(FileRules::Other(found, parsed)) => {
                    out.other_sources += 1;
                    for (refs, what) in found {
                        references.push((file.clone(), refs, what));
                    }
                    correlations.extend(parsed.into_iter().map(|c| (file.clone(), false, c)));
                }
                Ok(FileRules::Rules(rules, parsed)) => {
                    for rule in rules {
                        out.add(cfg, file, rule, &mut seen_policy)?;
                    }
                    correlations.extend(parsed.into_iter().map(|c| (file.clone(), true, c)));
                }
                Err((reason, names)) => {
                    out.unloaded_names.extend(names);
                    out.refuse(
                        cfg,
                        Skipped {
                            file: file.clone(),
                            rule: file_name(file),
                            reason,
                        },
                    )?
                }
            }
        }
        // Correlations over correlations after the ones they refer to (which they are refused
        // over, with a reason).
        let names: Vec<String> = correlations
            .iter()
            .flat_map(|(_, _, p)| [p.rule.id.clone(), p.rule.name.clone()])
            .flatten()
            .collect();
        correlations.sort_by_key(|(_, _, p)| p.rule.rules.iter().any(|r| names.contains(r)));
        for (file, cloudtrail, parsed) in correlations {
            out.add_correlation(cfg, &file, cloudtrail, parsed, &mut seen_policy)?;
        }
        // A rule referred to only by correlations that do not generate its alerts is silent.
        for rule in &mut out.rules {
            rule.generates = rule.correlations.is_empty()
                || rule
                    .correlations
                    .iter()
                    .any(|&(ci, _)| out.correlations.get(ci).is_some_and(|c| c.generate));
        }
        // A filter (or a correlation that could not be read) naming a loaded rule cannot run:
        // say so, do not drop it.
        for (file, refs, what) in references {
            let named = refs.iter().find(|r| {
                out.rules.iter().any(|l| {
                    &l.key == *r || l.name.as_deref() == Some(r.as_str()) || &l.title == *r
                })
            });
            if let Some(rule) = named {
                out.refuse(
                    cfg,
                    Skipped {
                        file,
                        rule: rule.clone(),
                        reason: format!("{what} over this rule cannot be used"),
                    },
                )?;
            }
        }
        // The rules by the event name they require, each group with rsigma's index of rules
        // by field value.
        let accepted = std::mem::take(&mut out.accepted);
        let (engines, errors) = route::Routed::compile(&accepted);
        out.engines = engines;
        if let Some((i, error)) = errors.into_iter().next() {
            return Err(trailguard_common::Error::config(
                "policies.sigma.paths",
                format!(
                    "rule {}: cannot be compiled: {error}",
                    accepted.get(i).map(|r| r.title.as_str()).unwrap_or("?")
                ),
            ));
        }
        // A setting for a rule that is not there is a typo, or a rule that went away.
        for key in cfg.rules.keys() {
            let known = out.rules.iter().any(|r| &r.key == key)
                || out.correlations.iter().any(|c| &c.loaded.key == key)
                || out.skipped.iter().any(|s| s.rule == *key)
                || out.disabled.contains(key);
            if !known {
                return Err(trailguard_common::Error::config(
                    &format!("policies.sigma.rules.{key}"),
                    "names no rule under policies.sigma.paths",
                ));
            }
        }
        Ok(out)
    }

    /// Takes `rule` read from `file`, or refuses it (remembering its names for correlations
    /// that refer to it).
    fn add(
        &mut self,
        cfg: &SigmaConfig,
        file: &Path,
        rule: SigmaRule,
        seen_policy: &mut HashMap<String, PathBuf>,
    ) -> Result<(), trailguard_common::Error> {
        let names: Vec<String> = [rule.id.clone(), rule.name.clone(), Some(rule.title.clone())]
            .into_iter()
            .flatten()
            .collect();
        let loaded = self.rules.len();
        let result = self.add_rule(cfg, file, rule, seen_policy);
        if self.rules.len() == loaded {
            self.unloaded_names.extend(names);
        }
        result
    }

    fn add_rule(
        &mut self,
        cfg: &SigmaConfig,
        file: &Path,
        rule: SigmaRule,
        seen_policy: &mut HashMap<String, PathBuf>,
    ) -> Result<(), trailguard_common::Error> {
        let key = rule
            .id
            .clone()
            .unwrap_or_else(|| file_stem(file).to_string());
        let Some(settings) = self.settings_if_kept(cfg, file, &key, rule.status) else {
            return Ok(());
        };
        if let Err(reason) = supported(&rule) {
            return self.refuse(
                cfg,
                Skipped {
                    file: file.to_path_buf(),
                    rule: key,
                    reason,
                },
            );
        }
        let policy_id = format!("sigma-{}", policy_suffix(&key));
        if let Some(other) = seen_policy.get(&policy_id) {
            return self.refuse(
                cfg,
                Skipped {
                    file: file.to_path_buf(),
                    rule: key,
                    reason: format!(
                        "its policy id {policy_id} is also the id of a rule in {}",
                        other.display()
                    ),
                },
            );
        }
        let result_key = rule.id.clone().unwrap_or_else(|| rule.title.clone());
        if self.by_key.contains_key(&result_key) {
            return self.refuse(
                cfg,
                Skipped {
                    file: file.to_path_buf(),
                    rule: key,
                    reason: format!("another rule has the id or title {result_key:?}"),
                },
            );
        }
        if let Err(e) = rsigma_eval::Engine::new().add_rule(&rule) {
            return self.refuse(
                cfg,
                Skipped {
                    file: file.to_path_buf(),
                    rule: key,
                    reason: format!("cannot be compiled: {e}"),
                },
            );
        }
        seen_policy.insert(policy_id.clone(), file.to_path_buf());
        self.by_key.insert(result_key, self.rules.len());
        self.rules.push(LoadedRule {
            policy_id,
            key,
            title: rule.title.clone(),
            name: rule.name.clone(),
            file: file.to_path_buf(),
            severity: settings.severity.unwrap_or_else(|| severity_of(rule.level)),
            actions: settings.actions.unwrap_or_else(|| vec![ActionKind::Notify]),
            allow_principals: settings.allow_principals,
            mitre: mitre_of(&rule.tags),
            generates: true,
            correlations: Vec::new(),
        });
        self.accepted.push(rule);
        Ok(())
    }

    /// The settings of the rule `key` (a detection or correlation rule) when it is to be
    /// loaded; `None` when it is switched off (noted) or no longer kept by its authors
    /// (SigmaHQ's `deprecated/`, `unsupported/`: listed as skipped, never an error — a whole
    /// checkout holds them).
    fn settings_if_kept(
        &mut self,
        cfg: &SigmaConfig,
        file: &Path,
        key: &str,
        status: Option<Status>,
    ) -> Option<SigmaRuleConfig> {
        let settings = cfg.rules.get(key).cloned().unwrap_or_default();
        if settings.enabled == Some(false) {
            self.disabled.push(key.to_string());
            return None;
        }
        if let Some(status @ (Status::Deprecated | Status::Unsupported)) = status {
            self.skipped.push(Skipped {
                file: file.to_path_buf(),
                rule: key.to_string(),
                reason: format!("status {status:?}: its authors do not keep it working")
                    .to_ascii_lowercase(),
            });
            return None;
        }
        Some(settings)
    }

    /// Takes the correlation `parsed` read from `file` (which holds CloudTrail rules when
    /// `cloudtrail`), or refuses it. A correlation naming no CloudTrail rule is another log
    /// source's, and passed over.
    fn add_correlation(
        &mut self,
        cfg: &SigmaConfig,
        file: &Path,
        cloudtrail: bool,
        parsed: Parsed,
        seen_policy: &mut HashMap<String, PathBuf>,
    ) -> Result<(), trailguard_common::Error> {
        let Parsed {
            rule,
            condition_given,
        } = parsed;
        let key = rule
            .id
            .clone()
            .unwrap_or_else(|| file_stem(file).to_string());
        // What each reference names.
        let resolved: Vec<Reference> = rule.rules.iter().map(|r| self.resolve(r)).collect();
        let ours = cloudtrail || resolved.iter().any(|r| !matches!(r, Reference::Unknown));
        if !ours {
            return Ok(());
        }
        let Some(settings) = self.settings_if_kept(cfg, file, &key, rule.status) else {
            return Ok(());
        };
        let policy_id = format!("sigma-{}", policy_suffix(&key));
        let checked =
            correlation_of(&rule, &resolved, condition_given, &self.rules).and_then(|c| {
                match seen_policy.get(&policy_id) {
                    Some(other) => Err(format!(
                        "its policy id {policy_id} is also the id of a rule in {}",
                        other.display()
                    )),
                    None => Ok(c),
                }
            });
        let (kind, rules, group_by, value_field, at_least, span) = match checked {
            Ok(c) => c,
            Err(reason) => {
                return self.refuse(
                    cfg,
                    Skipped {
                        file: file.to_path_buf(),
                        rule: key,
                        reason,
                    },
                )
            }
        };
        seen_policy.insert(policy_id.clone(), file.to_path_buf());
        let rule_keys: Vec<&str> = rules
            .iter()
            .filter_map(|&i| self.rules.get(i).map(|r| r.key.as_str()))
            .collect();
        let definition = correlation::Correlation::digest(
            kind,
            &rule_keys,
            &group_by,
            value_field.as_ref(),
            at_least,
            span,
        );
        let ci = self.correlations.len();
        for (position, &index) in rules.iter().enumerate() {
            if let Some(r) = self.rules.get_mut(index) {
                r.correlations.push((ci, position as u8));
            }
        }
        self.correlation_by_policy.insert(policy_id.clone(), ci);
        self.correlations.push(LoadedCorrelation {
            loaded: correlation::Correlation {
                policy_id,
                key,
                title: rule.title.clone(),
                file: file.to_path_buf(),
                kind,
                rules,
                group_by,
                value_field,
                at_least,
                span,
                severity: settings.severity.unwrap_or_else(|| severity_of(rule.level)),
                actions: settings.actions.unwrap_or_else(|| vec![ActionKind::Notify]),
                allow_principals: settings.allow_principals,
                mitre: mitre_of(&rule.tags),
                definition,
            },
            generate: rule.generate,
            names: [rule.id.clone(), rule.name.clone()]
                .into_iter()
                .flatten()
                .collect(),
        });
        Ok(())
    }

    /// What the reference `r` (a rule's id or name) names.
    fn resolve(&self, r: &str) -> Reference {
        if let Some(i) = self
            .rules
            .iter()
            .position(|l| l.key == r || l.name.as_deref() == Some(r))
        {
            return Reference::Rule(i);
        }
        if self
            .correlations
            .iter()
            .any(|c| c.names.iter().any(|n| n == r))
        {
            return Reference::Correlation;
        }
        if self.disabled.iter().any(|k| k == r) {
            return Reference::Disabled;
        }
        if self.skipped.iter().any(|s| s.rule == r) || self.unloaded_names.iter().any(|n| n == r) {
            return Reference::Skipped;
        }
        Reference::Unknown
    }

    /// Skips `skipped` (with a warning) when so configured, else stops start-up naming it.
    fn refuse(
        &mut self,
        cfg: &SigmaConfig,
        skipped: Skipped,
    ) -> Result<(), trailguard_common::Error> {
        if cfg.skip_unsupported {
            tracing::warn!(
                file = %skipped.file.display(),
                rule = %skipped.rule,
                reason = %skipped.reason,
                "Sigma rule skipped"
            );
            self.skipped.push(skipped);
            Ok(())
        } else {
            Err(trailguard_common::Error::config(
                "policies.sigma.paths",
                format!(
                    "{}: rule {}: {} (set policies.sigma.skip_unsupported = true to skip it)",
                    skipped.file.display(),
                    skipped.rule,
                    skipped.reason
                ),
            ))
        }
    }

    /// The rules loaded.
    pub fn rules(&self) -> &[LoadedRule] {
        &self.rules
    }

    /// The rules skipped, and why.
    pub fn skipped(&self) -> &[Skipped] {
        &self.skipped
    }

    /// Files read that hold rules for other log sources.
    pub fn other_sources(&self) -> usize {
        self.other_sources
    }

    /// How the rules are routed: engines by event name, and rules evaluated for every
    /// activity ([`route`]).
    pub fn routing(&self) -> (usize, usize) {
        self.engines.shape()
    }

    /// The correlations loaded.
    pub fn correlations(&self) -> impl ExactSizeIterator<Item = &correlation::Correlation> {
        self.correlations.iter().map(|c| &c.loaded)
    }

    /// The correlation of policy `policy_id`, with its index.
    pub fn correlation(&self, policy_id: &str) -> Option<(usize, &correlation::Correlation)> {
        let &i = self.correlation_by_policy.get(policy_id)?;
        Some((i, &self.correlations.get(i)?.loaded))
    }

    /// The correlation at `index`.
    pub(crate) fn correlation_at(&self, index: usize) -> Option<&correlation::Correlation> {
        self.correlations.get(index).map(|c| &c.loaded)
    }

    /// Adds the alerts the rules raise for `a` to `out`, and each correlation's share of it
    /// to `hits`.
    pub fn evaluate(&self, a: &Activity, out: &mut Vec<Alert>, hits: &mut Vec<correlation::Hit>) {
        if self.rules.is_empty() {
            return;
        }
        let view = view::CloudTrailView::new(a);
        // The rules matched, in the order they were loaded whichever engine matched them.
        let mut matched: Vec<usize> = Vec::new();
        for engine in self.engines.engines(&a.event_name) {
            for result in engine.evaluate(&view) {
                let header = &result.header;
                let key = header.rule_id.as_ref().unwrap_or(&header.rule_title);
                matched.extend(self.by_key.get(key));
            }
        }
        matched.sort_unstable();
        matched.dedup();
        // (correlation, positions of its rules matched).
        let mut shares: Vec<(usize, Vec<u8>)> = Vec::new();
        for rule in matched.into_iter().filter_map(|i| self.rules.get(i)) {
            for &(ci, position) in &rule.correlations {
                match shares.iter_mut().find(|(c, _)| *c == ci) {
                    Some((_, positions)) => positions.push(position),
                    None => shares.push((ci, vec![position])),
                }
            }
            if !rule.generates || allowed(&rule.allow_principals, a) {
                continue;
            }
            out.push(alert(rule, a));
        }
        for (ci, mut positions) in shares {
            let Some(corr) = self.correlation_at(ci) else {
                continue;
            };
            if allowed(&corr.allow_principals, a) {
                continue;
            }
            positions.sort_unstable();
            // The fields as the first rule matched names them (its aliases).
            let first = usize::from(positions[0]);
            let read = |f: &correlation::Field| {
                f.by_rule
                    .get(first)
                    .and_then(|path| view::text_of(&view, path))
                    .map(correlation::bounded)
            };
            // The alert needs none of the activity's documents; the forwarded record stays
            // small whatever the request was.
            let mut activity = a.clone();
            activity.request_parameters = None;
            activity.response_elements = None;
            activity.additional_event_data = None;
            hits.push(correlation::Hit {
                correlation: corr.policy_id.clone(),
                definition: corr.definition.clone(),
                group: corr.group_by.iter().map(read).collect(),
                rules: positions,
                value: corr.value_field.as_ref().and_then(read),
                activity,
            });
        }
    }
}

/// The alert of `rule` for `a`.
fn alert(rule: &LoadedRule, a: &Activity) -> Alert {
    let policy = PolicyMeta {
        id: &rule.policy_id,
        name: &rule.title,
        kind: AlertKind::Custom,
    };
    let summary = format!("{} {}: {}", who(a), a.event_name, rule.title);
    let (tactic, technique_id, technique) = &rule.mitre;
    let mut builder = AlertBuilder::about(&policy, a, rule.severity)
        .entity(Entity {
            kind: trailguard_common::contract::kinds::PRINCIPAL.into(),
            id: a.principal.key(),
        })
        .evidence(vec![a.id.clone()], summary)
        .actions(requested(&rule.actions, a));
    if !tactic.is_empty() || !technique_id.is_empty() {
        builder = builder.mitre((tactic.as_str(), technique_id.as_str(), technique.as_str()));
    }
    builder.id(stable_id(["sigma", rule.policy_id.as_str(), a.id.as_str()]))
}

/// What one file holds.
enum FileRules {
    /// Detection rules for CloudTrail, and the correlations in the file.
    Rules(Vec<SigmaRule>, Vec<Parsed>),
    /// No detection rule for CloudTrail: rules of other log sources (a SigmaHQ checkout holds
    /// thousands). Filters, and correlations that could not be read: (the rule names they
    /// refer to, what they are), checked against the loaded rules afterwards; the
    /// correlations read, which are ours if they refer to CloudTrail rules.
    Other(Vec<(Vec<String>, String)>, Vec<Parsed>),
}

/// Reads the rules of one file; `Err` says why a CloudTrail rule in it cannot be used.
fn load_file(file: &Path) -> Result<FileRules, (String, Vec<String>)> {
    let mut names = Vec::new();
    read_file(file, &mut names).map_err(|reason| (reason, names))
}

/// [`load_file`]; `names` gets the ids, names and titles of the CloudTrail rules in it.
fn read_file(file: &Path, names: &mut Vec<String>) -> Result<FileRules, String> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(file)
        .and_then(|f| f.take(MAX_RULE_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|e| format!("cannot be read: {e}"))?;
    // Which log sources, from the YAML documents themselves: a checkout's rules for other
    // products must not stop start-up for anything, and only a CloudTrail rule's problems are
    // ours.
    let Ok(text) = std::str::from_utf8(&bytes) else {
        return Ok(FileRules::Other(Vec::new(), Vec::new()));
    };
    let mut cloudtrail = false;
    let mut references = Vec::new();
    let mut unreadable = None;
    // Whether each correlation, in document order, has a condition.
    let mut conditions: Vec<bool> = Vec::new();
    for document in serde_yaml_ng::Deserializer::from_str(text) {
        let value = match serde_yaml_ng::Value::deserialize(document) {
            Ok(v) => v,
            Err(e) => {
                unreadable.get_or_insert(e.to_string());
                continue;
            }
        };
        let field = |v: &serde_yaml_ng::Value, k: &str| {
            v.get(k)
                .and_then(|x| x.as_str())
                .map(str::to_ascii_lowercase)
        };
        if let Some(source) = value.get("logsource") {
            let product = field(source, "product");
            let service = field(source, "service");
            if product.as_deref() == Some("aws") && service.as_deref() == Some("cloudtrail") {
                cloudtrail = true;
                for k in ["id", "name", "title"] {
                    if let Some(n) = value.get(k).and_then(|v| v.as_str()) {
                        names.push(n.to_string());
                    }
                }
            } else if product.as_deref() == Some("aws") || service.as_deref() == Some("cloudtrail")
            {
                tracing::warn!(
                    file = %file.display(),
                    ?product,
                    ?service,
                    "Sigma rule not loaded: only product aws with service cloudtrail is"
                );
            }
        }
        if let Some(body) = value.get("correlation") {
            conditions.push(body.get("condition").is_some());
        }
        // A correlation or a filter names the rules it applies to; one naming a CloudTrail
        // rule must not be dropped without a word.
        for kind in ["correlation", "filter"] {
            if let Some(body) = value.get(kind) {
                let rules = match body.get("rules") {
                    Some(serde_yaml_ng::Value::Sequence(items)) => items
                        .iter()
                        .filter_map(|i| i.as_str().map(str::to_string))
                        .collect(),
                    Some(other) => other
                        .as_str()
                        .map(|s| vec![s.to_string()])
                        .unwrap_or_default(),
                    None => Vec::new(),
                };
                let title = value.get("title").and_then(|t| t.as_str()).unwrap_or(kind);
                references.push((rules, format!("the {kind} rule {title:?}")));
            }
        }
    }
    let parsed = |collection: rsigma_parser::ast::SigmaCollection| -> Vec<Parsed> {
        collection
            .correlations
            .into_iter()
            .enumerate()
            .map(|(i, rule)| {
                // rsigma reads every document or the file is refused: the i-th correlation is
                // the i-th correlation document.
                let condition_given = conditions.get(i).copied().unwrap_or(true);
                Parsed {
                    rule,
                    condition_given,
                }
            })
            .collect()
    };
    if !cloudtrail {
        // Correlations of their own file (SigmaHQ keeps them apart from their rules): read
        // them, and keep their references only if they cannot be read.
        if conditions.is_empty() || unreadable.is_some() || bytes.len() as u64 > MAX_RULE_BYTES {
            return Ok(FileRules::Other(references, Vec::new()));
        }
        return match rsigma_parser::parse_sigma_yaml(text) {
            Ok(collection) if collection.errors.is_empty() => {
                references.retain(|(_, what)| !what.starts_with("the correlation"));
                Ok(FileRules::Other(references, parsed(collection)))
            }
            _ => Ok(FileRules::Other(references, Vec::new())),
        };
    }
    if bytes.len() as u64 > MAX_RULE_BYTES {
        return Err(format!(
            "is larger than a rule file holds ({MAX_RULE_BYTES} bytes)"
        ));
    }
    if let Some(error) = unreadable {
        return Err(format!("cannot be parsed as YAML: {error}"));
    }
    let collection =
        rsigma_parser::parse_sigma_yaml(text).map_err(|e| format!("cannot be parsed: {e}"))?;
    if let Some(error) = collection.errors.first() {
        return Err(format!("cannot be parsed: {error}"));
    }
    if !collection.filters.is_empty() {
        return Err("holds a filter rule: Sigma filters are not supported".into());
    }
    let mut collection = collection;
    let rules: Vec<SigmaRule> = std::mem::take(&mut collection.rules)
        .into_iter()
        .filter(|r| is_cloudtrail(&r.logsource))
        .collect();
    Ok(FileRules::Rules(rules, parsed(collection)))
}

fn is_cloudtrail(source: &rsigma_parser::ast::LogSource) -> bool {
    let is =
        |v: &Option<String>, want: &str| v.as_deref().is_some_and(|s| s.eq_ignore_ascii_case(want));
    is(&source.product, "aws") && is(&source.service, "cloudtrail")
}

/// Whether `rule` means on CloudTrail what it says; `Err` names the construct.
fn supported(rule: &SigmaRule) -> Result<(), String> {
    if rsigma_parser::version::is_unsupported(rule.sigma_version) {
        return Err(format!(
            "sigma-version {:?}: newer than the specification rsigma 0.23 reads",
            rule.sigma_version
        ));
    }
    if let Some(timeframe) = &rule.detection.timeframe {
        return Err(format!(
            "timeframe ({timeframe}): the old aggregation notation; write it as a Sigma v2 correlation rule"
        ));
    }
    let mut names: Vec<&String> = rule.detection.named.keys().collect();
    names.sort();
    for name in names {
        let detection = &rule.detection.named[name];
        check_detection(detection).map_err(|e| format!("detection {name}: {e}"))?;
    }
    Ok(())
}

/// Most fields a correlation groups by.
const MAX_GROUP_BY: usize = 8;

/// What a checked correlation is: kind, referred rules, group-by, value_count's field, the
/// count needed, the timespan.
type Checked = (
    correlation::Kind,
    Vec<usize>,
    Vec<correlation::Field>,
    Option<correlation::Field>,
    u64,
    chrono::Duration,
);

/// Checks the correlation `rule` whose references resolved to `resolved`; `Err` names the
/// construct that cannot run.
fn correlation_of(
    rule: &CorrelationRule,
    resolved: &[Reference],
    condition_given: bool,
    loaded: &[LoadedRule],
) -> Result<Checked, String> {
    use correlation::Kind;
    use rsigma_parser::ast::{
        ConditionOperator, CorrelationCondition, CorrelationType, WindowMode,
    };
    if rsigma_parser::version::is_unsupported(rule.sigma_version) {
        return Err(format!(
            "sigma-version {:?}: newer than the specification rsigma 0.23 reads",
            rule.sigma_version
        ));
    }
    let kind = match rule.correlation_type {
        CorrelationType::EventCount => Kind::EventCount,
        CorrelationType::ValueCount => Kind::ValueCount,
        CorrelationType::Temporal => Kind::Temporal,
        CorrelationType::TemporalOrdered => Kind::TemporalOrdered,
        other => {
            return Err(format!(
                "correlation type {}: only event_count, value_count, temporal and \
                 temporal_ordered are supported",
                other.as_str()
            ))
        }
    };
    if rule.window != WindowMode::Sliding {
        return Err(format!(
            "window {}: only sliding windows (Sigma's) are supported",
            rule.window.as_str()
        ));
    }
    let seconds = rule.timespan.seconds;
    if seconds == 0 || seconds > correlation::MAX_SPAN_SECS {
        return Err(format!(
            "timespan {}: give one between 1s and 1d (the correlations topic keeps 7 days for replays)",
            rule.timespan.original
        ));
    }
    let mut rules = Vec::new();
    for (reference, what) in rule.rules.iter().zip(resolved) {
        match what {
            Reference::Rule(i) if rules.contains(i) && kind == Kind::TemporalOrdered => {
                return Err(format!("refers to {reference:?} twice: an order of distinct rules is supported"))
            }
            Reference::Rule(i) if !rules.contains(i) => rules.push(*i),
            Reference::Rule(_) => {}
            Reference::Correlation => {
                return Err(format!(
                    "refers to the correlation {reference:?}: correlations of correlations are not supported"
                ))
            }
            Reference::Disabled => {
                return Err(format!(
                    "refers to the rule {reference:?}, which is switched off (policies.sigma.rules.{reference}.enabled); switch the correlation off too"
                ))
            }
            Reference::Skipped => {
                return Err(format!(
                    "refers to the rule {reference:?}, which was not loaded (listed above)"
                ))
            }
            Reference::Unknown => {
                return Err(format!(
                    "refers to {reference:?}: no CloudTrail rule under policies.sigma.paths has that id or name"
                ))
            }
        }
    }
    if rules.is_empty() {
        return Err("refers to no rule".into());
    }
    if rules.len() > correlation::MAX_RULES {
        return Err(format!(
            "refers to {} rules: at most {} are supported",
            rules.len(),
            correlation::MAX_RULES
        ));
    }
    // A field as each referred rule names it (an alias maps the rule's id or name to it).
    let field = |name: &str| -> Result<correlation::Field, String> {
        let alias = rule.aliases.iter().find(|a| a.alias == name);
        let mut by_rule = Vec::new();
        for &i in &rules {
            let r = &loaded[i];
            let path = match alias {
                None => name.to_string(),
                Some(alias) => alias
                    .mapping
                    .iter()
                    .find(|(k, _)| **k == r.key || r.name.as_deref() == Some(k.as_str()))
                    .map(|(_, v)| v.clone())
                    .ok_or_else(|| {
                        format!("the alias {name:?} names no field for the rule {:?}", r.key)
                    })?,
            };
            view::check_field(&path).map_err(|e| format!("field {path:?}: {e}"))?;
            by_rule.push(path);
        }
        Ok(correlation::Field {
            name: name.to_string(),
            by_rule,
        })
    };
    // Every group key and every forwarded match carries each field: a few are what a
    // correlation groups by, thousands would make each match megabytes.
    if rule.group_by.len() > MAX_GROUP_BY {
        return Err(format!(
            "group-by names {} fields; at most {MAX_GROUP_BY}",
            rule.group_by.len()
        ));
    }
    let group_by = rule
        .group_by
        .iter()
        .map(|g| field(g))
        .collect::<Result<Vec<_>, _>>()?;
    let (predicates, fields) = match &rule.condition {
        CorrelationCondition::Threshold {
            predicates, field, ..
        } => (predicates, field),
        CorrelationCondition::Extended(_) => {
            return Err("a condition expression: give a threshold (gte: N) instead".into())
        }
    };
    // Alerting on a count reached: gte or gt. Alerting on "at most" needs the window to end
    // without more, which a stream learns only by waiting: not supported.
    let threshold = match predicates.as_slice() {
        [(ConditionOperator::Gte, n)] => *n,
        [(ConditionOperator::Gt, n)] => n.saturating_add(1),
        _ => {
            let ops: Vec<String> = predicates
                .iter()
                .map(|(op, n)| format!("{op:?} {n}").to_ascii_lowercase())
                .collect();
            return Err(format!(
                "condition {}: only a lower bound (gte or gt) is supported",
                ops.join(", ")
            ));
        }
    };
    let value_field = match (kind, fields.as_deref()) {
        (Kind::ValueCount, Some([name])) => Some(field(name)?),
        (Kind::ValueCount, _) => {
            return Err("value_count needs exactly one condition field".into());
        }
        (_, None) => None,
        (_, Some(_)) => {
            return Err(format!(
                "condition field: only value_count counts a field, not {}",
                kind.as_str()
            ));
        }
    };
    let at_least = match kind {
        // A group holds at most MAX_GROUP_MATCHES: more could never be reached (rsigma reads a
        // negative count as a huge one).
        Kind::EventCount | Kind::ValueCount
            if threshold > correlation::MAX_GROUP_MATCHES as u64 =>
        {
            return Err(format!(
                "condition {threshold}: more than a group holds ({})",
                correlation::MAX_GROUP_MATCHES
            ));
        }
        Kind::EventCount | Kind::ValueCount => threshold.max(1),
        Kind::Temporal if !condition_given => rules.len() as u64,
        Kind::Temporal => {
            if threshold == 0 || threshold > rules.len() as u64 {
                return Err(format!(
                    "condition: {threshold} of {} rules cannot be matched",
                    rules.len()
                ));
            }
            threshold
        }
        Kind::TemporalOrdered => {
            if condition_given && threshold != rules.len() as u64 {
                return Err(
                    "temporal_ordered with a condition other than all its rules: not supported"
                        .into(),
                );
            }
            rules.len() as u64
        }
    };
    let span = chrono::Duration::seconds(seconds as i64);
    Ok((kind, rules, group_by, value_field, at_least, span))
}

fn check_detection(detection: &Detection) -> Result<(), String> {
    match detection {
        Detection::AllOf(items) => {
            for item in items {
                if let Some(field) = &item.field.name {
                    view::check_field(field)?;
                }
                for modifier in &item.field.modifiers {
                    check_modifier(*modifier)?;
                }
                if item.field.modifiers.contains(&Modifier::FieldRef) {
                    for value in &item.values {
                        if let rsigma_parser::SigmaValue::String(s) = value {
                            view::check_field(&s.original)?;
                        }
                    }
                }
            }
            Ok(())
        }
        Detection::AnyOf(list) => list.iter().try_for_each(check_detection),
        Detection::Keywords(_) => Ok(()),
        _ => Err("array object-scope blocks (field[any]/field[all]) are not supported".into()),
    }
}

fn check_modifier(modifier: Modifier) -> Result<(), String> {
    match modifier {
        Modifier::Base64Offset => {
            Err("the base64offset modifier: rsigma 0.23 misses some of its matches".into())
        }
        Modifier::Expand => Err("the expand modifier: placeholders need a pipeline".into()),
        Modifier::Minute
        | Modifier::Hour
        | Modifier::Day
        | Modifier::Week
        | Modifier::Month
        | Modifier::Year => {
            Err(format!("the {modifier:?} timestamp-part modifier").to_ascii_lowercase())
        }
        _ => Ok(()),
    }
}

/// Files under `path`: the file itself, or the `.yml`/`.yaml` files of a directory tree.
fn collect_files(path: &Path, out: &mut Vec<PathBuf>) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.is_file() {
        out.push(path.to_path_buf());
        return Ok(());
    }
    let mut walked = 0usize;
    for entry in walkdir::WalkDir::new(path).follow_links(true).max_depth(32) {
        walked += 1;
        if walked > MAX_FILES * 10 {
            return Err(format!(
                "{}: more than {} entries",
                path.display(),
                MAX_FILES * 10
            ));
        }
        // A loop of links or an unreadable directory: passed over, with a word.
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                tracing::warn!(error = %e, "Sigma rules: an entry under the paths passed over");
                continue;
            }
        };
        let yaml = entry
            .path()
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e.eq_ignore_ascii_case("yml") || e.eq_ignore_ascii_case("yaml"));
        if entry.file_type().is_file() && yaml {
            out.push(entry.into_path());
            if out.len() > MAX_FILES {
                return Ok(());
            }
        }
    }
    Ok(())
}

fn file_name(file: &Path) -> String {
    file.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn file_stem(file: &Path) -> String {
    file.file_stem()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A policy id's suffix from a rule key: lower-case letters, digits and `-`.
fn policy_suffix(key: &str) -> String {
    key.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

/// Severity from a Sigma level: informational and low are low, critical is high.
fn severity_of(level: Option<rsigma_parser::ast::Level>) -> Severity {
    use rsigma_parser::ast::Level;
    match level {
        Some(Level::High) | Some(Level::Critical) => Severity::High,
        Some(Level::Medium) => Severity::Medium,
        Some(Level::Low) | Some(Level::Informational) => Severity::Low,
        None => Severity::Medium,
    }
}

/// ATT&CK tactic and technique from Sigma tags (`attack.persistence`, `attack.t1098.001`):
/// the first of each; the technique's name is not in the rule, so its id stands for it.
fn mitre_of(tags: &[String]) -> (String, String, String) {
    let mut tactic = String::new();
    let mut technique = String::new();
    for tag in tags {
        let Some(rest) = tag
            .to_ascii_lowercase()
            .strip_prefix("attack.")
            .map(str::to_string)
        else {
            continue;
        };
        // `t1098.001` a technique; `g0016`, `s0002` a group or software: not a tactic.
        let coded = |letter: char| {
            rest.starts_with(letter) && rest[1..].chars().next().is_some_and(|c| c.is_ascii_digit())
        };
        if coded('t') {
            if technique.is_empty() {
                technique = rest.to_ascii_uppercase();
            }
        } else if tactic.is_empty() && !coded('g') && !coded('s') {
            tactic = rest
                .split(['-', '_'])
                .map(|w| {
                    let mut c = w.chars();
                    c.next()
                        .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                        .unwrap_or_default()
                })
                .collect::<Vec<_>>()
                .join(" ");
        }
    }
    let name = technique.clone();
    (tactic, technique, name)
}

#[cfg(test)]
mod correlation_tests;
#[cfg(test)]
mod tests;
