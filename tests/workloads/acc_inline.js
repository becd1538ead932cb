'use strict';
// The inlined Node.js cell of tests/accuracy.rs: js_main -> js_alpha -> js_beta -> js_hot where
// TurboFan inlines alpha, beta and hot into main (small functions called from a hot loop; check
// with `node --trace-turbo-inlining acc_inline.js 5`). Kiln must expand main's one optimized frame
// into the four functions, with lines. `node acc_inline.js SECONDS`.
//
// js_main carries a never-taken block of ~120 statements so that it is too large to be inlined
// into the driver loop below: the driver runs in on-stack-replaced code, which is not a
// function's current code, so kiln could not read the positions of anything inlined into it.

const seconds = Number(process.argv[2] || 60);
let sink = 0;

function js_hot(n) {
  let x = sink | 0;
  for (let i = 0; i < n; i++) {
    x = (Math.imul(x, 1103515245) + 12345) | 0;
    x ^= x >>> 7;
  }
  return x;
}

function js_beta(n) {
  return js_hot(n) + 1;
}

function js_alpha(n) {
  return js_beta(n) + 1;
}

function js_main(n) {
  let total = sink;
  for (let k = 0; k < 50; k++) {
    if (total < 0) {
      sink = (sink + total * 1) | 0;
      sink = (sink + total * 2) | 0;
      sink = (sink + total * 3) | 0;
      sink = (sink + total * 4) | 0;
      sink = (sink + total * 5) | 0;
      sink = (sink + total * 6) | 0;
      sink = (sink + total * 7) | 0;
      sink = (sink + total * 8) | 0;
      sink = (sink + total * 9) | 0;
      sink = (sink + total * 10) | 0;
      sink = (sink + total * 11) | 0;
      sink = (sink + total * 12) | 0;
      sink = (sink + total * 13) | 0;
      sink = (sink + total * 14) | 0;
      sink = (sink + total * 15) | 0;
      sink = (sink + total * 16) | 0;
      sink = (sink + total * 17) | 0;
      sink = (sink + total * 18) | 0;
      sink = (sink + total * 19) | 0;
      sink = (sink + total * 20) | 0;
      sink = (sink + total * 21) | 0;
      sink = (sink + total * 22) | 0;
      sink = (sink + total * 23) | 0;
      sink = (sink + total * 24) | 0;
      sink = (sink + total * 25) | 0;
      sink = (sink + total * 26) | 0;
      sink = (sink + total * 27) | 0;
      sink = (sink + total * 28) | 0;
      sink = (sink + total * 29) | 0;
      sink = (sink + total * 30) | 0;
      sink = (sink + total * 31) | 0;
      sink = (sink + total * 32) | 0;
      sink = (sink + total * 33) | 0;
      sink = (sink + total * 34) | 0;
      sink = (sink + total * 35) | 0;
      sink = (sink + total * 36) | 0;
      sink = (sink + total * 37) | 0;
      sink = (sink + total * 38) | 0;
      sink = (sink + total * 39) | 0;
      sink = (sink + total * 40) | 0;
      sink = (sink + total * 41) | 0;
      sink = (sink + total * 42) | 0;
      sink = (sink + total * 43) | 0;
      sink = (sink + total * 44) | 0;
      sink = (sink + total * 45) | 0;
      sink = (sink + total * 46) | 0;
      sink = (sink + total * 47) | 0;
      sink = (sink + total * 48) | 0;
      sink = (sink + total * 49) | 0;
      sink = (sink + total * 50) | 0;
      sink = (sink + total * 51) | 0;
      sink = (sink + total * 52) | 0;
      sink = (sink + total * 53) | 0;
      sink = (sink + total * 54) | 0;
      sink = (sink + total * 55) | 0;
      sink = (sink + total * 56) | 0;
      sink = (sink + total * 57) | 0;
      sink = (sink + total * 58) | 0;
      sink = (sink + total * 59) | 0;
      sink = (sink + total * 60) | 0;
      sink = (sink + total * 61) | 0;
      sink = (sink + total * 62) | 0;
      sink = (sink + total * 63) | 0;
      sink = (sink + total * 64) | 0;
      sink = (sink + total * 65) | 0;
      sink = (sink + total * 66) | 0;
      sink = (sink + total * 67) | 0;
      sink = (sink + total * 68) | 0;
      sink = (sink + total * 69) | 0;
      sink = (sink + total * 70) | 0;
      sink = (sink + total * 71) | 0;
      sink = (sink + total * 72) | 0;
      sink = (sink + total * 73) | 0;
      sink = (sink + total * 74) | 0;
      sink = (sink + total * 75) | 0;
      sink = (sink + total * 76) | 0;
      sink = (sink + total * 77) | 0;
      sink = (sink + total * 78) | 0;
      sink = (sink + total * 79) | 0;
      sink = (sink + total * 80) | 0;
      sink = (sink + total * 81) | 0;
      sink = (sink + total * 82) | 0;
      sink = (sink + total * 83) | 0;
      sink = (sink + total * 84) | 0;
      sink = (sink + total * 85) | 0;
      sink = (sink + total * 86) | 0;
      sink = (sink + total * 87) | 0;
      sink = (sink + total * 88) | 0;
      sink = (sink + total * 89) | 0;
      sink = (sink + total * 90) | 0;
      sink = (sink + total * 91) | 0;
      sink = (sink + total * 92) | 0;
      sink = (sink + total * 93) | 0;
      sink = (sink + total * 94) | 0;
      sink = (sink + total * 95) | 0;
      sink = (sink + total * 96) | 0;
      sink = (sink + total * 97) | 0;
      sink = (sink + total * 98) | 0;
      sink = (sink + total * 99) | 0;
      sink = (sink + total * 100) | 0;
      sink = (sink + total * 101) | 0;
      sink = (sink + total * 102) | 0;
      sink = (sink + total * 103) | 0;
      sink = (sink + total * 104) | 0;
      sink = (sink + total * 105) | 0;
      sink = (sink + total * 106) | 0;
      sink = (sink + total * 107) | 0;
      sink = (sink + total * 108) | 0;
      sink = (sink + total * 109) | 0;
      sink = (sink + total * 110) | 0;
      sink = (sink + total * 111) | 0;
      sink = (sink + total * 112) | 0;
      sink = (sink + total * 113) | 0;
      sink = (sink + total * 114) | 0;
      sink = (sink + total * 115) | 0;
      sink = (sink + total * 116) | 0;
      sink = (sink + total * 117) | 0;
      sink = (sink + total * 118) | 0;
      sink = (sink + total * 119) | 0;
      sink = (sink + total * 120) | 0;
    }
    total = (total + js_alpha(n)) | 0;
  }
  sink = total;
  return total;
}

const deadline = Date.now() + seconds * 1000;
while (Date.now() < deadline) {
  for (let k = 0; k < 100; k++) {
    js_main(2000);
  }
}
console.log(sink);
