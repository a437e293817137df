-- GET /api/products/<id>, rotating over ids FIRST..LAST.
-- usage: wrk -s get_by_key.lua URL -- FIRST LAST [PREFIX]
local here = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
dofile(here .. "report.lua")

local first, span, i, prefix = 1, 1, 0, "/api"
local threads, nthreads = {}, 0

function setup(thread)
  thread:set("tid", nthreads)
  nthreads = nthreads + 1
end

function init(args)
  first = tonumber(args[1]) or 1
  span = (tonumber(args[2]) or first) - first + 1
  prefix = args[3] or "/api"
  -- threads start at different offsets so they do not walk in lock-step
  i = (tid or 0) * 7919
end

function request()
  local id = first + (i % span)
  i = i + 1
  return wrk.format("GET", prefix .. "/products/" .. id)
end

done = bench_report
