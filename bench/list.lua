-- GET /api/products?limit=N (static request; the script only adds the report).
-- usage: wrk -s list.lua 'http://127.0.0.1:PORT/api/products?limit=50'
local here = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
dofile(here .. "report.lua")
done = bench_report
