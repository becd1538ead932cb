// Formatting of values, percentages, CPU cores and times. Pure: no DOM, unit-tested under node.

// Intl.NumberFormat is slow to build: one per digit count, reused (tables format thousands).
const NF = new Map();
function fmtNum(v, digits) {
  let nf = NF.get(digits);
  if (!nf) NF.set(digits, (nf = new Intl.NumberFormat("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits })));
  return nf.format(v);
}

/** A sample value in its unit: CPU time as h/min/s/ms/µs/ns, bytes binary-prefixed, counts. */
export function fmtValue(v, unit) {
  const a = Math.abs(v);
  switch (unit) {
    case "nanoseconds": {
      if (a === 0) return "0 ms";
      if (a >= 3600e9) return `${fmtNum(v / 3600e9, 2)} h`;
      if (a >= 60e9) return `${fmtNum(v / 60e9, 2)} min`;
      if (a >= 1e9) return `${fmtNum(v / 1e9, 2)} s`;
      if (a >= 1e6) return `${fmtNum(v / 1e6, a >= 100e6 ? 0 : 1)} ms`;
      if (a >= 1e3) return `${fmtNum(v / 1e3, 1)} µs`;
      return `${v} ns`;
    }
    case "microseconds": return fmtValue(v * 1e3, "nanoseconds");
    case "milliseconds": return fmtValue(v * 1e6, "nanoseconds");
    case "seconds": return fmtValue(v * 1e9, "nanoseconds");
    case "count":
    case "samples": return `${fmtNum(v, 0)} sample${v === 1 ? "" : "s"}`;
    case "bytes": {
      const u = ["B", "KiB", "MiB", "GiB", "TiB"];
      let x = v, i = 0;
      while (Math.abs(x) >= 1024 && i < u.length - 1) { x /= 1024; i++; }
      return `${fmtNum(x, i ? 1 : 0)} ${u[i]}`;
    }
    default: return `${fmtNum(v, 0)}${unit ? " " + unit : ""}`;
  }
}

/** A share in percent: "<0.01%" for tiny non-zero shares, 1 decimal from 10 %. */
export function fmtPct(p) {
  if (p === 0) return "0%";
  if (Math.abs(p) < 0.01) return "<0.01%";
  return `${Math.abs(p) >= 10 ? p.toFixed(1) : p.toFixed(2)}%`;
}

/** A signed change in percentage points, e.g. "+3.20 pp". */
export function fmtPoints(p) {
  const sign = p > 0 ? "+" : p < 0 ? "−" : "±";
  return `${sign}${Math.abs(p) >= 10 ? Math.abs(p).toFixed(1) : Math.abs(p).toFixed(2)} pp`;
}

/** CPU usage in cores ("0.25 cores", "1.5 cores", "12 cores"). */
export function fmtCores(c) {
  const d = c >= 10 ? 0 : c >= 1 ? 2 : c >= 0.01 ? 3 : 4;
  return `${fmtNum(c, d)} core${c === 1 ? "" : "s"}`;
}

/** Nanoseconds of CPU time in a bucket of `stepSecs` seconds → average cores used. */
export function toCores(nanos, stepSecs) {
  return stepSecs > 0 ? nanos / (stepSecs * 1e9) : 0;
}

/** "1764301027" (s, ms, µs or ns by digit count) → ms since the epoch, else null. */
export function parseUnixMs(v) {
  if (!/^\d{10,19}$/.test(String(v))) return null;
  const s = String(v);
  const n = Number(s);
  return s.length <= 10 ? n * 1e3 : s.length <= 13 ? n : s.length <= 16 ? n / 1e3 : n / 1e6;
}

const REL = /^now(?:-(\d+)([smhd]))?$/;
const UNIT_MS = { s: 1e3, m: 60e3, h: 3600e3, d: 86400e3 };

/** A time as the API takes it (`now`, `now-2h`, Unix time) → ms since the epoch, else null. */
export function resolveTime(v, nowMs) {
  const m = REL.exec(String(v).trim());
  if (m) return m[1] ? nowMs - Number(m[1]) * UNIT_MS[m[2]] : nowMs;
  return parseUnixMs(String(v).trim());
}

/**
 * What a user typed in a time box → what the API takes: `now`, `now-15m` and Unix times pass;
 * an absolute date (`2026-12-03 07:00`, ISO 8601; local time unless it names a zone) becomes Unix
 * seconds. Returns null when it is none of these.
 */
export function normalizeTimeInput(text) {
  const t = String(text).trim();
  if (!t) return null;
  if (REL.test(t) || /^\d{10,19}$/.test(t)) return t;
  const ms = Date.parse(t.includes("T") || !/^\d{4}-\d\d-\d\d /.test(t) ? t : t.replace(" ", "T"));
  return Number.isFinite(ms) ? String(Math.floor(ms / 1000)) : null;
}

/** A time for display: relative times as they are, Unix times as "YYYY-MM-DD HH:MM:SS" (UTC or local). */
export function fmtTime(v, { utc = false } = {}) {
  const ms = parseUnixMs(v);
  if (ms == null) return String(v);
  const d = new Date(ms);
  const pad = (x) => String(x).padStart(2, "0");
  const [Y, M, D, h, m, s] = utc
    ? [d.getUTCFullYear(), d.getUTCMonth() + 1, d.getUTCDate(), d.getUTCHours(), d.getUTCMinutes(), d.getUTCSeconds()]
    : [d.getFullYear(), d.getMonth() + 1, d.getDate(), d.getHours(), d.getMinutes(), d.getSeconds()];
  return `${Y}-${pad(M)}-${pad(D)} ${pad(h)}:${pad(m)}:${pad(s)}`;
}

/** A short clock label for a chart axis. */
export function fmtClock(ms, spanMs) {
  const d = new Date(ms);
  const pad = (x) => String(x).padStart(2, "0");
  const hm = `${pad(d.getHours())}:${pad(d.getMinutes())}`;
  if (spanMs <= 10 * 60e3) return `${hm}:${pad(d.getSeconds())}`;
  if (spanMs <= 36 * 3600e3) return hm;
  return `${d.getMonth() + 1}/${d.getDate()} ${hm}`;
}
