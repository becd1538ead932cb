//! The top-functions table: self and total per function name from the merged tree.

use std::collections::HashMap;

use serde::Serialize;

use super::merge::{ROOT, Tree};

pub const DEFAULT_LIMIT: usize = 100;

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct TopFunction {
    pub name: String,
    /// Why the frame has no function name (see [`super::reason`]); absent for named frames.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    #[serde(rename = "self")]
    pub self_value: i64,
    pub total: i64,
}

#[derive(Debug, Serialize)]
pub struct TopResponse {
    pub total: i64,
    pub unit: String,
    pub profile_type: String,
    pub profiles: usize,
    pub functions: Vec<TopFunction>,
}

/// Per function name (its id in `tree.names`): (self, total). A function's total counts each
/// stack once, even when it recurses: only nodes with no ancestor of the same name contribute.
pub fn function_totals(tree: &Tree) -> HashMap<u32, (i64, i64)> {
    let mut acc: HashMap<u32, (i64, i64)> = HashMap::new();
    // Depth first with a count per name of the frames on the current path, so whether a node
    // has an ancestor of its own name is one lookup, not a walk to the root (a merged tree has
    // hundreds of thousands of nodes, tens of frames deep).
    let children =
        super::flamegraph::Children::new(tree.nodes.len(), |i| tree.nodes[i as usize].parent);
    let mut on_path = vec![0u32; tree.names.len()];
    // (node, entered): a node is pushed once to enter and is popped again to leave.
    let mut stack: Vec<(u32, bool)> = children.of(ROOT).iter().map(|&c| (c, false)).collect();
    while let Some((i, entered)) = stack.pop() {
        let node = &tree.nodes[i as usize];
        let name = node.name as usize;
        if entered {
            on_path[name] -= 1;
            continue;
        }
        let e = acc.entry(node.name).or_default();
        e.0 = e.0.saturating_add(node.self_value);
        if on_path[name] == 0 {
            e.1 = e.1.saturating_add(node.total);
        }
        on_path[name] += 1;
        stack.push((i, true));
        stack.extend(children.of(i).iter().map(|&c| (c, false)));
    }
    acc
}

/// Functions sorted by self descending, totals as [`function_totals`] counts them.
pub fn top(tree: &Tree, limit: usize) -> Vec<TopFunction> {
    let acc = function_totals(tree);
    let mut out: Vec<TopFunction> = acc
        .into_iter()
        .map(|(name, (self_value, total))| TopFunction {
            name: tree.names[name as usize].clone(),
            reason: super::reason::of_name(&tree.names[name as usize]),
            self_value,
            total,
        })
        .collect();
    out.sort_by(|a, b| {
        b.self_value
            .cmp(&a.self_value)
            .then(b.total.cmp(&a.total))
            .then_with(|| a.name.cmp(&b.name))
    });
    out.truncate(limit);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recursion_counted_once() {
        let mut t = Tree::new();
        let main = t.intern("main");
        let rec = t.intern("rec");
        let hot = t.intern("hot");
        t.add([main, rec, rec, rec, hot], 10);
        t.add([main, rec], 5);
        t.add([main, hot], 1);
        let top = top(&t, 10);
        assert_eq!(
            top,
            vec![
                TopFunction {
                    name: "hot".into(),
                    reason: None,
                    self_value: 11,
                    total: 11
                },
                TopFunction {
                    name: "rec".into(),
                    reason: None,
                    self_value: 5,
                    total: 15
                },
                TopFunction {
                    name: "main".into(),
                    reason: None,
                    self_value: 0,
                    total: 16
                },
            ]
        );
        assert_eq!(super::top(&t, 1).len(), 1);
    }
}
