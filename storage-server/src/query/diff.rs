//! Diff of two selections: both merged trees combined into one whose nodes carry the left and the
//! right self and total, cut to `max_nodes` by the wider side; `/api/v1/diff` writes it as JSON, the
//! Pyroscope paths encode it as a 7-integer-per-node flame graph ([`super::flamebearer`]).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Instant;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::flamegraph::{
    self, NodeValue, Values, View, build_view, push_json_str, write_tree_json,
};
use super::merge::{ROOT, Tree};
use super::{Params, build_tree};
use crate::AppState;
use crate::error::ApiError;
use crate::tenant::Tenant;

/// Left and right values of one node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiffValues {
    pub left: Values,
    pub right: Values,
}

impl NodeValue for DiffValues {
    /// The wider side decides: a function that vanished on one side still shows.
    fn weight(&self) -> i64 {
        self.left.total.max(self.right.total)
    }
    fn fold(&mut self, hidden: &Self) {
        self.left.fold(&hidden.left);
        self.right.fold(&hidden.right);
    }
}

struct DiffNode {
    name: u32,
    parent: u32,
    value: DiffValues,
}

/// Two trees laid over each other by path of names.
pub struct DiffTree {
    names: Vec<String>,
    nodes: Vec<DiffNode>,
    pub left_profiles: usize,
    pub right_profiles: usize,
}

impl DiffTree {
    pub fn new(left: &Tree, right: &Tree) -> DiffTree {
        let mut names = vec!["total".to_owned()];
        let mut name_ids: HashMap<String, u32> = HashMap::from([("total".to_owned(), 0)]);
        let mut nodes = vec![DiffNode {
            name: 0,
            parent: ROOT,
            value: DiffValues::default(),
        }];
        let mut children: HashMap<(u32, u32), u32> = HashMap::new();
        for (side, tree) in [left, right].into_iter().enumerate() {
            // Tree node index -> diff node index; parents come before children in both arenas.
            let mut map = vec![ROOT; tree.nodes.len()];
            for (i, n) in tree.nodes.iter().enumerate() {
                let at = if i == ROOT as usize {
                    ROOT
                } else {
                    let name_str = &tree.names[n.name as usize];
                    let name = match name_ids.get(name_str) {
                        Some(&id) => id,
                        None => {
                            let id = names.len() as u32;
                            names.push(name_str.clone());
                            name_ids.insert(name_str.clone(), id);
                            id
                        }
                    };
                    let parent = map[n.parent as usize];
                    *children.entry((parent, name)).or_insert_with(|| {
                        nodes.push(DiffNode {
                            name,
                            parent,
                            value: DiffValues::default(),
                        });
                        (nodes.len() - 1) as u32
                    })
                };
                map[i] = at;
                let v = &mut nodes[at as usize].value;
                let v = if side == 0 { &mut v.left } else { &mut v.right };
                v.total = v.total.saturating_add(n.total);
                v.self_value = v.self_value.saturating_add(n.self_value);
            }
        }
        DiffTree {
            names,
            nodes,
            left_profiles: left.profiles,
            right_profiles: right.profiles,
        }
    }

    pub fn root(&self) -> DiffValues {
        self.nodes[ROOT as usize].value
    }

    pub fn view(&self, max_nodes: usize) -> View<DiffValues> {
        build_view(
            self.nodes.len(),
            |i| self.nodes[i as usize].parent,
            |i| self.names[self.nodes[i as usize].name as usize].as_str(),
            |i| self.nodes[i as usize].value,
            max_nodes,
        )
    }
}

/// Renders the `/api/v1/diff` response body.
pub fn render(diff: &DiffTree, max_nodes: usize, profile_type: &str) -> String {
    let view = diff.view(max_nodes);
    let root = diff.root();
    let unit = profile_type.split_once(':').map_or("", |(_, u)| u);
    let mut out = String::with_capacity(128 + view.nodes.len() * 96);
    out.push_str("{\"unit\":");
    push_json_str(&mut out, unit);
    out.push_str(",\"profile_type\":");
    push_json_str(&mut out, profile_type);
    let _ = write!(
        out,
        ",\"left\":{{\"total\":{},\"profiles\":{}}},\"right\":{{\"total\":{},\"profiles\":{}}}",
        root.left.total, diff.left_profiles, root.right.total, diff.right_profiles
    );
    if view.truncated > 0 {
        let _ = write!(out, ",\"truncated_nodes\":{}", view.truncated);
    }
    out.push_str(",\"root\":");
    write_tree_json(&mut out, &view, |out, v| {
        let _ = write!(
            out,
            ",\"left_self\":{},\"left_total\":{},\"right_self\":{},\"right_total\":{}",
            v.left.self_value, v.left.total, v.right.self_value, v.right.total
        );
    });
    out.push('}');
    out
}

/// `/api/v1/diff` parameters: each side's `*_query`, `*_from`, `*_until`, falling back to the
/// shared `query`, `from`, `until`; one `profile_type` and `max_nodes` for both.
#[derive(Debug, Default, Deserialize)]
pub struct DiffParams {
    pub query: Option<String>,
    pub from: Option<String>,
    pub until: Option<String>,
    pub left_query: Option<String>,
    pub left_from: Option<String>,
    pub left_until: Option<String>,
    pub right_query: Option<String>,
    pub right_from: Option<String>,
    pub right_until: Option<String>,
    pub profile_type: Option<String>,
    pub max_nodes: Option<String>,
}

impl DiffParams {
    fn side(&self, left: bool) -> Params {
        let pick = |side: &Option<String>, shared: &Option<String>| {
            side.clone()
                .filter(|s| !s.is_empty())
                .or_else(|| shared.clone())
        };
        let (q, f, u) = if left {
            (&self.left_query, &self.left_from, &self.left_until)
        } else {
            (&self.right_query, &self.right_from, &self.right_until)
        };
        Params {
            query: pick(q, &self.query),
            from: pick(f, &self.from),
            until: pick(u, &self.until),
            profile_type: self.profile_type.clone(),
            ..Params::default()
        }
    }
}

/// `GET /api/v1/diff`.
pub async fn diff_handler(
    State(state): State<AppState>,
    tenant: Tenant,
    q: Result<Query<DiffParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let p = q
        .map(|Query(p)| p)
        .map_err(|e| ApiError::bad_request(format!("bad query string: {}", e.body_text())))?;
    let left = p
        .side(true)
        .selection()
        .map_err(|e| ApiError::bad_request(format!("left side: {e}")))?
        .for_tenant(&tenant);
    let right = p
        .side(false)
        .selection()
        .map_err(|e| ApiError::bad_request(format!("right side: {e}")))?
        .for_tenant(&tenant);
    let max_nodes = flamegraph::max_nodes_param("max_nodes", p.max_nodes.as_deref())?;
    let st = state.clone();
    let body = state
        .queries
        .run(move |ctx| {
            // One query, one budget: both sides count against it.
            let l = build_tree(&st, &left, ctx)?;
            let r = build_tree(&st, &right, ctx)?;
            Ok(render(
                &DiffTree::new(&l, &r),
                max_nodes,
                &left.profile_type,
            ))
        })
        .await?;
    state.metrics.observe_query("diff", started.elapsed());
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn trees() -> (Tree, Tree) {
        let mut l = Tree::new();
        let (main, a, b) = (l.intern("main"), l.intern("a"), l.intern("b"));
        l.add([main, a], 10);
        l.add([main, b], 5);
        l.profiles = 1;
        let mut r = Tree::new();
        // Different interning order on purpose: names are matched by string.
        let (c, main, a) = (r.intern("c"), r.intern("main"), r.intern("a"));
        r.add([main, a], 3);
        r.add([main, c], 20);
        r.profiles = 2;
        (l, r)
    }

    #[test]
    fn totals_per_side() {
        let (l, r) = trees();
        let d = DiffTree::new(&l, &r);
        assert_eq!(d.root().left.total, 15);
        assert_eq!(d.root().right.total, 23);
        let v: Value = serde_json::from_str(&render(&d, 100, "cpu:nanoseconds")).unwrap();
        assert_eq!(v["left"]["total"], 15);
        assert_eq!(v["right"]["profiles"], 2);
        let main = &v["root"]["children"][0];
        assert_eq!(main["name"], "main");
        assert_eq!(
            (main["left_total"].as_i64(), main["right_total"].as_i64()),
            (Some(15), Some(23))
        );
        // Ordered by the wider side: c (0 | 20), a (10 | 3), b (5 | 0).
        let kids: Vec<(&str, i64, i64)> = main["children"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["name"].as_str().unwrap(),
                    c["left_self"].as_i64().unwrap(),
                    c["right_self"].as_i64().unwrap(),
                )
            })
            .collect();
        assert_eq!(kids, [("c", 0, 20), ("a", 10, 3), ("b", 5, 0)]);
    }

    #[test]
    fn truncation_folds_both_sides() {
        let (l, r) = trees();
        let d = DiffTree::new(&l, &r);
        let v: Value = serde_json::from_str(&render(&d, 4, "cpu:nanoseconds")).unwrap();
        assert!(v["truncated_nodes"].as_u64().unwrap() > 0);
        let main = &v["root"]["children"][0];
        let sum = |side: &str| -> i64 {
            main["children"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c[side].as_i64().unwrap())
                .sum()
        };
        assert_eq!(sum("left_total"), 15);
        assert_eq!(sum("right_total"), 23);
    }
}
