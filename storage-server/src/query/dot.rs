//! The call graph in Graphviz DOT, as `/pyroscope/render?format=dot` answers it (Pyroscope writes
//! pprof's graph with `dot.WriteFromProfile`; the Drilldown app shows and explains it). Nodes are
//! functions with their flat (self) and cumulative values, edges caller → callee with the value
//! that flowed through them; the `max_nodes` functions with the largest cumulative values are
//! kept, like pprof's `-nodecount`.

use std::collections::HashMap;
use std::fmt::Write as _;

use super::merge::{ROOT, Tree};

/// Functions shown when the request does not say (Pyroscope's `dotProfileMaxNodes`).
pub const DEFAULT_DOT_NODES: usize = 100;

/// A DOT string literal's body: quotes and backslashes escaped, newlines as `\n`.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn percent(v: i64, total: i64) -> f64 {
    if total == 0 {
        0.0
    } else {
        v as f64 * 100.0 / total as f64
    }
}

/// Renders `tree` (values in `unit`) as a DOT digraph of at most `max_nodes` functions. An empty
/// tree is an empty string, as Pyroscope answers for no data.
pub fn render(tree: &Tree, max_nodes: usize, sample_type: &str) -> String {
    let total = tree.total();
    if total == 0 {
        return String::new();
    }
    // Per function name: (flat, cum); cum counts a stack once even through recursion.
    let funcs = super::top::function_totals(tree);
    let mut edges: HashMap<(u32, u32), i64> = HashMap::new();
    for node in tree.nodes.iter().skip(1) {
        if node.parent != ROOT {
            let caller = tree.nodes[node.parent as usize].name;
            let w = edges.entry((caller, node.name)).or_default();
            *w = w.saturating_add(node.total);
        }
    }
    let mut order: Vec<(u32, (i64, i64))> = funcs.into_iter().collect();
    order.sort_by(|a, b| {
        b.1.1
            .cmp(&a.1.1)
            .then_with(|| tree.names[a.0 as usize].cmp(&tree.names[b.0 as usize]))
    });
    order.truncate(max_nodes.max(1));
    let ids: HashMap<u32, usize> = order
        .iter()
        .enumerate()
        .map(|(i, (n, _))| (*n, i + 1))
        .collect();
    let shown: i64 = order.iter().map(|(_, (flat, _))| *flat).sum();
    let max_flat = order.iter().map(|(_, (f, _))| *f).max().unwrap_or(0).max(1);
    let mut out = String::new();
    let _ = writeln!(out, "digraph \"kiln\" {{");
    let _ = writeln!(out, "node [style=filled fillcolor=\"#f8f8f8\"]");
    let _ = writeln!(
        out,
        "subgraph cluster_L {{ \"Type: {}\" [shape=box fontsize=16 label=\"Type: {}\\lShowing nodes accounting for {}, {:.2}% of {} total\\l\"] }}",
        escape(sample_type),
        escape(sample_type),
        shown,
        percent(shown, total),
        total
    );
    for (name, (flat, cum)) in &order {
        let id = ids[name];
        let label = escape(&tree.names[*name as usize]);
        // Font size grows with the flat share, as pprof draws it.
        let fontsize = 8 + (42 * flat / max_flat);
        let _ = writeln!(
            out,
            "N{id} [label=\"{label}\\n{flat} ({:.2}%)\\nof {cum} ({:.2}%)\" id=\"node{id}\" fontsize={fontsize} shape=box tooltip=\"{label} ({cum})\"]",
            percent(*flat, total),
            percent(*cum, total),
        );
    }
    let mut shown_edges: Vec<((u32, u32), i64)> = edges
        .into_iter()
        .filter(|((a, b), _)| ids.contains_key(a) && ids.contains_key(b))
        .collect();
    shown_edges.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    for ((a, b), w) in shown_edges {
        let _ = writeln!(
            out,
            "N{} -> N{} [label=\" {w}\" weight={} tooltip=\"{} -> {} ({w})\"]",
            ids[&a],
            ids[&b],
            (percent(w, total) as i64).max(1),
            escape(&tree.names[a as usize]),
            escape(&tree.names[b as usize]),
        );
    }
    out.push_str("}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graph_has_functions_and_calls() {
        let mut t = Tree::new();
        let main = t.intern("main");
        let a = t.intern("a\"quoted\"");
        let b = t.intern("b");
        t.add([main, a], 60);
        t.add([main, b], 30);
        t.add([main, a, b], 10);
        let dot = render(&t, 100, "cpu:nanoseconds");
        assert!(dot.starts_with("digraph \"kiln\" {"), "{dot}");
        assert!(dot.trim_end().ends_with('}'));
        assert!(
            dot.contains("label=\"main\\n0 (0.00%)\\nof 100 (100.00%)\""),
            "{dot}"
        );
        assert!(dot.contains("a\\\"quoted\\\""), "{dot}");
        // main -> a carries 70, a -> b 10.
        assert!(dot.contains("[label=\" 70\""), "{dot}");
        assert!(dot.contains("[label=\" 10\""), "{dot}");
        // Capped to two functions: b (cum 40) is the one left out.
        let small = render(&t, 2, "cpu:nanoseconds");
        assert!(!small.contains("label=\"b\\n"), "{small}");
        assert_eq!(render(&Tree::new(), 10, "cpu:nanoseconds"), "");
    }
}
