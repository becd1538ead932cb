// The merged call tree as the page holds it, and what is computed from it: normalising the
// server's answer, the zoom chain, search totals, the top-functions table, sandwich trees, and
// rebuilding a tree from (transformed) stacks. Pure, unit-tested.
//
// A node: {name, reason?, self, total, children[]}; in a diff tree also ls/rs/lt/rt (baseline and
// current self/total), with self = ls + rs and total = lt + rt so a frame is as wide as both sides.

const num = (v) => Number(v) || 0;

/** `/api/v1/flamegraph` answer → {root, total, unit, profiles, top, truncated, diff: null}. */
export function normalize(fg, unit) {
  const root = fg.root ?? { name: "total", self: 0, total: num(fg.total), children: [] };
  const stack = [root];
  while (stack.length) {
    const n = stack.pop();
    n.self = num(n.self);
    n.total = num(n.total);
    n.children = Array.isArray(n.children) ? n.children : [];
    for (const c of n.children) stack.push(c);
  }
  return {
    root, total: num(fg.total) || root.total, unit: fg.unit || unit, profiles: fg.profiles ?? null,
    top: Array.isArray(fg.top) ? fg.top : null, truncated: num(fg.truncated_nodes), diff: null,
  };
}

/**
 * `/api/v1/flamegraph?format=columnar` answer (an ArrayBuffer) → the same shape as `normalize`.
 * The layout (storage-server/src/query/flamegraph.rs `render_columnar`, docs/API.md): "KFG1", u32
 * header length, a JSON header (the JSON answer's fields but `root`, plus `nodes`, `names`,
 * `reasons`), padding to 8 bytes, then columns f64 self, f64 total, u32 parent, u32 name index, in
 * depth-first preorder with children widest first. The columns are read in place (typed-array
 * views, little-endian like every platform a browser runs on); no text is parsed per node, and
 * names are shared strings from the table.
 */
export function decodeColumnar(buf, unit) {
  const bad = (why) => new Error(`malformed flame-graph answer: ${why}`);
  if (!(buf instanceof ArrayBuffer) || buf.byteLength < 8) throw bad("too short");
  const head = new Uint8Array(buf, 0, 8);
  if (String.fromCharCode(head[0], head[1], head[2], head[3]) !== "KFG1") throw bad("not the columnar format (KFG1)");
  const h = new DataView(buf).getUint32(4, true);
  if (8 + h > buf.byteLength) throw bad("header past the end");
  const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buf, 8, h)));
  const n = num(header.nodes);
  const names = Array.isArray(header.names) ? header.names : [];
  const reasons = Array.isArray(header.reasons) ? header.reasons : [];
  const start = Math.ceil((8 + h) / 8) * 8;
  if (start + n * 24 !== buf.byteLength) throw bad(`${n} nodes do not fill ${buf.byteLength} bytes`);
  const self = new Float64Array(buf, start, n);
  const total = new Float64Array(buf, start + 8 * n, n);
  const parent = new Uint32Array(buf, start + 16 * n, n);
  const name = new Uint32Array(buf, start + 20 * n, n);
  const nodes = new Array(n);
  for (let i = 0; i < n; i++) {
    const k = name[i];
    if (k >= names.length) throw bad(`node ${i} names entry ${k} of ${names.length}`);
    const node = { name: names[k], self: self[i], total: total[i], children: [] };
    if (reasons[k]) node.reason = reasons[k];
    nodes[i] = node;
    if (i > 0) {
      const p = parent[i];
      // Preorder: a parent always comes first, so the tree is built in this one pass.
      if (p >= i) throw bad(`node ${i} has parent ${p}`);
      nodes[p].children.push(node);
    }
  }
  const root = n ? nodes[0] : { name: "total", self: 0, total: num(header.total), children: [] };
  if (n) FLAT.set(root, flatColumns(nodes, total, parent));
  return {
    root, total: num(header.total) || root.total, unit: header.unit || unit, profiles: header.profiles ?? null,
    top: Array.isArray(header.top) ? header.top : null, truncated: num(header.truncated_nodes), diff: null,
  };
}

// ---------------------------------------------------------------- preorder columns

const FLAT = new WeakMap(); // root node → its flatOf columns

/**
 * The tree as preorder columns, for layout and search: node i's `total`, `depth` (0 at the root),
 * `end` (the index after its last descendant: its subtree is i..end-1), `parent` (the root's is
 * 0xffffffff) and `nodes[i]` (the node object),
 * children left to right in their order. Laying out a big graph walks these arrays in order and
 * jumps over narrow subtrees, instead of chasing 100,000 node objects scattered in memory (most
 * of a zoom's layout time). Built once per tree: the columnar decoder hands its own; a tree built
 * by a transform or a sandwich is flattened on first use. Trees are never changed after they are
 * built (transforms build new ones), so the columns stay valid.
 */
export function flatOf(root) {
  let f = FLAT.get(root);
  if (!f) {
    const nodes = [], parents = [];
    const stack = [root], ps = [0xffffffff];
    while (stack.length) {
      const n = stack.pop();
      parents.push(ps.pop());
      const me = nodes.length;
      nodes.push(n);
      for (let i = n.children.length - 1; i >= 0; i--) {
        stack.push(n.children[i]);
        ps.push(me);
      }
    }
    const total = new Float64Array(nodes.length);
    for (let i = 0; i < nodes.length; i++) total[i] = nodes[i].total;
    FLAT.set(root, (f = flatColumns(nodes, total, Uint32Array.from(parents))));
  }
  return f;
}

/** Depth and subtree ends from parent indices (preorder: a parent comes before its children). */
function flatColumns(nodes, total, parent) {
  const n = nodes.length;
  const depth = new Uint32Array(n);
  const end = new Uint32Array(n);
  for (let i = 1; i < n; i++) depth[i] = depth[parent[i]] + 1;
  for (let i = n - 1; i >= 0; i--) {
    if (end[i] < i + 1) end[i] = i + 1;
    if (i > 0 && end[parent[i]] < end[i]) end[parent[i]] = end[i];
  }
  return { nodes, total, depth, end, parent };
}

/** `/api/v1/diff` answer → the same shape, each node carrying both sides. */
export function normalizeDiff(d, unit) {
  const root = d.root ?? { name: "total", children: [] };
  const stack = [root];
  while (stack.length) {
    const n = stack.pop();
    n.ls = num(n.left_self); n.rs = num(n.right_self);
    n.lt = num(n.left_total); n.rt = num(n.right_total);
    n.self = n.ls + n.rs;
    n.total = n.lt + n.rt;
    n.children = Array.isArray(n.children) ? n.children : [];
    for (const c of n.children) stack.push(c);
  }
  return {
    root, total: root.total, unit: d.unit || unit, profiles: null, top: null,
    truncated: num(d.truncated_nodes), diff: { left: num(d.left?.total), right: num(d.right?.total) },
  };
}

/** [root, …, the node at `path`] (names from the root's child down), as far as the path exists. */
export function zoomChain(root, path) {
  const chain = [root];
  for (const name of path) {
    const next = chain[chain.length - 1].children.find((c) => c.name === name);
    if (!next) break;
    chain.push(next);
  }
  return chain;
}

/**
 * Calls `visit(frames, node)` for every node with self weight, `frames` being the names and
 * reasons from the root's child down to it (the root itself excluded). Iterative: deep stacks do
 * not overflow.
 */
export function forEachStack(root, isDiff, visit) {
  // The preorder columns: node i's callers are the last nodes seen at each smaller depth.
  const { nodes, depth } = flatOf(root);
  const path = [];
  if (isDiff ? root.ls || root.rs : root.self) visit([], root);
  for (let i = 1; i < nodes.length; i++) {
    const n = nodes[i], d = depth[i];
    path[d - 1] = n;
    if (isDiff ? n.ls || n.rs : n.self) visit(path.slice(0, d), n);
  }
}

function newNode(name, reason, isDiff) {
  const n = { name, self: 0, total: 0, children: [] };
  if (reason) n.reason = reason;
  if (isDiff) Object.assign(n, { ls: 0, rs: 0, lt: 0, rt: 0 });
  return n;
}

// A node's child by name: a scan of its children while they are few (most nodes of a big tree
// have one or two), a map once they are many.
const SCAN_MAX = 16;

/** Builds trees by adding weighted stacks; children end up sorted by total, descending. */
export class TreeBuilder {
  constructor(isDiff) {
    this.isDiff = isDiff;
    this.root = newNode("total", null, isDiff);
    this.kids = new Map(); // node with many children → Map(name → child)
  }
  /** `frames`: [{name, reason?}] from the top; `w`: a node's {self} or {ls, rs}. */
  add(frames, w) {
    const d = this.isDiff;
    let n = this.root;
    const bump = (x) => {
      if (d) { x.lt += w.ls; x.rt += w.rs; x.total += w.ls + w.rs; } else x.total += w.self;
    };
    bump(n);
    for (const f of frames) {
      const kids = n.children;
      let c, byName = null;
      if (kids.length <= SCAN_MAX) {
        for (let k = 0; k < kids.length; k++) {
          if (kids[k].name === f.name) {
            c = kids[k];
            break;
          }
        }
      } else {
        byName = this.kids.get(n);
        if (!byName) this.kids.set(n, (byName = new Map(kids.map((x) => [x.name, x]))));
        c = byName.get(f.name);
      }
      if (!c) {
        c = newNode(f.name, f.reason, d);
        kids.push(c);
        byName?.set(f.name, c);
      }
      bump(c);
      n = c;
    }
    if (d) { n.ls += w.ls; n.rs += w.rs; n.self += w.ls + w.rs; } else n.self += w.self;
  }
  finish() {
    this.kids.clear();
    const stack = [this.root];
    while (stack.length) {
      const n = stack.pop();
      n.children.sort((a, b) => b.total - a.total || (a.name < b.name ? -1 : 1));
      for (const c of n.children) stack.push(c);
    }
    return this.root;
  }
}

/** `matcher` asked once per distinct name (a big tree has 100,000 nodes but a few thousand names). */
function memoMatcher(matcher) {
  const memo = new Map();
  return (name) => {
    let m = memo.get(name);
    if (m === undefined) memo.set(name, (m = !!matcher(name)));
    return m;
  };
}

/** Sum of the totals of matching nodes, a match below another match counted once. */
export function matchedTotal(root, matcher) {
  const { nodes, total, end } = flatOf(root);
  const match = memoMatcher(matcher);
  let sum = 0;
  // Preorder: a match's subtree is skipped whole (its matches are inside it).
  for (let i = 1; i < nodes.length;) {
    if (match(nodes[i].name)) {
      sum += total[i];
      i = end[i];
    } else i++;
  }
  return sum;
}

/**
 * Marks `hit` on matching nodes and `sub` on nodes whose subtree holds a match (so layout can keep
 * narrow matches visible); clears both without a matcher. Returns the paths of the outermost
 * matches in depth-first order (for "next match").
 */
export function markMatches(root, matcher) {
  const { nodes, end, parent } = flatOf(root);
  // Without a search, only nodes marked by a previous one need clearing (the common case is
  // none: no walk over the whole tree).
  if (!matcher) {
    if (root.marked) {
      for (let i = 0; i < nodes.length;) {
        const n = nodes[i];
        if (!n.sub && i > 0) {
          i = end[i];
          continue;
        }
        n.hit = n.sub = false;
        i++;
      }
      root.marked = false;
    }
    return [];
  }
  Object.defineProperty(root, "marked", { value: true, writable: true, configurable: true, enumerable: false });
  const match = memoMatcher(matcher);
  const paths = [];
  root.hit = root.sub = false;
  let outerEnd = 0; // end of the outermost match being inside of
  for (let i = 1; i < nodes.length; i++) {
    const n = nodes[i];
    n.hit = n.sub = match(n.name);
    if (n.hit && i >= outerEnd) {
      outerEnd = end[i];
      const path = [];
      for (let k = i; k > 0; k = parent[k]) path.push(nodes[k].name);
      paths.push(path.reverse());
    }
  }
  // Children come after their parent: a reverse pass carries `sub` up.
  for (let i = nodes.length - 1; i > 0; i--) if (nodes[i].sub) nodes[parent[i]].sub = true;
  return paths;
}

/**
 * The top-functions table from a tree: self and total per name; a function's total counts each
 * stack once even when it recurses (the server's rule, storage-server/src/query/top.rs).
 */
export function topFunctions(root) {
  const { nodes, total, end } = flatOf(root);
  const ids = new Map(); // name → index in `entries`
  const entries = [];
  const onPath = []; // per name: how many of the current node's callers have it (recursion)
  const open = [], openIds = []; // the current node's callers, from the root's child down
  // Preorder: before node i, the callers whose subtree ended are left.
  for (let i = 1; i < nodes.length; i++) {
    while (open.length && end[open[open.length - 1]] <= i) {
      open.pop();
      onPath[openIds.pop()]--;
    }
    const n = nodes[i];
    let id = ids.get(n.name);
    if (id === undefined) {
      id = entries.length;
      ids.set(n.name, id);
      entries.push({ name: n.name, self: 0, total: 0 });
      onPath.push(0);
    }
    const e = entries[id];
    if (n.reason && !e.reason) e.reason = n.reason;
    e.self += n.self;
    if (!onPath[id]) e.total += total[i];
    onPath[id]++;
    open.push(i);
    openIds.push(id);
  }
  return entries.sort((a, b) => b.self - a.self || b.total - a.total || (a.name < b.name ? -1 : 1));
}

/**
 * Sandwich of function `fn`: `callers` (rooted at fn, its callers below it, outermost call of each
 * stack) and `callees` (rooted at fn, what it calls). Both roots are named `fn`.
 */
export function sandwich(root, fn, isDiff) {
  const callers = new TreeBuilder(isDiff);
  const callees = new TreeBuilder(isDiff);
  forEachStack(root, isDiff, (frames, n) => {
    const i = frames.findIndex((f) => f.name === fn);
    if (i < 0) return;
    const w = isDiff ? { ls: n.ls, rs: n.rs } : { self: n.self };
    callers.add(frames.slice(0, i).reverse(), w);
    callees.add(frames.slice(i + 1), w);
  });
  const a = callers.finish();
  const b = callees.finish();
  a.name = b.name = fn;
  return { callers: a, callees: b };
}
