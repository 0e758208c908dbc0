//! What the controller writes in a policy's `status`: the `Accepted` condition (`True`, or
//! `False` with reason `Invalid` and what is wrong), `observedGeneration`, and how many
//! workloads the policy selects. Pure: the previous status decides only when the condition
//! last changed.

use crate::crd::{Condition, PolicyStatus};
use crate::index::Verdict;

/// The condition type.
pub const ACCEPTED: &str = "Accepted";

/// The status for `verdict`, keeping `previous`'s transition time while the condition holds.
pub fn status(verdict: &Verdict, previous: Option<&PolicyStatus>, now: &str) -> PolicyStatus {
    let (value, reason, message) = match &verdict.accepted {
        Ok(()) => ("True", "Accepted", String::new()),
        Err(why) => (
            "False",
            "Invalid",
            format!("{why}; the last valid version (if any) stays in force"),
        ),
    };
    let since = previous
        .and_then(|p| p.conditions.iter().find(|c| c.type_ == ACCEPTED))
        .filter(|c| c.status == value)
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.to_string());
    let mut status = PolicyStatus {
        observed_generation: verdict.generation,
        conditions: vec![Condition {
            type_: ACCEPTED.to_string(),
            status: value.to_string(),
            reason: reason.to_string(),
            message,
            last_transition_time: Some(since),
            observed_generation: verdict.generation,
        }],
        workloads: i64::try_from(verdict.workloads).ok(),
    };
    if verdict.accepted.is_err() {
        // An invalid version enforces nothing of its own.
        status.workloads = Some(0);
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(accepted: Result<(), String>, generation: i64, workloads: usize) -> Verdict {
        Verdict {
            generation: Some(generation),
            accepted,
            workloads,
        }
    }

    #[test]
    fn conditions_follow_the_verdict_and_keep_their_transition_time() {
        let first = status(&verdict(Ok(()), 1, 3), None, "t1");
        assert_eq!(first.observed_generation, Some(1));
        assert_eq!(first.workloads, Some(3));
        let c = &first.conditions[0];
        assert_eq!(
            (c.type_.as_str(), c.status.as_str(), c.reason.as_str()),
            ("Accepted", "True", "Accepted")
        );
        assert_eq!(c.last_transition_time.as_deref(), Some("t1"));

        // Still accepted at generation 2: the transition time stays.
        let second = status(&verdict(Ok(()), 2, 1), Some(&first), "t2");
        assert_eq!(
            second.conditions[0].last_transition_time.as_deref(),
            Some("t1")
        );
        assert_eq!(second.observed_generation, Some(2));

        // Invalid: a new transition, the reason and what is wrong.
        let bad = status(
            &verdict(Err("spec.rules[0]: bad".into()), 3, 1),
            Some(&second),
            "t3",
        );
        let c = &bad.conditions[0];
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "Invalid"));
        assert!(c.message.starts_with("spec.rules[0]: bad"), "{}", c.message);
        assert_eq!(c.last_transition_time.as_deref(), Some("t3"));
        assert_eq!(bad.workloads, Some(0));
        // The same status twice is equal (so it is not written again).
        assert_eq!(
            status(
                &verdict(Err("spec.rules[0]: bad".into()), 3, 1),
                Some(&bad),
                "t4"
            ),
            bad
        );
    }
}
