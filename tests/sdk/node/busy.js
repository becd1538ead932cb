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
  Pyroscope.wrapWithLabels({ phase: 'spin' }, () => {
    kilnBusyWork(Date.now() + Number(seconds) * 1000);
  });
  await Pyroscope.stop();
  console.log('@pyroscope/nodejs: done');
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
