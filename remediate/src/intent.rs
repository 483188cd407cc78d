//! Write-ahead of an action's prior state. Every action reads what it will change, plans, and
//! then — before its first mutating call — hands the prior state and the planned steps to an
//! [`Intent`]. The runner's intent publishes them as a `started` action record and waits until
//! the broker has it; only then does the action change anything. A crash between the first AWS
//! change and the final record, or a second instance racing on the same alert, leaves that
//! record behind, and `remediate undo` restores from the earliest one (see `docs/safety.md`).

use futures::future::BoxFuture;
use serde_json::Value;
use trailguard_common::contract::ActionStep;

/// Where an action puts its prior state before it changes anything.
pub trait Intent: Sync {
    /// Records `undo` (the state before any change) and `planned` (the steps about to be made)
    /// durably. `false`: it could not, and the action must change nothing.
    fn record<'a>(&'a self, undo: &'a Value, planned: &'a [ActionStep]) -> BoxFuture<'a, bool>;
}

/// Records nothing: for callers that keep the result themselves (tests, tools).
#[derive(Debug, Clone, Copy, Default)]
pub struct Unrecorded;

impl Intent for Unrecorded {
    fn record<'a>(&'a self, _undo: &'a Value, _planned: &'a [ActionStep]) -> BoxFuture<'a, bool> {
        Box::pin(async { true })
    }
}

/// The detail of an action that did not start because its prior state could not be recorded.
pub const NOT_RECORDED: &str =
    "the prior state could not be recorded before the first change; nothing was changed";
