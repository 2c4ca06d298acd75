-- wrk script: POST the file named by the first script argument as JSON, and print a one-line JSON
-- summary (counts and latency percentiles in microseconds) for bench/serving.py to parse. A second
-- argument is the JSON header's length of a binary tensor extension body (Inference-Header-Content-Length).
--   wrk -t1 -c8 -d6s --latency -s post.lua http://127.0.0.1:8080/v2/models/rf/infer -- body.json [LENGTH]

function init(args)
  local handle = assert(io.open(args[1], "rb"))
  wrk.method = "POST"
  wrk.body = handle:read("*a")
  if args[2] then
    wrk.headers["Content-Type"] = "application/octet-stream"
    wrk.headers["Inference-Header-Content-Length"] = args[2]
  else
    wrk.headers["Content-Type"] = "application/json"
  end
  handle:close()
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'BENCH-JSON {"requests": %d, "duration_us": %d, "bytes": %d, "connect_errors": %d, '
      .. '"read_errors": %d, "write_errors": %d, "status_errors": %d, "timeouts": %d, '
      .. '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, summary.bytes, errors.connect, errors.read, errors.write,
    errors.status, errors.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean))
end
