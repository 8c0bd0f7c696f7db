"""Operating TokenBank: what a process tells the people who run it.

context: the request's identity (request id, user, key, model) in a contextvar, for logs;
metrics: the Prometheus metrics and the one-line calls the apps make (`metrics.observe_call`);
logging: LOG_FORMAT=json's formatter; tracing: OpenTelemetry, only with
OTEL_EXPORTER_OTLP_ENDPOINT set; middleware: /healthz, /readyz, /metrics and the per-request
counters. Nothing here imports an app of ours (import-linter): the apps call in, and what
/metrics reads from the books is named in settings.METRICS_COLLECTORS.
"""
