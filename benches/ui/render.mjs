// Browser benchmark of the flame-graph page: a synthetic 100,000-node graph rendered in Debian's
// Chromium (playwright-core), timed with the Performance API inside the page, for this tree's page
// and a baseline page (an older commit's web/) in the same run.
//
//   node benches/ui/render.mjs --new web --old /tmp/old-web [--nodes 100000] [--runs 7]
//
// No server: the page's files come from the two directories and the API answers (flame graph,
// top table, choices) are served by playwright from the generated tree, so both pages get the same
// bytes. Timed in the page:
//   render  the requestAnimationFrame callback that lays out and paints the graph (max per load)
//   load    reload() → end of that paint: JSON parse, normalisation, layout, painting
//   zoom    the animation-frame callback after a click on a frame (one frame per zoom)
// Targets (issue 11): render ≤ 100 ms, zoom ≤ 16 ms per frame.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

// playwright-core is installed once for the web tests (web/node_modules, `cd web && npm ci`).
const here = path.dirname(fileURLToPath(import.meta.url));
const { encodeColumnar } = await import(pathToFileURL(path.join(here, "..", "..", "web", "tests", "columnar.mjs")).href);
const { chromium } = await import(pathToFileURL(path.join(here, "..", "..", "web", "node_modules", "playwright-core", "index.mjs")).href);

const args = Object.fromEntries(process.argv.slice(2).reduce((a, v, i, all) => (v.startsWith("--") ? [...a, [v.slice(2), all[i + 1]]] : a), []));
const NODES = Number(args.nodes || 100_000);
const RUNS = Number(args.runs || 7);
const ZOOMS = Number(args.zooms || 12);
const pages = [["new", args.new || "web"], ...(args.old ? [["old", args.old]] : [])];
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";

// ---------------------------------------------------------------- the synthetic tree

function rng(seed) {
  let s = seed >>> 0;
  return () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32);
}

/** A deterministic call tree of exactly `n` nodes: deep stacks, Zipf-like fan-out, ~3k names. */
function makeTree(n) {
  const r = rng(42);
  const pkgs = ["main", "net/http", "runtime", "encoding/json", "github.com/acme/api", "compress/flate", "syscall", "sync"];
  const names = Array.from({ length: 3000 }, (_, i) => `${pkgs[i % pkgs.length]}.fn${i}`);
  const root = { name: "total", self: 0, total: 0, children: [], kids: new Map() };
  let count = 1;
  while (count < n) {
    const depth = 8 + Math.floor(r() * 38);
    const w = Math.floor(1 + r() ** 3 * 1000) * 1e6;
    let node = root;
    node.total += w;
    for (let d = 0; d < depth; d++) {
      // Zipf-ish: low indices much more likely, so some paths are wide and many are narrow.
      const k = Math.floor(r() ** 2.5 * 12);
      const name = names[(d * 131 + k * 17 + (node.name.length * 7)) % names.length];
      let c = node.kids.get(name);
      if (!c) {
        if (count >= n) break;
        c = { name, self: 0, total: 0, children: [], kids: new Map() };
        node.kids.set(name, c);
        node.children.push(c);
        count++;
      }
      c.total += w;
      node = c;
    }
    node.self += w;
  }
  const top = new Map();
  const stack = [root];
  while (stack.length) {
    const x = stack.pop();
    delete x.kids;
    x.children.sort((a, b) => b.total - a.total);
    if (x !== root) {
      const e = top.get(x.name) ?? { name: x.name, self: 0, total: 0 };
      e.self += x.self;
      e.total += x.total;
      top.set(x.name, e);
    }
    stack.push(...x.children);
  }
  const functions = [...top.values()].sort((a, b) => b.self - a.self).slice(0, 500);
  return { root, count, functions };
}

const { root, count, functions } = makeTree(NODES);
const fgBody = JSON.stringify({ total: root.total, unit: "nanoseconds", profile_type: "cpu:nanoseconds", profiles: 1, top: functions, root });
// The same answer in the columnar format (`format=columnar`), for a page that asks for it.
const fgColumnar = Buffer.from(encodeColumnar({ total: root.total, unit: "nanoseconds", profile_type: "cpu:nanoseconds", profiles: 1, top: functions, root }));
const topBody = JSON.stringify({ total: root.total, unit: "nanoseconds", profile_type: "cpu:nanoseconds", profiles: 1, functions });
console.error(`# tree: ${count} nodes, ${(fgBody.length / 1e6).toFixed(1)} MB of JSON, ${(fgColumnar.length / 1e6).toFixed(1)} MB columnar`);

// ---------------------------------------------------------------- serving

async function servePage(ctx, dir) {
  await ctx.route("http://kiln.bench/**", (r) => {
    const u = new URL(r.request().url());
    const json = (body) => r.fulfill({ body, contentType: "application/json" });
    if (u.pathname === "/api/v1/flamegraph") {
      if (u.searchParams.get("format") === "columnar") return r.fulfill({ body: fgColumnar, contentType: "application/octet-stream" });
      return json(fgBody);
    }
    if (u.pathname === "/api/v1/top") return json(topBody);
    if (u.pathname === "/api/v1/profile_types") return json('{"profile_types":["cpu:nanoseconds"]}');
    if (u.pathname === "/api/v1/labels") return json('{"names":["service_name"]}');
    if (u.pathname.startsWith("/api/v1/labels/")) return json('{"values":["bench"]}');
    if (u.pathname === "/api/v1/series") return json('{"profile_type":"cpu:nanoseconds","unit":"nanoseconds","step":10,"series":[]}');
    const rel = u.pathname === "/" ? "index.html" : u.pathname.replace(/^\/assets\//, "");
    const file = path.join(dir, rel);
    if (!fs.existsSync(file)) return r.fulfill({ status: 404, body: "{}" });
    const type = rel.endsWith(".js") ? "text/javascript" : rel.endsWith(".css") ? "text/css" : "text/html";
    return r.fulfill({ body: fs.readFileSync(file), contentType: type });
  });
}

// In-page instrumentation, installed before the page's own scripts (the same for both pages):
// - `__dataAt`: when the flame-graph answer's body has been received (Response.text()/json()/
//   arrayBuffer() resolved for /api/v1/flamegraph). The old page reads JSON with text() then
//   JSON.parse, the new one the columnar format with arrayBuffer() then decodes it: parsing and
//   decoding count as rendering work.
// - `__frames`: every animation-frame callback's start and duration, and `end`: when a message
//   posted from inside the callback is delivered, i.e. after that frame's style recalculation,
//   layout and paint (they run in the same task as the callbacks), so `end` is when the frame is
//   fully painted.
const INIT = () => {
  window.__frames = [];
  window.__dataAt = 0;
  window.__markN = 0; // user-timing marks bound the windows whose main-thread CPU time is summed
  for (const m of ["text", "json", "arrayBuffer"]) {
    const orig = Response.prototype[m];
    Response.prototype[m] = function () {
      const url = this.url;
      return orig.call(this).then((v) => {
        if (url.includes("/api/v1/flamegraph")) {
          window.__dataAt = performance.now();
          performance.mark((window.__dataMark = `bench:data:${++window.__markN}`));
        }
        return v;
      });
    };
  }
  const raf = window.requestAnimationFrame.bind(window);
  window.requestAnimationFrame = (cb) => raf((ts) => {
    const start = performance.now();
    cb(ts);
    const rec = { ts, start, dur: performance.now() - start, end: 0 };
    window.__frames.push(rec);
    const ch = new MessageChannel();
    ch.port1.onmessage = () => {
      rec.end = performance.now();
      performance.mark((rec.mark = `bench:end:${++window.__markN}`));
    };
    ch.port2.postMessage(0);
  });
};

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const max = (xs) => Math.max(...xs);

/**
 * From trace events: `cpu(markA, markB)` = the main thread's CPU ms between two user-timing
 * marks (each mark carries the thread's CPU clock, `tts`).
 */
function cpuIn(events) {
  const marks = new Map();
  for (const e of events) {
    if (e.cat?.includes("blink.user_timing") && e.name.startsWith("bench:") && e.tts != null) marks.set(e.name, e);
  }
  return (a, b) => {
    const from = marks.get(a), to = marks.get(b);
    if (!from || !to || from.tid !== to.tid) throw new Error(`marks ${a}/${b} missing from the trace`);
    return (to.tts - from.tts) / 1000;
  };
}

/** One settled frame: resolves after the next animation frame has been painted. */
const SETTLE = () => new Promise((res) => requestAnimationFrame(() => { const ch = new MessageChannel(); ch.port1.onmessage = () => res(); ch.port2.postMessage(0); }));

const zoomRuns = (page, zooms) => page.evaluate(async ([n, settle]) => {
  const settled = eval(settle);
  const canvas = document.getElementById("flamegraph");
  const out = [];
  const click = (f) => {
    const r = canvas.getBoundingClientRect();
    canvas.dispatchEvent(new MouseEvent("click", { bubbles: true, clientX: r.left + f.x + f.w / 2, clientY: r.top + f.y + f.h / 2 }));
  };
  for (let i = 0; i < n; i++) {
    const cands = window.kiln.frames().filter((f) => !f.collapsed && f.depth >= 1 + (i % 3) && f.w > 8);
    if (!cands.length) break;
    const f = cands[(i * 7) % cands.length];
    await settled();
    window.__frames = [];
    const mark = `bench:click:${++window.__markN}`;
    performance.mark(mark);
    const t0 = performance.now();
    click(f);
    const handler = performance.now() - t0;
    await settled();
    const fs = window.__frames.filter((x) => x.end > 0).sort((a, b) => a.start - b.start);
    if (!fs.length) throw new Error("the click painted no frame");
    // Callbacks of one frame share its rAF timestamp; the handler counts in the first frame.
    const perFrame = new Map(); // rAF timestamp → [first start, last end]
    for (const x of fs) {
      const g = perFrame.get(x.ts) ?? [Infinity, 0];
      perFrame.set(x.ts, [Math.min(g[0], x.start), Math.max(g[1], x.end)]);
    }
    const works = [...perFrame.values()].map(([start, end]) => end - start);
    works[0] += handler;
    // The CPU window ends a frame later, so that work a page defers past the paint (tasks queued
    // by the frame) still counts.
    await settled();
    out.push({ work: Math.max(...works), win: [mark, window.__frames.reduce((a, x) => (x.end > a.end ? x : a)).mark] });
    // Back to the root (both pages reset on Escape).
    document.dispatchEvent(new KeyboardEvent("keydown", { key: "Escape", bubbles: true }));
    await settled();
  }
  return out;
}, [zooms, SETTLE.toString()]);

async function measure(browser, label, dir, trace) {
  const ctx = await browser.newContext({ viewport: { width: 1920, height: 1080 }, deviceScaleFactor: 1 });
  await servePage(ctx, dir);
  await ctx.addInitScript(INIT);
  const page = await ctx.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto("http://kiln.bench/?from=now-1h&until=now");
  await page.waitForFunction(() => window.kiln?.status() === "ok", null, { timeout: 120_000 });
  await page.evaluate(() => window.kiln.idle());
  const render = [], paint = [], load = [];
  const loadOnce = () => page.evaluate(async (settle) => {
    const settled = eval(settle);
    await settled();
    window.__frames = [];
    window.__dataAt = 0;
    const t0 = performance.now();
    await window.kiln.reload();
    await window.kiln.idle();
    await settled();
    await settled();
    const fs = window.__frames.filter((f) => f.start >= window.__dataAt && f.end > 0);
    if (!window.__dataAt || !fs.length) throw new Error("no flame-graph answer or no frame after it");
    // The frame that paints the graph: the longest callback after the answer arrived.
    const p = fs.reduce((a, f) => (f.dur > a.dur ? f : a));
    return { render: p.end - window.__dataAt, paint: p.dur, load: p.end - t0, win: [window.__dataMark, p.mark] };
  }, SETTLE.toString());
  // Chromium's trace (user-timing marks only: light) gives the main thread's CPU time in each
  // window, which other processes on a busy machine inflate far less than the
  // wall-clock times above.
  const traceFile = path.join(fs.mkdtempSync(path.join(os.tmpdir(), "kiln-ui-bench-")), "cpu.json");
  await browser.startTracing(page, { path: traceFile, categories: ["blink.user_timing"] });
  const wins = [];
  for (let i = 0; i < RUNS; i++) {
    const r = await loadOnce();
    render.push(r.render);
    paint.push(r.paint);
    load.push(r.load);
    wins.push(r.win);
  }
  // Zoom: click frames one to three levels down, wide enough to hit, then go back to the root.
  // Per zoom, the main thread's work per frame, the most of any frame it caused: a frame's
  // animation-frame callbacks and its style/layout/paint (start of the first callback to `end`),
  // the click handler counted in the first frame; the idle wait for vsync between is not work.
  const zooms = await zoomRuns(page, ZOOMS);
  await browser.stopTracing();
  const cpu = cpuIn(JSON.parse(fs.readFileSync(traceFile, "utf8")).traceEvents);
  if (!process.env.KEEP) fs.rmSync(path.dirname(traceFile), { recursive: true, force: true });
  const renderCpu = wins.map((w) => cpu(...w));
  const zoomCpu = zooms.map((z) => cpu(...z.win));
  const zoom = zooms.map((z) => z.work);
  const drawn = await page.evaluate(() => window.kiln.frames().length);
  if (trace) await profileLoad(browser, page, loadOnce, trace);
  await ctx.close();
  if (errors.length) throw new Error(`${label}: page errors: ${errors.join("; ")}`);
  const st = (xs) => ({ median: median(xs), max: max(xs) });
  return {
    label, drawn, render: st(render), renderCpu: st(renderCpu), paint: st(paint), load: st(load),
    zoom: { ...st(zoom), n: zoom.length }, zoomCpu: st(zoomCpu),
  };
}

/**
 * --trace FILE: one more load of the new page under Chromium's tracing (written to FILE, opens in
 * chrome://tracing or Perfetto) and V8's sampling profiler; prints where the main thread's time
 * went (trace events by name, and the JS functions with the most self time).
 */
async function profileLoad(browser, page, loadOnce, file) {
  const cdp = await page.context().newCDPSession(page);
  await cdp.send("Profiler.enable");
  await cdp.send("Profiler.setSamplingInterval", { interval: 200 });
  await browser.startTracing(page, { path: file, categories: ["devtools.timeline", "disabled-by-default-devtools.timeline", "v8", "blink"] });
  await cdp.send("Profiler.start");
  const r = await loadOnce();
  const { profile } = await cdp.send("Profiler.stop");
  await browser.stopTracing();
  await browser.startTracing(page, { path: file.replace(/(\.json)?$/, ".zoom.json"), categories: ["devtools.timeline", "disabled-by-default-devtools.timeline", "v8", "blink", "cc", ...(process.env.KILN_TRACE_CATS ? process.env.KILN_TRACE_CATS.split(",") : [])] });
  await cdp.send("Profiler.start");
  const z = (await zoomRuns(page, 6)).map((x) => x.work);
  const { profile: zp } = await cdp.send("Profiler.stop");
  await browser.stopTracing();
  printSelf("JS self time in the zooms (ms):", zp);
  console.error(`# traced zooms: ${z.map((x) => x.toFixed(1)).join(", ")} ms; trace in ${file.replace(/(\.json)?$/, ".zoom.json")}`);
  console.error(`# traced load: render ${r.render.toFixed(1)} ms (paint callback ${r.paint.toFixed(1)} ms); trace in ${file}`);
  const events = JSON.parse(fs.readFileSync(file, "utf8")).traceEvents;
  const main = events.find((e) => e.name === "thread_name" && e.args?.name === "CrRendererMain");
  const byName = new Map();
  for (const e of events) {
    if (e.ph !== "X" || !e.dur || (main && (e.pid !== main.pid || e.tid !== main.tid))) continue;
    byName.set(e.name, (byName.get(e.name) ?? 0) + e.dur / 1000);
  }
  console.error("# main-thread trace events (ms, nested events counted in each):");
  for (const [n, ms] of [...byName].sort((a, b) => b[1] - a[1]).slice(0, 18)) console.error(`#   ${ms.toFixed(1).padStart(8)}  ${n}`);
  printSelf("JS self time in the load (ms):", profile);
}

function printSelf(title, profile) {
  const self = new Map();
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  for (let i = 0; i < profile.samples.length; i++) {
    const cf = byId.get(profile.samples[i]).callFrame;
    const key = `${cf.functionName || "(anonymous)"} ${cf.url.split("/").pop()}:${cf.lineNumber + 1}`;
    self.set(key, (self.get(key) ?? 0) + (profile.timeDeltas[i] ?? 0) / 1000);
  }
  console.error(`# ${title}`);
  for (const [n, ms] of [...self].sort((a, b) => b[1] - a[1]).slice(0, 22)) console.error(`#   ${ms.toFixed(1).padStart(8)}  ${n}`);
}

// This machine has no GPU (no /dev/dri): Chromium composites in software, as it would for a user
// here; --disable-gpu says so up front instead of letting the GPU process fail and fall back.
// --gpu-flags "…" replaces it (e.g. "--enable-gpu-rasterization" or "--use-angle=swiftshader")
// to compare.
const GPU_FLAGS = (args["gpu-flags"] ?? "--disable-gpu").split(/\s+/).filter(Boolean);
const browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--headless", "--no-sandbox", ...GPU_FLAGS, "--no-first-run"] });
const version = browser.version();
const results = [];
try {
  for (const [label, dir] of pages) results.push(await measure(browser, label, dir, label === "new" ? args.trace : null));
} finally {
  await browser.close();
}
const f = (x) => x.toFixed(1).padStart(7);
console.log(`tree ${count} nodes (${(fgBody.length / 1e6).toFixed(1)} MB JSON), ${RUNS} loads, ${ZOOMS} zooms, 1920x1080, Chromium ${version} headless ${GPU_FLAGS.join(" ")}, load average ${os.loadavg().map((x) => x.toFixed(2)).join(" ")}`);
console.log("wall-clock ms (med/max), and the page's main-thread CPU ms in the same windows (med/max):");
console.log("page   frames   render             render CPU        paint cb          load→paint           zoom frame        zoom CPU");
const mm = (x) => `${f(x.median)} /${f(x.max)}`;
for (const r of results) {
  console.log(`${r.label.padEnd(5)} ${String(r.drawn).padStart(7)} ${mm(r.render)} ${mm(r.renderCpu)} ${mm(r.paint)} ${mm(r.load)} ${mm(r.zoom)} ${mm(r.zoomCpu)}`);
}
if (results.length === 2) {
  const [n, o] = results;
  const q = (k) => (n[k].median / o[k].median).toFixed(2);
  console.log(`new/old (medians): render ${q("render")} (CPU ${q("renderCpu")}), zoom ${q("zoom")} (CPU ${q("zoomCpu")})`);
}
if (args.json) fs.mkdirSync(path.dirname(args.json), { recursive: true }), fs.writeFileSync(args.json, JSON.stringify({ nodes: count, results }, null, 1));
const cur = results[0];
const ok = cur.render.median <= 100 && cur.zoom.median <= 16;
console.log(`targets (render ≤ 100 ms, zoom ≤ 16 ms/frame, medians): ${ok ? "met" : "NOT met"}`);
process.exitCode = ok ? 0 : 1;
