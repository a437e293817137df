-- POST /api/products with a unique sku per request.
-- usage: wrk -s post.lua URL -- SKU_PREFIX [API_PREFIX] [PATH]
-- (PATH: where to POST instead of API_PREFIX/products, e.g. another server's route)
local here = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
dofile(here .. "report.lua")

local nthreads, n, sku_prefix, path = 0, 0, "bench", "/api/products"
local headers = { ["Content-Type"] = "application/json" }

function setup(thread)
  thread:set("tid", nthreads)
  nthreads = nthreads + 1
end

function init(args)
  sku_prefix = (args[1] or "bench") .. "-t" .. (tid or 0) .. "-"
  path = args[3] or ((args[2] or "/api") .. "/products")
end

function request()
  n = n + 1
  local body = '{"name":"Bench product ' .. n .. '","description":"inserted by bench/post.lua",' ..
               '"price":"12.50","sku":"' .. sku_prefix .. n .. '"}'
  return wrk.format("POST", path, headers, body)
end

done = bench_report
