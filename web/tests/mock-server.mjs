// Tiny stand-in for the Kiln server, for iterating on the UI without it.
// Serves the real assets plus canned JSON shaped like docs/API.md.
// Not used by ui.test.mjs, which always targets a real server (KILN_URL).
//
//   node web/tests/mock-server.mjs [port]     (default 4199)
import http from "node:http";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { encodeColumnar } from "./columnar.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const web = path.join(here, "..");
const repo = path.join(web, "..");
const port = Number(process.argv[2] || process.env.PORT || 4199);

function tree(workBSelf = 1110e6) {
  const n = (name, self, children = []) => {
    const total = self + children.reduce((s, c) => s + c.total, 0);
    return { name, self, total, children: children.sort((a, b) => b.total - a.total) };
  };
  let fib = n("main.fib", 300e6);
  for (let i = 0; i < 18; i++) fib = n("main.fib", 100e6, [fib]);
  const other = [];
  for (let i = 0; i < 40; i++) other.push(n(`pkg.small${i}`, 1e6 * (i + 1)));
  return n("total", 0, [
    n("runtime.main", 0, [
      n("main.main", 0, [
        n("main.workA", 0, [fib]),
        n("main.workB", workBSelf, [n("runtime.asyncPreempt", 110e6)]),
        n("main.many", 0, other),
      ]),
    ]),
    n("entry_SYSCALL_64 [k]", 0, [n("do_syscall_64 [k]", 20e6, [n("__x64_sys_write [k]", 50e6)])]),
    n("libfoo.so+0x1a2b3", 80e6, [n("0x7f00deadbeef", 30e6)]),
    n("(other)", 12e6),
  ]);
}

// Two trees laid over each other by path of names, shaped like /api/v1/diff's root.
function diffOf(l, r) {
  const name = (l ?? r).name;
  const none = { self: 0, total: 0, children: [] };
  l ??= none;
  r ??= none;
  const names = [...new Set([...l.children, ...r.children].map((c) => c.name))];
  const children = names
    .map((nm) => diffOf(l.children.find((c) => c.name === nm), r.children.find((c) => c.name === nm)))
    .sort((a, b) => Math.max(b.left_total, b.right_total) - Math.max(a.left_total, a.right_total));
  return { name, left_self: l.self, left_total: l.total, right_self: r.self, right_total: r.total, children };
}

function topOf(root) {
  const m = new Map();
  (function walk(node, seen) {
    const e = m.get(node.name) ?? { name: node.name, self: 0, total: 0 };
    e.self += node.self;
    if (!seen.has(node.name)) e.total += node.total;
    m.set(node.name, e);
    const s2 = new Set(seen).add(node.name);
    for (const c of node.children) walk(c, s2);
  })(root, new Set());
  m.delete("total");
  return [...m.values()].sort((a, b) => b.self - a.self);
}

function checkQuery(q) {
  if (q == null || q === "" || q === "{}") return null;
  if (!/^\{\s*([a-zA-Z_][a-zA-Z0-9_]*\s*(=|!=|=~|!~)\s*"(?:[^"\\]|\\.)*"\s*,?\s*)*\}$/.test(q)) {
    return `invalid query selector ${JSON.stringify(q)}: expected {name="value", ...}`;
  }
  return null;
}

const types = { "/": ["index.html", "text/html"], "/assets/app.js": ["app.js", "text/javascript"], "/assets/style.css": ["style.css", "text/css"] };

http.createServer((req, res) => {
  const u = new URL(req.url, "http://x");
  const json = (code, body) => {
    res.writeHead(code, { "Content-Type": "application/json" });
    res.end(JSON.stringify(body));
  };
  const mod = /^\/assets\/(js\/[a-z-]+\.js)$/.exec(u.pathname);
  if (types[u.pathname] || mod) {
    const [f, ct] = types[u.pathname] ?? [mod[1], "text/javascript"];
    res.writeHead(200, { "Content-Type": ct, "Cache-Control": "no-store" });
    return res.end(fs.readFileSync(path.join(web, f)));
  }
  if (u.pathname === "/push.v1.PusherService/Push") return req.resume().on("end", () => json(200, {}));
  if (u.pathname === "/api/v1/profile_types") return json(200, { profile_types: ["cpu:nanoseconds", "samples:count"] });
  const err = checkQuery(u.searchParams.get("query"));
  if (err) return json(400, { error: err });
  const q = u.searchParams.get("query") || "";
  const empty = q.includes("empty");
  if (u.pathname === "/api/v1/labels") return json(200, { names: ["__name__", "comm", "pid", "service_name"] });
  const lv = u.pathname.match(/^\/api\/v1\/labels\/([^/]+)\/values$/);
  if (lv) return json(200, { values: { service_name: ["api", "empty-svc", "worker"], comm: ["gocpu"], pid: ["1", "42"] }[decodeURIComponent(lv[1])] ?? [] });
  const pt = u.searchParams.get("profile_type") || "cpu:nanoseconds";
  const unit = pt.split(":")[1];
  const scale = unit === "count" ? 1e-7 : 1;
  const scaleTree = (n) => ({ ...n, self: Math.round(n.self * scale), total: Math.round(n.total * scale), children: n.children.map(scaleTree) });
  const root = empty ? { name: "total", self: 0, total: 0, children: [] } : scaleTree(tree());
  if (u.pathname === "/api/v1/flamegraph") {
    const fg = { total: root.total, unit, profile_type: pt, profiles: empty ? 0 : 3, root, ...(empty ? {} : { truncated_nodes: 17 }),
      ...(u.searchParams.has("top") ? { top: empty ? [] : topOf(root) } : {}) };
    if (u.searchParams.get("format") === "columnar") {
      return setTimeout(() => {
        res.writeHead(200, { "Content-Type": "application/octet-stream" });
        res.end(Buffer.from(encodeColumnar(fg)));
      }, 150);
    }
    return setTimeout(() => json(200, fg), 150);
  }
  if (u.pathname === "/api/v1/diff") {
    // Baseline: main.workB a third as heavy, so the current selection shows it grown.
    const d = diffOf(scaleTree(tree(370e6)), root);
    return json(200, { unit, profile_type: pt, left: { total: d.left_total, profiles: 3 }, right: { total: d.right_total, profiles: 3 }, root: d });
  }
  if (u.pathname === "/api/v1/series") {
    const now = Math.floor(Date.now() / 10000) * 10000;
    const pts = (k) => Array.from({ length: 30 }, (_, i) => [now - (30 - i) * 10000, Math.round((1 + Math.sin(i / 3 + k)) * 4e9)]);
    const g = u.searchParams.get("group_by");
    return json(200, { profile_type: pt, unit, step: 10, series: empty ? [] : g ? [{ labels: { [g]: "a" }, points: pts(0) }, { labels: { [g]: "b" }, points: pts(2) }] : [{ labels: {}, points: pts(0) }] });
  }
  if (u.pathname === "/api/v1/top") return json(200, { total: root.total, unit, functions: empty ? [] : topOf(root) });
  if (u.pathname === "/api/v1/pprof") {
    res.writeHead(200, { "Content-Type": "application/octet-stream", "Content-Disposition": "attachment; filename=kiln.pb.gz" });
    return res.end(fs.readFileSync(path.join(repo, "testdata/pprof/go-runtime-pprof-cpu.pb.gz")));
  }
  json(404, { error: `no route ${u.pathname}` });
}).listen(port, "127.0.0.1", () => console.log(`mock Kiln on http://127.0.0.1:${port}/`));
