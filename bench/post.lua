-- POST /api/products with a unique sku per request.
-- usage: wrk -s post.lua URL -- SKU_PREFIX [API_PREFIX]
local here = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
dofile(here .. "report.lua")

local nthreads, n, sku_prefix, prefix = 0, 0, "bench", "/api"
local headers = { ["Content-Type"] = "application/json" }

function setup(thread)
  thread:set("tid", nthreads)
  nthreads = nthreads + 1
end

function init(args)
  sku_prefix = (args[1] or "bench") .. "-t" .. (tid or 0) .. "-"
  prefix = args[2] or "/api"
end

function request()
  n = n + 1
  local body = '{"name":"Bench product ' .. n .. '","description":"inserted by bench/post.lua",' ..
               '"price":"12.50","sku":"' .. sku_prefix .. n .. '"}'
  return wrk.format("POST", prefix .. "/products", headers, body)
end

done = bench_report
