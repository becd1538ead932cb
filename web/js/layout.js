// Flame-graph layout: which frames are visible at a width and zoom, and where. Pure, unit-tested;
// the drawing (draw.js) and hit-testing use its output.
//
// When zoomed, the ancestors of the zoomed frame are one collapsed bar on top, so the zoomed frame
// and its callees are always in view however deep the zoom. Frames narrower than `minW` CSS px
// (default 1: a sub-pixel frame is no more than a blur on its row, and half of a big graph) are
// skipped with their subtree, except search matches, which keep at least `matchMinW` px.

import { zoomChain, flatOf } from "./tree.js";

export const ROW_H = 18;

/**
 * `opts.minRows`: lay out at least that many rows (the flame orientation counts them from the
 * bottom).
 * @returns {{frames: Array<{node, x, y, w, depth, collapsed, parent, forced}>, rows: number,
 *   chain: object[], rowIndex: number[][], thin: number[], width: number}}
 *   `parent` is the index of the caller's frame (-1 for the top frame); `chain` is
 *   [root, …, zoomed node].
 */
export function layout(root, zoomPath, width, opts = {}) {
  const { orient = "icicle", minW = 1, matchMinW = 2, maxRows = 1600, rowH = ROW_H, minRows = 0 } = opts;
  const frames = [];
  if (!root || root.total <= 0 || width <= 0) return { frames, rows: 0, chain: root ? [root] : [], rowIndex: [], rowH, orient, thin: [], width };
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
  // The zoomed node's index in the preorder columns (tree.js flatOf): the chain's nodes, each
  // found among its parent's children (i+1, then each child's subtree end, up to the parent's).
  const { total, depth, end, nodes } = flatOf(root);
  let z = 0;
  for (let k = 1; k < chain.length; k++) {
    let c = z + 1;
    while (c < end[z] && nodes[c] !== chain[k]) c = end[c];
    z = c;
  }
  // Search marks (tree.js markMatches) are read from the node objects only while a search is on.
  const marked = !!root.marked;
  // Frames of minW/2 to minW px are not laid out one by one (tens of thousands of slivers cost
  // most of a big graph's paint) but kept as coverage: per depth, the pixel columns they touch,
  // drawn as runs (`thin`: x, depth, w triples, by increasing depth, then x). Narrower ones are
  // skipped with their subtree.
  const thinW = minW / 2;
  const cols = Math.ceil(width) + 1;
  const cover = []; // depth → Uint8Array over pixel columns
  // One pass over the subtree in preorder. Per depth: `cur` is where the next node at that depth
  // starts (a node's first child starts at its own x, each sibling after the previous one), and
  // `pf` the frame index of the nearest laid-out ancestor (a node's `parent`). A skipped node's
  // subtree is jumped over with `end`.
  const cur = new Float64Array(maxRows + 2);
  const pf = new Int32Array(maxRows + 2);
  pf[base] = base ? 0 : -1;
  const d0 = depth[z] - base;
  for (let i = z, stop = end[z]; i < stop;) {
    const d = depth[i] - d0;
    if (d >= maxRows) {
      i = end[i];
      continue;
    }
    const x = cur[d];
    let w = total[i] * scale;
    cur[d] = x + w;
    cur[d + 1] = x;
    const n = marked ? nodes[i] : null;
    if (w >= minW || (n && n.hit)) {
      let forced = false;
      if (w < matchMinW && n && n.hit) {
        w = matchMinW;
        forced = true;
      }
      pf[d + 1] = frames.length;
      frames.push({ node: nodes[i], x, y: 0, w, depth: d, collapsed: false, parent: pf[d], forced });
      if (d + 1 > rows) rows = d + 1;
    } else if (w >= thinW) {
      const c = cover[d] ?? (cover[d] = new Uint8Array(cols));
      for (let p = Math.floor(x), e = Math.min(cols - 1, Math.floor(x + w)); p <= e; p++) c[p] = 1;
      pf[d + 1] = pf[d];
    } else if (n && n.sub) {
      pf[d + 1] = pf[d];
    } else {
      i = end[i];
      continue;
    }
    i++;
  }
  const thin = [];
  for (let d = 0; d < cover.length; d++) {
    const c = cover[d];
    if (!c) continue;
    if (d + 1 > rows) rows = d + 1;
    for (let p = 0; p < c.length; p++) {
      if (!c[p]) continue;
      const start = p;
      while (p < c.length && c[p]) p++;
      thin.push(start, d, p - start);
    }
  }
  // At least `minRows` rows (empty ones at the far end from the zoomed frame): the page keeps the
  // graph's height while zooming, so nothing below it moves (a relayout and repaint of the page
  // per click).
  rows = Math.max(rows, Math.min(minRows, maxRows));
  const rowIndex = Array.from({ length: rows }, () => []);
  for (let i = 0; i < frames.length; i++) {
    const f = frames[i];
    f.y = (orient === "flame" ? rows - 1 - f.depth : f.depth) * rowH;
    rowIndex[f.depth].push(i);
  }
  return { frames, rows, chain, rowIndex, rowH, orient, thin, width };
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
