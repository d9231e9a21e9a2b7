-- wrk script for perf/compare.sh: every request is
--   GET /api/verve/accept?id=<uniform random integer in 0..2^32-1>
-- or, with IDS=i64 in the environment, a random 19-digit integer of either sign
-- (+-1e18..+-9e18: ids spread over nearly the whole i64 range, like 64-bit hashes).
-- Each wrk thread seeds its own generator from its index (plus SEED, default 1), so every
-- server run with the same -t gets the identical request stream, and wrk does the same work
-- (one random number, one string concatenation per request) whichever server it measures.

local next_index = 0

function setup(thread)
   thread:set("thread_index", next_index)
   next_index = next_index + 1
end

local prefix, suffix
local sparse = os.getenv("IDS") == "i64"

function init(args)
   local base = tonumber(os.getenv("SEED") or "1") or 1
   math.randomseed(base * 1000003 + thread_index * 7919 + 1)
   -- Let wrk build the request once (method, Host and any -H headers), then split it around
   -- the id so that request() only has to concatenate.
   local template = wrk.format("GET", "/api/verve/accept?id=@ID@")
   prefix, suffix = template:match("^(.-)@ID@(.*)$")
end

function request()
   if sparse then
      -- Doubles cannot hold 64-bit integers: the digits are drawn in three exact parts.
      local sign = (math.random(0, 1) == 0) and "-" or ""
      return prefix .. sign .. string.format("%d%09.0f%09.0f", math.random(1, 8),
         math.random(0, 999999999), math.random(0, 999999999)) .. suffix
   end
   -- math.random(m, n) works in doubles: exact over 0..2^32-1.
   return prefix .. string.format("%.0f", math.random(0, 4294967295)) .. suffix
end

-- One machine-readable line for compare.sh, next to wrk's own report.
function done(summary, latency, requests)
   io.write(string.format(
      "RESULT requests=%d duration_us=%d status_errors=%d connect_errors=%d read_errors=%d "
         .. "write_errors=%d timeouts=%d p50_us=%d p99_us=%d\n",
      summary.requests, summary.duration, summary.errors.status, summary.errors.connect,
      summary.errors.read, summary.errors.write, summary.errors.timeout,
      latency:percentile(50), latency:percentile(99)))
end
