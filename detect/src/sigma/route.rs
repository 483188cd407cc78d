//! Rules routed by the event name they require.
//!
//! Nearly every CloudTrail rule names the calls it is about (`eventName: PutBucketPolicy`, or a
//! list of them). rsigma's own index picks one exact-value field per rule to gate it, and when
//! a rule names both `eventSource` and `eventName` it picks the first it reads, often
//! `eventSource` (or a value deep in `requestParameters`): every S3 read then evaluated every S3
//! rule, and the documents of most activities were parsed to check a witness. So the rules are
//! split here by the names they require: an activity is evaluated by the rules that require its
//! name, and by those that require none, nothing else.
//!
//! [`required_event_names`] reads the rule's detection the way rsigma evaluates it and may only
//! ever answer *more* names than the rule can match, or `None` (any): a name wrongly left out
//! would silently lose a detection. An item requires names when it is `eventName` without
//! modifiers and every value is a plain string (no wildcard): rsigma matches that by equality
//! after `to_lowercase` on both sides, so the names are kept lower-cased and an activity's name
//! is looked up lower-cased. `and` keeps what every side requires, `or` (a list of maps, a list
//! of conditions) any side's, `not` and anything else requires nothing.

use std::collections::{BTreeSet, HashMap};

use rsigma_parser::ast::{ConditionExpr, Detection, Quantifier, SigmaRule};
use rsigma_parser::SigmaValue;

/// A rule naming more calls than this is evaluated for every activity (compiling it into one
/// engine per name would cost more than it saves).
pub const MAX_NAMES: usize = 64;

/// The event names, lower-cased, one of which an activity must have for `rule` to match;
/// `None` when it may match any.
pub fn required_event_names(rule: &SigmaRule) -> Option<BTreeSet<String>> {
    let detection = &rule.detection;
    let mut any: Names = Some(BTreeSet::new());
    if detection.conditions.is_empty() {
        return None;
    }
    // Several conditions: the rule matches when any one does.
    for condition in &detection.conditions {
        any = or(any, condition_names(condition, &detection.named, 0));
    }
    // An empty set would be a rule that can never match; evaluate it anyway rather than trust
    // that reading.
    any.filter(|names| !names.is_empty() && names.len() <= MAX_NAMES)
}

/// `None`: any name.
type Names = Option<BTreeSet<String>>;

/// Deepest condition read (a deeper one requires nothing here).
const MAX_DEPTH: usize = 64;

fn or(a: Names, b: Names) -> Names {
    let (mut a, b) = (a?, b?);
    a.extend(b);
    Some(a)
}

fn and(a: Names, b: Names) -> Names {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.intersection(&b).cloned().collect()),
        (Some(a), None) | (None, Some(a)) => Some(a),
        (None, None) => None,
    }
}

fn condition_names(
    condition: &ConditionExpr,
    named: &HashMap<String, Detection>,
    depth: usize,
) -> Names {
    if depth > MAX_DEPTH {
        return None;
    }
    match condition {
        ConditionExpr::And(parts) => parts
            .iter()
            .map(|p| condition_names(p, named, depth + 1))
            .fold(None, and),
        ConditionExpr::Or(parts) => {
            if parts.is_empty() {
                return None;
            }
            parts
                .iter()
                .map(|p| condition_names(p, named, depth + 1))
                .fold(Some(BTreeSet::new()), or)
        }
        ConditionExpr::Not(_) => None,
        ConditionExpr::Identifier(name) => detection_names(named.get(name)?, depth + 1),
        ConditionExpr::Selector {
            quantifier,
            pattern,
        } => {
            let selected: Vec<&Detection> = named
                .iter()
                .filter(|(name, _)| pattern.matches_detection_name(name))
                .map(|(_, d)| d)
                .collect();
            if selected.is_empty() {
                return None;
            }
            match quantifier {
                // Vacuously true.
                Quantifier::Count(0) => None,
                Quantifier::All => selected
                    .into_iter()
                    .map(|d| detection_names(d, depth + 1))
                    .fold(None, and),
                Quantifier::Any | Quantifier::Count(_) => selected
                    .into_iter()
                    .map(|d| detection_names(d, depth + 1))
                    .fold(Some(BTreeSet::new()), or),
            }
        }
    }
}

fn detection_names(detection: &Detection, depth: usize) -> Names {
    if depth > MAX_DEPTH {
        return None;
    }
    match detection {
        Detection::AllOf(items) => items
            .iter()
            .map(|item| {
                if item.field.name.as_deref() != Some("eventName")
                    || !item.field.modifiers.is_empty()
                    || item.values.is_empty()
                {
                    return None;
                }
                item.values
                    .iter()
                    .map(|v| match v {
                        SigmaValue::String(s) => s.as_plain().map(|p| p.to_lowercase()),
                        _ => None,
                    })
                    .collect::<Option<BTreeSet<String>>>()
            })
            .fold(None, and),
        Detection::AnyOf(list) => {
            if list.is_empty() {
                return None;
            }
            list.iter()
                .map(|d| detection_names(d, depth + 1))
                .fold(Some(BTreeSet::new()), or)
        }
        _ => None,
    }
}

/// Rules compiled into one engine per required event name, and one for the rules that require
/// none.
pub struct Routed {
    /// By lower-cased name (foldhash: looked up once per activity).
    by_name: HashMap<String, rsigma_eval::Engine, foldhash::fast::RandomState>,
    any: rsigma_eval::Engine,
}

impl Routed {
    /// Compiles `rules`; the errors are the indexes in `rules` of the rules that do not compile
    /// (each once), with why.
    pub fn compile(rules: &[SigmaRule]) -> (Self, Vec<(usize, String)>) {
        let mut groups: HashMap<String, Vec<usize>> = HashMap::new();
        let mut any = Vec::new();
        for (i, rule) in rules.iter().enumerate() {
            match required_event_names(rule) {
                Some(names) => names
                    .into_iter()
                    .for_each(|name| groups.entry(name).or_default().push(i)),
                None => any.push(i),
            }
        }
        let mut errors: Vec<(usize, String)> = Vec::new();
        let mut engine = |members: &[usize]| {
            let mut engine = rsigma_eval::Engine::new();
            for (at, error) in engine.add_rules(members.iter().filter_map(|&i| rules.get(i))) {
                if let Some(&i) = members.get(at) {
                    errors.push((i, error.to_string()));
                }
            }
            engine
        };
        let routed = Routed {
            any: engine(&any),
            by_name: groups
                .iter()
                .map(|(name, members)| (name.clone(), engine(members)))
                .collect(),
        };
        errors.sort_by_key(|(i, _)| *i);
        errors.dedup_by_key(|(i, _)| *i);
        (routed, errors)
    }

    /// No rules.
    pub fn none() -> Self {
        Routed {
            by_name: HashMap::default(),
            any: rsigma_eval::Engine::new(),
        }
    }

    /// The engines to evaluate an activity named `event_name` with.
    pub fn engines(&self, event_name: &str) -> impl Iterator<Item = &rsigma_eval::Engine> {
        let named = if self.by_name.is_empty() {
            None
        } else {
            // Lower-cased on the stack for the usual short ASCII name.
            let mut buffer = [0u8; 64];
            match buffer.get_mut(..event_name.len()) {
                Some(slot) if event_name.is_ascii() => {
                    slot.copy_from_slice(event_name.as_bytes());
                    slot.make_ascii_lowercase();
                    std::str::from_utf8(slot)
                        .ok()
                        .and_then(|name| self.by_name.get(name))
                }
                _ => self.by_name.get(&event_name.to_lowercase()),
            }
        };
        named.into_iter().chain(std::iter::once(&self.any))
    }

    /// How many engines the rules went into (named ones, and the one for any name) and how
    /// many rules the latter holds.
    pub fn shape(&self) -> (usize, usize) {
        (self.by_name.len(), self.any.rules().len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(detection: &str) -> Option<Vec<String>> {
        let yaml = format!(
            "title: t\nlogsource:\n  product: aws\n  service: cloudtrail\ndetection:\n{detection}"
        );
        let collection = rsigma_parser::parse_sigma_yaml(&yaml).expect("a rule");
        let rule = collection.rules.first().expect("one rule");
        required_event_names(rule).map(|n| n.into_iter().collect())
    }

    fn set(names: &[&str]) -> Option<Vec<String>> {
        Some(names.iter().map(|n| n.to_string()).collect())
    }

    #[test]
    fn a_plain_name_or_list_of_names_is_required_lower_cased() {
        let one = "  selection:\n    eventSource: s3.amazonaws.com\n    eventName: PutBucketPolicy\n  condition: selection\n";
        assert_eq!(names(one), set(&["putbucketpolicy"]));
        let list = "  selection:\n    eventName:\n      - StopLogging\n      - DeleteTrail\n  condition: selection\n";
        assert_eq!(names(list), set(&["deletetrail", "stoplogging"]));
        // An escaped wildcard is a plain character.
        let escaped = "  selection:\n    eventName: 'Odd\\*Name'\n  condition: selection\n";
        assert_eq!(names(escaped), set(&["odd*name"]));
    }

    #[test]
    fn anything_but_an_exact_name_requires_none() {
        for detection in [
            // No name at all.
            "  selection:\n    eventSource: s3.amazonaws.com\n  condition: selection\n",
            // A wildcard, in any value of the list.
            "  selection:\n    eventName:\n      - Put*\n      - DeleteTrail\n  condition: selection\n",
            "  selection:\n    eventName: 'Delete?rail'\n  condition: selection\n",
            // Any modifier.
            "  selection:\n    eventName|startswith: Delete\n  condition: selection\n",
            "  selection:\n    eventName|cased: DeleteTrail\n  condition: selection\n",
            "  selection:\n    eventName|re: '^DeleteTrail$'\n  condition: selection\n",
            // Not a string.
            "  selection:\n    eventName: null\n  condition: selection\n",
            "  selection:\n    eventName: 5\n  condition: selection\n",
            // Negation.
            "  filter:\n    eventName: DeleteTrail\n  condition: not filter\n",
            // An `or` with a side that names nothing.
            "  a:\n    eventName: DeleteTrail\n  b:\n    eventSource: s3.amazonaws.com\n  condition: a or b\n",
            // A list of maps with a map that names nothing.
            "  selection:\n    - eventName: DeleteTrail\n    - errorCode: AccessDenied\n  condition: selection\n",
            // `1 of` over a set with a member naming nothing; `0 of` is always true.
            "  selection_a:\n    eventName: DeleteTrail\n  selection_b:\n    eventSource: s3.amazonaws.com\n  condition: 1 of selection_*\n",
            // Keywords.
            "  keywords:\n    - DeleteTrail\n  condition: keywords\n",
            // A condition naming a detection that is not there.
            "  selection:\n    eventName: DeleteTrail\n  condition: selection or missing\n",
        ] {
            assert_eq!(names(detection), None, "{detection}");
        }
    }

    #[test]
    fn conditions_combine_as_rsigma_evaluates_them() {
        // `and not`: the positive side.
        let filtered = "  selection:\n    eventName: CreateAccessKey\n  filter:\n    userIdentity.arn|contains: admin\n  condition: selection and not filter\n";
        assert_eq!(names(filtered), set(&["createaccesskey"]));
        // `or`: both sides' names.
        let either = "  a:\n    eventName: StopLogging\n  b:\n    eventName: DeleteTrail\n  condition: a or b\n";
        assert_eq!(names(either), set(&["deletetrail", "stoplogging"]));
        // `and`: what both allow.
        let both = "  a:\n    eventName: [StopLogging, DeleteTrail]\n  b:\n    eventName: [DeleteTrail, UpdateTrail]\n  condition: a and b\n";
        assert_eq!(names(both), set(&["deletetrail"]));
        // `1 of` / `all of` a glob.
        let any = "  selection_a:\n    eventName: StopLogging\n  selection_b:\n    eventName: DeleteTrail\n  condition: 1 of selection_*\n";
        assert_eq!(names(any), set(&["deletetrail", "stoplogging"]));
        let all = "  selection_a:\n    eventName: StopLogging\n  selection_b:\n    eventSource: cloudtrail.amazonaws.com\n  condition: all of selection_*\n";
        assert_eq!(names(all), set(&["stoplogging"]));
        // A list of maps, each naming calls.
        let maps = "  selection:\n    - eventName: StopLogging\n    - eventName: DeleteTrail\n      eventSource: cloudtrail.amazonaws.com\n  condition: selection\n";
        assert_eq!(names(maps), set(&["deletetrail", "stoplogging"]));
        // Contradicting sides alone: nothing can match, and an empty answer is not trusted
        // (evaluated always). Under an `or`, the other side's names are what it requires.
        let never = "  a:\n    eventName: StopLogging\n  b:\n    eventName: DeleteTrail\n  condition: a and b\n";
        assert_eq!(names(never), None);
        let either = "  a:\n    eventName: StopLogging\n  b:\n    eventName: DeleteTrail\n  c:\n    eventName: UpdateTrail\n  condition: (a and b) or c\n";
        assert_eq!(names(either), set(&["updatetrail"]));
        // `0 of` is always true.
        let zero = "  sel_a:\n    eventName: StopLogging\n  condition: 0 of sel_*\n";
        assert_eq!(names(zero), None);
        // `all of them` passes over names starting with `_`, as rsigma does.
        let them = "  selection:\n    eventName: StopLogging\n  _other:\n    eventName: DeleteTrail\n  condition: all of them\n";
        assert_eq!(names(them), set(&["stoplogging"]));
    }

    #[test]
    fn too_many_names_require_none() {
        let many: String = (0..=MAX_NAMES)
            .map(|i| format!("      - Call{i}\n"))
            .collect();
        let detection = format!("  selection:\n    eventName:\n{many}  condition: selection\n");
        assert_eq!(names(&detection), None);
        let fewer: String = (0..MAX_NAMES)
            .map(|i| format!("      - Call{i}\n"))
            .collect();
        let detection = format!("  selection:\n    eventName:\n{fewer}  condition: selection\n");
        assert_eq!(names(&detection).map(|n| n.len()), Some(MAX_NAMES));
    }

    #[test]
    fn an_activity_is_evaluated_by_its_names_engine_and_the_open_one() {
        let rules: Vec<SigmaRule> = [
            ("a", "eventName: StopLogging"),
            ("b", "eventName|startswith: Stop"),
        ]
        .iter()
        .map(|(id, item)| {
            let yaml = format!("title: {id}\nid: {id}\nlogsource:\n  product: aws\n  service: cloudtrail\ndetection:\n  selection:\n    {item}\n  condition: selection\n");
            rsigma_parser::parse_sigma_yaml(&yaml).expect("a rule").rules.remove(0)
        })
        .collect();
        let (routed, errors) = Routed::compile(&rules);
        assert!(errors.is_empty());
        assert_eq!(routed.shape(), (1, 1));
        let rules_in = |name: &str| {
            routed
                .engines(name)
                .map(|e| e.rules().len())
                .collect::<Vec<_>>()
        };
        assert_eq!(rules_in("StopLogging"), vec![1, 1]);
        assert_eq!(rules_in("STOPLOGGING"), vec![1, 1]);
        assert_eq!(rules_in("StartLogging"), vec![1]);
        // Past the stack buffer, and not ASCII: looked up all the same.
        assert_eq!(rules_in(&"x".repeat(100)), vec![1]);
        assert_eq!(rules_in("StopLoggİng"), vec![1]);
    }
}
