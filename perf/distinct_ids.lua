-- wrk script for perf/merge_stall.sh: fills a window with distinct ids, fast.
--
--   FILL_THREADS=2 wrk -t2 -c8 -d40s -s perf/distinct_ids.lua URL -- TARGET DEPTH
--
-- Request n (counted over all threads: thread t sends n = t, t + T, t + 2T, ... for T =
-- FILL_THREADS threads, which must equal wrk's -t) carries id = (n mod TARGET) * 0x9E3779B1
-- mod 2^32. Multiplying by an odd constant is a bijection of 0..2^32-1, so the first TARGET
-- requests (default 10 000 000) carry TARGET distinct ids spread uniformly over the u32
-- range; after that the ids repeat (cheap for verve: the window stops growing). Each call of
-- request() returns DEPTH (default 32) requests, pipelined on the connection.

local next_index = 0

function setup(thread)
   thread:set("thread_index", next_index)
   next_index = next_index + 1
end

local target, depth, nthreads
local counter = 0
local prefix, suffix

function init(args)
   target = tonumber(args[1] or "") or 10000000
   depth = tonumber(args[2] or "") or 32
   nthreads = tonumber(os.getenv("FILL_THREADS") or "") or 2
   local template = wrk.format("GET", "/api/verve/accept?id=@ID@")
   prefix, suffix = template:match("^(.-)@ID@(.*)$")
end

local M = 2654435761 -- 0x9E3779B1, odd
local TWO16, TWO32 = 65536, 4294967296

-- (a * M) mod 2^32 in exact double arithmetic (every product stays below 2^53).
local function mulmod(a)
   local hi = math.floor(a / TWO16)
   local lo = a % TWO16
   return ((hi * M % TWO16) * TWO16 + lo * M) % TWO32
end

local parts = {}

function request()
   for i = 1, depth do
      local n = (counter * nthreads + thread_index) % target
      counter = counter + 1
      parts[i] = prefix .. string.format("%.0f", mulmod(n)) .. suffix
   end
   return table.concat(parts, "", 1, depth)
end

function done(summary, latency, requests)
   io.write(string.format(
      "RESULT requests=%d duration_us=%d status_errors=%d connect_errors=%d read_errors=%d "
         .. "write_errors=%d timeouts=%d\n",
      summary.requests, summary.duration, summary.errors.status, summary.errors.connect,
      summary.errors.read, summary.errors.write, summary.errors.timeout))
end
