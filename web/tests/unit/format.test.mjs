// Unit tests: formatting, URL state, selector editing, exports, keys, chart data, table rows.
import { test } from "node:test";
import assert from "node:assert/strict";
import { fmtValue, fmtPct, fmtPoints, fmtCores, toCores, parseUnixMs, resolveTime, normalizeTimeInput } from "../../js/format.js";
import { parseState, serializeState, DEFAULTS, baseline } from "../../js/url-state.js";
import { parseSelector, buildSelector, withMatcher, completionContext, applyCompletion } from "../../js/selector.js";
import { toFolded, toSvg, toJson } from "../../js/export.js";
import { TreeBuilder } from "../../js/tree.js";
import { layout } from "../../js/layout.js";
import { actionFor, SHORTCUTS } from "../../js/keys.js";
import { stackSeries, niceTicks, OTHER } from "../../js/chart.js";
import { tableRows, visibleWindow } from "../../js/table.js";
import { frameKind, packageOf, frameColor } from "../../js/colors.js";

test("values, percentages, cores", () => {
  assert.equal(fmtValue(3530e6, "nanoseconds"), "3.53 s");
  assert.equal(fmtValue(1.5e6, "nanoseconds"), "1.5 ms");
  assert.equal(fmtValue(90e9, "nanoseconds"), "1.50 min");
  assert.equal(fmtValue(206, "count"), "206 samples");
  assert.equal(fmtValue(1536, "bytes"), "1.5 KiB");
  assert.equal(fmtPct(65.437), "65.4%");
  assert.equal(fmtPct(0.001), "<0.01%");
  assert.equal(fmtPoints(3.2), "+3.20 pp");
  assert.equal(fmtPoints(-12), "−12.0 pp");
  assert.equal(toCores(20e9, 10), 2);
  assert.equal(fmtCores(2), "2.00 cores");
  assert.equal(fmtCores(0.25), "0.250 cores");
});

test("times: Unix of any precision, relative, typed dates", () => {
  assert.equal(parseUnixMs("1764301027"), 1764301027000);
  assert.equal(parseUnixMs("1764301027123"), 1764301027123);
  assert.equal(parseUnixMs("now"), null);
  assert.equal(resolveTime("now-1h", 10_000_000), 10_000_000 - 3600e3);
  assert.equal(resolveTime("now", 5), 5);
  assert.equal(normalizeTimeInput("now-15m"), "now-15m");
  assert.equal(normalizeTimeInput("1764301027"), "1764301027");
  assert.equal(normalizeTimeInput("2026-12-03T07:00:00Z"), String(Date.UTC(2026, 11, 3, 7) / 1000));
  assert.ok(/^\d{10}$/.test(normalizeTimeInput("2026-12-03 07:00")));
  assert.equal(normalizeTimeInput("yesterday-ish"), null);
});

test("URL state round-trips every field; defaults are omitted", () => {
  assert.equal(serializeState(DEFAULTS), "v=2");
  const s = {
    ...DEFAULTS, query: '{service_name="api", pod=~"web-.*"}', type: "samples:count", from: "1764301027", until: "1764304627",
    search: "^main\\.fib$", view: "sandwich", fn: "main.work", orient: "flame", color: "kind",
    zoom: ["runtime.main", "main.main"], tf: [{ kind: "hide", arg: "^runtime\\." }, { kind: "invert", arg: "" }],
    split: "pod", compare: true, cmpQuery: '{service_name="api-old"}', cmpFrom: "now-2h", cmpUntil: "now-1h",
    palette: "cb", auto: true, maxNodes: "100",
  };
  const back = parseState("?" + serializeState(s));
  assert.deepEqual(back, s);
});

test("URL state: links of the first page still work", () => {
  const s = parseState("?label=pid&value=42&range=15m&compare=%7Bpid%3D%221%22%7D&search=fib");
  assert.equal(s.query, '{pid="42"}');
  assert.equal(s.from, "now-15m");
  assert.equal(s.compare, true);
  assert.equal(s.cmpQuery, '{pid="1"}');
  assert.equal(s.search, "fib");
  const b = baseline(s);
  assert.deepEqual(b, { query: '{pid="1"}', from: "now-15m", until: "now" });
  assert.equal(parseState("?view=sandwich").view, "both", "a sandwich needs a function");
  assert.deepEqual(parseState("?tf=bogus:1&tf=hide:(").tf, [], "bad transforms dropped");
});

test("selector parse, build, set a matcher", () => {
  const ms = parseSelector('{service_name="api", pod=~"web-.*", ns!="kube\\"x"}');
  assert.deepEqual(ms, [
    { name: "service_name", op: "=", value: "api" },
    { name: "pod", op: "=~", value: "web-.*" },
    { name: "ns", op: "!=", value: 'kube"x' },
  ]);
  assert.equal(buildSelector(ms), '{service_name="api", pod=~"web-.*", ns!="kube\\"x"}');
  assert.deepEqual(parseSelector("{}"), []);
  assert.throws(() => parseSelector('{a="b"'), /wrapped/);
  assert.throws(() => parseSelector('{a=b}'), /quoted/);
  assert.throws(() => parseSelector('{a~"b"}'), /one of/);
  assert.equal(withMatcher('{a="1"}', "pod", "p-1"), '{a="1", pod="p-1"}');
  assert.equal(withMatcher('{pod="x"}', "pod", "y"), '{pod="y"}');
});

test("selector completion: names, operators, values, and applying them", () => {
  assert.deepEqual(completionContext("{serv", 5), { kind: "name", prefix: "serv", start: 1 });
  assert.deepEqual(completionContext('{a="1", po', 10), { kind: "name", prefix: "po", start: 8 });
  assert.equal(completionContext("{pod ", 5).kind, "op");
  const v = completionContext('{pod="web', 9);
  assert.deepEqual(v, { kind: "value", name: "pod", prefix: "web", start: 6, quoted: true });
  assert.equal(completionContext('{pod!~', 6).kind, "value");
  assert.equal(completionContext("nope", 2), null);
  let r = applyCompletion("{serv", 5, completionContext("{serv", 5), "service_name");
  assert.deepEqual(r, { text: '{service_name="', pos: 15 });
  r = applyCompletion(r.text, r.pos, completionContext(r.text, r.pos), "api");
  assert.equal(r.text, '{service_name="api"}');
  r = applyCompletion("{pod ", 5, completionContext("{pod ", 5), "=~");
  assert.equal(r.text, '{pod=~"');
});

test("exports: folded stacks, SVG, JSON", () => {
  const b = new TreeBuilder(false);
  b.add([{ name: "main" }, { name: "a;b" }], { self: 3 });
  b.add([{ name: "main" }], { self: 1 });
  const root = b.finish();
  assert.equal(toFolded(root), "main 1\nmain;a:b 3\n");
  const l = layout(root, [], 400);
  const svg = toSvg(l, 400, { color: () => "#f00", label: (f) => f.node.name, title: (f) => `<${f.node.name}>` });
  assert.match(svg, /^<svg xmlns="http:\/\/www.w3.org\/2000\/svg" width="400"/);
  assert.equal((svg.match(/<rect x=/g) || []).length, l.frames.length);
  assert.match(svg, /<title>&lt;main&gt;<\/title>/);
  const j = JSON.parse(toJson({ state: { query: "{}" } }, root));
  assert.equal(j.root.total, 4);
  assert.equal(j.state.query, "{}");
});

test("keyboard: one table, fields keep their keys", () => {
  assert.equal(actionFor({ key: "?" }, false), "help");
  assert.equal(actionFor({ key: "i" }, false), "invert");
  assert.equal(actionFor({ key: "i" }, true), null);
  assert.equal(actionFor({ key: "f", ctrlKey: true }, false), null);
  const keys = SHORTCUTS.flatMap((s) => s.keys);
  assert.equal(new Set(keys).size, keys.length, "no key bound twice");
});

test("chart data: cores per bucket, top N plus other", () => {
  const resp = { step: 10, unit: "nanoseconds", series: [
    { labels: { pod: "a" }, points: [[1000, 20e9], [11000, 10e9]] },
    { labels: { pod: "b" }, points: [[1000, 5e9]] },
    { labels: { pod: "c" }, points: [[11000, 1e9]] },
    { labels: { pod: "d" }, points: [[11000, 2e9]] },
  ] };
  const d = stackSeries(resp, 2);
  assert.deepEqual(d.times, [1000, 11000]);
  assert.equal(d.rate, "cores");
  assert.deepEqual(d.layers.map((l) => l.key), ["pod=a", "pod=b", OTHER]);
  assert.deepEqual(d.layers[0].values, [2, 1]);
  assert.deepEqual(d.layers[2].values.map((v) => Number(v.toFixed(9))), [0, 0.3]);
  assert.equal(d.layers[2].labels, null);
  assert.deepEqual(niceTicks(2.3), [0, 1, 2, 3]);
  assert.deepEqual(niceTicks(0), [0]);
});

test("table rows: filter, search, sort, percentages", () => {
  const fns = [{ name: "main.fib", self: 60, total: 70 }, { name: "main.work", self: 10, total: 90 }, { name: "runtime.x", self: 30, total: 30 }];
  let rows = tableRows(fns, 100, {});
  assert.deepEqual(rows.map((r) => r.name), ["main.fib", "runtime.x", "main.work"]);
  assert.equal(rows[0].selfPct, 60);
  rows = tableRows(fns, 100, { filter: "MAIN", sort: { key: "total", dir: "desc" } });
  assert.deepEqual(rows.map((r) => r.name), ["main.work", "main.fib"]);
  rows = tableRows(fns, 100, { matcher: (n) => n.endsWith("x") });
  assert.deepEqual(rows.map((r) => r.name), ["runtime.x"]);
});

test("top table virtualization: rows in view plus a margin, padding for the rest", () => {
  assert.deepEqual(visibleWindow(500, 0, 480, 28, 10), { first: 0, last: 28, padTop: 0, padBottom: 472 * 28 });
  const w = visibleWindow(500, 2800, 480, 28, 10); // row 100 at the top
  assert.deepEqual([w.first, w.last], [90, 128]);
  assert.equal(w.padTop + (w.last - w.first) * 28 + w.padBottom, 500 * 28, "scroll height kept");
  assert.deepEqual(visibleWindow(12, 0, 480, 28, 10), { first: 0, last: 12, padTop: 0, padBottom: 0 });
  const end = visibleWindow(500, 1e6, 480, 28, 10); // scrolled past the end (rows shrank)
  assert.equal(end.last, 500);
  assert.ok(end.first <= 500 - 480 / 28, "the last rows are in the DOM");
});

test("frame kinds, packages and colours", () => {
  assert.equal(frameKind("do_syscall_64 [k]"), "kernel");
  assert.equal(frameKind("runtime.mallocgc"), "runtime");
  assert.equal(frameKind("libc.so.6+0x891f4 (no symbols: stripped, no debuginfo)"), "unsym");
  assert.equal(frameKind("[truncated]", "truncated"), "unsym");
  assert.equal(frameKind("main.fib"), "user");
  assert.equal(packageOf("github.com/x/y.(*T).Run"), "github.com/x/y");
  assert.equal(packageOf("main.fib"), "main");
  assert.equal(packageOf("tokio::runtime::park"), "tokio");
  assert.equal(packageOf("libc.so.6+0x891f4 (no symbols)"), "libc.so.6");
  assert.equal(packageOf("schedule [k]"), "[kernel]");
  assert.equal(frameColor("package", "main.a"), frameColor("package", "main.a"));
  assert.notEqual(frameColor("kind", "x [k]"), frameColor("kind", "main.a"));
});
