-- Loaded first by every bench script: thread numbering, a non-2xx count, and one JSON summary line.
-- wrk runs setup() and done() in its main Lua state and init()/request()/response() in one state per thread;
-- values cross between them only through thread:set()/thread:get().

local threads = {}
local next_index = 0

function setup(thread)
  thread:set("thread_index", next_index)
  next_index = next_index + 1
  table.insert(threads, thread)
end

non2xx = 0
status_counts = {}

function count_status(status)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
    status_counts[status] = (status_counts[status] or 0) + 1
  end
end

function response(status, headers, body)
  count_status(status)
end

-- Lines of a file; this thread's share when `thread_count` is given (lines must not be shared, e.g. refresh tokens).
function read_lines(path, thread_count)
  local lines = {}
  local n = 0
  for line in io.lines(path) do
    if line ~= "" then
      if thread_count == nil or n % thread_count == thread_index then
        lines[#lines + 1] = line
      end
      n = n + 1
    end
  end
  return lines
end

function init(args)
  if scenario_init ~= nil then
    scenario_init(args)
  end
end

function done(summary, latency, requests)
  local non2xx_total = 0
  local statuses = {}
  for _, thread in ipairs(threads) do
    non2xx_total = non2xx_total + (thread:get("non2xx") or 0)
    local counts = thread:get("status_counts") or {}
    for status, count in pairs(counts) do
      statuses[#statuses + 1] = string.format('"%d":%d', status, count)
    end
  end
  local errors = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"non2xx":%d,"non2xx_statuses":{%s},' ..
    '"connect_errors":%d,"read_errors":%d,"write_errors":%d,"status_errors":%d,"timeouts":%d,' ..
    '"latency_mean_us":%.1f,"latency_p50_us":%d,"latency_p90_us":%d,"latency_p99_us":%d,"latency_max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, non2xx_total, table.concat(statuses, ","),
    errors.connect, errors.read, errors.write, errors.status, errors.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
