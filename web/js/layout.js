// Flame-graph layout: which frames are visible at a width and zoom, and where. Pure, unit-tested;
// the drawing (draw.js) and hit-testing use its output.
//
// When zoomed, the ancestors of the zoomed frame are one collapsed bar on top, so the zoomed frame
// and its callees are always in view however deep the zoom. Frames narrower than `minW` CSS px
// (default 1: a sub-pixel frame is no more than a blur on its row, and half of a big graph) are
// skipped with their subtree, except search matches, which keep at least `matchMinW` px.

import { zoomChain } from "./tree.js";

export const ROW_H = 18;

/**
 * @returns {{frames: Array<{node, x, y, w, depth, collapsed, parent, forced}>, rows: number,
 *   chain: object[], rowIndex: number[][]}}
 *   `parent` is the index of the caller's frame (-1 for the top frame); `chain` is
 *   [root, …, zoomed node].
 */
export function layout(root, zoomPath, width, opts = {}) {
  const { orient = "icicle", minW = 1, matchMinW = 2, maxRows = 1600, rowH = ROW_H } = opts;
  const frames = [];
  if (!root || root.total <= 0 || width <= 0) return { frames, rows: 0, chain: root ? [root] : [], rowIndex: [], rowH, orient, thin: [] };
  const chain = zoomChain(root, zoomPath);
  const zoomed = chain[chain.length - 1];
  let base = 0;
  if (chain.length > 1) {
    // One bar for all ancestors.
    frames.push({ node: chain[chain.length - 2], x: 0, y: 0, w: width, depth: 0, collapsed: true, parent: -1, forced: false });
    base = 1;
  }
  const scale = width / (zoomed.total || 1);
  let rows = base;
  // Frames of minW/2 to minW px are not laid out one by one (tens of thousands of slivers cost
  // most of a big graph's paint) but kept as coverage: per depth, the pixel columns they touch,
  // drawn as runs (`thin`: x, depth, w triples). Narrower ones are skipped with their subtree.
  const thinW = minW / 2;
  const cover = new Map(); // depth → Uint8Array over pixel columns
  // Iterative DFS (very deep stacks must not overflow the JS stack). The stack is four parallel
  // arrays of numbers and nodes rather than one small array per entry: no garbage per visited
  // node, so a 100,000-node layout does not trigger a garbage collection mid-frame.
  const sn = [zoomed], sx = [0], sd = [base], sp = [chain.length > 1 ? 0 : -1];
  let xs = new Float64Array(64); // children's x, reused
  while (sn.length) {
    const n = sn.pop(), x = sx.pop(), d = sd.pop(), parent = sp.pop();
    if (d >= maxRows) continue;
    let w = n.total * scale;
    let forced = false;
    let me = parent;
    if (w >= minW || n.hit) {
      if (w < matchMinW && n.hit) {
        w = matchMinW;
        forced = true;
      }
      me = frames.length;
      frames.push({ node: n, x, y: 0, w, depth: d, collapsed: false, parent, forced });
      if (d + 1 > rows) rows = d + 1;
    } else if (w >= thinW) {
      let c = cover.get(d);
      if (!c) cover.set(d, (c = new Uint8Array(Math.ceil(width) + 1)));
      c.fill(1, Math.floor(x), Math.floor(x + w) + 1);
    } else if (!n.sub) continue;
    // Children left to right, pushed in reverse so the leftmost is laid out first.
    const kids = n.children;
    if (!kids.length) continue;
    if (xs.length < kids.length) xs = new Float64Array(kids.length * 2);
    let cx = x;
    for (let i = 0; i < kids.length; i++) {
      xs[i] = cx;
      cx += kids[i].total * scale;
    }
    for (let i = kids.length - 1; i >= 0; i--) {
      const c = kids[i];
      if (c.total * scale >= thinW || c.sub) {
        sn.push(c);
        sx.push(xs[i]);
        sd.push(d + 1);
        sp.push(me);
      }
    }
  }
  const thin = [];
  for (const [d, c] of cover) {
    if (d + 1 > rows) rows = d + 1;
    for (let p = 0; p < c.length; p++) {
      if (!c[p]) continue;
      const start = p;
      while (p < c.length && c[p]) p++;
      thin.push(start, d, p - start);
    }
  }
  const rowIndex = Array.from({ length: rows }, () => []);
  for (let i = 0; i < frames.length; i++) {
    const f = frames[i];
    f.y = (orient === "flame" ? rows - 1 - f.depth : f.depth) * rowH;
    rowIndex[f.depth].push(i);
  }
  return { frames, rows, chain, rowIndex, rowH, orient, thin };
}

/** Index of the frame at canvas point (x, y), or -1. */
export function frameAt(l, x, y) {
  if (!l.rows) return -1;
  const r = Math.floor(y / l.rowH);
  const depth = l.orient === "flame" ? l.rows - 1 - r : r;
  const row = l.rowIndex[depth];
  if (!row) return -1;
  for (let k = row.length - 1; k >= 0; k--) {
    const f = l.frames[row[k]];
    if (x >= f.x && x < f.x + f.w) return row[k];
  }
  return -1;
}

/** The zoom path (names from the root's child) that zooms into frame `i`. */
export function framePath(l, i) {
  const f = l.frames[i];
  const zoomNames = l.chain.slice(1).map((n) => n.name);
  if (f.collapsed) return zoomNames.slice(0, -1);
  const own = [];
  for (let k = i; k >= 0 && !l.frames[k].collapsed; k = l.frames[k].parent) own.push(l.frames[k].node.name);
  own.reverse();
  // own[0] is the zoomed node (or the root when not zoomed).
  return l.chain.length > 1 ? [...zoomNames.slice(0, -1), ...own] : own.slice(1);
}
