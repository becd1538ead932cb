// Encodes a flame-graph answer ({total, unit, profile_type, profiles, top?, truncated_nodes?, root})
// in the columnar format of `/api/v1/flamegraph?format=columnar`, as the server writes it
// (storage-server/src/query/flamegraph.rs `render_columnar`; layout in docs/API.md). For the tests,
// the mock server and the browser benchmark, which serve answers without a Kiln server.

/** @returns {ArrayBuffer} */
export function encodeColumnar(fg) {
  const names = [], reasons = [], ids = new Map();
  const self = [], total = [], parent = [], name = [];
  // Preorder, children in their order (the server's: widest first).
  const stack = fg.root ? [[fg.root, 0xffffffff]] : [];
  while (stack.length) {
    const [n, p] = stack.pop();
    let k = ids.get(n.name);
    if (k === undefined) {
      ids.set(n.name, (k = names.length));
      names.push(n.name);
      reasons.push(n.reason ?? null);
    }
    const at = self.length;
    self.push(n.self); total.push(n.total); parent.push(p); name.push(k);
    for (let i = (n.children?.length ?? 0) - 1; i >= 0; i--) stack.push([n.children[i], at]);
  }
  const { root: _root, ...rest } = fg;
  const header = new TextEncoder().encode(JSON.stringify({ ...rest, nodes: self.length, names, reasons }));
  const start = Math.ceil((8 + header.length) / 8) * 8;
  const n = self.length;
  const buf = new ArrayBuffer(start + 24 * n);
  const bytes = new Uint8Array(buf);
  bytes.set([..."KFG1"].map((c) => c.charCodeAt(0)), 0);
  new DataView(buf).setUint32(4, header.length, true);
  bytes.set(header, 8);
  new Float64Array(buf, start, n).set(self);
  new Float64Array(buf, start + 8 * n, n).set(total);
  new Uint32Array(buf, start + 16 * n, n).set(parent);
  new Uint32Array(buf, start + 20 * n, n).set(name);
  return buf;
}
