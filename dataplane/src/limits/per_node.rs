//! A value for each node of the cluster, kept as a list sorted by node.
//!
//! A limit scope keeps several of these (its counters' slots, when each node's admissions
//! happened, each node's recent rates), and a request reads or writes them on every
//! admission. A cluster has a handful of nodes, so a short sorted list is searched in a few
//! steps, walked in node order without sorting, and costs a request far less code than a
//! B-tree's search and rebalancing paths (code a request runs once and the next one finds
//! evicted from the instruction cache).

use crate::NodeId;

/// One `T` per node, in ascending node order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PerNode<T> {
    entries: Vec<(NodeId, T)>,
}

impl<T> Default for PerNode<T> {
    fn default() -> Self {
        PerNode { entries: Vec::new() }
    }
}

impl<T> PerNode<T> {
    fn position(&self, node: NodeId) -> Result<usize, usize> {
        self.entries.binary_search_by_key(&node, |(n, _)| *n)
    }

    /// `node`'s value, if it has one.
    pub fn get(&self, node: NodeId) -> Option<&T> {
        self.position(node).ok().map(|at| &self.entries[at].1)
    }

    /// `node`'s value, made by `make` first if it has none.
    pub fn get_or_insert_with(&mut self, node: NodeId, make: impl FnOnce() -> T) -> &mut T {
        let at = match self.position(node) {
            Ok(at) => at,
            Err(at) => {
                self.entries.insert(at, (node, make()));
                at
            }
        };
        &mut self.entries[at].1
    }

    /// Sets `node`'s value.
    pub fn insert(&mut self, node: NodeId, value: T) {
        match self.position(node) {
            Ok(at) => self.entries[at].1 = value,
            Err(at) => self.entries.insert(at, (node, value)),
        }
    }

    /// Every node's value, in ascending node order.
    pub fn iter(&self) -> impl Iterator<Item = (NodeId, &T)> {
        self.entries.iter().map(|(n, v)| (*n, v))
    }

    /// The nodes that have a value, in ascending order.
    pub fn nodes(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.entries.iter().map(|(n, _)| *n)
    }

    /// Keeps only the nodes `keep` says yes to.
    pub fn retain(&mut self, mut keep: impl FnMut(NodeId) -> bool) {
        self.entries.retain(|(n, _)| keep(*n));
    }

    /// Forgets every node's value.
    pub fn clear(&mut self) {
        self.entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    proptest! {
        /// Whatever is set, in whatever order, reads back as a map keyed by node would.
        #[test]
        fn reads_as_an_ordered_map(
            writes in proptest::collection::vec((0u64..12, 0u64..100, any::<bool>()), 0..40),
            dropped in proptest::collection::btree_set(0u64..12, 0..4),
        ) {
            let mut list = PerNode::default();
            let mut map = BTreeMap::new();
            for (node, value, replace) in writes {
                if replace {
                    list.insert(node, value);
                    map.insert(node, value);
                } else {
                    *list.get_or_insert_with(node, || value) += 1;
                    *map.entry(node).or_insert(value) += 1;
                }
            }
            for node in 0..12 {
                prop_assert_eq!(list.get(node), map.get(&node));
            }
            prop_assert!(list.iter().map(|(n, v)| (n, *v)).eq(map.iter().map(|(n, v)| (*n, *v))));
            list.retain(|n| !dropped.contains(&n));
            map.retain(|n, _| !dropped.contains(n));
            prop_assert!(list.nodes().eq(map.keys().copied()));
        }
    }
}
