// The label selector `{name="value", name!~"re.*"}`: parsing, building, and what to complete at
// the cursor (label names, operators or values). Pure, unit-tested.

export const OPS = ["=", "!=", "=~", "!~"];
const NAME = /^[A-Za-z_][A-Za-z0-9_.]*$/;

export function quote(v) {
  return '"' + String(v).replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n") + '"';
}

/** `{a="x", b!~"y"}` → [{name, op, value}]; throws Error with a message on bad input. */
export function parseSelector(text) {
  const s = text.trim();
  if (s === "" || s === "{}") return [];
  if (!s.startsWith("{") || !s.endsWith("}")) throw new Error("a selector is wrapped in { }");
  const body = s.slice(1, -1);
  const out = [];
  let i = 0;
  const ws = () => { while (i < body.length && /\s/.test(body[i])) i++; };
  while (true) {
    ws();
    if (i >= body.length) break;
    const m = /^[A-Za-z_][A-Za-z0-9_.]*/.exec(body.slice(i));
    if (!m) throw new Error(`expected a label name at ${JSON.stringify(body.slice(i, i + 10))}`);
    const name = m[0];
    i += name.length;
    ws();
    const op = OPS.slice().sort((a, b) => b.length - a.length).find((o) => body.startsWith(o, i));
    if (!op) throw new Error(`expected one of = != =~ !~ after ${name}`);
    i += op.length;
    ws();
    if (body[i] !== '"') throw new Error(`expected a quoted value after ${name}${op}`);
    i++;
    let value = "";
    while (i < body.length && body[i] !== '"') {
      if (body[i] === "\\" && i + 1 < body.length) {
        const e = body[i + 1];
        value += e === "n" ? "\n" : e;
        i += 2;
      } else value += body[i++];
    }
    if (body[i] !== '"') throw new Error(`unterminated value of ${name}`);
    i++;
    out.push({ name, op, value });
    ws();
    if (i < body.length) {
      if (body[i] !== ",") throw new Error(`expected , between matchers`);
      i++;
    }
  }
  return out;
}

export function buildSelector(matchers) {
  return `{${matchers.map((m) => `${m.name}${m.op}${quote(m.value)}`).join(", ")}}`;
}

/** The selector with `name="value"` set (replacing any matcher on `name`), or unchanged on bad input. */
export function withMatcher(text, name, value, op = "=") {
  let ms;
  try {
    ms = parseSelector(text);
  } catch {
    return text;
  }
  return buildSelector([...ms.filter((m) => m.name !== name), { name, op, value }]);
}

/**
 * What the cursor at `pos` in `text` is completing:
 *   {kind: "name", prefix, start}                  a label name
 *   {kind: "op", name, start}                      an operator after a name
 *   {kind: "value", name, prefix, start, quoted}   a value of label `name`
 * or null. `start` is where the replaced text begins.
 */
export function completionContext(text, pos) {
  const before = text.slice(0, pos);
  const open = before.lastIndexOf("{");
  if (open < 0) return null;
  const inner = before.slice(open + 1);
  // Inside a quoted value? Count unescaped quotes.
  let quotes = 0, lastQuote = -1;
  for (let i = 0; i < inner.length; i++) {
    if (inner[i] === "\\") { i++; continue; }
    if (inner[i] === '"') { quotes++; lastQuote = i; }
  }
  if (quotes % 2 === 1) {
    const head = inner.slice(0, lastQuote);
    const m = /([A-Za-z_][A-Za-z0-9_.]*)\s*(=~|!~|!=|=)\s*$/.exec(head);
    if (!m) return null;
    return { kind: "value", name: m[1], prefix: inner.slice(lastQuote + 1), start: open + 1 + lastQuote + 1, quoted: true };
  }
  const seg = inner.slice(inner.lastIndexOf(",") + 1);
  const lead = seg.length - seg.trimStart().length;
  const part = seg.trimStart();
  const segStart = pos - seg.length + lead;
  const afterOp = /^([A-Za-z_][A-Za-z0-9_.]*)\s*(=~|!~|!=|=)\s*$/.exec(part);
  if (afterOp) return { kind: "value", name: afterOp[1], prefix: "", start: pos, quoted: false };
  const nameOnly = /^([A-Za-z_][A-Za-z0-9_.]*)?$/.exec(part);
  if (nameOnly) return { kind: "name", prefix: part, start: segStart };
  const nameSpace = /^([A-Za-z_][A-Za-z0-9_.]*)\s+$/.exec(part);
  if (nameSpace || /^[A-Za-z_][A-Za-z0-9_.]*[!=~]$/.test(part)) {
    const name = /^[A-Za-z_][A-Za-z0-9_.]*/.exec(part)[0];
    return { kind: "op", name, start: segStart + name.length };
  }
  return null;
}

/**
 * Applies a chosen completion: returns {text, pos} with the item inserted at the context and,
 * for names, `=` and an opening quote; for values, the closing quote.
 */
export function applyCompletion(text, pos, ctx, item) {
  let insert, end = pos;
  if (ctx.kind === "name") insert = `${item}="`;
  else if (ctx.kind === "op") {
    insert = `${item}"`;
    end = pos;
    while (end < text.length && /[\s!=~]/.test(text[end])) end++;
  } else {
    const v = String(item).replace(/\\/g, "\\\\").replace(/"/g, '\\"');
    insert = ctx.quoted ? `${v}"` : `"${v}"`;
    if (ctx.quoted && text[end] === '"') end++;
  }
  let next = text.slice(0, ctx.start) + insert + text.slice(end);
  let caret = ctx.start + insert.length;
  if (ctx.kind === "value" && !next.slice(caret).trim().startsWith("}") && !next.slice(caret).includes("}")) {
    next = next.slice(0, caret) + "}" + next.slice(caret);
  }
  return { text: next, pos: caret };
}

export function isLabelName(s) {
  return NAME.test(s);
}
