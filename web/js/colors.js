// What a frame is (user, kernel, runtime, unsymbolized), which package or binary it belongs to,
// and its colour. Pure, unit-tested.

/** FNV-1a 32-bit: stable colours per name across reloads. */
export function hash(str) {
  let h = 0x811c9dc5;
  for (let i = 0; i < str.length; i++) {
    h ^= str.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

const UNSYM = /^0x[0-9a-f]+\b|\+0x[0-9a-f]+(\s|$)/i;
const RUNTIME = /^(runtime\.|runtime\/|std::|core::|alloc::|__libc_|__GI_|_start$|__clone|start_thread$|_dl_|_PyEval|Py[A-Z]|_Py)/;

/** What the server's `reason` codes mean (storage-server/src/query/reason.rs). */
export const REASONS = {
  no_mapping: "address in no known mapping (the process exited before its mappings were read?)",
  no_build_id: "the binary has no build ID",
  no_file: "code not backed by a file (JIT without a perf map?)",
  kernel_unknown: "kernel address not in /proc/kallsyms",
  no_debuginfo: "no debuginfo uploaded for this build ID (yet)",
  stripped: "stripped binary and no separate debuginfo",
  unknown_address: "no symbol covers this address",
  invalid_offset: "address outside the binary's segments",
  symbolizer_error: "the symbolizer failed on this binary",
  debuginfod_miss: "no debuginfo uploaded, and debuginfod does not have it",
  debuginfod_pending: "debuginfo is being fetched from debuginfod (reload shortly)",
  truncated: "the stack was cut here (stack copy size or depth limit)",
  unwind_failed: "the unwinder could not go further",
};

/** user | kernel | runtime | unsym | other. */
export function frameKind(name, reason) {
  if (reason) return "unsym";
  if (name.endsWith(" [k]")) return "kernel";
  if (UNSYM.test(name)) return "unsym";
  if (name === "(other)") return "other";
  if (RUNTIME.test(name)) return "runtime";
  return "user";
}

/**
 * The package or binary a frame belongs to, from its name: `[kernel]`; the mapping of an
 * unsymbolized `libc.so.6+0x…`; Go `github.com/a/b.(*T).F` → `github.com/a/b`, `main.fib` → `main`;
 * Rust/C++ `tokio::rt::f` → `tokio`; anything else → itself.
 */
export function packageOf(name) {
  if (name.endsWith(" [k]")) return "[kernel]";
  const plus = /^([^\s+]+)\+0x[0-9a-f]+/i.exec(name);
  if (plus) return plus[1];
  const stripped = name.replace(/<.*$/, "").replace(/\(.*$/, "");
  const colons = stripped.indexOf("::");
  if (colons > 0) return stripped.slice(0, colons).replace(/^</, "");
  const slash = stripped.lastIndexOf("/");
  const dot = stripped.indexOf(".", slash + 1);
  if (dot > 0) return stripped.slice(0, dot);
  return name;
}

const ROOT = "hsl(220, 8%, 70%)";

/** Fill colour by kind: warm user code, blue kernel, green runtime, grey unsymbolized. */
export function kindColor(name, reason) {
  const h = hash(name);
  const a = (h & 0xff) / 255, b = ((h >>> 8) & 0xff) / 255;
  switch (frameKind(name, reason)) {
    case "kernel": return `hsl(${195 + a * 25}, ${55 + b * 20}%, ${60 + b * 8}%)`;
    case "runtime": return `hsl(${95 + a * 35}, ${35 + b * 20}%, ${58 + b * 8}%)`;
    case "unsym": return `hsl(0, 0%, ${66 + a * 12}%)`;
    case "other": return "hsl(40, 6%, 80%)";
    default: return `hsl(${6 + a * 40}, ${72 + b * 18}%, ${58 + b * 10}%)`;
  }
}

/** Fill colour by package: one hue per package, lightness varied by function. */
export function packageColor(name, reason) {
  const kind = frameKind(name, reason);
  if (kind === "unsym" || kind === "other") return kindColor(name, reason);
  const hp = hash(packageOf(name));
  const hn = hash(name);
  // Hues 270–330 are left out: they are the search-match magenta.
  const hue = hp % 300;
  return `hsl(${hue < 270 ? hue : hue + 60}, ${48 + ((hp >>> 9) & 0x1f)}%, ${54 + ((hn >>> 4) & 0xf) * 1.3}%)`;
}

// Colours are a pure function of (mode, name, reason): computed once per name, not per frame
// per render (a big graph repaints thousands of frames on every zoom).
const CACHE = { kind: new Map(), package: new Map() };
const CACHE_MAX = 200_000;

export function frameColor(mode, name, reason, isRoot) {
  if (isRoot) return ROOT;
  const m = mode === "kind" ? CACHE.kind : CACHE.package;
  const key = reason ? `${name}\u0000${reason}` : name;
  let c = m.get(key);
  if (c === undefined) {
    if (m.size >= CACHE_MAX) m.clear();
    c = mode === "kind" ? kindColor(name, reason) : packageColor(name, reason);
    m.set(key, c);
  }
  return c;
}
