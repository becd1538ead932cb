//! Pyroscope's flame-graph level encoding ("flamebearer"), as the `querier.v1` API and the legacy
//! `/pyroscope/render` endpoints carry it, made from the same [`View`] as Kiln's own JSON.
//!
//! A flame graph is a list of levels (depths); each level lists its nodes left to right with 4
//! integers each: `[x delta, total, self, name index]`. A node's absolute x is its delta plus the
//! end (x + total) of the previous node in that level; a node's children start at its x plus its
//! self and follow each other without gaps. A diff carries 7 integers per node: `[left x delta, left
//! total, left self, right x delta, right total, right self, name index]`, each side delta-encoded
//! on its own. This matches grafana/pyroscope's pkg/model `NewFlameGraph` / `NewFlamegraphDiff`.

use kiln_proto::querier::{FlameGraph, FlameGraphDiff, Level};

use super::diff::DiffValues;
use super::flamegraph::{Values, View};
use super::merge::ROOT;

/// Absolute x of every view node (per side for a diff), laid out as the encoding requires, and
/// the nodes of each level in left-to-right order.
fn layout<V>(
    view: &View<V>,
    sides: usize,
    self_total: impl Fn(&V, usize) -> (i64, i64),
) -> Vec<Vec<(u32, [i64; 2])>> {
    let mut levels: Vec<Vec<(u32, [i64; 2])>> = Vec::new();
    // Depth-first, children in order: each level then receives its nodes left to right.
    let mut stack: Vec<(u32, usize, [i64; 2])> = vec![(ROOT, 0, [0, 0])];
    while let Some((node, depth, x)) = stack.pop() {
        if levels.len() == depth {
            levels.push(Vec::new());
        }
        levels[depth].push((node, x));
        let n = &view.nodes[node as usize];
        let mut child_x = x;
        for (side, cx) in child_x.iter_mut().enumerate().take(sides) {
            *cx = cx.saturating_add(self_total(&n.value, side).0);
        }
        let mut placed = Vec::with_capacity(n.children.len());
        for &c in &n.children {
            placed.push((c, depth + 1, child_x));
            for (side, cx) in child_x.iter_mut().enumerate().take(sides) {
                *cx = cx.saturating_add(self_total(&view.nodes[c as usize].value, side).1);
            }
        }
        // Reversed, so the leftmost child is popped (and laid out) first.
        stack.extend(placed.into_iter().rev());
    }
    levels
}

/// Encodes a single flame graph.
pub fn encode(view: &View<Values>) -> FlameGraph {
    let st = |v: &Values, _side: usize| (v.self_value, v.total);
    let mut max_self = 0i64;
    let levels = layout(view, 1, st)
        .into_iter()
        .map(|nodes| {
            let mut values = Vec::with_capacity(nodes.len() * 4);
            let mut prev_end = 0i64;
            for (node, x) in nodes {
                let n = &view.nodes[node as usize];
                max_self = max_self.max(n.value.self_value);
                values.extend([
                    x[0] - prev_end,
                    n.value.total,
                    n.value.self_value,
                    i64::from(n.name),
                ]);
                prev_end = x[0].saturating_add(n.value.total);
            }
            Level { values }
        })
        .collect();
    FlameGraph {
        names: view.names.clone(),
        levels,
        total: view.nodes[ROOT as usize].value.total,
        max_self,
    }
}

/// Encodes a diff flame graph; `total` is left plus right, as in Pyroscope.
pub fn encode_diff(view: &View<DiffValues>) -> FlameGraphDiff {
    let st = |v: &DiffValues, side: usize| {
        if side == 0 {
            (v.left.self_value, v.left.total)
        } else {
            (v.right.self_value, v.right.total)
        }
    };
    let mut max_self = 0i64;
    let levels = layout(view, 2, st)
        .into_iter()
        .map(|nodes| {
            let mut values = Vec::with_capacity(nodes.len() * 7);
            let mut prev_end = [0i64; 2];
            for (node, x) in nodes {
                let v = &view.nodes[node as usize].value;
                max_self = max_self.max(v.left.self_value).max(v.right.self_value);
                values.extend([
                    x[0] - prev_end[0],
                    v.left.total,
                    v.left.self_value,
                    x[1] - prev_end[1],
                    v.right.total,
                    v.right.self_value,
                    i64::from(view.nodes[node as usize].name),
                ]);
                prev_end = [
                    x[0].saturating_add(v.left.total),
                    x[1].saturating_add(v.right.total),
                ];
            }
            Level { values }
        })
        .collect();
    let root = &view.nodes[ROOT as usize].value;
    FlameGraphDiff {
        names: view.names.clone(),
        levels,
        total: root.left.total.saturating_add(root.right.total),
        max_self,
        left_ticks: root.left.total,
        right_ticks: root.right.total,
    }
}

/// Pyroscope's binary tree (`PROFILE_FORMAT_TREE`, pkg/model/tree.go `MarshalTruncate`): nodes
/// depth first from a nameless virtual root, each as uvarint name length, the name's bytes,
/// uvarint self value and uvarint child count. The order follows a stack (a node's children are
/// pushed, the last pushed is written next), which `UnmarshalTree` mirrors with its stack of
/// parents. The view's `total` root is that virtual root.
pub fn encode_tree(view: &View<Values>) -> Vec<u8> {
    fn uvarint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    let mut out = Vec::new();
    if view.nodes[ROOT as usize].children.is_empty() {
        // Pyroscope writes nothing for an empty tree.
        return out;
    }
    let mut stack = vec![ROOT];
    while let Some(node) = stack.pop() {
        let n = &view.nodes[node as usize];
        let name = if node == ROOT {
            ""
        } else {
            view.names[n.name as usize].as_str()
        };
        uvarint(&mut out, name.len() as u64);
        out.extend_from_slice(name.as_bytes());
        uvarint(&mut out, n.value.self_value.max(0) as u64);
        uvarint(&mut out, n.children.len() as u64);
        stack.extend(n.children.iter().copied());
    }
    out
}

/// Decodes [`encode_tree`]'s format the way Pyroscope's `UnmarshalTree` does, into a root named
/// `total` whose children are the tree's roots (for tests and checks). Totals are summed up from
/// the self values.
pub fn decode_tree(b: &[u8]) -> Result<Decoded, String> {
    fn uvarint(b: &[u8], at: &mut usize) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *b.get(*at).ok_or("truncated varint")?;
            *at += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Ok(v);
            }
        }
        Err("varint too long".into())
    }
    // Arena: (name, self, children); parents as a stack of arena indices, as in UnmarshalTree.
    let mut nodes: Vec<(String, i64, Vec<usize>)> = Vec::new();
    let mut parents: Vec<Option<usize>> = vec![None];
    let mut at = 0usize;
    while let Some(parent) = parents.pop() {
        if at >= b.len() {
            if nodes.is_empty() {
                break;
            }
            return Err(format!("tree bytes end before node {}", nodes.len()));
        }
        let len = usize::try_from(uvarint(b, &mut at)?).map_err(|e| e.to_string())?;
        let name = b
            .get(at..at + len)
            .ok_or("name runs past the end")
            .map(|n| String::from_utf8_lossy(n).into_owned())?;
        at += len;
        let self_value = i64::try_from(uvarint(b, &mut at)?).map_err(|e| e.to_string())?;
        let children = uvarint(b, &mut at)?;
        let id = nodes.len();
        nodes.push((name, self_value, Vec::new()));
        if let Some(p) = parent {
            nodes[p].2.push(id);
        }
        for _ in 0..children {
            parents.push(Some(id));
        }
    }
    if at != b.len() {
        return Err(format!("{} bytes after the tree", b.len() - at));
    }
    // Build bottom-up (children always have larger indices than their parent).
    let mut built: Vec<Option<Decoded>> = vec![None; nodes.len()];
    for i in (0..nodes.len()).rev() {
        let (name, self_value, kids) = &nodes[i];
        let children: Vec<Decoded> = kids.iter().filter_map(|&k| built[k].take()).collect();
        let total = self_value + children.iter().map(|c| c.total).sum::<i64>();
        built[i] = Some(Decoded {
            name: if i == 0 { "total".into() } else { name.clone() },
            self_value: *self_value,
            total,
            children,
        });
    }
    Ok(built.first_mut().and_then(Option::take).unwrap_or(Decoded {
        name: "total".into(),
        self_value: 0,
        total: 0,
        children: Vec::new(),
    }))
}

/// A node decoded from levels (for tests and for anyone checking an encoding).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decoded {
    pub name: String,
    pub self_value: i64,
    pub total: i64,
    pub children: Vec<Decoded>,
}

/// Decodes a single flame graph back into a tree: a node's parent is the node one level up whose
/// `[x + self, x + total)` span holds the node's x. Fails on malformed input.
pub fn decode(fg: &FlameGraph) -> Result<Decoded, String> {
    // Per level: (absolute x, total, self, name), in order.
    let mut levels: Vec<Vec<(i64, i64, i64, usize)>> = Vec::new();
    for (d, level) in fg.levels.iter().enumerate() {
        if level.values.len() % 4 != 0 {
            return Err(format!(
                "level {d} has {} values, not a multiple of 4",
                level.values.len()
            ));
        }
        let mut prev_end = 0i64;
        let mut nodes = Vec::new();
        for c in level.values.chunks_exact(4) {
            let x = prev_end + c[0];
            if c[0] < 0 {
                return Err(format!("level {d}: negative x delta {}", c[0]));
            }
            let name = usize::try_from(c[3])
                .ok()
                .filter(|&i| i < fg.names.len())
                .ok_or_else(|| format!("level {d}: bad name index {}", c[3]))?;
            nodes.push((x, c[1], c[2], name));
            prev_end = x + c[1];
        }
        levels.push(nodes);
    }
    // Children lists by (level, index), found by x containment in the level above.
    let mut children: Vec<Vec<Vec<usize>>> =
        levels.iter().map(|l| vec![Vec::new(); l.len()]).collect();
    for d in 1..levels.len() {
        for (i, &(x, total, _, _)) in levels[d].iter().enumerate() {
            let parent = levels[d - 1]
                .iter()
                .position(|&(px, pt, ps, _)| px + ps <= x && x + total <= px + pt)
                .ok_or_else(|| format!("level {d} node {i} at x={x} has no parent"))?;
            children[d - 1][parent].push(i);
        }
    }
    if levels.first().map(Vec::len) != Some(1) {
        return Err("level 0 must hold exactly the root".into());
    }
    // Build bottom-up so no recursion is needed.
    let mut built: Vec<Vec<Option<Decoded>>> = levels.iter().map(|l| vec![None; l.len()]).collect();
    for d in (0..levels.len()).rev() {
        for i in 0..levels[d].len() {
            let (_, total, self_value, name) = levels[d][i];
            let kids = children[d][i]
                .iter()
                .map(|&k| built[d + 1][k].take().ok_or("node used twice"))
                .collect::<Result<Vec<_>, _>>()?;
            built[d][i] = Some(Decoded {
                name: fg.names[name].clone(),
                self_value,
                total,
                children: kids,
            });
        }
    }
    built[0][0].take().ok_or_else(|| "no root".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::flamegraph::view;
    use crate::query::merge::Tree;

    fn tree() -> Tree {
        let mut t = Tree::new();
        let main = t.intern("main");
        let a = t.intern("a");
        let b = t.intern("b");
        let c = t.intern("c");
        t.add([main, a], 50);
        t.add([main, b, c], 30);
        t.add([main], 5);
        t.add([b], 7);
        t
    }

    #[test]
    fn levels_are_pyroscope_encoded() {
        let fg = encode(&view(&tree(), 100));
        let names = |i: i64| fg.names[i as usize].as_str();
        // Root: total 92.
        assert_eq!(&fg.levels[0].values[..3], &[0, 92, 0]);
        assert_eq!(names(fg.levels[0].values[3]), "total");
        // Level 1: main (85) at x=0, then b (7) right after: delta 0.
        let l1 = &fg.levels[1].values;
        assert_eq!(l1.len(), 8);
        assert_eq!(&l1[..3], &[0, 85, 5]);
        assert_eq!(names(l1[3]), "main");
        assert_eq!(&l1[4..7], &[0, 7, 7]);
        assert_eq!(names(l1[7]), "b");
        // Level 2: main's children start after main's self (x = 5): a (50) at delta 5, then b (30);
        // root's b has no children.
        let l2 = &fg.levels[2].values;
        assert_eq!(&l2[..3], &[5, 50, 50]);
        assert_eq!(names(l2[3]), "a");
        assert_eq!(&l2[4..7], &[0, 30, 0]);
        assert_eq!(fg.total, 92);
        assert_eq!(fg.max_self, 50);
        // Level 3: c under main/b, at absolute x = 55.
        assert_eq!(&fg.levels[3].values[..3], &[55, 30, 30]);
    }

    /// The view as the decoder's tree type.
    fn as_decoded(v: &View<Values>, node: u32) -> Decoded {
        let n = &v.nodes[node as usize];
        Decoded {
            name: v.names[n.name as usize].clone(),
            self_value: n.value.self_value,
            total: n.value.total,
            children: n.children.iter().map(|&c| as_decoded(v, c)).collect(),
        }
    }

    #[test]
    fn random_trees_round_trip_at_every_cut() {
        // A small LCG: deterministic, no dependency.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: u64| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) % n
        };
        for round in 0..30 {
            let mut t = Tree::new();
            let names: Vec<u32> = (0..6).map(|i| t.intern(&format!("f{i}"))).collect();
            for _ in 0..(5 + round) {
                let depth = 1 + next(6) as usize;
                let path: Vec<u32> = (0..depth).map(|_| names[next(6) as usize]).collect();
                t.add(path, 1 + next(1000) as i64);
            }
            for max_nodes in [1, 2, 3, 5, 8, 13, 1000] {
                let v = view(&t, max_nodes);
                let fg = encode(&v);
                assert_eq!(fg.total, t.total());
                assert_eq!(
                    decode(&fg).unwrap(),
                    as_decoded(&v, ROOT),
                    "round {round} max {max_nodes}"
                );
            }
        }
    }

    /// Children in a canonical order, so trees from both decoders compare.
    fn sorted(mut d: Decoded) -> Decoded {
        d.children = d.children.into_iter().map(sorted).collect();
        d.children.sort_by(|a, b| a.name.cmp(&b.name));
        d
    }

    #[test]
    fn tree_format_round_trips_like_pyroscope() {
        let v = view(&tree(), 100);
        let bytes = encode_tree(&v);
        // The virtual root: empty name, self 0, two children (main and b).
        assert_eq!(&bytes[..3], &[0, 0, 2]);
        let d = decode_tree(&bytes).unwrap();
        assert_eq!(d.total, 92);
        assert_eq!(sorted(d), sorted(as_decoded(&v, ROOT)));
        assert!(encode_tree(&view(&Tree::new(), 10)).is_empty());
        assert_eq!(decode_tree(&[]).unwrap().total, 0);
        assert!(decode_tree(&[0, 0, 1]).is_err());
    }

    #[test]
    fn empty_selection_is_a_lone_root() {
        let fg = encode(&view(&Tree::new(), 100));
        assert_eq!(fg.names, ["total"]);
        assert_eq!(fg.levels.len(), 1);
        assert_eq!(fg.levels[0].values, [0, 0, 0, 0]);
        assert_eq!(decode(&fg).unwrap().children, []);
    }

    #[test]
    fn decode_inverts_encode() {
        let fg = encode(&view(&tree(), 100));
        let d = decode(&fg).unwrap();
        assert_eq!(d.total, 92);
        assert_eq!(d.children[0].name, "main");
        assert_eq!(d.children[0].children[1].children[0].name, "c");
        // Truncated: (other) nodes decode like any other.
        let fg = encode(&view(&tree(), 4));
        let d = decode(&fg).unwrap();
        let sum: i64 = d.children.iter().map(|c| c.total).sum();
        assert_eq!(sum + d.self_value, d.total);
    }
}
