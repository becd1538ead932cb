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
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

// playwright-core is installed once for the web tests (web/node_modules, `cd web && npm ci`).
const here = path.dirname(fileURLToPath(import.meta.url));
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
const topBody = JSON.stringify({ total: root.total, unit: "nanoseconds", profile_type: "cpu:nanoseconds", profiles: 1, functions });
console.error(`# tree: ${count} nodes, ${(fgBody.length / 1e6).toFixed(1)} MB of JSON`);

// ---------------------------------------------------------------- serving

async function servePage(ctx, dir) {
  await ctx.route("http://kiln.bench/**", (r) => {
    const u = new URL(r.request().url());
    const json = (body) => r.fulfill({ body, contentType: "application/json" });
    if (u.pathname === "/api/v1/flamegraph") return json(fgBody);
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

// Times every animation-frame callback (both pages paint in requestAnimationFrame).
const INIT = () => {
  window.__frames = [];
  const raf = window.requestAnimationFrame.bind(window);
  window.requestAnimationFrame = (cb) => raf((ts) => {
    const start = performance.now();
    cb(ts);
    window.__frames.push({ start, dur: performance.now() - start });
  });
};

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const max = (xs) => Math.max(...xs);

async function measure(browser, label, dir) {
  const ctx = await browser.newContext({ viewport: { width: 1920, height: 1080 }, deviceScaleFactor: 1 });
  await servePage(ctx, dir);
  await ctx.addInitScript(INIT);
  const page = await ctx.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto("http://kiln.bench/?from=now-1h&until=now");
  await page.waitForFunction(() => window.kiln?.status() === "ok", null, { timeout: 120_000 });
  await page.evaluate(() => window.kiln.idle());
  const render = [], load = [];
  for (let i = 0; i < RUNS; i++) {
    const r = await page.evaluate(async () => {
      await new Promise((res) => setTimeout(res, 50));
      window.__frames = [];
      const t0 = performance.now();
      await window.kiln.reload();
      await window.kiln.idle();
      await new Promise((res) => requestAnimationFrame(() => setTimeout(res, 0)));
      const fs = window.__frames.filter((f) => f.start >= t0);
      const paint = fs.reduce((a, f) => (f.dur > a.dur ? f : a), { dur: 0, start: t0 });
      return { render: paint.dur, load: paint.start + paint.dur - t0 };
    });
    render.push(r.render);
    load.push(r.load);
  }
  // Zoom: click frames one to three levels down, wide enough to hit, then go back to the root.
  const zoom = await page.evaluate(async (n) => {
    const canvas = document.getElementById("flamegraph");
    const out = [];
    const frame = () => new Promise((res) => requestAnimationFrame(() => setTimeout(res, 0)));
    const click = (f) => {
      const r = canvas.getBoundingClientRect();
      canvas.dispatchEvent(new MouseEvent("click", { bubbles: true, clientX: r.left + f.x + f.w / 2, clientY: r.top + f.y + f.h / 2 }));
    };
    for (let i = 0; i < n; i++) {
      const cands = window.kiln.frames().filter((f) => !f.collapsed && f.depth >= 1 + (i % 3) && f.w > 8);
      if (!cands.length) break;
      const f = cands[(i * 7) % cands.length];
      window.__frames = [];
      click(f);
      await frame();
      out.push(Math.max(0, ...window.__frames.map((x) => x.dur)));
      // Back to the root (both pages reset on Escape).
      document.dispatchEvent(new KeyboardEvent("keydown", { key: "Escape", bubbles: true }));
      await frame();
    }
    return out;
  }, ZOOMS);
  const drawn = await page.evaluate(() => window.kiln.frames().length);
  await ctx.close();
  if (errors.length) throw new Error(`${label}: page errors: ${errors.join("; ")}`);
  return { label, drawn, render: { median: median(render), max: max(render) }, load: { median: median(load), max: max(load) }, zoom: { median: median(zoom), max: max(zoom), n: zoom.length } };
}

const browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"] });
const results = [];
try {
  for (const [label, dir] of pages) results.push(await measure(browser, label, dir));
} finally {
  await browser.close();
}
const f = (x) => x.toFixed(1).padStart(7);
console.log(`tree ${count} nodes (${(fgBody.length / 1e6).toFixed(1)} MB JSON), ${RUNS} loads, ${ZOOMS} zooms, 1920x1080, Chromium headless`);
console.log("page   frames  render ms (med/max)   load→paint ms (med/max)   zoom frame ms (med/max)");
for (const r of results) {
  console.log(`${r.label.padEnd(5)} ${String(r.drawn).padStart(7)} ${f(r.render.median)} /${f(r.render.max)}      ${f(r.load.median)} /${f(r.load.max)}          ${f(r.zoom.median)} /${f(r.zoom.max)}`);
}
if (args.json) fs.writeFileSync(args.json, JSON.stringify({ nodes: count, results }, null, 1));
const cur = results[0];
const ok = cur.render.median <= 100 && cur.zoom.median <= 16;
console.log(`targets (render ≤ 100 ms, zoom ≤ 16 ms/frame, medians): ${ok ? "met" : "NOT met"}`);
process.exitCode = ok ? 0 : 1;
