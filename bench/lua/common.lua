-- Shared by the bench scripts: report one JSON line with throughput, latency and errors.
function done(summary, latency, requests)
  local secs = summary.duration / 1e6
  io.write(string.format(
    'WRKJSON {"requests": %d, "seconds": %.3f, "rps": %.1f, "p50_ms": %.3f, "p90_ms": %.3f, "p99_ms": %.3f, ' ..
    '"max_ms": %.3f, "non2xx": %d, "connect_errors": %d, "read_errors": %d, "timeouts": %d}\n',
    summary.requests, secs, summary.requests / secs, latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000, summary.errors.status, summary.errors.connect,
    summary.errors.read, summary.errors.timeout))
end
