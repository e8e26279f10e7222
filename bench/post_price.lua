-- wrk script of `make bench`: POST /prices with one price per request, a different
-- (symbol, date) each time, so every request records a new price and raises an event.
local counter = 0
-- Set per thread by setup() (a global of the thread's own Lua state: a `local` here would
-- hide it, and every thread would send the same keys).
thread_tag = "A"

function setup(thread)
  thread:set("thread_tag", string.char(64 + (setup_count or 1)))
  setup_count = (setup_count or 1) + 1
end

local base = os.time({year = 2000, month = 1, day = 3, hour = 12})

function request()
  counter = counter + 1
  local symbol = "W" .. thread_tag .. (counter % 500)
  local day = math.floor(counter / 500)
  local date = os.date("!%Y-%m-%d", base + day * 86400)
  local close = 100 + (counter % 97) * 0.25
  local body = string.format('{"symbol":"%s","prices":[{"date":"%s","close":%.2f}]}', symbol, date, close)
  return wrk.format("POST", "/prices", {["Content-Type"] = "application/json"}, body)
end

function done(summary, latency, requests)
  io.write(string.format('{"requests": %d, "seconds": %.3f, "errors": %d, "non2xx": %d, "p50_ms": %.3f, "p99_ms": %.3f}\n',
    summary.requests, summary.duration / 1e6,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status, latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
