// Unit tests of the pure UI modules: tree, transforms, layout, diff. Run: node --test web/tests/unit
import { test } from "node:test";
import assert from "node:assert/strict";
import { normalize, normalizeDiff, zoomChain, markMatches, matchedTotal, topFunctions, sandwich, TreeBuilder, forEachStack } from "../../js/tree.js";
import { applyTransforms, parseTransform, formatTransform, describe } from "../../js/transforms.js";
import { layout, frameAt, framePath } from "../../js/layout.js";
import { shareChange, diffColor, movers } from "../../js/diff.js";
import { rasterize } from "../../js/draw.js";

/** A tree from folded lines "a;b;c 10". */
function fromFolded(text) {
  const b = new TreeBuilder(false);
  for (const line of text.trim().split("\n")) {
    const i = line.lastIndexOf(" ");
    b.add(line.slice(0, i).split(";").map((name) => ({ name })), { self: Number(line.slice(i + 1)) });
  }
  return b.finish();
}

/** The tree back as sorted folded lines. */
function folded(root) {
  const out = [];
  forEachStack(root, false, (frames, n) => out.push(`${frames.map((f) => f.name).join(";")} ${n.self}`));
  return out.sort();
}

const T = () => fromFolded(`
main;work;fib;fib;fib 30
main;work;fib 10
main;work;runtime.mallocgc 5
main;idle 20
runtime.goexit;runtime.gcBgMarkWorker 15
`);

test("normalize fills defaults and keeps the server's top table", () => {
  const d = normalize({ total: 5, unit: "nanoseconds", profiles: 2, top: [{ name: "a", self: 5, total: 5 }],
    root: { name: "total", self: "0", total: "5", children: [{ name: "a", self: 5, total: 5 }] } }, "x");
  assert.equal(d.root.children[0].children.length, 0);
  assert.equal(d.root.total, 5);
  assert.equal(d.top.length, 1);
  assert.equal(d.profiles, 2);
  const e = normalize({}, "nanoseconds");
  assert.equal(e.root.total, 0);
  assert.equal(e.unit, "nanoseconds");
});

test("normalizeDiff: a frame is as wide as both sides", () => {
  const d = normalizeDiff({ left: { total: 10 }, right: { total: 30 }, root: { name: "total", left_total: 10, right_total: 30, left_self: 0, right_self: 0,
    children: [{ name: "a", left_total: 10, right_total: 30, left_self: 10, right_self: 30 }] } });
  assert.equal(d.root.total, 40);
  assert.equal(d.root.children[0].self, 40);
  assert.deepEqual(d.diff, { left: 10, right: 30 });
});

test("tree builder sums totals and sorts children by total", () => {
  const t = T();
  assert.equal(t.total, 80);
  assert.deepEqual(t.children.map((c) => c.name), ["main", "runtime.goexit"]);
  const main = t.children[0];
  assert.deepEqual(main.children.map((c) => [c.name, c.total]), [["work", 45], ["idle", 20]]);
});

test("zoom chain follows names and stops where the path ends", () => {
  const t = T();
  assert.deepEqual(zoomChain(t, ["main", "work", "fib"]).map((n) => n.name), ["total", "main", "work", "fib"]);
  assert.deepEqual(zoomChain(t, ["main", "nope", "fib"]).map((n) => n.name), ["total", "main"]);
});

test("search: nested matches counted once; marks and outermost paths", () => {
  const t = T();
  const m = (n) => /fib/.test(n);
  assert.equal(matchedTotal(t, m), 40);
  const paths = markMatches(t, m);
  assert.deepEqual(paths, [["main", "work", "fib"]]);
  const main = t.children[0];
  assert.equal(main.sub, true);
  assert.equal(main.hit, false);
  assert.equal(t.children[1].sub, false);
  markMatches(t, null);
  assert.equal(main.sub, false);
});

test("top functions: self summed, recursion counted once in total", () => {
  const rows = topFunctions(T());
  const fib = rows.find((r) => r.name === "fib");
  assert.deepEqual([fib.self, fib.total], [40, 40]);
  assert.equal(rows[0].name, "fib");
  const main = rows.find((r) => r.name === "main");
  assert.deepEqual([main.self, main.total], [0, 65]);
});

test("sandwich: callers inverted under the function, callees below it", () => {
  const { callers, callees } = sandwich(T(), "work", false);
  assert.equal(callers.name, "work");
  assert.equal(callers.total, 45);
  assert.deepEqual(callers.children.map((c) => c.name), ["main"]);
  assert.deepEqual(callees.children.map((c) => [c.name, c.total]), [["fib", 40], ["runtime.mallocgc", 5]]);
});

test("transforms parse, format and describe", () => {
  assert.deepEqual(parseTransform("focus:main.fib"), { kind: "focus", arg: "main.fib" });
  assert.deepEqual(parseTransform("hide:a:b"), { kind: "hide", arg: "a:b" });
  assert.equal(parseTransform("nope:x"), null);
  assert.equal(parseTransform("hide:("), null, "a bad regex is refused");
  assert.equal(parseTransform("focus:"), null);
  assert.deepEqual(parseTransform("invert:"), { kind: "invert", arg: "" });
  assert.equal(formatTransform({ kind: "rec", arg: "" }), "rec:");
  assert.equal(describe({ kind: "hide", arg: "^runtime" }), "Hide /^runtime/");
});

test("focus keeps stacks through the function, from its outermost call", () => {
  const t = applyTransforms(T(), [{ kind: "focus", arg: "fib" }], false);
  assert.equal(t.total, 40);
  assert.deepEqual(folded(t), ["fib 10", "fib;fib;fib 30"]);
});

test("hide removes matching frames and keeps their time", () => {
  const t = applyTransforms(T(), [{ kind: "hide", arg: "^runtime\\." }], false);
  assert.equal(t.total, 80);
  assert.ok(folded(t).includes("main;work 5"));
  assert.ok(folded(t).includes(" 15"), "a stack of only hidden frames goes to the root");
});

test("merge moves a function's time into its callers", () => {
  const t = applyTransforms(T(), [{ kind: "merge", arg: "work" }], false);
  assert.deepEqual(t.children[0].children.map((c) => c.name).sort(), ["fib", "idle", "runtime.mallocgc"]);
  assert.equal(t.total, 80);
});

test("collapse recursion: one function or all", () => {
  const t = applyTransforms(T(), [{ kind: "rec", arg: "fib" }], false);
  assert.deepEqual(folded(t).filter((l) => l.includes("fib")), ["main;work;fib 40"]);
  const all = applyTransforms(T(), [{ kind: "rec", arg: "" }], false);
  assert.equal(all.total, 80);
  assert.deepEqual(folded(all).filter((l) => l.includes("fib")), ["main;work;fib 40"]);
});

test("collapse library joins consecutive frames of a package", () => {
  const t = applyTransforms(T(), [{ kind: "lib", arg: "runtime" }], false);
  assert.ok(folded(t).includes("runtime 15"), folded(t).join("|"));
  assert.ok(folded(t).includes("main;work;runtime 5"));
});

test("invert puts the functions using CPU on top", () => {
  const t = applyTransforms(T(), [{ kind: "invert", arg: "" }], false);
  assert.equal(t.total, 80);
  assert.equal(t.children[0].name, "fib");
  assert.equal(t.children[0].total, 40);
  assert.ok(folded(t).includes("fib;fib;fib;work;main 30"));
});

test("transforms compose in order; none returns the same tree", () => {
  const base = T();
  assert.equal(applyTransforms(base, [], false), base);
  const t = applyTransforms(base, [{ kind: "rec", arg: "" }, { kind: "invert", arg: "" }], false);
  assert.deepEqual(t.children.map((c) => [c.name, c.total]).slice(0, 2), [["fib", 40], ["idle", 20]]);
});

test("transforms keep both sides of a diff tree", () => {
  const d = normalizeDiff({ left: { total: 10 }, right: { total: 20 }, root: { name: "total", left_total: 10, right_total: 20,
    children: [{ name: "a", left_total: 10, right_total: 20, children: [{ name: "b", left_total: 10, right_total: 20, left_self: 10, right_self: 20 }] }] } });
  const t = applyTransforms(d.root, [{ kind: "invert", arg: "" }], true);
  assert.equal(t.children[0].name, "b");
  assert.deepEqual([t.children[0].lt, t.children[0].rt], [10, 20]);
});

test("layout: root spans the width, children below, narrow frames skipped", () => {
  const t = T();
  const l = layout(t, [], 800);
  assert.equal(l.frames[0].node, t);
  assert.equal(l.frames[0].w, 800);
  const work = l.frames.find((f) => f.node.name === "work");
  assert.equal(work.depth, 2);
  assert.equal(work.w, 450);
  assert.equal(work.y, 36);
  const tiny = layout(t, [], 10, { minW: 1 });
  assert.ok(!tiny.frames.some((f) => f.node.name === "runtime.mallocgc"), "0.6 px frame skipped");
});

test("layout: sub-pixel frames are runs per row, not frames; narrower ones skipped", () => {
  // root (100) → a (99.2) and 8 siblings of 0.1 each at 1000 px: 1 px each, then at 100 px 0.1 px.
  const kids = [{ name: "a", self: 99.2, total: 99.2, children: [] }];
  for (let i = 0; i < 8; i++) kids.push({ name: `s${i}`, self: 0, total: 0.1, children: [{ name: `c${i}`, self: 0.1, total: 0.1, children: [] }] });
  const root = { name: "total", self: 0, total: 100, children: kids };
  const wide = layout(root, [], 1000);
  assert.equal(wide.frames.length, 1 + 1 + 8 + 8, "1 px frames are frames");
  assert.deepEqual(wide.thin, []);
  const mid = layout(root, [], 600); // siblings 0.6 px: a run at depth 1, and one under it
  assert.deepEqual(mid.frames.map((f) => f.node.name), ["total", "a"]);
  assert.equal(mid.thin.length, 6, "one run on each of two rows");
  const [x, d, w, x2, d2] = mid.thin;
  assert.deepEqual([d, d2], [1, 2]);
  assert.equal(x, Math.floor(600 * 0.992));
  assert.equal(x2, x);
  assert.ok(w >= 4 && w <= 6, `run covers the 4.8 px of the siblings: ${w}`);
  assert.equal(mid.rows, 3, "rows count the runs");
  const narrow = layout(root, [], 300); // 0.3 px: skipped altogether
  assert.deepEqual(narrow.thin, []);
  assert.equal(narrow.rows, 2);
});

test("layout: flame orientation puts the root at the bottom", () => {
  const l = layout(T(), [], 800, { orient: "flame" });
  const root = l.frames[0];
  assert.equal(root.y, (l.rows - 1) * 18);
  const i = frameAt(l, 400, root.y + 5);
  assert.equal(i, 0);
});

test("layout: zoomed frame spans the width under one bar of ancestors", () => {
  const t = T();
  const l = layout(t, ["main", "work"], 900);
  assert.equal(l.frames[0].collapsed, true);
  assert.equal(l.frames.filter((f) => f.collapsed).length, 1);
  const work = l.frames[1];
  assert.equal(work.node.name, "work");
  assert.deepEqual([work.x, work.w, work.depth], [0, 900, 1]);
  assert.ok(!l.frames.some((f) => f.node.name === "idle"), "siblings gone");
  const fibIdx = l.frames.findIndex((f) => f.node.name === "fib");
  assert.deepEqual(framePath(l, fibIdx), ["main", "work", "fib"]);
  assert.deepEqual(framePath(l, 0), ["main"], "the bar zooms out one level");
  assert.equal(frameAt(l, 450, 18 + 5), 1);
});

test("layout: a search match stays visible however narrow", () => {
  const t = fromFolded("a 100000\nb;needle 1");
  markMatches(t, (n) => n === "needle");
  const l = layout(t, [], 500);
  const f = l.frames.find((x) => x.node.name === "needle");
  assert.ok(f && f.w >= 2 && f.forced, JSON.stringify(f));
});

test("layout of a deep chain does not overflow and caps rows", () => {
  const names = Array.from({ length: 5000 }, (_, i) => ({ name: `f${i}` }));
  const b = new TreeBuilder(false);
  b.add(names, { self: 1 });
  const l = layout(b.finish(), [], 100, { maxRows: 300 });
  assert.equal(l.rows, 300);
});

test("layout: minRows keeps the graph's height when a zoom has fewer rows", () => {
  const t = T();
  const full = layout(t, [], 800);
  const zoomed = layout(t, ["main", "work"], 800, { minRows: full.rows });
  assert.equal(zoomed.rows, full.rows);
  assert.ok(layout(t, ["main", "work"], 800).rows < full.rows, "fewer rows without minRows");
  // Flame orientation: the empty rows are above, the zoomed frames stay at the bottom.
  const flame = layout(t, ["main", "work"], 800, { minRows: full.rows + 3, orient: "flame" });
  assert.equal(flame.frames[0].y, (full.rows + 2) * 18, "the ancestors' bar on the bottom row");
  assert.equal(frameAt(flame, 10, flame.frames[0].y + 5), 0);
});

test("layout of a transformed tree equals the layout of the same tree rebuilt from folded stacks", () => {
  const t = fromFolded("main;a;b 5\nmain;a;c 3\nmain;d 2\nidle 1");
  const inv = applyTransforms(t, [{ kind: "invert", arg: "" }], false);
  const again = fromFolded("b;a;main 5\nc;a;main 3\nd;main 2\nidle 1");
  const strip = (l) => l.frames.map((f) => [f.node.name, f.x, f.w, f.depth, f.parent]);
  assert.deepEqual(strip(layout(inv, ["b"], 1100)), strip(layout(again, ["b"], 1100)));
  assert.deepEqual(strip(layout(inv, [], 1100)), strip(layout(again, [], 1100)));
});

test("rasterize: frames, gaps and sub-pixel runs land on the right pixels", () => {
  // root (10) → a (6), b (4) at 20 px: a is 12 px, b 8 px; rows 4 px high with a 1 px gap.
  const root = { name: "total", self: 0, total: 10, children: [
    { name: "a", self: 6, total: 6, children: [] }, { name: "b", self: 4, total: 4, children: [] }] };
  const l = layout(root, [], 20, { rowH: 4 });
  const px = new Uint32Array(20 * 10).fill(7);
  const fill = { total: 1, a: 2, b: 3 };
  rasterize(px, 20, 10, l, 1, (i) => fill[l.frames[i].node.name], 9);
  const row = (y) => [...px.slice(y * 20, y * 20 + 20)].join("");
  assert.equal(row(0), "1".repeat(19) + "0", "the root, 1 px gap on its right");
  assert.equal(row(3), "0".repeat(20), "1 px gap below each row");
  assert.equal(row(4), "2".repeat(11) + "0" + "3".repeat(7) + "0");
  assert.equal(row(6), row(4));
  assert.equal(row(8), "0".repeat(20), "cleared below the graph");
  // Device pixels: twice as many at dpr 2; a sub-pixel run is drawn in its colour.
  const l2 = { ...l, thin: [15, 2, 3], rows: 3, rowIndex: [...l.rowIndex, []] };
  const px2 = new Uint32Array(40 * 24);
  rasterize(px2, 40, 24, l2, 2, (i) => fill[l2.frames[i].node.name], 9);
  assert.equal([...px2.slice(8 * 40, 9 * 40)].join(""), "2".repeat(22) + "00" + "3".repeat(14) + "00");
  assert.equal([...px2.slice(16 * 40, 17 * 40)].join(""), "0".repeat(30) + "9".repeat(6) + "0".repeat(4));
  assert.equal([...px2.slice(22 * 40, 23 * 40)].join(""), "0".repeat(40), "2 px gap below at dpr 2");
});

test("diff: share change, colours by palette, movers", () => {
  const n = { lt: 10, rt: 60 };
  assert.equal(shareChange(n, { left: 100, right: 200 }), 20);
  assert.equal(diffColor(0.1), "hsl(220, 6%, 78%)");
  assert.match(diffColor(20, "rg"), /^hsl\(0,/);
  assert.match(diffColor(-20, "rg"), /^hsl\(130,/);
  assert.match(diffColor(20, "cb"), /^hsl\(30,/);
  assert.match(diffColor(-20, "cb"), /^hsl\(210,/);
  const d = normalizeDiff({ left: { total: 100 }, right: { total: 100 }, root: { name: "total", left_total: 100, right_total: 100, children: [
    { name: "a", left_total: 80, right_total: 40, left_self: 80, right_self: 40 },
    { name: "b", left_total: 20, right_total: 60, left_self: 20, right_self: 60 },
  ] } });
  const m = movers(d.root, d.diff);
  assert.deepEqual(m.map((r) => [r.name, Math.round(r.change)]), [["a", -40], ["b", 40]]);
});
