// Call-tree transforms, each a rewrite of every stack, applied in order and kept in the URL as
// `tf=<kind>:<argument>`. Pure, unit-tested.
//
//   focus:F    only stacks through F, from F down (its outermost call)
//   hide:RE    frames whose name matches the regex RE are removed; their callees move up
//   merge:F    function F merged into its callers (its self time becomes theirs)
//   rec:F      direct recursion of F collapsed into one frame (`rec:` = of every function)
//   lib:P      consecutive frames of package/binary P shown as one frame named P
//   invert:    bottom-up: each stack reversed, the functions using CPU on top

import { forEachStack, TreeBuilder } from "./tree.js";
import { packageOf } from "./colors.js";

export const KINDS = {
  focus: "Focus on",
  hide: "Hide",
  merge: "Merge into callers",
  rec: "Collapse recursion",
  lib: "Collapse library",
  invert: "Invert",
};

export function parseTransform(s) {
  const i = s.indexOf(":");
  const kind = i < 0 ? s : s.slice(0, i);
  const arg = i < 0 ? "" : s.slice(i + 1);
  if (!(kind in KINDS)) return null;
  if ((kind === "focus" || kind === "merge" || kind === "lib" || kind === "hide") && !arg) return null;
  if (kind === "hide" && !safeRegex(arg)) return null;
  return { kind, arg };
}

export const formatTransform = (t) => `${t.kind}:${t.arg}`;

export function describe(t) {
  if (t.kind === "invert") return KINDS.invert;
  if (t.kind === "rec" && !t.arg) return "Collapse all recursion";
  return `${KINDS[t.kind]} ${t.kind === "hide" ? "/" + t.arg + "/" : t.arg}`;
}

function safeRegex(src) {
  try {
    return new RegExp(src, "i");
  } catch {
    return null;
  }
}

/** One transform as a function from a stack ([{name, reason}] from the top) to a stack or null. */
function stackRewrite(t) {
  switch (t.kind) {
    case "focus": return (s) => {
      const i = s.findIndex((f) => f.name === t.arg);
      return i < 0 ? null : s.slice(i);
    };
    case "hide": {
      const re = safeRegex(t.arg);
      return (s) => s.filter((f) => !re.test(f.name));
    }
    case "merge": return (s) => s.filter((f) => f.name !== t.arg);
    case "rec": return (s) => s.filter((f, i) => i === 0 || f.name !== s[i - 1].name || (t.arg && f.name !== t.arg));
    case "lib": return (s) => {
      const out = [];
      for (const f of s) {
        if (packageOf(f.name) !== t.arg) out.push(f);
        else if (!out.length || out[out.length - 1].name !== t.arg || !out[out.length - 1].lib) out.push({ name: t.arg, lib: true });
      }
      return out;
    };
    case "invert": return (s) => s.slice().reverse();
    default: return (s) => s;
  }
}

/** The tree after the transforms `tfs` (the same tree when there are none). */
export function applyTransforms(root, tfs, isDiff) {
  if (!tfs.length) return root;
  const rewrites = tfs.map(stackRewrite);
  const b = new TreeBuilder(isDiff);
  forEachStack(root, isDiff, (frames, n) => {
    let s = frames.map((f) => (f.reason ? { name: f.name, reason: f.reason } : { name: f.name }));
    for (const r of rewrites) {
      s = r(s);
      if (!s) return;
    }
    b.add(s, isDiff ? { ls: n.ls, rs: n.rs } : { self: n.self });
  });
  return b.finish();
}
