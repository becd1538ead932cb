//! Stack sums over shared tables, in the form a flame graph merges fastest: a trie of locations.
//!
//! A table's stacks (block or head, see [`super::block::Tables`]) share prefixes like a call tree
//! does. [`StackTrie`] stores each distinct root-first prefix once (node = parent node + one
//! location) and maps every stack id to its node, so a merged read turns "values summed by stack
//! id" into values on trie nodes with one array pass ([`StackTrie::node_values`]), and the query
//! side ([`crate::query::merge::Tree::merge_stacks`]) walks each trie node once, naming its
//! location, instead of walking every frame of every stack of a rebuilt pprof.
//!
//! A block's trie is built once, on the first merged read, and kept with the block (bounded, see
//! `super::local`); the head's grows as stacks arrive (`super::headagg`).

use std::collections::HashMap;
use std::sync::Arc;

use kiln_proto::pprof::{Profile, Sample, ValueType};

use super::block::Tables;
use crate::query::merge::FxBuild;

/// Parent of the root node (which stands for the empty stack).
pub const NO_PARENT: u32 = u32::MAX;

/// A trie of the root-first location prefixes of a table's stacks. Node 0 is the root (no
/// location); a node's parent has a smaller index.
#[derive(Clone, Debug)]
pub struct StackTrie {
    parent: Vec<u32>,
    /// Table location id of each node (0 for the root).
    location: Vec<u32>,
    /// Stack id → node.
    stack_node: Vec<u32>,
    /// (parent << 32 | location) → node, while the trie still grows; dropped by
    /// [`StackTrie::freeze`] for tables that never change (blocks).
    children: Option<HashMap<u64, u32, FxBuild>>,
}

impl Default for StackTrie {
    fn default() -> Self {
        StackTrie::new()
    }
}

impl StackTrie {
    pub fn new() -> StackTrie {
        StackTrie {
            parent: vec![NO_PARENT],
            location: vec![0],
            stack_node: Vec::new(),
            children: Some(HashMap::default()),
        }
    }

    /// The trie of all of `tables`' stacks, without its lookup map (it will not grow).
    pub fn of(tables: &Tables) -> StackTrie {
        let mut t = StackTrie::new();
        t.extend(tables);
        t.freeze();
        t
    }

    /// Adds the stacks of `tables` not in the trie yet (stack ids are handed out in order, so
    /// those past [`StackTrie::stacks`]). A frozen trie is left as it is.
    pub fn extend(&mut self, tables: &Tables) {
        let Some(children) = self.children.as_mut() else {
            return;
        };
        for id in self.stack_node.len()..tables.stacks() {
            let mut node = 0u32;
            // Stacks are stored leaf first.
            for &loc in tables.stack(id as u32).iter().rev() {
                let key = (u64::from(node) << 32) | u64::from(loc);
                node = *children.entry(key).or_insert_with(|| {
                    self.parent.push(node);
                    self.location.push(loc);
                    (self.parent.len() - 1) as u32
                });
            }
            self.stack_node.push(node);
        }
    }

    /// A copy without the lookup map (see [`StackTrie::freeze`]).
    pub fn frozen_copy(&self) -> StackTrie {
        StackTrie {
            parent: self.parent.clone(),
            location: self.location.clone(),
            stack_node: self.stack_node.clone(),
            children: None,
        }
    }

    /// Drops the lookup map: the trie stays readable, [`StackTrie::extend`] no longer adds.
    pub fn freeze(&mut self) {
        self.children = None;
    }

    /// Stacks mapped (ids `0..stacks()`).
    pub fn stacks(&self) -> usize {
        self.stack_node.len()
    }

    pub fn nodes(&self) -> usize {
        self.parent.len()
    }

    /// Approximate bytes held.
    pub fn bytes(&self) -> usize {
        self.parent.capacity() * 4
            + self.location.capacity() * 4
            + self.stack_node.capacity() * 4
            + self.children.as_ref().map_or(0, |c| c.capacity() * 16)
    }

    /// Per node, the sum of `by_stack` (values indexed by stack id) over the stacks ending there.
    /// Stack ids past the trie are dropped (a damaged table), as a read drops them.
    pub fn node_values(&self, by_stack: &[i64]) -> Vec<i64> {
        let mut out = vec![0i64; self.nodes()];
        for (&node, &v) in self.stack_node.iter().zip(by_stack) {
            if v != 0 {
                let e = &mut out[node as usize];
                *e = e.saturating_add(v);
            }
        }
        out
    }
}

/// The shape a [`MergedStacks`] shares with every read of one table: the trie and the table's
/// symbols as a pprof without samples (location, function and mapping ids are the table's).
#[derive(Debug)]
pub struct StackShape {
    pub symbols: Profile,
    pub trie: StackTrie,
    /// Encoded size of `symbols`: what a query's byte budget counts for them.
    symbol_bytes: usize,
}

impl StackShape {
    pub fn new(symbols: Profile, trie: StackTrie) -> StackShape {
        let symbol_bytes = prost::Message::encoded_len(&symbols);
        StackShape {
            symbols,
            trie,
            symbol_bytes,
        }
    }

    /// Approximate bytes held.
    pub fn bytes(&self) -> usize {
        self.symbol_bytes * 2 + self.trie.bytes()
    }
}

/// Stored profiles of one sample type merged over shared tables: per trie node of `shape`, the
/// summed value of the stacks ending there. Merging it is equivalent to merging each profile.
#[derive(Clone, Debug)]
pub struct MergedStacks {
    pub shape: Arc<StackShape>,
    /// Indexed by trie node.
    pub self_values: Vec<i64>,
    pub profile_type: String,
}

impl MergedStacks {
    /// The parent of each trie node ([`NO_PARENT`] for the root); parents come first.
    pub fn parents(&self) -> &[u32] {
        &self.shape.trie.parent
    }

    /// The location id (in [`StackShape::symbols`]) of each trie node.
    pub fn locations(&self) -> &[u32] {
        &self.shape.trie.location
    }

    /// Decoded bytes this stands for, for a query's read budget: the symbols plus a sample's
    /// worth per non-zero node.
    pub fn bytes(&self) -> usize {
        self.shape.symbol_bytes + 16 * self.self_values.iter().filter(|&&v| v != 0).count()
    }

    /// The same sums as a one-type pprof: one sample per non-zero node, its stack the node's path.
    pub fn to_profile(&self) -> Profile {
        let mut p = self.shape.symbols.clone();
        let (ty, unit) = self
            .profile_type
            .split_once(':')
            .unwrap_or((&self.profile_type, ""));
        let at = p.string_table.len() as i64;
        p.string_table.push(ty.to_owned());
        p.string_table.push(unit.to_owned());
        p.sample_type = vec![ValueType {
            r#type: at,
            unit: at + 1,
        }];
        let parents = self.parents();
        let locations = self.locations();
        for (node, &v) in self.self_values.iter().enumerate() {
            if v == 0 {
                continue;
            }
            let mut location_id = Vec::new();
            let mut n = node as u32;
            while n != 0 && n != NO_PARENT {
                location_id.push(u64::from(locations[n as usize]));
                n = parents[n as usize];
            }
            p.sample.push(Sample {
                location_id,
                value: vec![v],
                label: Vec::new(),
            });
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::flamegraph;
    use crate::query::merge::Tree;
    use crate::query::symbolize::Resolver;
    use crate::store::block::TableBuilder;
    use kiln_proto::ProfileBuilder;

    /// A profile with inlined frames, a raw (unnamed) address, a stack that is a prefix of
    /// another, one that repeats a location, and values that cancel out below a node.
    fn profile() -> Profile {
        let mut b = ProfileBuilder::new(&[("samples", "count"), ("cpu", "nanoseconds")]);
        let main = b.function("main", "m.c");
        let a = b.function("alpha", "m.c");
        let inl = b.function("inlined", "m.c");
        let hot = b.function("hot", "m.c");
        let m = b.mapping(0x1000, 0x9000, 0, "/bin/app", "");
        let l_main = b.symbolized_location(0, 1, &[(main, 1)]);
        let l_a = b.symbolized_location(0, 2, &[(inl, 5), (a, 2)]);
        let l_hot = b.symbolized_location(0, 3, &[(hot, 3)]);
        let raw = b.raw_location(m, 0x1234);
        b.add_sample(&[l_hot, l_a, l_main], &[1, 10], &[]);
        b.add_sample(&[l_a, l_main], &[1, 5], &[]);
        b.add_sample(&[l_main], &[1, 7], &[]);
        b.add_sample(&[raw, l_main], &[1, 3], &[]);
        b.add_sample(&[l_main, l_main], &[1, 2], &[]);
        b.add_sample(&[l_hot, raw, l_a, l_main], &[1, 4], &[]);
        b.add_sample(&[l_a, raw, l_a, l_main], &[1, -4], &[]);
        b.add_sample(&[raw], &[1, 0], &[]);
        b.finish()
    }

    fn render(t: &Tree) -> String {
        flamegraph::render(t, 1000, "cpu:nanoseconds", None)
    }

    /// The trie merge gives exactly the tree a merge of the stored pprof gives (and of the pprof
    /// the sums rebuild to), profile counts included.
    #[test]
    fn trie_merge_equals_pprof_merge() {
        let p = profile();
        let mut tb = TableBuilder::new();
        let ids = tb.map_profile(&p);
        let mut scratch = Vec::new();
        let mut acc = Vec::new();
        for s in &p.sample {
            let stack = tb.sample_stack(&ids, s, &mut scratch) as usize;
            if acc.len() <= stack {
                acc.resize(stack + 1, 0);
            }
            acc[stack] += s.value[1];
        }
        let trie = StackTrie::of(tb.tables());
        let m = MergedStacks {
            self_values: trie.node_values(&acc),
            shape: Arc::new(StackShape::new(tb.tables().symbols_profile(), trie)),
            profile_type: "cpu:nanoseconds".into(),
        };
        let mut direct = Tree::new();
        assert!(direct.merge_profile(&p, "cpu:nanoseconds", &mut Resolver::new(None)));
        let mut via_trie = Tree::new();
        via_trie.merge_stacks(&m, &mut Resolver::new(None));
        let mut rebuilt = Tree::new();
        assert!(rebuilt.merge_profile(
            &m.to_profile(),
            "cpu:nanoseconds",
            &mut Resolver::new(None)
        ));
        assert_eq!(direct.total(), 27);
        assert_eq!(render(&via_trie), render(&direct));
        assert_eq!(render(&rebuilt), render(&direct));
        assert_eq!(via_trie.profiles, 1);
    }

    /// A trie grown stack by stack equals one built at once; node values drop ids past it.
    #[test]
    fn grown_trie_equals_built_trie() {
        let p = profile();
        let mut tb = TableBuilder::new();
        let ids = tb.map_profile(&p);
        let mut grown = StackTrie::new();
        let mut scratch = Vec::new();
        for s in &p.sample {
            tb.sample_stack(&ids, s, &mut scratch);
            grown.extend(tb.tables());
        }
        let built = StackTrie::of(tb.tables());
        assert_eq!(grown.parent, built.parent);
        assert_eq!(grown.location, built.location);
        assert_eq!(grown.stack_node, built.stack_node);
        let mut v = vec![1i64; built.stacks() + 5];
        v[0] = 2;
        assert_eq!(
            built.node_values(&v).iter().sum::<i64>(),
            built.stacks() as i64 + 1
        );
    }
}
