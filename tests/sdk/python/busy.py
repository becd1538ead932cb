"""Spins in `kiln_busy_work` for a while under the real Pyroscope Python SDK (pyroscope-io 1.x
sends to the push API, 0.8.x to /ingest), then shuts the SDK down so its last profile is flushed.

Run by storage-server/tests/sdk.rs: busy.py SERVER_URL APP_NAME SECONDS [TENANT]
The bearer token comes from $KILN_SDK_TOKEN.
"""

import importlib.metadata
import os
import sys
import time

import pyroscope


def kiln_busy_work(deadline):
    x = 0
    while time.time() < deadline:
        for i in range(10000):
            x += i * i
    return x


def main():
    url, app, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    tenant = sys.argv[4] if len(sys.argv) > 4 else ""
    token = os.environ.get("KILN_SDK_TOKEN", "")
    version = importlib.metadata.version("pyroscope-io")
    kwargs = dict(
        application_name=app,
        server_address=url,
        tags={"sdk": "python-" + version.split(".")[0], "region": "test-eu"},
        tenant_id=tenant,
    )
    if version.startswith("0."):
        kwargs["auth_token"] = token
    else:
        # 1.x dropped auth_token; a header does the same.
        kwargs["http_headers"] = {"Authorization": "Bearer " + token}
    pyroscope.configure(**kwargs)
    with pyroscope.tag_wrapper({"phase": "spin"}):
        kiln_busy_work(time.time() + seconds)
    pyroscope.shutdown()
    print(f"pyroscope-io {version}: done", flush=True)


if __name__ == "__main__":
    main()
