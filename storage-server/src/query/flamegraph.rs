//! The flame-graph JSON: the merged tree, children by total descending, cut to `max_nodes` with the
//! rest folded into `(other)` nodes so every total still adds up.
//!
//! The cut is computed once into a [`View`] (the nodes shown, with their `(other)` nodes), which
//! every flame-graph output shares: this JSON, Pyroscope's level encoding ([`super::flamebearer`])
//! and the diff ([`super::diff`]). So all of them hide exactly the same nodes.
//!
//! The JSON is written iteratively: stacks can be thousands of frames deep and a recursive
//! serializer would risk the thread's stack.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fmt::Write as _;

use super::merge::{ROOT, Tree};

pub const DEFAULT_MAX_NODES: usize = 8192;
pub use crate::config::MAX_FLAMEGRAPH_NODES;
pub const OTHER: &str = "(other)";

/// Clamps a requested node count to [`MAX_FLAMEGRAPH_NODES`]: the view, its JSON and the browser's
/// drawing all grow with it, and more nodes than that are not readable anyway.
pub fn clamp_max_nodes(requested: usize) -> usize {
    requested.min(MAX_FLAMEGRAPH_NODES)
}

/// Parses the optional positive `max_nodes`-style parameter `name` (default
/// [`DEFAULT_MAX_NODES`]), clamped by [`clamp_max_nodes`].
pub(crate) fn max_nodes_param(
    name: &str,
    value: Option<&str>,
) -> Result<usize, crate::error::ApiError> {
    super::positive(name, value, DEFAULT_MAX_NODES).map(clamp_max_nodes)
}

/// Children lists of an arena (parents before children, node 0 the root) of `n` nodes, in one
/// flat array (children of node `i`: `list[start[i]..start[i + 1]]`, in index order): two passes,
/// no allocation per node (a merged graph has hundreds of thousands of nodes and shows 8,192).
pub(crate) struct Children {
    start: Vec<u32>,
    list: Vec<u32>,
}

impl Children {
    pub(crate) fn new(n: usize, parent: impl Fn(u32) -> u32) -> Children {
        let mut start = vec![0u32; n + 1];
        for i in 1..n as u32 {
            start[parent(i) as usize + 1] += 1;
        }
        for i in 1..=n {
            start[i] += start[i - 1];
        }
        let mut fill = start.clone();
        let mut list = vec![0u32; n.saturating_sub(1)];
        for i in 1..n as u32 {
            let at = &mut fill[parent(i) as usize];
            list[*at as usize] = i;
            *at += 1;
        }
        Children { start, list }
    }

    pub(crate) fn of(&self, node: u32) -> &[u32] {
        let i = node as usize;
        &self.list[self.start[i] as usize..self.start[i + 1] as usize]
    }

    fn len(&self) -> usize {
        self.start.len() - 1
    }
}

/// Which nodes of an arena (parents before children, node 0 the root) to show: the largest-weight
/// ones, as a connected tree from the root, such that shown nodes plus the `(other)` nodes they need
/// fit in `max_nodes` (the root is always shown).
pub(crate) fn select(
    parent: impl Fn(u32) -> u32,
    weight: impl Fn(u32) -> i64,
    children: &Children,
    max_nodes: usize,
) -> Vec<bool> {
    let n = children.len();
    let mut included = vec![false; n];
    let mut order = Vec::with_capacity(n.min(max_nodes.saturating_add(1)));
    let mut remaining: Vec<u32> = (0..n as u32).map(|i| children.of(i).len() as u32).collect();
    let mut heap = BinaryHeap::new();
    let mut others = 0usize;
    let mut include = |node: u32,
                       order: &mut Vec<u32>,
                       heap: &mut BinaryHeap<(i64, Reverse<u32>)>,
                       others: &mut usize| {
        order.push(node);
        if node != ROOT {
            let parent = parent(node) as usize;
            remaining[parent] -= 1;
            if remaining[parent] == 0 {
                *others -= 1;
            }
        }
        if remaining[node as usize] > 0 {
            *others += 1;
        }
        for &c in children.of(node) {
            heap.push((weight(c), Reverse(c)));
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

/// What a flame-graph node carries: self and total, or one such pair per side of a diff.
pub trait NodeValue: Copy + Default {
    /// How wide the node is, for ordering siblings and choosing what to show.
    fn weight(&self) -> i64;
    /// Folds a hidden child into an `(other)` node (whose self is its total: nothing is below it).
    fn fold(&mut self, hidden: &Self);
}

/// Self and total of one node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Values {
    pub self_value: i64,
    pub total: i64,
}

impl NodeValue for Values {
    fn weight(&self) -> i64 {
        self.total
    }
    fn fold(&mut self, hidden: &Self) {
        self.total = self.total.saturating_add(hidden.total);
        self.self_value = self.total;
    }
}

#[derive(Clone, Debug)]
pub struct ViewNode<V> {
    /// Index into [`View::names`].
    pub name: u32,
    pub value: V,
    /// Shown children, widest first (an `(other)` node among them by its width).
    pub children: Vec<u32>,
}

/// The shown part of a tree. Node 0 is the root; names hold only names that are shown.
#[derive(Clone, Debug)]
pub struct View<V> {
    pub names: Vec<String>,
    pub nodes: Vec<ViewNode<V>>,
    /// Nodes of the full tree left out (stood for by `(other)` nodes).
    pub truncated: usize,
}

/// Builds the view of an arena (parents before children, node 0 the root) of `n` nodes.
pub(crate) fn build_view<'a, V: NodeValue>(
    n: usize,
    parent: impl Fn(u32) -> u32,
    name: impl Fn(u32) -> &'a str,
    value: impl Fn(u32) -> V,
    max_nodes: usize,
) -> View<V> {
    let children = Children::new(n, &parent);
    let included = select(&parent, |i| value(i).weight(), &children, max_nodes);
    let truncated = included.iter().filter(|&&i| !i).count();

    let mut names: Vec<String> = Vec::new();
    let mut name_ids: HashMap<&str, u32> = HashMap::new();
    let mut intern = |s: &'a str, names: &mut Vec<String>| -> u32 {
        *name_ids.entry(s).or_insert_with(|| {
            names.push(s.to_owned());
            (names.len() - 1) as u32
        })
    };
    let mut nodes = vec![ViewNode {
        name: intern(name(ROOT), &mut names),
        value: value(ROOT),
        children: Vec::new(),
    }];
    // (tree node, its view node)
    let mut stack = vec![(ROOT, 0usize)];
    while let Some((node, at)) = stack.pop() {
        let mut other: Option<V> = None;
        let mut shown = Vec::new();
        for &c in children.of(node) {
            if included[c as usize] {
                shown.push(c);
            } else {
                other.get_or_insert_with(V::default).fold(&value(c));
            }
        }
        // Only shown nodes' children are ordered: widest first, then by name.
        shown.sort_by(|&a, &b| {
            value(b)
                .weight()
                .cmp(&value(a).weight())
                .then_with(|| name(a).cmp(name(b)))
        });
        let mut kids = Vec::with_capacity(shown.len() + 1);
        for c in shown {
            let idx = nodes.len();
            nodes.push(ViewNode {
                name: intern(name(c), &mut names),
                value: value(c),
                children: Vec::new(),
            });
            kids.push(idx as u32);
            stack.push((c, idx));
        }
        if let Some(o) = other {
            let idx = nodes.len() as u32;
            nodes.push(ViewNode {
                name: intern(OTHER, &mut names),
                value: o,
                children: Vec::new(),
            });
            // Keep the children ordered by width with `(other)` among them.
            let at = kids
                .iter()
                .position(|&k| nodes[k as usize].value.weight() < o.weight())
                .unwrap_or(kids.len());
            kids.insert(at, idx);
        }
        nodes[at].children = kids;
    }
    View {
        names,
        nodes,
        truncated,
    }
}

/// The view of a merged tree.
pub fn view(tree: &Tree, max_nodes: usize) -> View<Values> {
    build_view(
        tree.nodes.len(),
        |i| tree.nodes[i as usize].parent,
        |i| tree.names[tree.nodes[i as usize].name as usize].as_str(),
        |i| {
            let n = &tree.nodes[i as usize];
            Values {
                self_value: n.self_value,
                total: n.total,
            }
        },
        max_nodes,
    )
}

pub(crate) fn push_json_str(out: &mut String, s: &str) {
    match serde_json::to_string(s) {
        Ok(q) => out.push_str(&q),
        Err(_) => out.push_str("\"?\""),
    }
}

/// Writes `view` as nested `{"name": .., ["reason": ..,] <fields>, "children": [..]}` objects,
/// iteratively. `reason` is there for frames without a function name (see [`super::reason`]).
/// `fields` writes a node's value fields, each preceded by a comma.
pub(crate) fn write_tree_json<V>(
    out: &mut String,
    view: &View<V>,
    fields: impl Fn(&mut String, &V),
) {
    let reasons: Vec<Option<&str>> = view
        .names
        .iter()
        .map(|n| super::reason::of_name(n))
        .collect();
    let open = |out: &mut String, node: u32| {
        let n = &view.nodes[node as usize];
        out.push_str("{\"name\":");
        push_json_str(out, &view.names[n.name as usize]);
        if let Some(r) = reasons[n.name as usize] {
            out.push_str(",\"reason\":");
            push_json_str(out, r);
        }
        fields(out, &n.value);
        out.push_str(",\"children\":[");
    };
    // Each entry: a node and how many of its children have been written.
    let mut stack: Vec<(u32, usize)> = vec![(ROOT, 0)];
    open(out, ROOT);
    while let Some((node, next)) = stack.last_mut() {
        let kids = &view.nodes[*node as usize].children;
        if *next == kids.len() {
            out.push_str("]}");
            stack.pop();
            continue;
        }
        if *next > 0 {
            out.push(',');
        }
        let child = kids[*next];
        *next += 1;
        open(out, child);
        stack.push((child, 0));
    }
}

/// Wire format of `/api/v1/flamegraph` (`format=`): nested JSON objects (the default, what API
/// clients read) or [`render_columnar`]'s names table plus flat binary columns, which the web page
/// asks for: a 100,000-node graph is ~6.8 MB of nested JSON whose parsing alone cost the browser
/// tens of milliseconds, while columns are read in place with typed arrays.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    #[default]
    Json,
    Columnar,
}

impl Format {
    /// Parses the optional `format` parameter; anything unknown is a 400 naming the choices.
    pub fn parse(value: Option<&str>) -> Result<Format, crate::error::ApiError> {
        match value {
            None | Some("") | Some("json") => Ok(Format::Json),
            Some("columnar") => Ok(Format::Columnar),
            Some(other) => Err(crate::error::ApiError::bad_request(format!(
                "format must be json or columnar, not {other:?}"
            ))),
        }
    }
}

/// First four bytes of a [`render_columnar`] body (the trailing digit is the layout's version).
pub const COLUMNAR_MAGIC: &[u8; 4] = b"KFG1";

/// The fields every flame-graph answer starts with (`total` … `top`), without the braces.
fn write_header_fields(
    out: &mut String,
    tree: &Tree,
    truncated: usize,
    profile_type: &str,
    top: Option<&[super::top::TopFunction]>,
) {
    let unit = profile_type.split_once(':').map_or("", |(_, u)| u);
    let _ = write!(out, "\"total\":{},\"unit\":", tree.total());
    push_json_str(out, unit);
    out.push_str(",\"profile_type\":");
    push_json_str(out, profile_type);
    let _ = write!(out, ",\"profiles\":{}", tree.profiles);
    if truncated > 0 {
        let _ = write!(out, ",\"truncated_nodes\":{truncated}");
    }
    if let Some(functions) = top {
        out.push_str(",\"top\":");
        match serde_json::to_string(functions) {
            Ok(json) => out.push_str(&json),
            Err(_) => out.push_str("[]"),
        }
    }
}

/// Renders the `/api/v1/flamegraph` body in the columnar format (`format=columnar`), little-endian:
///
/// | bytes | content |
/// |---|---|
/// | 4 | [`COLUMNAR_MAGIC`] `KFG1` |
/// | 4 | u32 `H`, length of the header |
/// | H | UTF-8 JSON header: the JSON format's fields except `root`, plus `nodes` (count N), `names` (the names table) and `reasons` (per name: why a frame has no function name, or null) |
/// | 0–7 | zero padding to a multiple of 8 bytes |
/// | 8·N | f64 self per node |
/// | 8·N | f64 total per node |
/// | 4·N | u32 parent node (the root, node 0: 0xFFFFFFFF) |
/// | 4·N | u32 index into `names` |
///
/// Nodes are in depth-first preorder, children widest first (so a parent comes before its children
/// and siblings in drawing order): the reader builds the tree in one pass. Values are f64 because
/// that is what JavaScript holds; they are exact below 2^53 (104 days of CPU time in ns).
pub fn render_columnar(
    tree: &Tree,
    max_nodes: usize,
    profile_type: &str,
    top: Option<&[super::top::TopFunction]>,
) -> Vec<u8> {
    let view = view(tree, max_nodes);
    let mut header = String::with_capacity(64 + view.names.len() * 32);
    header.push('{');
    write_header_fields(&mut header, tree, view.truncated, profile_type, top);
    let _ = write!(header, ",\"nodes\":{},\"names\":[", view.nodes.len());
    for (i, name) in view.names.iter().enumerate() {
        if i > 0 {
            header.push(',');
        }
        push_json_str(&mut header, name);
    }
    header.push_str("],\"reasons\":[");
    for (i, name) in view.names.iter().enumerate() {
        if i > 0 {
            header.push(',');
        }
        match super::reason::of_name(name) {
            Some(r) => push_json_str(&mut header, r),
            None => header.push_str("null"),
        }
    }
    header.push_str("]}");

    // Preorder: (view node, its parent's position in the output).
    let n = view.nodes.len();
    let mut order: Vec<(u32, u32)> = Vec::with_capacity(n);
    let mut stack: Vec<(u32, u32)> = vec![(ROOT, u32::MAX)];
    while let Some((node, parent)) = stack.pop() {
        let at = order.len() as u32;
        order.push((node, parent));
        for &c in view.nodes[node as usize].children.iter().rev() {
            stack.push((c, at));
        }
    }
    let pad = (8 - (8 + header.len()) % 8) % 8;
    let mut out = Vec::with_capacity(8 + header.len() + pad + n * 24);
    out.extend_from_slice(COLUMNAR_MAGIC);
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.resize(out.len() + pad, 0);
    for &(node, _) in &order {
        out.extend_from_slice(&(view.nodes[node as usize].value.self_value as f64).to_le_bytes());
    }
    for &(node, _) in &order {
        out.extend_from_slice(&(view.nodes[node as usize].value.total as f64).to_le_bytes());
    }
    for &(_, parent) in &order {
        out.extend_from_slice(&parent.to_le_bytes());
    }
    for &(node, _) in &order {
        out.extend_from_slice(&view.nodes[node as usize].name.to_le_bytes());
    }
    out
}

/// Renders the `/api/v1/flamegraph` response body, with the top-functions table of the same tree
/// when `top` is given.
pub fn render(
    tree: &Tree,
    max_nodes: usize,
    profile_type: &str,
    top: Option<&[super::top::TopFunction]>,
) -> String {
    let view = view(tree, max_nodes);
    let mut out = String::with_capacity(64 + view.nodes.len() * 64);
    out.push('{');
    write_header_fields(&mut out, tree, view.truncated, profile_type, top);
    out.push_str(",\"root\":");
    write_tree_json(&mut out, &view, |out, v| {
        let _ = write!(out, ",\"self\":{},\"total\":{}", v.self_value, v.total);
    });
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

    /// The table answered with the graph comes from the whole tree: a function folded into
    /// `(other)` by the node budget still has its own row.
    #[test]
    fn top_table_from_the_same_tree_before_truncation() {
        let t = tree();
        let functions = crate::query::top::top(&t, 10);
        let v: Value =
            serde_json::from_str(&render(&t, 3, "cpu:nanoseconds", Some(&functions))).unwrap();
        assert!(v["truncated_nodes"].as_u64().unwrap() > 0, "{v}");
        let rows = v["top"].as_array().unwrap();
        let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["a", "b", "d", "main", "c"]);
        assert_eq!(rows[0]["self"], 50);
        assert_eq!(rows[3]["total"], 100);
        let none: Value = serde_json::from_str(&render(&t, 3, "cpu:nanoseconds", None)).unwrap();
        assert!(none.get("top").is_none());
    }

    #[test]
    fn full_tree() {
        let v: Value =
            serde_json::from_str(&render(&tree(), 100, "cpu:nanoseconds", None)).unwrap();
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
            let v: Value =
                serde_json::from_str(&render(&tree(), max, "cpu:nanoseconds", None)).unwrap();
            let shown = count_nodes(&v["root"]);
            assert!(shown <= max.max(2), "max {max}: {shown} nodes: {v}");
            assert_eq!(v["root"]["total"], 100);
            check_sums(&v["root"]);
            assert!(v["truncated_nodes"].as_u64().unwrap() > 0, "max {max}");
        }
        let v: Value = serde_json::from_str(&render(&tree(), 6, "cpu:nanoseconds", None)).unwrap();
        assert!(v.get("truncated_nodes").is_none());
        // With 5: root, main, a, b and one (other) standing for c and d.
        let v: Value = serde_json::from_str(&render(&tree(), 5, "cpu:nanoseconds", None)).unwrap();
        assert_eq!(v["truncated_nodes"], 2);
        let main = &v["root"]["children"][0];
        let last = &main["children"][2];
        assert_eq!(last["name"], OTHER);
        assert_eq!(last["total"], 15);
    }

    #[test]
    fn unnamed_frames_carry_their_reason() {
        let mut t = Tree::new();
        let main = t.intern("main");
        let raw = t.intern("libfoo.so+0x10 (no symbols: stripped, no debuginfo)");
        let cut = t.intern("[truncated: stack copy exhausted]");
        t.add([main, raw], 3);
        t.add([cut], 1);
        let v: Value = serde_json::from_str(&render(&t, 100, "cpu:nanoseconds", None)).unwrap();
        let main = &v["root"]["children"][0];
        assert_eq!(main["name"], "main");
        assert!(main.get("reason").is_none());
        assert_eq!(main["children"][0]["reason"], "stripped");
        assert_eq!(v["root"]["children"][1]["reason"], "truncated");
    }

    /// Reads a columnar body back into nested JSON-like values (what the page's decoder does).
    fn read_columnar(body: &[u8]) -> (Value, Vec<(f64, f64, u32, u32)>) {
        assert_eq!(&body[..4], COLUMNAR_MAGIC);
        let h = u32::from_le_bytes(body[4..8].try_into().unwrap()) as usize;
        let header: Value = serde_json::from_slice(&body[8..8 + h]).unwrap();
        let n = header["nodes"].as_u64().unwrap() as usize;
        let start = (8 + h).div_ceil(8) * 8;
        assert_eq!(body.len(), start + n * 24, "columns fill the rest exactly");
        let f = |i: usize| f64::from_le_bytes(body[i..i + 8].try_into().unwrap());
        let u = |i: usize| u32::from_le_bytes(body[i..i + 4].try_into().unwrap());
        let rows = (0..n)
            .map(|i| {
                (
                    f(start + 8 * i),
                    f(start + 8 * n + 8 * i),
                    u(start + 16 * n + 4 * i),
                    u(start + 20 * n + 4 * i),
                )
            })
            .collect();
        (header, rows)
    }

    /// The columnar answer holds the same tree, table and metadata as the JSON one: preorder,
    /// children widest first, parents before children, names and reasons from the table.
    #[test]
    fn columnar_matches_json() {
        let mut t = tree();
        let raw = t.intern("libfoo.so+0x10 (no symbols: stripped, no debuginfo)");
        t.add([raw], 1);
        let functions = crate::query::top::top(&t, 10);
        let json: Value =
            serde_json::from_str(&render(&t, 100, "cpu:nanoseconds", Some(&functions))).unwrap();
        let (header, rows) = read_columnar(&render_columnar(
            &t,
            100,
            "cpu:nanoseconds",
            Some(&functions),
        ));
        for k in ["total", "unit", "profile_type", "profiles", "top"] {
            assert_eq!(header[k], json[k], "{k}");
        }
        assert!(header.get("truncated_nodes").is_none());
        let names = header["names"].as_array().unwrap();
        let reasons = header["reasons"].as_array().unwrap();
        // Walk the JSON tree in preorder beside the rows.
        let mut expect = Vec::new();
        let mut stack = vec![(&json["root"], u32::MAX)];
        while let Some((v, parent)) = stack.pop() {
            let at = expect.len() as u32;
            expect.push((v, parent));
            for c in v["children"].as_array().unwrap().iter().rev() {
                stack.push((c, at));
            }
        }
        assert_eq!(rows.len(), expect.len());
        assert_eq!(rows.len(), 7);
        for ((self_v, total, parent, name), (v, want_parent)) in rows.iter().zip(&expect) {
            assert_eq!(names[*name as usize], v["name"]);
            assert_eq!(*self_v, v["self"].as_f64().unwrap());
            assert_eq!(*total, v["total"].as_f64().unwrap());
            assert_eq!(parent, want_parent);
            let reason = &reasons[*name as usize];
            assert_eq!(reason.as_str(), v.get("reason").and_then(Value::as_str));
        }
        assert_eq!(names[rows[1].3 as usize], "main");
        assert_eq!(reasons[rows[6].3 as usize], "stripped");
    }

    #[test]
    fn columnar_truncation_and_format_parameter() {
        let (header, rows) = read_columnar(&render_columnar(&tree(), 5, "cpu:nanoseconds", None));
        assert_eq!(header["truncated_nodes"], 2);
        assert!(header.get("top").is_none());
        assert_eq!(rows.len(), 5);
        let names = header["names"].as_array().unwrap();
        let last = rows.last().unwrap();
        assert_eq!(names[last.3 as usize], OTHER);
        assert_eq!(last.1, 15.0);
        assert_eq!(Format::parse(None).unwrap(), Format::Json);
        assert_eq!(Format::parse(Some("columnar")).unwrap(), Format::Columnar);
        assert!(Format::parse(Some("xml")).is_err());
    }

    #[test]
    fn deep_stacks_do_not_recurse() {
        let mut t = Tree::new();
        let f = t.intern("f");
        t.add(std::iter::repeat_n(f, 100_000), 1);
        let out = render(&t, usize::MAX, "cpu:nanoseconds", None);
        assert!(out.ends_with("]}]}}"));
    }
}
