// Real-browser test of Kiln's web UI against a running Kiln server.
//
//   cd web && npm ci                       # once: installs playwright-core (no browser download)
//   KILN_URL=http://127.0.0.1:4100 [CHROMIUM=/usr/bin/chromium] [KILN_SCREENSHOT=/tmp/kiln-ui.png] \
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
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = path.dirname(fileURLToPath(import.meta.url));
const PROFILE = path.join(here, "..", "..", "testdata", "pprof", "go-runtime-pprof-cpu.pb.gz");
const KILN_URL = (process.env.KILN_URL || "").replace(/\/+$/, "");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const SCREENSHOT = process.env.KILN_SCREENSHOT || "";
const SERVICE = `ui-test-${crypto.randomBytes(4).toString("hex")}`;
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

// ---------------------------------------------------------------- setup

let browser, page, from, until, profileSecs;
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
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 }, deviceScaleFactor: 2, timezoneId: "UTC" });
  page = await ctx.newPage();
  page.on("pageerror", (e) => pageErrors.push(e.message));
});

after(async () => {
  await browser?.close();
});

// ---------------------------------------------------------------- the walk-through
// One browser page, steps in order (each builds on the previous view).

test("Kiln web UI in a real browser", async (t) => {
  const url = `${KILN_URL}/?value=${encodeURIComponent(SERVICE)}&from=${from}&until=${until}`;

  await t.test("page loads the pushed profile and paints frames", async () => {
    await page.goto(url);
    await settle(page);
    const status = await page.evaluate(() => window.kiln.status());
    const err = await page.locator("#error").textContent();
    assert.equal(status, "ok", `page status (error box: ${err})`);
    const fr = await frames(page);
    assert.ok(fr.length > 3, `frames laid out: ${fr.length}`);
    const names = new Set(fr.map((f) => f.name));
    for (const n of ["main.fib", "main.workB", "main.main", "runtime.main"]) assert.ok(names.has(n), `frame ${n} painted`);
    // Root on top spans the width; icicle: children below their parent.
    const root = fr.find((f) => f.depth === 0);
    const cw = await canvasWidth(page);
    assert.ok(Math.abs(root.w - cw) < 1 && root.y === 0, "root spans the canvas on top");
    assert.equal(root.total, TOTAL_NS, "root total equals the profile's total CPU time");
    const rm = fr.find((f) => f.name === "runtime.main");
    assert.ok(rm.y > root.y, "children are drawn below their parent");
    // Selection is reflected in the controls and the canvas really has pixels (hi-DPI backing store).
    assert.equal(await page.locator("#label-name").inputValue(), "service_name");
    assert.equal(await page.locator("#label-value").inputValue(), SERVICE);
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
  });

  await t.test("hovering a frame shows a tooltip with name, total, self and %", async () => {
    const { pos } = await frameCenter(page, "main.workB");
    await page.locator("#flamegraph").hover({ position: pos });
    const tip = page.locator("#tooltip");
    await tip.waitFor({ state: "visible" });
    const text = await tip.innerText();
    assert.match(text, /main\.workB/);
    assert.match(text, /Total\s+1\.22 s/, `tooltip total formatted in seconds: ${text}`);
    assert.match(text, /Self\s+1\.11 s/, `tooltip self: ${text}`);
    assert.match(text, /% of total\s+34\.\d%/, `tooltip share: ${text}`);
  });

  await t.test("clicking a frame zooms into it; Esc resets", async () => {
    const { pos } = await frameCenter(page, "main.workA");
    await page.locator("#flamegraph").click({ position: pos });
    await page.evaluate(() => window.kiln.idle());
    const cw = await canvasWidth(page);
    const fr = await frames(page);
    const z = fr.find((f) => f.name === "main.workA" && !f.collapsed);
    assert.ok(z && z.x === 0 && Math.abs(z.w - cw) < 1, `zoomed frame spans the full width: ${JSON.stringify(z)}`);
    assert.deepEqual(await page.evaluate(() => window.kiln.zoomPath()), ["runtime.main", "main.main", "main.workA"]);
    const collapsed = fr.filter((f) => f.collapsed).map((f) => f.name);
    assert.deepEqual(collapsed, ["total", "runtime.main", "main.main"], "ancestors shown collapsed on top");
    assert.ok(!fr.some((f) => f.name === "main.workB"), "siblings of the zoomed frame are gone");
    assert.match(await page.locator("#breadcrumbs").innerText(), /main\.workA/);

    await page.keyboard.press("Escape");
    await page.evaluate(() => window.kiln.idle());
    assert.deepEqual(await page.evaluate(() => window.kiln.zoomPath()), []);
    const fr2 = await frames(page);
    const a = fr2.find((f) => f.name === "main.workA");
    assert.ok(a.w < cw * 0.9, "after Esc main.workA is back to its share of the width");
    assert.ok(fr2.some((f) => f.name === "main.workB"), "siblings are back");
  });

  await t.test("search highlights matching frames and shows the matched share", async () => {
    await page.locator("#search").fill("FIB");
    await page.waitForFunction(() => window.kiln.selection().search === "FIB");
    await page.evaluate(() => window.kiln.idle());
    const fr = await frames(page);
    const hl = fr.filter((f) => f.highlighted);
    assert.ok(hl.length > 0, "some frames highlighted");
    assert.ok(hl.every((f) => /fib/i.test(f.name)), "only matching frames are highlighted");
    assert.ok(fr.filter((f) => f.name === "main.fib").every((f) => f.highlighted), "all main.fib frames highlighted");
    const out = await page.locator("#search-match").innerText();
    assert.match(out, /\d+(\.\d+)?%/, `share shown: ${out}`);
    const pct = Number(await page.locator("#search-match").getAttribute("data-percent"));
    assert.ok(Math.abs(pct - FIB_CUM_PCT) < 0.05, `matched share ${pct}% ≈ main.fib cumulative ${FIB_CUM_PCT.toFixed(2)}%`);
    assert.ok(out.includes(pct.toFixed(1)), `the displayed text carries the share: ${out}`);
    if (SCREENSHOT) {
      const { pos } = await frameCenter(page, "main.workB");
      await page.locator("#flamegraph").hover({ position: pos });
      await page.screenshot({ path: SCREENSHOT, fullPage: true });
    }
    // Regex, case-insensitive.
    await page.locator("#search").fill("^MAIN\\.work[ab]$");
    await page.waitForFunction(() => window.kiln.selection().search.startsWith("^MAIN"));
    await page.evaluate(() => window.kiln.idle());
    const names = new Set((await frames(page)).filter((f) => f.highlighted).map((f) => f.name));
    assert.deepEqual([...names].sort(), ["main.workA", "main.workB"]);
    assert.ok(new URL(page.url()).searchParams.get("search").startsWith("^MAIN"), "search kept in the URL");
  });

  await t.test("top table lists known functions; sorting; a row click highlights it", async () => {
    const row = page.locator('#top-table tbody tr[data-name="main.fib"]');
    await row.waitFor();
    assert.ok(Number(await row.getAttribute("data-self")) > 0, "main.fib has non-zero self");
    const cells = await row.locator("td").allInnerTexts();
    assert.equal(cells[0], "main.fib");
    assert.match(cells[1], /^2\.06 s$/, `self: ${cells}`);
    assert.match(cells[2], /58\.4%/, `self %: ${cells}`);
    assert.match(cells[3], /^2\.31 s$/, `total: ${cells}`);
    assert.match(cells[4], /65\.4%/, `total %: ${cells}`);
    // Default order: self descending.
    let order = await page.locator("#top-table tbody tr").evaluateAll((rs) => rs.map((r) => r.dataset.name));
    assert.deepEqual(order.slice(0, 3), ["main.fib", "main.workB", "runtime.asyncPreempt"]);
    // Sort by name, ascending.
    await page.locator('#top-table th[data-key="name"] button').click();
    order = await page.locator("#top-table tbody tr").evaluateAll((rs) => rs.map((r) => r.dataset.name));
    assert.deepEqual(order, [...order].sort((a, b) => a.localeCompare(b)), "sorted by name");
    assert.equal(await page.locator('#top-table th[data-key="name"]').getAttribute("aria-sort"), "ascending");
    // Sort by total, descending.
    await page.locator('#top-table th[data-key="total"] button').click();
    const totals = await page.locator("#top-table tbody tr").evaluateAll((rs) => rs.map((r) => Number(r.dataset.total)));
    assert.deepEqual(totals, [...totals].sort((a, b) => b - a), "sorted by total");

    await page.locator('#top-table tbody tr[data-name="main.workB"]').click();
    assert.equal(await page.locator("#search").inputValue(), "^main\\.workB$");
    await page.evaluate(() => window.kiln.idle());
    const hl = (await frames(page)).filter((f) => f.highlighted).map((f) => f.name);
    assert.ok(hl.length >= 1 && hl.every((n) => n === "main.workB"), `only main.workB highlighted: ${hl}`);
  });

  await t.test("Download pprof link fetches a gzipped pprof of the selection", async () => {
    const href = await page.locator("#download-pprof").evaluate((a) => a.href);
    const u = new URL(href);
    assert.equal(u.pathname, "/api/v1/pprof");
    assert.equal(u.searchParams.get("query"), `{service_name=${quote(SERVICE)}}`);
    assert.equal(u.searchParams.get("from"), String(from));
    assert.equal(u.searchParams.get("until"), String(until));
    const res = await page.request.get(href);
    assert.equal(res.status(), 200);
    const body = await res.body();
    assert.ok(body.length > 20 && body[0] === 0x1f && body[1] === 0x8b, `gzip magic: ${body.subarray(0, 2).toString("hex")}`);
    zlib.gunzipSync(body); // well-formed gzip
  });

  await t.test("a link with the selection reproduces the view", async () => {
    const p2 = await browser.newPage();
    await p2.goto(page.url());
    await settle(p2);
    assert.equal(await p2.evaluate(() => window.kiln.status()), "ok");
    assert.equal(await p2.locator("#search").inputValue(), "^main\\.workB$");
    assert.equal(await p2.locator("#label-value").inputValue(), SERVICE);
    await p2.close();
  });

  await t.test("profile type and label selectors, refresh and auto-refresh", async () => {
    // Profile types come from the server; samples:count is formatted as samples.
    const types = await page.locator("#profile-type option").evaluateAll((os) => os.map((o) => o.value));
    assert.ok(types.includes("cpu:nanoseconds") && types.includes("samples:count"), `profile types: ${types}`);
    await page.locator("#profile-type").selectOption("samples:count");
    await settle(page);
    assert.equal(new URL(page.url()).searchParams.get("type"), "samples:count");
    const root = (await frames(page)).find((f) => f.depth === 0);
    assert.equal(root.total, 353, "3530 ms at 10 ms per sample = 353 samples");
    const cells = await page.locator('#top-table tbody tr[data-name="main.fib"] td').allInnerTexts();
    assert.equal(cells[1], "206 samples");
    const { pos } = await frameCenter(page, "main.workB");
    await page.locator("#flamegraph").hover({ position: pos });
    assert.match(await page.locator("#tooltip").innerText(), /Total\s+122 samples/);
    await page.locator("#profile-type").selectOption("cpu:nanoseconds");
    await settle(page);
    assert.equal((await frames(page)).find((f) => f.depth === 0).total, TOTAL_NS);

    // Label names come from /api/v1/labels; choosing one lists its values.
    const names = await page.locator("#label-name option").evaluateAll((os) => os.map((o) => o.value));
    assert.ok(names.includes("service_name") && names.includes("__name__"), `label names: ${names}`);
    const values = await page.locator("#label-value option").evaluateAll((os) => os.map((o) => o.value));
    assert.ok(values.includes(SERVICE) && values.includes(""), `service values include ours and "all": ${values}`);
    await page.locator("#label-name").selectOption("__name__");
    await settle(page);
    assert.equal(await page.locator("#label-value").inputValue(), "", "value resets to all");
    assert.equal(await page.locator("#query").inputValue(), "{}");
    await page.waitForFunction(() => [...document.querySelectorAll("#label-value option")].some((o) => o.value === "process_cpu"));
    await page.locator("#label-value").selectOption("process_cpu");
    await settle(page);
    assert.equal(await page.locator("#query").inputValue(), '{__name__="process_cpu"}');
    assert.notEqual(await page.evaluate(() => window.kiln.status()), "error");
    await page.locator("#label-name").selectOption("service_name");
    await settle(page);
    await page.locator("#label-value").selectOption(SERVICE);
    await settle(page);
    assert.equal((await frames(page)).find((f) => f.depth === 0).total, TOTAL_NS);

    // Refresh re-queries; auto-refresh re-queries by itself (every 10 s).
    let queries = 0;
    const count = (r) => { if (r.url().includes("/api/v1/flamegraph")) queries++; };
    page.on("request", count);
    await page.locator("#refresh").click();
    await settle(page);
    assert.equal(queries, 1, "refresh queried the flame graph");
    await page.locator("#auto-refresh").check();
    assert.equal(new URL(page.url()).searchParams.get("auto"), "1");
    const t0 = Date.now();
    while (queries < 2 && Date.now() - t0 < 15_000) await new Promise((r) => setTimeout(r, 200));
    assert.ok(queries >= 2, "auto-refresh queried again within 15 s");
    await page.locator("#auto-refresh").uncheck();
    page.off("request", count);
    await settle(page);
    assert.equal(await page.evaluate(() => window.kiln.status()), "ok");
  });

  await t.test("the window resizing re-lays out the flame graph", async () => {
    await page.setViewportSize({ width: 900, height: 800 });
    await page.waitForFunction((w) => {
      const r = window.kiln.frames().find((f) => f.depth === 0);
      return r && Math.abs(r.w - document.getElementById("flamegraph").clientWidth) < 1 && r.w < w;
    }, 1000);
    await page.setViewportSize({ width: 1280, height: 900 });
  });

  await t.test("a range without samples shows the empty state", async () => {
    await page.goto(`${KILN_URL}/?value=${encodeURIComponent(SERVICE)}&from=${profileSecs - 7200}&until=${profileSecs - 3600}`);
    await settle(page);
    assert.equal(await page.evaluate(() => window.kiln.status()), "empty");
    assert.match(await page.locator("#status").innerText(), /no samples in this range — is the agent running\?/i);
    assert.equal((await frames(page)).length, 0);
  });

  await t.test("nodes folded by the server into (other) are noted", async () => {
    await page.goto(`${url}&max_nodes=4`);
    await settle(page);
    assert.equal(await page.evaluate(() => window.kiln.status()), "ok");
    const note = page.locator("#truncated-note");
    assert.ok(await note.isVisible(), "truncated note shown");
    assert.match(await note.innerText(), /\d+ small nodes were folded into "\(other\)"/);
    assert.ok((await frames(page)).some((f) => f.name === "(other)"), "(other) frame drawn");
    await page.goto(url);
    await settle(page);
    assert.equal(await note.isVisible(), false, "no note without truncation");
  });

  await t.test("a bad selector shows the server's error message", async () => {
    const bad = `{service_name=${quote(SERVICE)}`; // missing closing brace
    const direct = await api(`/api/v1/flamegraph?${new URLSearchParams({ query: bad, from: String(from), until: String(until) })}`);
    assert.ok(direct.status >= 400 && direct.status < 500, `server rejects the selector (HTTP ${direct.status})`);
    assert.equal(typeof direct.body?.error, "string", "server answers {\"error\": ...}");
    await page.locator("#query").fill(bad);
    await page.locator("#query").press("Enter");
    await settle(page);
    assert.equal(await page.evaluate(() => window.kiln.status()), "error");
    const box = page.locator("#error");
    await box.waitFor({ state: "visible" });
    const text = await box.innerText();
    assert.ok(text.includes(direct.body.error), `error box shows the server's message.\n box: ${text}\n server: ${direct.body.error}`);
    assert.equal((await frames(page)).length, 0, "no stale flame graph under an error");
    assert.equal(new URL(page.url()).searchParams.get("query"), bad, "typed selector kept in the URL");
    // Clearing the selector returns to the dropdowns' selection.
    await page.locator("#query").fill("");
    await page.locator("#query").press("Enter");
    await settle(page);
    assert.equal(await page.evaluate(() => window.kiln.status()), "ok");
    assert.equal(await box.isVisible(), false);
  });

  await t.test("time range: presets and custom from/until inputs", async () => {
    await page.goto(url);
    await settle(page);
    await page.locator("#range").selectOption("24h");
    await settle(page);
    let u = new URL(page.url());
    assert.equal(u.searchParams.get("range"), "24h");
    assert.equal(u.searchParams.get("from"), null);
    assert.equal(await page.locator("#custom-range").isVisible(), false);
    const dl = new URL(await page.locator("#download-pprof").evaluate((a) => a.href));
    assert.equal(dl.searchParams.get("from"), "now-24h");
    assert.ok(["ok", "empty"].includes(await page.evaluate(() => window.kiln.status())));
    await page.locator("#range").selectOption("custom");
    await settle(page);
    assert.ok(await page.locator("#from").isVisible(), "custom inputs shown");
    // datetime-local, in the page's time zone (UTC in this context).
    const local = (s) => new Date(s * 1000).toISOString().slice(0, 19);
    await page.locator("#from").fill(local(profileSecs - 120));
    await page.locator("#until").fill(local(profileSecs + 120));
    await page.locator("#until").dispatchEvent("change");
    await page.waitForFunction((f) => new URL(location.href).searchParams.get("from") === f, String(profileSecs - 120));
    await settle(page);
    u = new URL(page.url());
    assert.equal(u.searchParams.get("until"), String(profileSecs + 120));
    assert.equal(await page.evaluate(() => window.kiln.status()), "ok");
    assert.equal((await frames(page)).find((f) => f.depth === 0).total, TOTAL_NS);
  });

  await t.test("compare with a baseline: diff colours, both sides in frames and tooltip", async () => {
    // A baseline with no samples: everything is new in the current selection.
    const none = `{service_name=${quote(SERVICE + "-nothing")}}`;
    await page.goto(`${url}&compare=${encodeURIComponent(none)}`);
    await settle(page);
    assert.equal(await page.evaluate(() => window.kiln.status()), "ok");
    assert.equal(await page.locator("#compare").inputValue(), none);
    let fs_ = await frames(page);
    const root = fs_.find((f) => f.depth === 0);
    assert.deepEqual(root.diff, { leftTotal: 0, leftSelf: 0, rightTotal: TOTAL_NS, rightSelf: 0 });
    const fib = fs_.find((f) => f.name === "main.fib" && !f.collapsed);
    assert.ok(fib && fib.diff.rightTotal > 0 && fib.diff.leftTotal === 0, "main.fib only in the current side");
    const { pos } = await frameCenter(page, "main.fib");
    await page.locator("#flamegraph").hover({ position: pos });
    await page.locator("#tooltip").waitFor({ state: "visible" });
    const tip = await page.locator("#tooltip").innerText();
    assert.match(tip, /Baseline/);
    assert.match(tip, /Current/);
    assert.match(tip, /Share change\s+\+/);
    // The same selection as baseline: nothing changed.
    const same = `{service_name=${quote(SERVICE)}}`;
    await page.locator("#compare").fill(same);
    await page.locator("#compare").press("Enter");
    await settle(page);
    assert.equal(new URL(page.url()).searchParams.get("compare"), same);
    fs_ = await frames(page);
    assert.ok(fs_.length > 1);
    for (const f of fs_) assert.equal(f.diff.leftTotal, f.diff.rightTotal, f.name);
    // Empty + Enter leaves diff mode.
    await page.locator("#compare").fill("");
    await page.locator("#compare").press("Enter");
    await settle(page);
    assert.equal(new URL(page.url()).searchParams.get("compare"), null);
    assert.equal((await frames(page)).find((f) => f.depth === 0).total, TOTAL_NS);
    assert.equal((await frames(page)).find((f) => f.depth === 0).diff, undefined);
  });

  await t.test("a frame without a name says why (tooltip, grey)", async () => {
    // Folded text through /ingest: the agent writes a cut stack's last frame like this, and the
    // server gives such frames a `reason` code that the page explains.
    const svc = `${SERVICE}-reason`;
    const now = Math.floor(Date.now() / 1000);
    const res = await fetch(`${KILN_URL}/ingest?name=${svc}&format=folded&from=${now - 20}&until=${now - 10}`, {
      method: "POST",
      body: "main;work;[truncated: stack copy exhausted] 60\nmain;work 40\n",
    });
    assert.equal(res.status, 200, `folded ingest: ${await res.text()}`);
    await page.goto(`${KILN_URL}/?value=${encodeURIComponent(svc)}&from=${now - 600}&until=${now + 60}`);
    await settle(page);
    const cut = "[truncated: stack copy exhausted]";
    const { f, pos } = await frameCenter(page, cut);
    assert.equal(f.reason, "truncated", `reason of ${JSON.stringify(f)}`);
    assert.equal((await frameCenter(page, "work")).f.reason, undefined, "named frames have none");
    await page.locator("#flamegraph").hover({ position: pos });
    await page.locator("#tooltip").waitFor({ state: "visible" });
    const tip = await page.locator("#tooltip").innerText();
    assert.match(tip, /Kind\s+unsymbolized/, tip);
    assert.match(tip, /Why no name\s+the stack was cut here/, tip);
    await page.goto(url);
    await settle(page);
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
