"""Two OpenTelemetry root spans profiled by the real Pyroscope Python SDK with PyPI's
`pyroscope-otel` span processor, which tags every sample taken inside a root span with its
`span_id` (16 hex digits), as Grafana's trace-to-profile links expect. Prints each span's name and
ID, then shuts the SDK down so the last profile is flushed.

Run by storage-server/tests/grafana_contract: spans.py SERVER_URL APP_NAME SECONDS_PER_SPAN
"""

import sys
import time

import pyroscope
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from pyroscope.otel import PyroscopeSpanProcessor


def kiln_span_alpha(deadline):
    x = 0
    while time.time() < deadline:
        for i in range(10000):
            x += i * i
    return x


def kiln_span_beta(deadline):
    x = 0
    while time.time() < deadline:
        for i in range(10000):
            x ^= i * 3
    return x


def main():
    url, app, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    pyroscope.configure(
        application_name=app,
        server_address=url,
        tags={"sdk": "python-otel"},
    )
    provider = TracerProvider()
    provider.add_span_processor(PyroscopeSpanProcessor())
    trace.set_tracer_provider(provider)
    tracer = trace.get_tracer("kiln-contract")
    for name, work in (("alpha", kiln_span_alpha), ("beta", kiln_span_beta)):
        with tracer.start_as_current_span(name) as span:
            print(f"span {name} {span.get_span_context().span_id:016x}", flush=True)
            work(time.time() + seconds)
    pyroscope.shutdown()
    print("done", flush=True)


if __name__ == "__main__":
    main()
