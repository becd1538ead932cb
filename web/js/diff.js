// Comparing two selections: share changes, their colours (red/green or a colour-blind-safe
// blue/orange palette) and the biggest movers. Pure, unit-tested.

/** Change of a node's share of its side's total, in percentage points (> 0: grew). */
export function shareChange(n, totals) {
  const l = totals.left > 0 ? n.lt / totals.left : 0;
  const r = totals.right > 0 ? n.rt / totals.right : 0;
  return 100 * (r - l);
}

export const PALETTES = {
  // Grew → red, shrank → green (the flame-graph convention).
  rg: { grew: 0, shrank: 130, sat: [40, 45], light: [82, 30] },
  // Grew → orange, shrank → blue: distinguishable with red-green colour blindness (Okabe–Ito hues).
  cb: { grew: 30, shrank: 210, sat: [45, 50], light: [82, 32] },
};

/** Fill for a share change in points: grey near 0, saturating at ±`sat` points. */
export function diffColor(points, palette = "rg", sat = 20) {
  const p = PALETTES[palette] ?? PALETTES.rg;
  const m = Math.min(1, Math.abs(points) / sat);
  if (m < 0.02) return "hsl(220, 6%, 78%)";
  const hue = points > 0 ? p.grew : p.shrank;
  return `hsl(${hue}, ${p.sat[0] + m * p.sat[1]}%, ${p.light[0] - m * p.light[1]}%)`;
}

/**
 * Functions whose share of self time changed most, largest |change| first:
 * [{name, leftSelf, rightSelf, change}] with `change` in points.
 */
export function movers(root, totals, limit = 50) {
  const acc = new Map();
  const stack = [...root.children];
  while (stack.length) {
    const n = stack.pop();
    let e = acc.get(n.name);
    if (!e) acc.set(n.name, (e = { name: n.name, leftSelf: 0, rightSelf: 0, change: 0 }));
    e.leftSelf += n.ls;
    e.rightSelf += n.rs;
    for (const c of n.children) stack.push(c);
  }
  const out = [];
  for (const e of acc.values()) {
    const l = totals.left > 0 ? e.leftSelf / totals.left : 0;
    const r = totals.right > 0 ? e.rightSelf / totals.right : 0;
    e.change = 100 * (r - l);
    if (e.leftSelf || e.rightSelf) out.push(e);
  }
  out.sort((a, b) => Math.abs(b.change) - Math.abs(a.change) || (a.name < b.name ? -1 : 1));
  return out.slice(0, limit);
}
