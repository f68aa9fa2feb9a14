-- wrk script for POST /tag: cycles through request bodies (one JSON document per line of
-- the file given after `--`) and prints a machine-readable summary line at the end. An
-- optional second argument is a mean think time in ms: each connection then waits a random
-- (exponential) time before each request, which paces the load instead of saturating.
local bodies = {}
local position = 0
local think_ms = 0

init = function(args)
  for line in io.lines(args[1]) do
    bodies[#bodies + 1] = line
  end
  position = math.random(#bodies)
  think_ms = tonumber(args[2] or "0") or 0
end

delay = function()
  if think_ms <= 0 then
    return 0
  end
  return math.floor(-think_ms * math.log(1 - math.random()))
end

request = function()
  position = position % #bodies + 1
  return wrk.format("POST", "/tag", {["Content-Type"] = "application/json"}, bodies[position])
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "status_errors": %d, "connect_errors": %d, "read_errors": %d, "write_errors": %d, "timeouts": %d, "p50_us": %d, "p95_us": %d, "p99_us": %d}\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99)))
end
