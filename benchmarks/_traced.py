"""The echo node of ``bench_tracing``, traced as ``BENCH_TRACING`` says.

``python -m catga_zmq.node --app benchmarks._traced:echo`` with ``BENCH_TRACING``:

- ``off``: the ``tracing`` setting off (no span is ever looked for);
- ``api``: OpenTelemetry's API imported, no tracer provider set (the ``otel`` extra
  installed, nothing configured): the node does not trace;
- ``sdk``: the SDK's ``TracerProvider`` as the global one, its spans handed to an
  exporter that drops them (``SimpleSpanProcessor``, so no exporter thread competes for
  the CPU): what a span costs, short of sending it anywhere.
"""

import os

from benchmarks._apps import echo

MODES = ("off", "api", "sdk")


def drop_provider() -> object:
    """An SDK tracer provider whose spans go nowhere once finished."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    class Drop(SpanExporter):
        def export(self, spans: object) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(Drop()))
    return provider


_mode = os.environ.get("BENCH_TRACING", "api")
if _mode == "off":
    echo.configure(tracing=False)
elif _mode == "api":
    import opentelemetry.trace  # noqa: F401 - imported, as by an application, and no more
elif _mode == "sdk":
    from opentelemetry import trace

    trace.set_tracer_provider(drop_provider())  # type: ignore[arg-type]
