"""What operators see: Prometheus metrics, W3C tracing, structured logs."""
