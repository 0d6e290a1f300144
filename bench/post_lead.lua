-- wrk script: POST /v1/leads with a unique email per request (per thread counter), as a web form would.
local threads = {}
local next_id = 0

function setup(thread)
  next_id = next_id + 1
  thread:set("id", next_id)
  table.insert(threads, thread)
end

function init(args)
  key = os.getenv("BATON_ADMIN_KEY")
  run = os.getenv("BENCH_RUN") or "r"
  counter = 0
end

function request()
  counter = counter + 1
  local body = string.format(
    '{"email":"b%d.%d.%s@firm%d.example","first_name":"Ana","company":"Firm %d","job_title":"VP Sales",' ..
    '"country":"DE","utm_source":"bench","utm_campaign":"rps"}', id, counter, run, counter % 97, counter % 97)
  return wrk.format("POST", "/v1/leads", {["Content-Type"] = "application/json",
                                          ["Authorization"] = "Bearer " .. key}, body)
end

function done(summary, latency, requests)
  local statuses = summary.errors.status
  io.write(string.format("RESULT requests=%d duration_us=%d non2xx=%d p50_us=%d p99_us=%d\n",
    summary.requests, summary.duration, statuses, latency:percentile(50), latency:percentile(99)))
end
