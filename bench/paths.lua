-- GET one path after another from a file of paths (one per line), round robin.
-- usage: wrk -s paths.lua URL -- PATHS_FILE
local here = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
dofile(here .. "report.lua")

local paths, i, nthreads = {}, 0, 0

function setup(thread)
  thread:set("tid", nthreads)
  nthreads = nthreads + 1
end

function init(args)
  for line in io.lines(args[1]) do
    paths[#paths + 1] = line
  end
  -- threads start at different offsets so they do not walk in lock-step
  i = (tid or 0) * 7919
end

function request()
  i = i + 1
  return wrk.format("GET", paths[(i % #paths) + 1])
end

done = bench_report
