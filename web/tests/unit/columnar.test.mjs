// The flame graph's columnar answer (`/api/v1/flamegraph?format=columnar`) decoded into the tree
// the page draws. Run: node --test web/tests/unit
import { test } from "node:test";
import assert from "node:assert/strict";
import { decodeColumnar, normalize, flatOf } from "../../js/tree.js";
import { layout } from "../../js/layout.js";
import { encodeColumnar } from "../columnar.mjs";

const answer = () => ({
  total: 100, unit: "nanoseconds", profile_type: "cpu:nanoseconds", profiles: 2, truncated_nodes: 3,
  top: [{ name: "a", self: 50, total: 50 }],
  root: {
    name: "total", self: 0, total: 100, children: [
      { name: "main", self: 5, total: 95, children: [
        { name: "a", self: 50, total: 50, children: [] },
        { name: "libfoo.so+0x10", reason: "stripped", self: 25, total: 40, children: [
          { name: "a", self: 15, total: 15, children: [] },
        ] },
      ] },
      { name: "(other)", self: 5, total: 5, children: [] },
    ],
  },
});

test("columnar answer decodes to the same tree and metadata as the JSON one", () => {
  const d = decodeColumnar(encodeColumnar(answer()), "x");
  assert.deepEqual(d, normalize(answer(), "x"));
  assert.equal(d.root.children[0].children[1].reason, "stripped");
  assert.equal(d.root.children[0].children[0].reason, undefined);
  // Names come from the table: one string shared by both "a" nodes.
  assert.equal(d.root.children[0].children[1].children[0].name, "a");
  assert.equal(d.truncated, 3);
  assert.equal(d.profiles, 2);
  assert.deepEqual(d.top, [{ name: "a", self: 50, total: 50 }]);
});

test("an empty graph decodes to a root with no children", () => {
  const empty = { total: 0, unit: "nanoseconds", profiles: 0, root: { name: "total", self: 0, total: 0, children: [] } };
  const d = decodeColumnar(encodeColumnar(empty), "nanoseconds");
  assert.equal(d.root.total, 0);
  assert.deepEqual(d.root.children, []);
  assert.equal(d.top, null);
  assert.equal(d.truncated, 0);
});

test("deep stacks decode without recursion", () => {
  let leaf = { name: "f", self: 1, total: 1, children: [] };
  for (let i = 0; i < 50_000; i++) leaf = { name: "f", self: 0, total: 1, children: [leaf] };
  const d = decodeColumnar(encodeColumnar({ total: 1, root: leaf }), "");
  let depth = 0;
  for (let n = d.root; n.children.length; n = n.children[0]) depth++;
  assert.equal(depth, 50_000);
});

test("malformed answers are errors that say so, not broken trees", () => {
  const good = encodeColumnar(answer());
  assert.throws(() => decodeColumnar(new ArrayBuffer(4), ""), /too short/);
  const wrongMagic = good.slice(0);
  new Uint8Array(wrongMagic)[0] = 0x7b; // "{": a JSON answer
  assert.throws(() => decodeColumnar(wrongMagic, ""), /KFG1/);
  assert.throws(() => decodeColumnar(good.slice(0, good.byteLength - 8), ""), /do not fill/);
  // A parent after its child (not preorder) and a name index out of the table.
  const n = 6;
  const start = good.byteLength - 24 * n;
  const badParent = good.slice(0);
  new Uint32Array(badParent, start + 16 * n, n)[2] = 5;
  assert.throws(() => decodeColumnar(badParent, ""), /has parent 5/);
  const badName = good.slice(0);
  new Uint32Array(badName, start + 20 * n, n)[1] = 99;
  assert.throws(() => decodeColumnar(badName, ""), /names entry 99/);
});

test("the decoder's preorder columns are the ones flatOf builds from the node objects", () => {
  const d = decodeColumnar(encodeColumnar(answer()), "x");
  const fromDecoder = flatOf(d.root);
  const plain = normalize(answer(), "x").root;
  const built = flatOf(plain);
  assert.deepEqual([...fromDecoder.total], [...built.total]);
  assert.deepEqual([...fromDecoder.depth], [0, 1, 2, 2, 3, 1]);
  assert.deepEqual([...built.depth], [0, 1, 2, 2, 3, 1]);
  // Subtree ends: main's subtree is nodes 1..4, the library frame's 3..4, a leaf's only itself.
  assert.deepEqual([...fromDecoder.end], [6, 5, 3, 5, 5, 6]);
  assert.deepEqual([...built.end], [...fromDecoder.end]);
  assert.deepEqual(fromDecoder.nodes.map((n) => n.name), built.nodes.map((n) => n.name));
  assert.equal(fromDecoder.nodes[3], d.root.children[0].children[1]);
  // Laying out either gives the same frames.
  const strip = (l) => l.frames.map((f) => [f.node.name, f.x, f.w, f.depth, f.parent]);
  assert.deepEqual(strip(layout(d.root, ["main"], 500)), strip(layout(plain, ["main"], 500)));
});
