//! G-counters: grow-only counters with one slot per node, merged by per-slot maximum.
//!
//! Only node `n` increments slot `n`; every node learns the other slots by gossip. Because
//! merge takes the maximum of each slot, merging is commutative, associative and idempotent:
//! deltas may arrive in any order, twice, or late, and every node still converges to the
//! same counts.

use crate::NodeId;

use super::per_node::PerNode;

/// A grow-only counter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GCounter {
    slots: PerNode<u64>,
}

impl GCounter {
    /// Adds `by` to `node`'s own slot.
    pub fn increment(&mut self, node: NodeId, by: u64) {
        let slot = self.slots.get_or_insert_with(node, || 0);
        *slot = slot.saturating_add(by);
    }

    /// Raises `node`'s slot to `value` if it is higher (a gossiped observation).
    pub fn observe(&mut self, node: NodeId, value: u64) {
        let slot = self.slots.get_or_insert_with(node, || 0);
        *slot = (*slot).max(value);
    }

    /// Merges another replica of the counter.
    pub fn merge(&mut self, other: &GCounter) {
        for (node, value) in other.slots() {
            self.observe(node, value);
        }
    }

    /// The total over all slots.
    pub fn value(&self) -> u64 {
        self.slots.iter().fold(0u64, |a, (_, b)| a.saturating_add(*b))
    }

    /// One node's slot.
    pub fn slot(&self, node: NodeId) -> u64 {
        self.slots.get(node).copied().unwrap_or(0)
    }

    /// Every slot.
    pub fn slots(&self) -> impl Iterator<Item = (NodeId, u64)> + '_ {
        self.slots.iter().map(|(n, v)| (n, *v))
    }

    /// The nodes that have a slot, in ascending order.
    pub fn nodes(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.slots.nodes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn counter() -> impl Strategy<Value = GCounter> {
        proptest::collection::btree_map(0u64..5, 0u64..1000, 0..5).prop_map(|slots| {
            let mut counter = GCounter::default();
            for (node, value) in slots {
                counter.observe(node, value);
            }
            counter
        })
    }

    fn merged(a: &GCounter, b: &GCounter) -> GCounter {
        let mut m = a.clone();
        m.merge(b);
        m
    }

    proptest! {
        #[test]
        fn merge_is_commutative(a in counter(), b in counter()) {
            prop_assert_eq!(merged(&a, &b), merged(&b, &a));
        }

        #[test]
        fn merge_is_associative(a in counter(), b in counter(), c in counter()) {
            prop_assert_eq!(merged(&merged(&a, &b), &c), merged(&a, &merged(&b, &c)));
        }

        #[test]
        fn merge_is_idempotent(a in counter(), b in counter()) {
            let once = merged(&a, &b);
            prop_assert_eq!(merged(&once, &b), once.clone());
            prop_assert_eq!(merged(&a, &a), a);
        }

        /// Each node increments its own slot and gossips its slot's running value; whatever
        /// the order, duplication or delay of delivery, all replicas end equal to the truth.
        #[test]
        fn deltas_in_any_order_converge(
            increments in proptest::collection::vec((0u64..4, 1u64..5), 1..40),
            order in proptest::collection::vec(0usize..1000, 0..120),
        ) {
            let mut truth = GCounter::default();
            let mut deltas = Vec::new();
            for (node, by) in &increments {
                truth.increment(*node, *by);
                deltas.push((*node, truth.slot(*node)));
            }
            // Deliver a shuffled selection with duplicates, then everything once more late.
            let mut replica = GCounter::default();
            for i in &order {
                let (node, value) = deltas[i % deltas.len()];
                replica.observe(node, value);
            }
            for (node, value) in deltas.iter().rev() {
                replica.observe(*node, *value);
            }
            prop_assert_eq!(replica.value(), truth.value());
            prop_assert_eq!(replica, truth);
        }
    }
}
