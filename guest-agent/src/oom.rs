// SPDX-License-Identifier: Apache-2.0
//! Which containers' OOM kills the shim has not heard of yet. The kernel
//! counts them in each container's `memory.events`; GetOOMEvent reports a
//! container once per rise of its count. The counts reported live as long
//! as the sandbox, not one request, so that a kill between two requests
//! is not taken as already seen; and a container removed before its rise
//! was reported (containerd deletes a task as soon as it exits, which an
//! OOM kill of its init causes) is still reported once.

use std::collections::{HashMap, VecDeque};

/// The most removed containers whose OOM kills wait to be reported: a
/// shim that never asks cannot make the agent grow without bound.
const MAX_PENDING: usize = 1024;

/// The OOM counts reported so far, and the removed containers waiting.
#[derive(Debug, Default)]
pub struct OomTracker {
    reported: HashMap<String, u64>,
    pending: VecDeque<String>,
}

impl OomTracker {
    /// The next container with an OOM kill not reported yet, given the
    /// live containers' current `counts`; it counts as reported.
    pub fn next(&mut self, counts: impl IntoIterator<Item = (String, u64)>) -> Option<String> {
        if let Some(id) = self.pending.pop_front() {
            return Some(id);
        }
        for (id, count) in counts {
            if count > self.reported.get(&id).copied().unwrap_or(0) {
                self.reported.insert(id.clone(), count);
                return Some(id);
            }
        }
        None
    }

    /// Container `id` goes, with `count` OOM kills: one not reported yet
    /// is kept for [`OomTracker::next`].
    pub fn removed(&mut self, id: &str, count: u64) {
        let reported = self.reported.remove(id).unwrap_or(0);
        if count > reported {
            if self.pending.len() == MAX_PENDING {
                self.pending.pop_front();
            }
            self.pending.push_back(id.to_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(pairs: &[(&str, u64)]) -> Vec<(String, u64)> {
        pairs.iter().map(|(id, n)| ((*id).to_owned(), *n)).collect()
    }

    #[test]
    fn test_each_rise_is_reported_once() {
        let mut oom = OomTracker::default();
        assert_eq!(oom.next(counts(&[("a", 0), ("b", 0)])), None);
        assert_eq!(
            oom.next(counts(&[("a", 1), ("b", 0)])).as_deref(),
            Some("a")
        );
        assert_eq!(oom.next(counts(&[("a", 1), ("b", 0)])), None);
        assert_eq!(
            oom.next(counts(&[("a", 2), ("b", 0)])).as_deref(),
            Some("a")
        );
    }

    #[test]
    fn test_two_kills_at_once_are_both_reported() {
        let mut oom = OomTracker::default();
        let both = counts(&[("a", 1), ("b", 1)]);
        let first = oom.next(both.clone()).unwrap();
        let second = oom.next(both.clone()).unwrap();
        assert_ne!(first, second);
        assert_eq!(oom.next(both), None);
    }

    #[test]
    fn test_a_container_removed_before_its_report_is_still_reported() {
        let mut oom = OomTracker::default();
        oom.removed("a", 1);
        assert_eq!(oom.next(counts(&[("b", 0)])).as_deref(), Some("a"));
        assert_eq!(oom.next(counts(&[("b", 0)])), None);
        // Reported already: its removal adds nothing, and a new container
        // of the same id is reported from its own first kill.
        assert_eq!(oom.next(counts(&[("c", 1)])).as_deref(), Some("c"));
        oom.removed("c", 1);
        assert_eq!(oom.next(counts(&[("c", 0)])), None);
        assert_eq!(oom.next(counts(&[("c", 1)])).as_deref(), Some("c"));
    }

    #[test]
    fn test_waiting_reports_are_bounded() {
        let mut oom = OomTracker::default();
        for n in 0..=MAX_PENDING {
            oom.removed(&n.to_string(), 1);
        }
        assert_eq!(oom.pending.len(), MAX_PENDING);
        assert_eq!(oom.next(Vec::new()).as_deref(), Some("1"));
    }
}
