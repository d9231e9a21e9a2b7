-- wrk script for perf/scrape.sh: each request wrk sends is PIPELINE (default 1000)
-- pipelined GET /metrics requests in one write (wrk counts the requests in a batch and waits
-- for as many answers). SCRAPE_PATH replaces /metrics (perf/scrape.sh explains why).

local batch

function init(args)
   local n = tonumber(os.getenv("PIPELINE") or "1000") or 1000
   batch = string.rep(wrk.format("GET", os.getenv("SCRAPE_PATH") or "/metrics"), n)
end

function request()
   return batch
end
