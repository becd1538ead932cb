// Spins in `kilnBusyWork` for a while under the real @pyroscope/nodejs SDK (which uploads to
// /ingest), then stops the SDK so its last profiles are flushed.
//
// Run by storage-server/tests/sdk.rs: node busy.js SERVER_URL APP_NAME SECONDS [TENANT]
// The bearer token comes from $KILN_SDK_TOKEN.
'use strict';

const Pyroscope = require('@pyroscope/nodejs');

function kilnBusyWork(deadline) {
  let x = 0;
  while (Date.now() < deadline) {
    for (let i = 0; i < 10000; i++) x += i * i;
  }
  return x;
}

async function main() {
  const [url, app, seconds, tenant] = process.argv.slice(2);
  Pyroscope.init({
    serverAddress: url,
    appName: app,
    tags: { sdk: 'nodejs', region: 'test-eu' },
    authToken: process.env.KILN_SDK_TOKEN,
    tenantID: tenant,
    flushIntervalMs: 5000,
    wall: { collectCpuTime: true },
  });
  Pyroscope.start();
  // Spin in short slices and yield in between, as a real server would, so the SDK's flush timer
  // fires and uploads its wall and heap profiles while the work goes on.
  const end = Date.now() + Number(seconds) * 1000;
  while (Date.now() < end) {
    Pyroscope.wrapWithLabels({ phase: 'spin' }, () => kilnBusyWork(Date.now() + 50));
    await new Promise((resolve) => setImmediate(resolve));
  }
  await Pyroscope.stop();
  console.log('@pyroscope/nodejs: done');
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
