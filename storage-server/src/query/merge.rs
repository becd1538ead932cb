//! Merges stored profiles into one call tree of named frames, for one sample type.

use std::collections::HashMap;

use kiln_proto::pprof::Profile;

use super::symbolize::{Resolved, Resolver};
use crate::store::stacks::MergedStacks;

/// The hasher of the merge's integer-keyed maps: foldhash, hashbrown's own default, a few
/// multiplies per key with every input bit reaching the bucket index.
///
/// The merge looks up a child for every frame of every stack (millions per flame graph), so the
/// hasher must be cheap; SipHash made those lookups the largest cost of the merge. It must also
/// spread *high* bits: the child key is `parent << 32 | name`, and the hand-written FxHash used
/// before (one multiply, no final mix) left the low bits, which pick the bucket, depending on the
/// name alone. Many frames of one name under different parents then all probed the same bucket
/// group and the merge went quadratic (200 k such stacks: 9 s instead of 1 s).
/// `benches/benches/merge.rs` pins this: same-named frames must merge as fast as distinct ones.
/// Fixed-seeded so that maps built from the same input iterate the same way on every run.
pub(crate) type FxBuild = foldhash::fast::FixedState;

/// Index of the root node, named `total`.
pub const ROOT: u32 = 0;

#[derive(Clone, Debug)]
pub struct Node {
    pub name: u32,
    pub parent: u32,
    pub total: i64,
    pub self_value: i64,
}

/// No node (end of a sibling list, or no child yet).
const NONE: u32 = u32::MAX;

/// Children beyond this many are found through [`Tree::wide`] instead of a list scan.
const WIDE: u32 = 8;

/// How a node's children are found: a linked list of siblings, in an array beside `nodes` so that
/// a lookup touches only these 16 bytes per sibling.
///
/// Most nodes of a call tree have one or two children (below the point where stacks diverge,
/// each is a chain), so a lookup reads one or two of these entries, often in the same cache line
/// as the node it came from (a chain's nodes are created one after another). A hash map keyed by
/// (parent, name) over every node probed a table of tens of MB at random on every frame: about
/// three quarters of a block's merge time in `perf` (1,000 profiles, 657 k nodes). Wide nodes
/// (the root, dispatch loops) keep using a hash map.
#[derive(Clone, Copy, Debug)]
struct Links {
    name: u32,
    first_child: u32,
    next_sibling: u32,
    children: u32,
}

/// A call tree in an arena: a node's parent always has a smaller index than the node.
#[derive(Debug)]
pub struct Tree {
    pub names: Vec<String>,
    /// Name → id (foldhash: a block's merge names every location of its symbols).
    name_ids: HashMap<String, u32, FxBuild>,
    pub nodes: Vec<Node>,
    /// Per node: its children as a list (see [`Links`]).
    links: Vec<Links>,
    /// (parent << 32 | name) → child, for the children of nodes with more than [`WIDE`].
    wide: HashMap<u64, u32, FxBuild>,
    /// Profiles merged in.
    pub profiles: usize,
}

impl Default for Tree {
    fn default() -> Self {
        Tree::new()
    }
}

impl Tree {
    pub fn new() -> Tree {
        let mut t = Tree {
            names: Vec::new(),
            name_ids: HashMap::default(),
            nodes: Vec::new(),
            links: Vec::new(),
            wide: HashMap::default(),
            profiles: 0,
        };
        let name = t.intern("total");
        t.push_node(name, ROOT, NONE);
        t
    }

    /// Appends a node with no children yet; `next_sibling` is the list it goes in front of.
    fn push_node(&mut self, name: u32, parent: u32, next_sibling: u32) -> u32 {
        let id = self.nodes.len() as u32;
        self.nodes.push(Node {
            name,
            parent,
            total: 0,
            self_value: 0,
        });
        self.links.push(Links {
            name,
            first_child: NONE,
            next_sibling,
            children: 0,
        });
        id
    }

    /// Appends a resolved location's frame names to `names` as name ids, outermost first, and
    /// returns their range in `names`: both merge paths (pprofs and stack tries) name a location
    /// once this way, so the per-sample loops only move integers.
    fn push_names(&mut self, r: &Resolved, names: &mut Vec<u32>) -> (u32, u32) {
        let start = names.len() as u32;
        match r {
            Resolved::Frames { frames, .. } => {
                for f in frames.iter().rev() {
                    names.push(self.intern(&f.display()));
                }
            }
            Resolved::Raw(name) => names.push(self.intern(name)),
        }
        (start, names.len() as u32)
    }

    pub fn intern(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.name_ids.get(name) {
            return id;
        }
        let id = self.names.len() as u32;
        self.names.push(name.to_owned());
        self.name_ids.insert(name.to_owned(), id);
        id
    }

    pub fn total(&self) -> i64 {
        self.nodes[ROOT as usize].total
    }

    /// The child of `node` named `name`, created when missing.
    fn child(&mut self, node: u32, name: u32) -> u32 {
        let key = (u64::from(node) << 32) | u64::from(name);
        let links = self.links[node as usize];
        if links.children > WIDE {
            if let Some(&child) = self.wide.get(&key) {
                return child;
            }
        } else {
            let mut c = links.first_child;
            while c != NONE {
                let l = &self.links[c as usize];
                if l.name == name {
                    return c;
                }
                c = l.next_sibling;
            }
        }
        let child = self.push_node(name, node, links.first_child);
        let parent = &mut self.links[node as usize];
        parent.first_child = child;
        parent.children += 1;
        match parent.children {
            // Just became wide: index every child so far.
            n if n == WIDE + 1 => {
                let mut c = child;
                while c != NONE {
                    let l = self.links[c as usize];
                    self.wide
                        .insert((u64::from(node) << 32) | u64::from(l.name), c);
                    c = l.next_sibling;
                }
            }
            n if n > WIDE + 1 => {
                self.wide.insert(key, child);
            }
            _ => {}
        }
        child
    }

    /// Adds `value` along `path` (name ids, root first).
    pub fn add(&mut self, path: impl IntoIterator<Item = u32>, value: i64) {
        let mut node = ROOT;
        self.nodes[ROOT as usize].total = self.nodes[ROOT as usize].total.saturating_add(value);
        for name in path {
            node = self.child(node, name);
            let n = &mut self.nodes[node as usize];
            n.total = n.total.saturating_add(value);
        }
        let n = &mut self.nodes[node as usize];
        n.self_value = n.self_value.saturating_add(value);
    }

    /// Children of every node, by parent index.
    pub fn child_lists(&self) -> Vec<Vec<u32>> {
        let mut lists = vec![Vec::new(); self.nodes.len()];
        for (i, n) in self.nodes.iter().enumerate().skip(1) {
            lists[n.parent as usize].push(i as u32);
        }
        lists
    }

    /// Merges stack sums on a trie ([`MergedStacks`]) into the tree, naming frames with
    /// `resolver`: each location of the shared symbols is named once and each trie node with
    /// anything non-zero at or below it is walked once (parents before children), so the work
    /// follows the distinct prefixes, not the frames of every stack. Gives the same tree as
    /// [`Tree::merge_profile`] of [`MergedStacks::to_profile`].
    pub fn merge_stacks(&mut self, m: &MergedStacks, resolver: &mut Resolver<'_>) {
        let parents = m.parents();
        let locations = m.locations();
        let self_values = &m.self_values;
        let n = parents.len().min(locations.len()).min(self_values.len());
        self.profiles += 1;
        if n == 0 {
            return;
        }
        // Subtree totals, and whether any non-zero value lies at or below each node (a merge of
        // the pprof skips zero samples only, so a subtree summing to zero is still walked).
        let mut total = self_values[..n].to_vec();
        let mut live: Vec<bool> = total.iter().map(|&v| v != 0).collect();
        for i in (1..n).rev() {
            let p = parents[i] as usize;
            if p >= i {
                continue;
            }
            total[p] = total[p].saturating_add(total[i]);
            if live[i] {
                live[p] = true;
            }
        }
        if !live[0] {
            return;
        }
        // Per location id of the symbols: its frame names as tree name ids, outermost first.
        let symbols = &m.shape.symbols;
        let mut names: Vec<u32> = Vec::new();
        let mut ranges: Vec<Option<(u32, u32)>> = vec![None; symbols.location.len() + 1];
        for (id, r) in resolver.resolve(symbols) {
            let range = self.push_names(&r, &mut names);
            if let Some(slot) = usize::try_from(id).ok().and_then(|i| ranges.get_mut(i)) {
                *slot = Some(range);
            }
        }
        let unknown = self.intern("(unknown)");
        // A trie node becomes at most one tree node per frame and mostly one: without this the
        // first block's merge copies the growing arrays several times over.
        self.nodes.reserve(n);
        self.links.reserve(n);
        let root = &mut self.nodes[ROOT as usize];
        root.total = root.total.saturating_add(total[0]);
        root.self_value = root.self_value.saturating_add(self_values[0]);
        let mut tree_of = vec![ROOT; n];
        for i in 1..n {
            if !live[i] {
                continue;
            }
            let p = parents[i] as usize;
            let mut node = if p < i { tree_of[p] } else { ROOT };
            let value = total[i];
            match ranges.get(locations[i] as usize).copied().flatten() {
                Some((a, b)) => {
                    for k in a..b {
                        node = self.child(node, names[k as usize]);
                        let t = &mut self.nodes[node as usize];
                        t.total = t.total.saturating_add(value);
                    }
                }
                None => {
                    node = self.child(node, unknown);
                    let t = &mut self.nodes[node as usize];
                    t.total = t.total.saturating_add(value);
                }
            }
            tree_of[i] = node;
            let t = &mut self.nodes[node as usize];
            t.self_value = t.self_value.saturating_add(self_values[i]);
        }
    }

    /// Merges the `type:unit` values of `p` into the tree, naming frames with `resolver`.
    /// Returns false (and adds nothing) when `p` lacks that sample type.
    pub fn merge_profile(
        &mut self,
        p: &Profile,
        profile_type: &str,
        resolver: &mut Resolver<'_>,
    ) -> bool {
        self.merge_profile_under(p, profile_type, resolver, &[])
    }

    /// Like [`Tree::merge_profile`], with every stack placed under the frames `prefix` (root first):
    /// how a flame graph is split by process (`service_name=nginx`) above the functions.
    pub fn merge_profile_under(
        &mut self,
        p: &Profile,
        profile_type: &str,
        resolver: &mut Resolver<'_>,
        prefix: &[&str],
    ) -> bool {
        self.merge_samples_where(p, profile_type, resolver, prefix, &|_| true)
    }

    /// Like [`Tree::merge_profile_under`] for the samples `keep` accepts (a span profile keeps
    /// those labelled with a selected `span_id`).
    pub fn merge_samples_where(
        &mut self,
        p: &Profile,
        profile_type: &str,
        resolver: &mut Resolver<'_>,
        prefix: &[&str],
        keep: &dyn Fn(&kiln_proto::pprof::Sample) -> bool,
    ) -> bool {
        let Some(vi) = p
            .sample_type
            .iter()
            .position(|st| format!("{}:{}", p.str(st.r#type), p.str(st.unit)) == profile_type)
        else {
            return false;
        };
        let resolved = resolver.resolve(p);
        // Per location: its frame names as tree name ids, outermost first, as a range of `names`.
        // Resolved once per location, so the per-sample loop below only moves integers.
        let mut names: Vec<u32> = Vec::with_capacity(resolved.len());
        let mut loc_names: HashMap<u64, (u32, u32), FxBuild> =
            HashMap::with_capacity_and_hasher(resolved.len(), FxBuild::default());
        for (id, r) in resolved {
            let range = self.push_names(&r, &mut names);
            loc_names.insert(id, range);
        }
        let unknown = self.intern("(unknown)");
        let prefix: Vec<u32> = prefix.iter().map(|n| self.intern(n)).collect();
        // The nodes of the `prefix` frames, root first (made with the first sample added, so a
        // profile with nothing to add leaves no node behind).
        let mut base: Vec<u32> = Vec::with_capacity(prefix.len());
        let mut base_node = ROOT;
        // The previous sample's path: its locations (leaf first, as stored), the tree nodes of
        // its frames (root first) and, per location root first, how many of those nodes it ends
        // at. A sample that shares a root-side run of locations with the previous one reuses
        // those nodes and looks up only the frames after them: stores hand merged profiles over
        // with their stacks in root-first order, so most lookups are skipped.
        let mut prev: &[u64] = &[];
        let mut path: Vec<u32> = Vec::new();
        let mut loc_ends: Vec<usize> = Vec::new();
        for s in &p.sample {
            let value = s.value.get(vi).copied().unwrap_or(0);
            if value == 0 || !keep(s) {
                continue;
            }
            if base.len() < prefix.len() {
                for &name in &prefix {
                    base_node = self.child(base_node, name);
                    base.push(base_node);
                }
            }
            let locs = &s.location_id;
            let shared = locs
                .iter()
                .rev()
                .zip(prev.iter().rev())
                .take_while(|(a, b)| a == b)
                .count();
            loc_ends.truncate(shared);
            path.truncate(loc_ends.last().copied().unwrap_or(0));
            let mut node = path.last().copied().unwrap_or(base_node);
            // Stacks are stored leaf first.
            for loc in locs.iter().rev().skip(shared) {
                match loc_names.get(loc) {
                    Some(&(a, b)) => {
                        for &name in &names[a as usize..b as usize] {
                            node = self.child(node, name);
                            path.push(node);
                        }
                    }
                    None => {
                        node = self.child(node, unknown);
                        path.push(node);
                    }
                }
                loc_ends.push(path.len());
            }
            prev = locs;
            let root = &mut self.nodes[ROOT as usize];
            root.total = root.total.saturating_add(value);
            for &n in base.iter().chain(&path) {
                let n = &mut self.nodes[n as usize];
                n.total = n.total.saturating_add(value);
            }
            let n = &mut self.nodes[node as usize];
            n.self_value = n.self_value.saturating_add(value);
        }
        self.profiles += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_proto::ProfileBuilder;

    #[test]
    fn merges_stacks_and_inlined_frames() {
        let mut b = ProfileBuilder::new(&[("samples", "count"), ("cpu", "nanoseconds")]);
        let main = b.function("main", "m.c");
        let a = b.function("alpha", "m.c");
        let inl = b.function("inlined_into_alpha", "m.c");
        let hot = b.function("hot", "m.c");
        let l_main = b.symbolized_location(0, 1, &[(main, 1)]);
        // Innermost first: `inlined_into_alpha` was inlined into `alpha`.
        let l_a = b.symbolized_location(0, 2, &[(inl, 5), (a, 2)]);
        let l_hot = b.symbolized_location(0, 3, &[(hot, 3)]);
        b.add_sample(&[l_hot, l_a, l_main], &[1, 10], &[]);
        b.add_sample(&[l_a, l_main], &[1, 5], &[]);
        b.add_sample(&[l_main], &[1, 0], &[]);
        let p = b.finish();
        let mut t = Tree::new();
        assert!(t.merge_profile(&p, "cpu:nanoseconds", &mut Resolver::new(None)));
        assert!(!t.merge_profile(&p, "wall:nanoseconds", &mut Resolver::new(None)));
        assert_eq!(t.total(), 15);
        assert_eq!(t.profiles, 1);
        let names: Vec<&str> = t
            .nodes
            .iter()
            .map(|n| t.names[n.name as usize].as_str())
            .collect();
        assert_eq!(
            names,
            ["total", "main", "alpha", "inlined_into_alpha", "hot"]
        );
        assert_eq!(t.nodes[3].self_value, 5);
        assert_eq!(t.nodes[3].total, 15);
        assert_eq!(t.nodes[4].total, 10);
    }

    /// The regression behind the quadratic merge: keys that differ only in the parent (the high
    /// 32 bits) must still land in different buckets, which the table picks from the low bits.
    #[test]
    fn same_name_under_many_parents_spreads_over_buckets() {
        use std::hash::BuildHasher;
        let build = FxBuild::default();
        let name = 7u64;
        let buckets: std::collections::HashSet<u64> = (0..4096u64)
            .map(|parent| build.hash_one((parent << 32) | name) & 4095)
            .collect();
        // Uniform hashing fills ~63 % of 4096 buckets with 4096 keys; the old hasher filled one.
        assert!(buckets.len() > 2000, "{} buckets used", buckets.len());
    }

    /// Narrow nodes find children by list, wide ones by map, and a node turns wide mid-merge:
    /// whichever way, one child per (parent, name), with the same sums as a map of whole paths.
    #[test]
    fn each_child_is_found_once_whether_the_node_is_narrow_or_wide() {
        use std::collections::BTreeMap;
        let mut t = Tree::new();
        let names: Vec<u32> = (0..40).map(|i| t.intern(&format!("f{i}"))).collect();
        let mut want: BTreeMap<Vec<u32>, (i64, i64)> = BTreeMap::new();
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        for value in 1..3000i64 {
            // Fan-out from 1 (deep down) to 40 (at the root): narrow and wide nodes both.
            let depth = 1 + next(6) as usize;
            let path: Vec<u32> = (0..depth)
                .map(|d| names[next(40 >> d.min(5)) as usize])
                .collect();
            t.add(path.iter().copied(), value);
            for end in 1..=path.len() {
                let e = want.entry(path[..end].to_vec()).or_default();
                e.0 += value;
                if end == path.len() {
                    e.1 += value;
                }
            }
        }
        let mut got: BTreeMap<Vec<u32>, (i64, i64)> = BTreeMap::new();
        for i in 1..t.nodes.len() {
            let mut path = Vec::new();
            let mut n = i;
            while n != ROOT as usize {
                path.push(t.nodes[n].name);
                n = t.nodes[n].parent as usize;
            }
            path.reverse();
            let node = &t.nodes[i];
            let dup = got.insert(path.clone(), (node.total, node.self_value));
            assert!(dup.is_none(), "two nodes for {path:?}");
        }
        assert_eq!(got, want);
        assert!(
            t.links[ROOT as usize].children > WIDE,
            "the root became wide"
        );
    }

    #[test]
    fn prefixes_group_stacks() {
        let mut b = ProfileBuilder::new(&[("cpu", "nanoseconds")]);
        let main = b.function("main", "m.c");
        let l_main = b.symbolized_location(0, 1, &[(main, 1)]);
        b.add_sample(&[l_main], &[10], &[]);
        let p = b.finish();
        let mut t = Tree::new();
        let mut r = Resolver::new(None);
        assert!(t.merge_profile_under(&p, "cpu:nanoseconds", &mut r, &["service_name=a"]));
        assert!(t.merge_profile_under(&p, "cpu:nanoseconds", &mut r, &["service_name=b"]));
        assert!(t.merge_profile_under(&p, "cpu:nanoseconds", &mut r, &["service_name=a"]));
        let kids = t.child_lists();
        let top: Vec<(&str, i64)> = kids[ROOT as usize]
            .iter()
            .map(|&c| {
                (
                    t.names[t.nodes[c as usize].name as usize].as_str(),
                    t.nodes[c as usize].total,
                )
            })
            .collect();
        assert_eq!(top, [("service_name=a", 20), ("service_name=b", 10)]);
        assert_eq!(t.total(), 30);
    }
}
