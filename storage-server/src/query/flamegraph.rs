//! The flame-graph JSON: the merged tree, children by total descending, cut to `max_nodes` with the
//! rest folded into `(other)` nodes so every total still adds up.
//!
//! The JSON is written iteratively: stacks can be thousands of frames deep and a recursive
//! serializer would risk the thread's stack.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt::Write as _;

use super::merge::{ROOT, Tree};

pub const DEFAULT_MAX_NODES: usize = 8192;
pub const OTHER: &str = "(other)";

/// Which nodes to show: the largest-total ones, as a connected tree from the root, such that shown
/// nodes plus the `(other)` nodes they need fit in `max_nodes` (the root is always shown).
fn select(tree: &Tree, children: &[Vec<u32>], max_nodes: usize) -> Vec<bool> {
    let n = tree.nodes.len();
    let mut included = vec![false; n];
    let mut order = Vec::with_capacity(n.min(max_nodes.saturating_add(1)));
    let mut remaining: Vec<u32> = children.iter().map(|c| c.len() as u32).collect();
    let mut heap = BinaryHeap::new();
    let mut others = 0usize;
    let mut include = |node: u32,
                       order: &mut Vec<u32>,
                       heap: &mut BinaryHeap<(i64, Reverse<u32>)>,
                       others: &mut usize| {
        order.push(node);
        if node != ROOT {
            let parent = tree.nodes[node as usize].parent as usize;
            remaining[parent] -= 1;
            if remaining[parent] == 0 {
                *others -= 1;
            }
        }
        if remaining[node as usize] > 0 {
            *others += 1;
        }
        for &c in &children[node as usize] {
            heap.push((tree.nodes[c as usize].total, Reverse(c)));
        }
    };
    include(ROOT, &mut order, &mut heap, &mut others);
    let mut best = 1;
    // Each inclusion adds one node and changes the `(other)` count by at most one, so the cost
    // never decreases: stop at the first prefix that does not fit.
    while let Some((_, Reverse(node))) = heap.pop() {
        include(node, &mut order, &mut heap, &mut others);
        if order.len() + others > max_nodes {
            break;
        }
        best = order.len();
    }
    for &node in &order[..best] {
        included[node as usize] = true;
    }
    included
}

enum Item {
    Node(u32),
    Other(i64),
}

fn push_json_str(out: &mut String, s: &str) {
    match serde_json::to_string(s) {
        Ok(q) => out.push_str(&q),
        Err(_) => out.push_str("\"?\""),
    }
}

/// Renders the `/api/v1/flamegraph` response body.
pub fn render(tree: &Tree, max_nodes: usize, profile_type: &str) -> String {
    let mut children = tree.child_lists();
    for list in &mut children {
        list.sort_by(|&a, &b| {
            let (na, nb) = (&tree.nodes[a as usize], &tree.nodes[b as usize]);
            nb.total
                .cmp(&na.total)
                .then_with(|| tree.names[na.name as usize].cmp(&tree.names[nb.name as usize]))
        });
    }
    let included = select(tree, &children, max_nodes);
    let truncated = included.iter().filter(|&&i| !i).count();
    let unit = profile_type.split_once(':').map_or("", |(_, u)| u);

    let mut out = String::with_capacity(64 + tree.nodes.len().min(max_nodes) * 64);
    let _ = write!(out, "{{\"total\":{},\"unit\":", tree.total());
    push_json_str(&mut out, unit);
    out.push_str(",\"profile_type\":");
    push_json_str(&mut out, profile_type);
    let _ = write!(out, ",\"profiles\":{}", tree.profiles);
    if truncated > 0 {
        let _ = write!(out, ",\"truncated_nodes\":{truncated}");
    }
    out.push_str(",\"root\":");

    let items_of = |node: u32| -> Vec<Item> {
        let mut items = Vec::new();
        let mut other = 0i64;
        for &c in &children[node as usize] {
            if included[c as usize] {
                items.push(Item::Node(c));
            } else {
                other = other.saturating_add(tree.nodes[c as usize].total);
            }
        }
        if other != 0
            || children[node as usize]
                .iter()
                .any(|&c| !included[c as usize])
        {
            // Keep the children ordered by total with `(other)` among them.
            let at = items
                .iter()
                .position(|i| matches!(i, Item::Node(c) if tree.nodes[*c as usize].total < other))
                .unwrap_or(items.len());
            items.insert(at, Item::Other(other));
        }
        items
    };

    // Each stack entry: a node's child items and how many have been written.
    let mut stack: Vec<(Vec<Item>, usize)> = Vec::new();
    let open = |out: &mut String, node: u32| {
        let n = &tree.nodes[node as usize];
        out.push_str("{\"name\":");
        push_json_str(out, &tree.names[n.name as usize]);
        let _ = write!(
            out,
            ",\"self\":{},\"total\":{},\"children\":[",
            n.self_value, n.total
        );
    };
    open(&mut out, ROOT);
    stack.push((items_of(ROOT), 0));
    while let Some((items, next)) = stack.last_mut() {
        if *next == items.len() {
            out.push_str("]}");
            stack.pop();
            continue;
        }
        if *next > 0 {
            out.push(',');
        }
        let item = &items[*next];
        *next += 1;
        match *item {
            Item::Other(total) => {
                out.push_str("{\"name\":");
                push_json_str(&mut out, OTHER);
                let _ = write!(out, ",\"self\":{total},\"total\":{total},\"children\":[]}}");
            }
            Item::Node(c) => {
                open(&mut out, c);
                let items = items_of(c);
                stack.push((items, 0));
            }
        }
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn tree() -> Tree {
        let mut t = Tree::new();
        let main = t.intern("main");
        let a = t.intern("a");
        let b = t.intern("b");
        let c = t.intern("c");
        let d = t.intern("d");
        t.add([main, a], 50);
        t.add([main, b], 30);
        t.add([main, c, d], 15);
        t.add([main], 5);
        t.profiles = 1;
        t
    }

    fn count_nodes(v: &Value) -> usize {
        1 + v["children"]
            .as_array()
            .map_or(0, |c| c.iter().map(count_nodes).sum())
    }

    fn check_sums(v: &Value) {
        let children = v["children"].as_array().unwrap();
        let sum: i64 = children.iter().map(|c| c["total"].as_i64().unwrap()).sum();
        assert_eq!(
            sum + v["self"].as_i64().unwrap(),
            v["total"].as_i64().unwrap(),
            "{v}"
        );
        let totals: Vec<i64> = children
            .iter()
            .map(|c| c["total"].as_i64().unwrap())
            .collect();
        assert!(totals.windows(2).all(|w| w[0] >= w[1]), "{totals:?}");
        children.iter().for_each(check_sums);
    }

    #[test]
    fn full_tree() {
        let v: Value = serde_json::from_str(&render(&tree(), 100, "cpu:nanoseconds")).unwrap();
        assert_eq!(v["total"], 100);
        assert_eq!(v["unit"], "nanoseconds");
        assert_eq!(v["profiles"], 1);
        assert!(v.get("truncated_nodes").is_none());
        assert_eq!(count_nodes(&v["root"]), 6);
        let main = &v["root"]["children"][0];
        assert_eq!(main["name"], "main");
        assert_eq!(main["self"], 5);
        let names: Vec<&str> = main["children"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["a", "b", "c"]);
        check_sums(&v["root"]);
    }

    #[test]
    fn truncation_is_honest_and_bounded() {
        for max in [1, 2, 3, 4, 5] {
            let v: Value = serde_json::from_str(&render(&tree(), max, "cpu:nanoseconds")).unwrap();
            let shown = count_nodes(&v["root"]);
            assert!(shown <= max.max(2), "max {max}: {shown} nodes: {v}");
            assert_eq!(v["root"]["total"], 100);
            check_sums(&v["root"]);
            assert!(v["truncated_nodes"].as_u64().unwrap() > 0, "max {max}");
        }
        let v: Value = serde_json::from_str(&render(&tree(), 6, "cpu:nanoseconds")).unwrap();
        assert!(v.get("truncated_nodes").is_none());
        // With 5: root, main, a, b and one (other) standing for c and d.
        let v: Value = serde_json::from_str(&render(&tree(), 5, "cpu:nanoseconds")).unwrap();
        assert_eq!(v["truncated_nodes"], 2);
        let main = &v["root"]["children"][0];
        let last = &main["children"][2];
        assert_eq!(last["name"], OTHER);
        assert_eq!(last["total"], 15);
    }

    #[test]
    fn deep_stacks_do_not_recurse() {
        let mut t = Tree::new();
        let f = t.intern("f");
        t.add(std::iter::repeat_n(f, 100_000), 1);
        let out = render(&t, usize::MAX, "cpu:nanoseconds");
        assert!(out.ends_with("]}]}}"));
    }
}
