// Real-browser test of the web UI against live profiles: a `kiln up` (server + eBPF agent, so
// root) and a CPU-burning workload with a known call chain (tests/workloads/callchain.c:
// main → alpha → beta → hot). scripts/ui-test.sh starts both when it runs as root:
//
//   KILN_UP_URL=http://127.0.0.1:4100 KILN_UI_WORKLOAD=/tmp/kiln-ui-work [CHROMIUM=/usr/bin/chromium]
//     [KILN_SCREENSHOTS=dir] node web/tests/ui-root.test.mjs
//
// The page is opened on the workload's selection before the workload starts, so it must first
// say it is waiting, then show the first window by itself (its polling), then — after the agent
// has uploaded the workload's debuginfo — the workload's function names.
import { test, after, before } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { spawn } from "node:child_process";
import { chromium } from "playwright-core";

const KILN_UP_URL = (process.env.KILN_UP_URL || "").replace(/\/+$/, "");
const WORKLOAD = process.env.KILN_UI_WORKLOAD || "";
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const SCREENSHOTS = process.env.KILN_SCREENSHOTS || "";
const CHAIN = ["main", "alpha", "beta", "hot"];

if (!KILN_UP_URL || !WORKLOAD) {
  console.error("KILN_UP_URL (a running `kiln up`) and KILN_UI_WORKLOAD (callchain.c built) must be set: run scripts/ui-test.sh as root");
  process.exit(2);
}

let browser, page, work;
const pageErrors = [];

before(async () => {
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"],
  });
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 }, deviceScaleFactor: 2, timezoneId: "UTC" });
  page = await ctx.newPage();
  page.on("pageerror", (e) => pageErrors.push(e.message));
});

after(async () => {
  work?.kill("SIGKILL");
  await browser?.close();
});

test("root_live_agent: the page waits for, then shows, a live workload's profile", async () => {
  const service = path.basename(WORKLOAD);
  const sel = `{service_name="${service}"}`;
  await page.goto(`${KILN_UP_URL}/?query=${encodeURIComponent(sel)}&from=now-5m&auto=1`);
  await page.waitForFunction(() => window.kiln?.status() === "waiting", null, { timeout: 30_000 });
  assert.match(await page.locator("#status").innerText(), /waiting for the first profiles/i);

  // Long enough for a few of the agent's windows whatever the machine's load; killed at the end.
  work = spawn(WORKLOAD, ["120"], { stdio: "ignore" });

  // The page's own polling (every 3 s) picks up the first window.
  await page.waitForFunction(() => window.kiln.status() === "ok", null, { timeout: 60_000 });

  // Names need the workload's debuginfo, which the agent uploads after its first windows: until
  // then frames are `kiln-ui-work+0x…`. The page's auto-refresh (on in the URL) reloads every
  // 10 s; wait until the chain is named.
  await page.waitForFunction((chain) => {
    const names = new Set(window.kiln.frames().map((f) => f.name));
    return chain.every((n) => names.has(n));
  }, CHAIN, { timeout: 120_000, polling: 500 }).catch(async () => {
    const names = (await page.evaluate(() => window.kiln.frames())).map((f) => f.name);
    assert.fail(`flame graph names the workload's chain ${CHAIN.join(" → ")}; frames: ${names.slice(0, 40).join(", ")}`);
  });
  await page.evaluate(() => window.kiln.idle());

  // The chain is laid out as a chain: each frame directly under its caller, and hot the widest leaf.
  const frames = await page.evaluate(() => window.kiln.frames());
  const widest = (name) => frames.filter((f) => f.name === name).reduce((a, b) => (!a || b.w > a.w ? b : a), null);
  const [m, a, b, h] = CHAIN.map(widest);
  assert.ok(a.depth === m.depth + 1 && b.depth === a.depth + 1 && h.depth === b.depth + 1, "main → alpha → beta → hot, one level each");
  const root = frames.find((f) => f.depth === 0 && !f.collapsed);
  assert.ok(h.total / root.total > 0.5, `hot holds most of the workload's CPU (${((100 * h.total) / root.total).toFixed(1)}%)`);

  // The top table lists hot first by self time; the chart has points in cores.
  const first = await page.locator("#top-table tbody tr[data-name]").first().getAttribute("data-name");
  assert.equal(first, "hot");
  const series = await page.evaluate(() => window.kiln.series());
  assert.equal(series?.rate, "cores", "the chart is in cores");
  const peak = Math.max(0, ...(series?.layers ?? []).flatMap((l) => l.values));
  assert.ok(peak > 0 && peak <= 1.5, `the chart shows the workload's CPU (one busy thread): peak ${peak} cores in ${JSON.stringify(series).slice(0, 300)}`);

  if (SCREENSHOTS) {
    fs.mkdirSync(SCREENSHOTS, { recursive: true });
    await page.screenshot({ path: path.join(SCREENSHOTS, "root-live-agent.png") });
  }
  assert.deepEqual(pageErrors, [], "no uncaught errors in the page");
});
