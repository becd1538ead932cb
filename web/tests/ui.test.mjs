// Real-browser test of Kiln's web UI against a running Kiln server.
//
//   cd web && npm ci                       # once: installs playwright-core (no browser download)
//   KILN_URL=http://127.0.0.1:4100 [CHROMIUM=/usr/bin/chromium] [KILN_SCREENSHOTS=dir] \
//     [KILN_AUTH_URL=http://127.0.0.1:4101 KILN_AUTH_TOKEN=...] node web/tests/ui.test.mjs
//
// KILN_AUTH_URL (optional): a second server started with --auth-token KILN_AUTH_TOKEN; the page
// must ask for the token, then load and download with it.
//
// The test pushes testdata/pprof/go-runtime-pprof-cpu.pb.gz itself (Pyroscope push API, JSON
// encoding) under a fresh service_name, then drives the page in headless Chromium.
//
// Time range: a Go CPU profile carries its own time_nanos and the server files it under that
// timestamp (docs/API.md), not under "now". The page is therefore opened with a custom range
// (?from=&until=, Unix seconds) around the profile's time_nanos, read from the file itself, so the
// test does not depend on when it runs relative to when the profile was recorded.
import { test, after, before } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import zlib from "node:zlib";
import crypto from "node:crypto";
import os from "node:os";
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = path.dirname(fileURLToPath(import.meta.url));
const PROFILE = path.join(here, "..", "..", "testdata", "pprof", "go-runtime-pprof-cpu.pb.gz");
const KILN_URL = (process.env.KILN_URL || "").replace(/\/+$/, "");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const SCREENSHOTS = process.env.KILN_SCREENSHOTS || "";
const GO = process.env.GO || "go";
const SDK_PUSH = path.join(here, "..", "..", "testdata", "pprof", "pyroscope-io-1.4.0-push-request.bin.gz");
const SERVICE = `ui-test-${crypto.randomBytes(4).toString("hex")}`;
const CHART_SVC = `${SERVICE}-chart`;
const KILN_AUTH_URL = (process.env.KILN_AUTH_URL || "").replace(/\/+$/, "");
const KILN_AUTH_TOKEN = process.env.KILN_AUTH_TOKEN || "";

// Known from `go tool pprof -top testdata/pprof/go-runtime-pprof-cpu.pb.gz`:
//   main.fib   flat 2060ms cum 2310ms (65.44%) | main.workB flat 1110ms cum 1220ms
//   runtime.asyncPreempt flat 360ms | main.main, main.workA, runtime.main: cum only. Total 3530ms.
const TOTAL_NS = 3530e6;
const FIB_CUM_PCT = (100 * 2310) / 3530;

if (!KILN_URL) {
  console.error("KILN_URL is not set: point it at a running Kiln server, e.g. KILN_URL=http://127.0.0.1:4100");
  process.exit(2);
}

// ---------------------------------------------------------------- helpers

function readVarint(buf, pos) {
  let v = 0n, shift = 0n;
  for (;;) {
    const b = buf[pos++];
    v |= BigInt(b & 0x7f) << shift;
    if (!(b & 0x80)) return [v, pos];
    shift += 7n;
  }
}

/** time_nanos (pprof Profile field 9) of a gzipped pprof, as a BigInt. */
function profileTimeNanos(gz) {
  const buf = zlib.gunzipSync(gz);
  let pos = 0, time = 0n;
  while (pos < buf.length) {
    let key;
    [key, pos] = readVarint(buf, pos);
    const field = Number(key >> 3n), wire = Number(key & 7n);
    if (wire === 0) {
      let v;
      [v, pos] = readVarint(buf, pos);
      if (field === 9) time = v;
    } else if (wire === 2) {
      let len;
      [len, pos] = readVarint(buf, pos);
      pos += Number(len);
    } else if (wire === 1) pos += 8;
    else if (wire === 5) pos += 4;
    else throw new Error(`unexpected wire type ${wire} in pprof`);
  }
  return time;
}

async function api(pathAndQuery) {
  const res = await fetch(KILN_URL + pathAndQuery);
  return { status: res.status, body: await res.json().catch(() => null) };
}

const quote = (v) => '"' + v.replace(/\\/g, "\\\\").replace(/"/g, '\\"') + '"';

/** Waits until the page has finished its current load and painted. */
async function settle(page) {
  await page.waitForFunction(() => window.kiln && !["idle", "loading"].includes(window.kiln.status()));
  await page.evaluate(() => window.kiln.idle());
}

const frames = (page) => page.evaluate(() => window.kiln.frames());
const canvasWidth = (page) => page.evaluate(() => document.getElementById("flamegraph").clientWidth);

/** Centre of the widest non-collapsed frame with this name, canvas-relative. */
async function frameCenter(page, name) {
  const fs_ = (await frames(page)).filter((f) => f.name === name && !f.collapsed);
  assert.ok(fs_.length, `frame ${name} is laid out`);
  const f = fs_.reduce((a, b) => (b.w > a.w ? b : a));
  return { f, pos: { x: f.x + f.w / 2, y: f.y + f.h / 2 } };
}

/**
 * Development aid: KILN_WEB_DIR=web serves the page's files from disk instead of the binary's
 * embedded copy, so edits can be tried without rebuilding the server. CI does not set it.
 */
async function serveFromDisk(context, dir) {
  await context.route(/\/(assets\/[^?]*)?(\?.*)?$/, (r) => {
    const u = new URL(r.request().url());
    const rel = u.pathname === "/" ? "index.html" : u.pathname.replace(/^\/assets\//, "");
    const file = path.join(dir, rel);
    if (!fs.existsSync(file)) return r.continue();
    const type = rel.endsWith(".js") ? "text/javascript" : rel.endsWith(".css") ? "text/css" : "text/html";
    return r.fulfill({ body: fs.readFileSync(file), contentType: type });
  });
}

// ---------------------------------------------------------------- setup

let browser, ctx, page, from, until, profileSecs;
const pageErrors = [];

before(async () => {
  const gz = fs.readFileSync(PROFILE);
  const tn = profileTimeNanos(gz);
  assert.ok(tn > 0n, "profile has time_nanos");
  profileSecs = Number(tn / 1_000_000_000n);
  from = profileSecs - 600;
  until = profileSecs + 600;

  const body = {
    series: [{
      labels: [{ name: "__name__", value: "process_cpu" }, { name: "service_name", value: SERVICE }],
      samples: [{ rawProfile: gz.toString("base64") }],
    }],
  };
  const res = await fetch(`${KILN_URL}/push.v1.PusherService/Push`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  const text = await res.text();
  assert.equal(res.status, 200, `push accepted: ${text}`);

  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  ctx = await browser.newContext({ viewport: { width: 1280, height: 900 }, deviceScaleFactor: 2, timezoneId: "UTC", acceptDownloads: true });
  if (process.env.KILN_WEB_DIR) await serveFromDisk(ctx, process.env.KILN_WEB_DIR);
  page = await ctx.newPage();
  page.on("pageerror", (e) => pageErrors.push(e.message));
});

after(async () => {
  await browser?.close();
});

// ---------------------------------------------------------------- the walk-through
// One browser page, steps in order (each builds on the previous view). A screenshot per view goes
// to KILN_SCREENSHOTS (a directory), when set.

const shot = async (p, name) => {
  if (!SCREENSHOTS) return;
  fs.mkdirSync(SCREENSHOTS, { recursive: true });
  await p.screenshot({ path: path.join(SCREENSHOTS, `${name}.png`) });
};
const state = (p) => p.evaluate(() => window.kiln.state());
const param = (p, k) => new URL(p.url()).searchParams.get(k);
const params = (p, k) => new URL(p.url()).searchParams.getAll(k);
const root = async (p) => (await frames(p)).find((f) => f.depth === 0 && !f.collapsed);
const menu = async (p, name, act) => {
  const { pos } = await frameCenter(p, name);
  await p.locator("#flamegraph").click({ position: pos, button: "right" });
  await p.locator(`#frame-menu button[data-act="${act}"]`).click();
  await settle(p);
};
/** Waits for a download triggered by `click` and returns its bytes. */
async function downloaded(p, click) {
  const [d] = await Promise.all([p.waitForEvent("download"), click()]);
  return fs.readFileSync(await d.path());
}

test("Kiln web UI in a real browser", async (t) => {
  const sel = `{service_name=${quote(SERVICE)}}`;
  const url = `${KILN_URL}/?query=${encodeURIComponent(sel)}&from=${from}&until=${until}`;

  await t.test("page loads the pushed profile with one query and paints frames", async () => {
    const queries = [];
    const count = (r) => { if (r.url().includes("/api/v1/")) queries.push(new URL(r.url()).pathname); };
    page.on("request", count);
    await page.goto(url);
    await settle(page);
    page.off("request", count);
    const err = await page.locator("#error").textContent();
    assert.equal(await page.evaluate(() => window.kiln.status()), "ok", `page status (error box: ${err})`);
    // The flame graph and the table come from one request (one merged tree on the server).
    assert.equal(queries.filter((q) => q === "/api/v1/flamegraph").length, 1, queries.join(" "));
    assert.equal(queries.filter((q) => q === "/api/v1/top").length, 0, queries.join(" "));
    const fr = await frames(page);
    const names = new Set(fr.map((f) => f.name));
    for (const n of ["main.fib", "main.workB", "main.main", "runtime.main"]) assert.ok(names.has(n), `frame ${n} painted`);
    const r = await root(page);
    const cw = await canvasWidth(page);
    assert.ok(Math.abs(r.w - cw) < 1 && r.y === 0, "root spans the canvas on top");
    assert.equal(r.total, TOTAL_NS, "root total equals the profile's total CPU time");
    assert.ok(fr.find((f) => f.name === "runtime.main").y > r.y, "icicle: children below their parent");
    assert.equal(await page.locator("#query").inputValue(), sel);
    assert.equal(await page.locator("#range").inputValue(), "custom");
    const px = await page.evaluate(() => {
      const c = document.getElementById("flamegraph");
      const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
      let painted = 0;
      for (let i = 3; i < d.length; i += 4 * 16) if (d[i] > 0) painted++;
      return { painted, backing: c.width, css: c.clientWidth };
    });
    assert.ok(px.painted > 100, `canvas has painted pixels (${px.painted})`);
    assert.equal(px.backing, px.css * 2, "canvas backing store follows devicePixelRatio");
    // The table came with the graph.
    assert.ok(await page.locator('#top-table tbody tr[data-name="main.fib"]').count(), "top table filled");
    await shot(page, "01-flamegraph");
  });

  await t.test("tooltip: self, total, % of total and of the zoomed frame, CPU time, kind", async () => {
    const { pos } = await frameCenter(page, "main.workB");
    await page.locator("#flamegraph").hover({ position: pos });
    const tip = page.locator("#tooltip");
    await tip.waitFor({ state: "visible" });
    const text = await tip.innerText();
    assert.match(text, /main\.workB/);
    assert.match(text, /Total\s+1\.22 s/, text);
    assert.match(text, /Self\s+1\.11 s/, text);
    assert.match(text, /% of total\s+34\.\d%/, text);
    assert.match(text, /CPU\s+0\.00\d cores on average/, text);
    assert.match(text, /Kind\s+user/, text);
    assert.match(text, /Package\s+main/, text);
    await shot(page, "02-tooltip");
    const rt = await frameCenter(page, "runtime.main");
    await page.locator("#flamegraph").hover({ position: rt.pos });
    assert.match(await tip.innerText(), /Kind\s+runtime/);
  });

  await t.test("click zooms; ancestors collapse into one bar; the bar zooms out; Esc resets", async () => {
    const { pos } = await frameCenter(page, "main.workA");
    await page.locator("#flamegraph").click({ position: pos });
    await page.evaluate(() => window.kiln.idle());
    const cw = await canvasWidth(page);
    let fr = await frames(page);
    const z = fr.find((f) => f.name === "main.workA" && !f.collapsed);
    assert.ok(z && z.x === 0 && Math.abs(z.w - cw) < 1 && z.depth === 1, `zoomed frame spans the width under the bar: ${JSON.stringify(z)}`);
    assert.deepEqual(await page.evaluate(() => window.kiln.zoomPath()), ["runtime.main", "main.main", "main.workA"]);
    assert.deepEqual(fr.filter((f) => f.collapsed).map((f) => f.depth), [0], "one collapsed bar for all ancestors");
    assert.ok(!fr.some((f) => f.name === "main.workB"), "siblings of the zoomed frame are gone");
    assert.match(await page.locator("#breadcrumbs").innerText(), /main\.main\s*›\s*main\.workA/);
    assert.deepEqual(params(page, "zoom"), ["runtime.main", "main.main", "main.workA"], "zoom path in the URL");
    // % of zoomed in the tooltip.
    const fib = await frameCenter(page, "main.fib");
    await page.locator("#flamegraph").hover({ position: fib.pos });
    assert.match(await page.locator("#tooltip").innerText(), /% of zoomed\s+\d+/);
    // The bar zooms out one level.
    await page.locator("#flamegraph").click({ position: { x: 50, y: 5 } });
    await page.evaluate(() => window.kiln.idle());
    assert.deepEqual(await page.evaluate(() => window.kiln.zoomPath()), ["runtime.main", "main.main"]);
    await page.locator("#flamegraph").focus();
    await page.keyboard.press("Escape");
    await page.evaluate(() => window.kiln.idle());
    assert.deepEqual(await page.evaluate(() => window.kiln.zoomPath()), []);
    fr = await frames(page);
    assert.ok(fr.some((f) => f.name === "main.workB"), "siblings are back");
  });

  await t.test("search highlights, totals, filters the table, Enter/n zooms to matches", async () => {
    await page.locator("#search").fill("FIB");
    await page.waitForFunction(() => window.kiln.state().search === "FIB");
    await page.evaluate(() => window.kiln.idle());
    const fr = await frames(page);
    const hl = fr.filter((f) => f.highlighted);
    assert.ok(hl.length > 0 && hl.every((f) => /fib/i.test(f.name)), "only matching frames are highlighted");
    const pct = Number(await page.locator("#search-match").getAttribute("data-percent"));
    assert.ok(Math.abs(pct - FIB_CUM_PCT) < 0.05, `matched share ${pct}% ≈ main.fib cumulative ${FIB_CUM_PCT.toFixed(2)}%`);
    assert.ok((await page.locator("#search-match").innerText()).includes(pct.toFixed(1)));
    const rows = await page.locator("#top-table tbody tr[data-name]").evaluateAll((rs) => rs.map((r) => r.dataset.name));
    assert.deepEqual(rows, ["main.fib"], "the table is filtered by the search");
    await shot(page, "03-search");
    // Enter in the box zooms to the first match, n to the next (asyncPreempt is called from
    // several places).
    await page.locator("#search").fill("asyncPreempt");
    await page.waitForFunction(() => window.kiln.state().search === "asyncPreempt");
    const count = Number(await page.locator("#search-match").getAttribute("data-count"));
    assert.ok(count >= 2, `several outermost matches: ${count}`);
    await page.locator("#search").press("Enter");
    await page.evaluate(() => window.kiln.idle());
    const first = await page.evaluate(() => window.kiln.zoomPath());
    assert.equal(first.at(-1), "runtime.asyncPreempt");
    await page.locator("#flamegraph").focus();
    await page.keyboard.press("n");
    await page.evaluate(() => window.kiln.idle());
    const second = await page.evaluate(() => window.kiln.zoomPath());
    assert.equal(second.at(-1), "runtime.asyncPreempt");
    assert.notDeepEqual(second, first, "n moves to another match");
    assert.match(await page.locator("#search-match").innerText(), /#2/);
    await page.keyboard.press("Escape");
    // Regex between slashes, case-insensitive.
    await page.locator("#search").fill("/^MAIN\\.work[ab]$/");
    await page.waitForFunction(() => window.kiln.state().search.startsWith("/^MAIN"));
    await page.evaluate(() => window.kiln.idle());
    const names = new Set((await frames(page)).filter((f) => f.highlighted).map((f) => f.name));
    assert.deepEqual([...names].sort(), ["main.workA", "main.workB"]);
    assert.ok(param(page, "search").startsWith("/^MAIN"), "search kept in the URL");
    await page.locator("#search").fill("");
    await page.waitForFunction(() => window.kiln.state().search === "");
  });

  await t.test("top table: values, sorting, filter box, a row click searches it", async () => {
    const row = page.locator('#top-table tbody tr[data-name="main.fib"]');
    await row.waitFor();
    const cells = await row.locator("td").allInnerTexts();
    assert.deepEqual(cells.slice(0, 5).map((c) => c.trim()), ["main.fib", "2.06 s", "58.4%", "2.31 s", "65.4%"]);
    let order = await page.locator("#top-table tbody tr[data-name]").evaluateAll((rs) => rs.map((r) => r.dataset.name));
    assert.deepEqual(order.slice(0, 3), ["main.fib", "main.workB", "runtime.asyncPreempt"], "self descending by default");
    await page.locator('#top-table th[data-key="name"] button').click();
    order = await page.locator("#top-table tbody tr[data-name]").evaluateAll((rs) => rs.map((r) => r.dataset.name));
    assert.deepEqual(order, [...order].sort((a, b) => a.localeCompare(b)), "sorted by name");
    await page.locator('#top-table th[data-key="total"] button').click();
    const totals = await page.locator("#top-table tbody tr[data-name]").evaluateAll((rs) => rs.map((r) => Number(r.dataset.total)));
    assert.deepEqual(totals, [...totals].sort((a, b) => b - a), "sorted by total");
    await page.locator("#table-filter").fill("work");
    order = await page.locator("#top-table tbody tr[data-name]").evaluateAll((rs) => rs.map((r) => r.dataset.name));
    assert.deepEqual(order.sort(), ["main.workA", "main.workB"]);
    await page.locator("#table-filter").fill("");
    await page.locator('#top-table tbody tr[data-name="main.workB"] td.name-col').click();
    assert.equal(await page.locator("#search").inputValue(), "^main\\.workB$");
    await page.evaluate(() => window.kiln.idle());
    const hl = (await frames(page)).filter((f) => f.highlighted).map((f) => f.name);
    assert.ok(hl.length >= 1 && hl.every((n) => n === "main.workB"), `only main.workB highlighted: ${hl}`);
    await page.locator('#top-table tbody tr[data-name="main.workB"] td.name-col').click();
    assert.equal(await page.locator("#search").inputValue(), "", "a second click clears it");
  });

  await t.test("transforms: focus, hide, merge, collapse recursion, collapse library, invert; undoable, in the URL", async () => {
    const countFib = async () => (await frames(page)).filter((f) => f.name === "main.fib").length;
    // Focus on main.fib (frame menu).
    await menu(page, "main.fib", "focus");
    assert.deepEqual(params(page, "tf"), ["focus:main.fib"]);
    let r = await root(page);
    assert.equal(r.total, 2310e6, "focus: only stacks through main.fib (its cumulative time)");
    assert.equal((await frames(page)).find((f) => f.depth === 1).name, "main.fib");
    assert.match(await page.locator("#tf-list").innerText(), /Focus on main\.fib/);
    await shot(page, "04-transform-focus");
    await page.locator("#tf-undo").click();
    await settle(page);
    assert.deepEqual(params(page, "tf"), []);
    assert.equal((await root(page)).total, TOTAL_NS, "undo restores the tree");
    // Hide by regex (the box): main.workA/B frames vanish, their callees move up, time is kept.
    await page.locator("#hide-input").fill("^main\\.work");
    await page.locator("#hide-input").press("Enter");
    await settle(page);
    assert.deepEqual(params(page, "tf"), ["hide:^main\\.work"]);
    let fr = await frames(page);
    assert.ok(!fr.some((f) => /^main\.work/.test(f.name)), "hidden frames are gone");
    assert.equal((await root(page)).total, TOTAL_NS);
    assert.equal(fr.find((f) => f.name === "main.fib" && f.depth === 3)?.name, "main.fib", "main.fib moved up under main.main");
    // Merge main.main into its callers (keyboard: hover + m), stacked on the hide.
    const mm = await frameCenter(page, "main.main");
    await page.locator("#flamegraph").focus();
    await page.locator("#flamegraph").hover({ position: mm.pos });
    await page.keyboard.press("m");
    await settle(page);
    assert.deepEqual(params(page, "tf"), ["hide:^main\\.work", "merge:main.main"]);
    fr = await frames(page);
    assert.ok(!fr.some((f) => f.name === "main.main"));
    assert.equal(fr.find((f) => f.name === "main.fib" && f.depth === 2)?.name, "main.fib", "main.fib now right under runtime.main");
    // Remove the first chip: only the merge is left.
    await page.locator("#tf-list .chip").first().locator("button").click();
    await settle(page);
    assert.deepEqual(params(page, "tf"), ["merge:main.main"]);
    await page.keyboard.press("z");
    await settle(page);
    assert.deepEqual(params(page, "tf"), []);
    // Collapse recursion (all functions): main.fib appears once per stack.
    const before = await countFib();
    await page.locator("#tf-rec-all").click();
    await settle(page);
    fr = await frames(page);
    const fibs = fr.filter((f) => f.name === "main.fib");
    assert.ok(fibs.length < before, `fewer main.fib frames (${fibs.length} < ${before})`);
    const byIdx = new Map(fr.map((f) => [`${f.depth}:${f.x}`, f]));
    for (const f of fibs) {
      const parent = fr.find((p) => p.depth === f.depth - 1 && p.x <= f.x + 0.01 && p.x + p.w >= f.x + f.w - 0.01);
      assert.notEqual(parent?.name, "main.fib", "no main.fib directly under main.fib");
    }
    assert.ok(byIdx.size > 0);
    await page.keyboard.press("z");
    await settle(page);
    // Collapse library: runtime.* frames become one "runtime" frame.
    await menu(page, "runtime.main", "lib");
    assert.deepEqual(params(page, "tf"), ["lib:runtime"]);
    fr = await frames(page);
    assert.ok(fr.some((f) => f.name === "runtime") && !fr.some((f) => f.name === "runtime.main"), "library collapsed");
    await page.keyboard.press("z");
    await settle(page);
    // Invert (i): functions using CPU on top, main.fib widest with its self time.
    await page.locator("#flamegraph").focus();
    await page.keyboard.press("i");
    await settle(page);
    assert.deepEqual(params(page, "tf"), ["invert:"]);
    fr = await frames(page);
    const top1 = fr.filter((f) => f.depth === 1).sort((a, b) => b.w - a.w)[0];
    assert.equal(top1.name, "main.fib");
    assert.equal(top1.total, 2060e6, "inverted: main.fib's self time");
    // The table follows the transformed tree.
    assert.match(await page.locator("#table-note").innerText(), /after transforms/);
    // The URL restores the transforms.
    const p2 = await ctx.newPage();
    await p2.goto(page.url());
    await settle(p2);
    assert.equal((await frames(p2)).filter((f) => f.depth === 1).sort((a, b) => b.w - a.w)[0].name, "main.fib");
    await p2.close();
    await shot(page, "05-transform-invert");
    await page.locator("#tf-invert").click();
    await settle(page);
    assert.deepEqual(params(page, "tf"), []);
  });

  await t.test("sandwich view: callers above, callees below", async () => {
    await page.locator('#top-table tbody tr[data-name="main.workB"] [data-action=sandwich]').click();
    await settle(page);
    assert.equal(param(page, "view"), "sandwich");
    assert.equal(param(page, "fn"), "main.workB");
    assert.ok(await page.locator("#sandwich-panel").isVisible());
    assert.equal(await page.locator(".flame-panel").isVisible(), false);
    const callers = await page.evaluate(() => window.kiln.sandwichFrames("callers"));
    const callees = await page.evaluate(() => window.kiln.sandwichFrames("callees"));
    const rootC = callers.find((f) => f.depth === 0);
    assert.equal(rootC.name, "main.workB");
    assert.equal(rootC.total, 1220e6);
    assert.deepEqual(callers.filter((f) => f.depth === 1).map((f) => f.name), ["main.main"]);
    assert.ok(callers.find((f) => f.depth === 0).y > callers.find((f) => f.depth === 1).y, "callers grow upwards");
    assert.ok(callees.some((f) => f.depth === 1), "callees listed");
    await shot(page, "06-sandwich");
    await page.keyboard.press("1");
    await settle(page);
    assert.equal(param(page, "view"), null);
  });

  await t.test("diff: both ranges editable, colours, palette, movers", async () => {
    await page.locator("#compare-on").check();
    await settle(page);
    assert.equal(param(page, "cmp"), "1");
    // Same selection and range on both sides: nothing changed.
    let fr = await frames(page);
    assert.ok(fr.length > 1);
    for (const f of fr.filter((x) => !x.collapsed)) assert.equal(f.diff.leftTotal, f.diff.rightTotal, f.name);
    // Baseline (A) range moved to an hour before: empty, so everything in B grew.
    await page.locator("#cmp-from").fill(String(profileSecs - 7200));
    await page.locator("#cmp-from").press("Enter");
    await settle(page);
    await page.locator("#cmp-until").fill(String(profileSecs - 3600));
    await page.locator("#cmp-until").press("Enter");
    await settle(page);
    assert.equal(param(page, "cmp_from"), String(profileSecs - 7200));
    assert.equal(param(page, "cmp_until"), String(profileSecs - 3600));
    fr = await frames(page);
    const r = await root(page);
    assert.deepEqual(r.diff, { leftTotal: 0, leftSelf: 0, rightTotal: TOTAL_NS, rightSelf: 0 });
    const { pos } = await frameCenter(page, "main.fib");
    await page.locator("#flamegraph").hover({ position: pos });
    const tip = await page.locator("#tooltip").innerText();
    assert.match(tip, /A \(baseline\)/);
    assert.match(tip, /B \(current\)/);
    assert.match(tip, /Share change\s+\+\d/);
    // Movers: main.fib's self share grew by 58 points.
    const mv = page.locator('#movers-table tbody tr[data-name="main.fib"]');
    await mv.waitFor();
    assert.ok(Math.abs(Number(await mv.getAttribute("data-change")) - 58.36) < 0.1);
    const firstMover = await page.locator("#movers-table tbody tr").first().getAttribute("data-name");
    assert.equal(firstMover, "main.fib");
    // The current range (B) is editable on the same page; the description follows.
    assert.match(await page.locator("#cur-desc").innerText(), new RegExp(String(SERVICE)));
    // Colour-blind-safe palette: fills change from red to orange hues.
    const colorOf = () => page.evaluate(() => {
      const f = window.kiln.frames().find((x) => x.name === "main.fib");
      const c = document.getElementById("flamegraph");
      const d = c.getContext("2d").getImageData(Math.round((f.x + f.w / 2) * 2), Math.round((f.y + 4) * 2), 1, 1).data;
      return [d[0], d[1], d[2]];
    });
    const red = await colorOf();
    assert.ok(red[0] > red[1] + 60 && red[0] > red[2] + 60, `grew is red: ${red}`);
    await shot(page, "07-diff");
    await page.locator("#palette").selectOption("cb");
    await settle(page);
    assert.equal(param(page, "palette"), "cb");
    const orange = await colorOf();
    assert.ok(orange[1] > red[1] + 20 && orange[0] > orange[2], `grew is orange in the colour-blind palette: ${orange} vs ${red}`);
    await shot(page, "08-diff-colourblind");
    // d toggles compare off.
    await page.locator("#flamegraph").focus();
    await page.keyboard.press("d");
    await settle(page);
    assert.equal(param(page, "cmp"), null);
    assert.equal((await root(page)).diff, undefined);
  });

  await t.test("exports: pprof opened by go tool pprof, folded, SVG, JSON", async () => {
    await page.goto(url);
    await settle(page);
    const href = await page.locator("#download-pprof").evaluate((a) => a.href);
    const u = new URL(href);
    assert.equal(u.pathname, "/api/v1/pprof");
    assert.equal(u.searchParams.get("query"), sel);
    const res = await page.request.get(href);
    assert.equal(res.status(), 200);
    const body = await res.body();
    assert.ok(body[0] === 0x1f && body[1] === 0x8b, "gzip");
    const file = path.join(os.tmpdir(), `kiln-ui-${SERVICE}.pb.gz`);
    fs.writeFileSync(file, body);
    const go = spawnSync(GO, ["tool", "pprof", "-top", file], { encoding: "utf8", timeout: 60_000 });
    if (go.error?.code === "ENOENT") console.log(`# go not found (${GO}): pprof checked as gzip only`);
    else {
      assert.equal(go.status, 0, go.stderr);
      assert.match(go.stdout, /2060ms\s+58\.36%.*main\.fib/, go.stdout);
    }
    fs.rmSync(file, { force: true });
    const folded = (await downloaded(page, () => page.locator("#export-folded").click())).toString();
    assert.match(folded, /^runtime\.main;main\.main;main\.workA;main\.fib(;main\.fib)* \d+$/m);
    const sum = folded.trim().split("\n").reduce((a, l) => a + Number(l.split(" ").pop()), 0);
    assert.equal(sum, TOTAL_NS, "folded stacks add up to the total");
    const svg = (await downloaded(page, () => page.locator("#export-svg").click())).toString();
    assert.match(svg, /^<svg xmlns="http:\/\/www\.w3\.org\/2000\/svg"/);
    assert.ok(svg.includes(">main.fib</text>") && svg.includes("<title>main.workB"), "frames and tooltips in the SVG");
    const json = JSON.parse((await downloaded(page, () => page.locator("#export-json").click())).toString());
    assert.equal(json.state.query, sel);
    assert.equal(json.root.total, TOTAL_NS);
  });

  await t.test("keyboard shortcuts and the ? overlay", async () => {
    await page.locator("#flamegraph").focus();
    await page.keyboard.press("?");
    const help = page.locator("#help-dialog");
    await help.waitFor({ state: "visible" });
    const text = await help.innerText();
    for (const k of ["Zoom out one level", "Reset zoom", "next search match", "Invert", "Focus the search box", "View: flame graph only"]) {
      assert.ok(text.includes(k), `overlay lists "${k}"`);
    }
    await shot(page, "09-shortcuts");
    await page.keyboard.press("?");
    await help.waitFor({ state: "hidden" });
    await page.keyboard.press("/");
    assert.equal(await page.evaluate(() => document.activeElement.id), "search");
    await page.keyboard.press("Escape");
    await page.locator("#flamegraph").focus();
    await page.keyboard.press("f");
    await settle(page);
    assert.equal(param(page, "orient"), "flame");
    const fr = await frames(page);
    assert.ok((await root(page)).y > fr.find((f) => f.name === "runtime.main").y, "flame: root at the bottom");
    await shot(page, "10-flame-orientation");
    await page.keyboard.press("f");
    await page.keyboard.press("2");
    await settle(page);
    assert.equal(param(page, "view"), "graph");
    assert.equal(await page.locator(".table-panel").isVisible(), false);
    await page.keyboard.press("3");
    await settle(page);
    assert.equal(await page.locator(".flame-panel").isVisible(), false);
    await page.keyboard.press("1");
    await settle(page);
    const { pos } = await frameCenter(page, "main.workA");
    await page.locator("#flamegraph").click({ position: pos });
    await page.keyboard.press("u");
    await page.evaluate(() => window.kiln.idle());
    assert.deepEqual(await page.evaluate(() => window.kiln.zoomPath()), ["runtime.main", "main.main"]);
    await page.keyboard.press("0");
    await page.evaluate(() => window.kiln.idle());
    assert.deepEqual(await page.evaluate(() => window.kiln.zoomPath()), []);
  });

  await t.test("the whole view round-trips through the URL", async () => {
    const v = `${url}&search=fib&view=graph&orient=flame&color=kind&zoom=runtime.main&zoom=main.main&tf=hide%3A%5Eruntime%5C.asyncPreempt%24&split=service_name`;
    await page.goto(v);
    await settle(page);
    const s1 = await state(page);
    const f1 = await frames(page);
    assert.deepEqual(s1.zoom, ["runtime.main", "main.main"]);
    assert.deepEqual(s1.tf, [{ kind: "hide", arg: "^runtime\\.asyncPreempt$" }]);
    assert.equal(await page.locator("#color-by").inputValue(), "kind");
    assert.equal(await page.locator("#split").inputValue(), "service_name");
    const p2 = await ctx.newPage();
    await p2.goto(page.url());
    await settle(p2);
    assert.deepEqual(await state(p2), s1, "state restored exactly");
    assert.deepEqual(await frames(p2), f1, "same frames");
    await p2.close();
  });

  await t.test("selector editor: autocomplete of names, operators and values", async () => {
    await page.goto(`${KILN_URL}/?from=${from}&until=${until}`);
    await settle(page);
    const q = page.locator("#query");
    await q.fill("");
    await q.focus();
    await q.type("{serv");
    await page.locator('#query-suggest li[data-value="service_name"]').waitFor();
    await q.press("Tab");
    assert.equal(await q.inputValue(), '{service_name="');
    await q.type(SERVICE.slice(0, 12));
    const opt = page.locator(`#query-suggest li[data-value="${SERVICE}"]`);
    await opt.waitFor();
    await shot(page, "11-autocomplete");
    await opt.click();
    assert.equal(await q.inputValue(), sel);
    await q.press("Enter");
    await settle(page);
    assert.equal(param(page, "query"), sel);
    assert.equal((await root(page)).total, TOTAL_NS);
    // Operators after a name.
    await q.fill("{service_name ");
    await q.press("End");
    await q.type(" ");
    await page.locator('#query-suggest li[data-value="=~"]').waitFor();
    assert.equal(await page.locator("#query-suggest li").count(), 4);
    await q.fill(`{service_name=~"ui-test-.*"}`);
    await q.press("Enter");
    await settle(page);
    assert.equal(await page.evaluate(() => window.kiln.status()), "ok");
  });

  await t.test("CPU-over-time chart in cores, split by a label, brush narrows, click selects", async () => {
    // Three windows of two pods, ingested as folded stacks at known times (10 s windows).
    const base = Math.floor(Date.now() / 1000 / 60) * 60 - 600;
    for (const [k, pod, v] of [[0, "a", 2000], [1, "a", 1000], [1, "b", 500], [2, "b", 3000]]) {
      const t0 = base + k * 120;
      const res = await fetch(`${KILN_URL}/ingest?name=${CHART_SVC}.cpu%7Bpod%3D${pod}%7D&format=folded&from=${t0}&until=${t0 + 10}&sampleRate=100`, {
        method: "POST", body: `main;work_${pod} ${v}\n`,
      });
      assert.equal(res.status, 200, await res.text());
    }
    const csel = `{service_name=${quote(CHART_SVC)}}`;
    await page.goto(`${KILN_URL}/?query=${encodeURIComponent(csel)}&from=${base - 60}&until=${base + 360}&split=pod`);
    await settle(page);
    const series = await page.evaluate(() => window.kiln.series());
    assert.equal(series.rate, "cores");
    assert.deepEqual(series.layers.map((l) => l.key).sort(), ["pod=a", "pod=b"]);
    // 2000 samples at 100 Hz = 20 s of CPU in a bucket of `step` seconds.
    const a = series.layers.find((l) => l.key === "pod=a");
    const i0 = series.times.indexOf((base - (base % series.step)) * 1000);
    assert.ok(Math.abs(a.values[i0] - 20 / series.step) < 1e-6, `cores: ${a.values[i0]} vs ${20 / series.step} (step ${series.step})`);
    assert.equal(await page.locator("#chart-legend .legend-item").count(), 2);
    await shot(page, "12-chart-split");
    // Brush from 25 % to 60 % of the plot: the range becomes that slice, absolute.
    const g = await page.evaluate(() => window.kiln.chartGeometry());
    const box = await page.locator("#chart").boundingBox();
    const x0 = box.x + g.left + g.width * 0.25, x1 = box.x + g.left + g.width * 0.6, y = box.y + g.top + g.height / 2;
    await page.mouse.move(x0, y);
    await page.mouse.down();
    await page.mouse.move((x0 + x1) / 2, y, { steps: 3 });
    await page.mouse.move(x1, y, { steps: 3 });
    await page.mouse.up();
    await settle(page);
    const span = 420;
    const f = Number(param(page, "from")), u = Number(param(page, "until"));
    assert.ok(Math.abs(f - (base - 60 + span * 0.25)) <= 2 && Math.abs(u - (base - 60 + span * 0.6)) <= 2, `brushed ${f}..${u}`);
    const names = new Set((await frames(page)).map((x) => x.name));
    assert.ok(names.has("work_a") && names.has("work_b"), "the middle window holds both pods");
    // Clicking a legend entry selects the series.
    await page.locator('#chart-legend .legend-item[data-key="pod=b"]').click();
    await settle(page);
    assert.equal(param(page, "query"), `{service_name=${quote(CHART_SVC)}, pod="b"}`);
    const after = new Set((await frames(page)).map((x) => x.name));
    assert.ok(after.has("work_b") && !after.has("work_a"), "only pod b");
  });

  await t.test("a fresh live page polls until the first profiles arrive, and says so", async () => {
    const late = `${SERVICE}-late`;
    await page.goto(`${KILN_URL}/?query=${encodeURIComponent(`{service_name=${quote(late)}}`)}&from=now-5m`);
    await page.waitForFunction(() => window.kiln.status() === "waiting");
    assert.match(await page.locator("#status").innerText(), /waiting for the first profiles/i);
    await shot(page, "13-waiting");
    const now = Math.floor(Date.now() / 1000);
    const res = await fetch(`${KILN_URL}/ingest?name=${late}&format=folded&from=${now - 10}&until=${now}`, { method: "POST", body: "main;late_work 50\n" });
    assert.equal(res.status, 200);
    await page.waitForFunction(() => window.kiln.status() === "ok", null, { timeout: 15_000 });
    assert.ok((await frames(page)).some((f) => f.name === "late_work"), "appeared without a reload");
  });

  await t.test("profile type picker and time-range picker (presets, relative, absolute)", async () => {
    await page.goto(url);
    await settle(page);
    const types = await page.locator("#profile-type option").evaluateAll((os) => os.map((o) => o.value));
    assert.ok(types.includes("cpu:nanoseconds") && types.includes("samples:count"), `profile types: ${types}`);
    await page.locator("#profile-type").selectOption("samples:count");
    await settle(page);
    assert.equal(param(page, "type"), "samples:count");
    assert.equal((await root(page)).total, 353, "3530 ms at 10 ms per sample = 353 samples");
    await page.locator("#profile-type").selectOption("cpu:nanoseconds");
    await settle(page);
    await page.locator("#range").selectOption("now-24h");
    await settle(page);
    assert.equal(param(page, "from"), "now-24h");
    assert.equal(param(page, "until"), null);
    assert.equal(new URL(await page.locator("#download-pprof").evaluate((a) => a.href)).searchParams.get("from"), "now-24h");
    await page.locator("#from").fill("now-30m");
    await page.locator("#from").press("Enter");
    await settle(page);
    assert.equal(param(page, "from"), "now-30m");
    // Absolute, typed as a date (UTC in this browser context).
    const iso = (s) => new Date(s * 1000).toISOString().slice(0, 19).replace("T", " ");
    await page.locator("#from").fill(iso(profileSecs - 120));
    await page.locator("#from").press("Enter");
    await settle(page);
    await page.locator("#until").fill(iso(profileSecs + 120));
    await page.locator("#until").press("Enter");
    await settle(page);
    assert.equal(param(page, "from"), String(profileSecs - 120));
    assert.equal(param(page, "until"), String(profileSecs + 120));
    assert.equal(await page.locator("#range").inputValue(), "custom");
    assert.equal((await root(page)).total, TOTAL_NS);
    await page.locator("#from").fill("last tuesday");
    await page.locator("#from").press("Enter");
    assert.match(await page.locator("#error").innerText(), /cannot read the time/);
  });

  await t.test("Pyroscope SDK upload (captured push request) renders", async () => {
    const body = fs.readFileSync(SDK_PUSH);
    const res = await fetch(`${KILN_URL}/push.v1.PusherService/Push`, {
      method: "POST", headers: { "Content-Type": "application/proto", "Content-Encoding": "gzip" }, body,
    });
    assert.equal(res.status, 200, await res.text());
    const names = await api(`/api/v1/labels/service_name/values?from=0&until=now`);
    const sdk = names.body.values.find((v) => !v.startsWith("ui-test-"));
    assert.ok(sdk, `SDK service listed: ${names.body.values}`);
    await page.goto(`${KILN_URL}/?query=${encodeURIComponent(`{service_name=${quote(sdk)}}`)}&from=0&until=now`);
    await settle(page);
    assert.equal(await page.evaluate(() => window.kiln.status()), "ok");
    assert.ok((await frames(page)).length > 3);
    await shot(page, "14-sdk-upload");
  });

  await t.test("themes (system, light, dark) and no layout breakage at 1280×720 and 1920×1080", async () => {
    await page.goto(url);
    await settle(page);
    const bg = () => page.evaluate(() => getComputedStyle(document.body).backgroundColor);
    const light = await bg();
    await page.locator("#theme-toggle").click(); // system → light
    await page.locator("#theme-toggle").click(); // light → dark
    assert.equal(await page.evaluate(() => document.documentElement.dataset.theme), "dark");
    assert.notEqual(await bg(), light);
    await page.evaluate(() => window.kiln.idle());
    await shot(page, "15-dark");
    await page.reload();
    await settle(page);
    assert.equal(await page.evaluate(() => document.documentElement.dataset.theme), "dark", "theme kept");
    await page.locator("#theme-toggle").click(); // dark → system
    assert.equal(await page.evaluate(() => document.documentElement.dataset.theme), undefined);
    for (const [w, h] of [[1280, 720], [1920, 1080]]) {
      await page.setViewportSize({ width: w, height: h });
      await page.waitForFunction((w_) => {
        const r = window.kiln.frames().find((f) => f.depth === 0);
        return r && Math.abs(r.w - document.getElementById("flamegraph").clientWidth) < 1;
      }, w);
      await page.evaluate(() => window.kiln.idle());
      const check = await page.evaluate(() => {
        const overflow = document.documentElement.scrollWidth - window.innerWidth;
        // Controls of the toolbar and view bar must not overlap each other.
        const boxes = [...document.querySelectorAll("#controls > *, .viewbar > *")].map((e) => [e.id || e.className, e.getBoundingClientRect()]);
        const overlaps = [];
        for (let i = 0; i < boxes.length; i++) for (let j = i + 1; j < boxes.length; j++) {
          const [a, ra] = boxes[i], [b, rb] = boxes[j];
          if (ra.width && rb.width && ra.left < rb.right - 1 && rb.left < ra.right - 1 && ra.top < rb.bottom - 1 && rb.top < ra.bottom - 1) overlaps.push(`${a}/${b}`);
        }
        const flameTop = document.getElementById("flamegraph").getBoundingClientRect().top;
        return { overflow, overlaps, flameTop };
      });
      assert.ok(check.overflow <= 0, `no horizontal scroll at ${w}×${h}: ${check.overflow}px`);
      assert.deepEqual(check.overlaps, [], `no overlapping controls at ${w}×${h}`);
      assert.ok(check.flameTop < h, `the flame graph starts above the fold at ${w}×${h} (${check.flameTop}px)`);
      await shot(page, `16-layout-${w}x${h}`);
    }
    await page.setViewportSize({ width: 1280, height: 900 });
  });

  await t.test("errors, empty ranges, (other) notes, reasons", async () => {
    const bad = `{service_name=${quote(SERVICE)}`;
    const direct = await api(`/api/v1/flamegraph?${new URLSearchParams({ query: bad, from: String(from), until: String(until) })}`);
    assert.ok(direct.status === 400, `server rejects the selector (HTTP ${direct.status})`);
    await page.goto(url);
    await settle(page);
    await page.locator("#query").fill(bad);
    await page.locator("#query").press("Escape");
    await page.locator("#query").press("Enter");
    await settle(page);
    assert.equal(await page.evaluate(() => window.kiln.status()), "error");
    assert.ok((await page.locator("#error").innerText()).includes(direct.body.error));
    assert.equal((await frames(page)).length, 0, "no stale flame graph under an error");
    await shot(page, "17-error");
    // An absolute range without samples: empty, not waiting.
    await page.goto(`${KILN_URL}/?query=${encodeURIComponent(sel)}&from=${profileSecs - 7200}&until=${profileSecs - 3600}`);
    await settle(page);
    assert.equal(await page.evaluate(() => window.kiln.status()), "empty");
    // The server's node budget.
    await page.goto(`${url}&max_nodes=4`);
    await settle(page);
    assert.match(await page.locator("#truncated-note").innerText(), /\d+ small nodes were folded into "\(other\)"/);
    assert.ok((await frames(page)).some((f) => f.name === "(other)"));
    // The table still lists every function (computed before folding).
    assert.ok(await page.locator('#top-table tbody tr[data-name="main.fib"]').count());
    // A frame without a name says why.
    const svc = `${SERVICE}-reason`;
    const now = Math.floor(Date.now() / 1000);
    const res = await fetch(`${KILN_URL}/ingest?name=${svc}&format=folded&from=${now - 20}&until=${now - 10}`, {
      method: "POST", body: "main;work;[truncated: stack copy exhausted] 60\nmain;work 40\n",
    });
    assert.equal(res.status, 200);
    await page.goto(`${KILN_URL}/?query=${encodeURIComponent(`{service_name=${quote(svc)}}`)}&from=${now - 600}&until=${now + 60}&color=kind`);
    await settle(page);
    const { f, pos } = await frameCenter(page, "[truncated: stack copy exhausted]");
    assert.equal(f.reason, "truncated");
    await page.locator("#flamegraph").hover({ position: pos });
    const tip = await page.locator("#tooltip").innerText();
    assert.match(tip, /Kind\s+unsymbolized/, tip);
    assert.match(tip, /Why no name\s+the stack was cut here/, tip);
  });

  await t.test("no uncaught errors in the page", () => {
    assert.deepEqual(pageErrors, []);
  });
});

// ---------------------------------------------------------------- with --auth-token

test("with --auth-token the page asks for the token, then loads and downloads with it", {
  skip: !KILN_AUTH_URL && "KILN_AUTH_URL not set",
}, async () => {
  const gz = fs.readFileSync(PROFILE);
  const push = (auth) => fetch(`${KILN_AUTH_URL}/push.v1.PusherService/Push`, {
    method: "POST",
    headers: { "Content-Type": "application/json", ...(auth ? { Authorization: `Bearer ${auth}` } : {}) },
    body: JSON.stringify({
      series: [{
        labels: [{ name: "__name__", value: "process_cpu" }, { name: "service_name", value: SERVICE }],
        samples: [{ rawProfile: gz.toString("base64") }],
      }],
    }),
  });
  assert.equal((await push(null)).status, 401, "push without the token is refused");
  const res = await push(KILN_AUTH_TOKEN);
  assert.equal(res.status, 200, `push with the token: ${await res.text()}`);

  const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 }, timezoneId: "UTC", acceptDownloads: true });
  const p = await ctx.newPage();
  const errors = [];
  p.on("pageerror", (e) => errors.push(e.message));
  const authUrl = `${KILN_AUTH_URL}/?value=${encodeURIComponent(SERVICE)}&from=${from}&until=${until}`;
  await p.goto(authUrl);
  const dialog = p.locator("#auth-dialog");
  await dialog.waitFor({ state: "visible" });
  assert.match(await p.locator("#auth-message").innerText(), /requires a token/);

  // A wrong token: asked again, saying the server refused it.
  await p.locator("#auth-token").fill("wrong");
  await p.locator("[data-testid=auth-submit]").click();
  await p.waitForFunction(() => document.getElementById("auth-dialog").open
    && /refused/.test(document.getElementById("auth-message").textContent));

  await p.locator("#auth-token").fill(KILN_AUTH_TOKEN);
  await p.locator("[data-testid=auth-submit]").click();
  await settle(p);
  assert.equal(await dialog.isVisible(), false, "prompt closed");
  assert.equal(await p.evaluate(() => window.kiln.status()), "ok", await p.locator("#error").textContent());
  const names = new Set((await frames(p)).map((f) => f.name));
  assert.ok(names.has("main.fib"), "frames painted with the token");
  assert.equal(await p.evaluate(() => sessionStorage.getItem("kiln.authToken")), KILN_AUTH_TOKEN);
  assert.equal(await p.evaluate(() => localStorage.getItem("kiln.authToken")), null, "not remembered unless asked");

  // The pprof download sends the token too.
  const [download] = await Promise.all([p.waitForEvent("download"), p.locator("#download-pprof").click()]);
  const file = fs.readFileSync(await download.path());
  assert.ok(file.length > 20 && file[0] === 0x1f && file[1] === 0x8b, `gzip magic: ${file.subarray(0, 2).toString("hex")}`);
  zlib.gunzipSync(file);

  // A reload in the same tab needs no prompt.
  await p.reload();
  await settle(p);
  assert.equal(await p.evaluate(() => window.kiln.status()), "ok");
  assert.equal(await dialog.isVisible(), false);
  assert.deepEqual(errors, []);
  await ctx.close();
});
