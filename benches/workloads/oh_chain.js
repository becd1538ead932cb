// agent_overhead workload (benches/benches/agent_overhead.rs): a Node.js process burning CPU in
// JavaScript under a deep-ish call chain, main -> alpha -> level x DEPTH -> beta -> hot, until
// killed. argv[2]: DEPTH (default 20).
'use strict';

function hot(n) {
  let x = 0;
  for (let i = 0; i < n; i++) {
    x = (x * 31 + i) % 1000003;
  }
  return x;
}

function beta(n) {
  return hot(n);
}

function level(n, depth) {
  if (depth === 0) {
    return beta(n);
  }
  return level(n, depth - 1);
}

function alpha(n, depth) {
  return level(n, depth);
}

function main() {
  const depth = process.argv.length > 2 ? Number(process.argv[2]) : 20;
  let sink = 0;
  for (;;) {
    sink ^= alpha(200000, depth);
  }
}

main();
