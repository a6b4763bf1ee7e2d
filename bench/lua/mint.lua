-- POST /api/v1/links with a different subject each time (per-subject limits stay out of the way).
package.path = package.path .. ";" .. os.getenv("BENCH_LUA_DIR") .. "/?.lua"
require "common"
local key = os.getenv("BENCH_API_KEY")
local counter = 0
local prefix = ""
local threads = {}
local next_id = 0

function setup(thread)
  next_id = next_id + 1
  thread:set("tid", next_id)
end

function init(args)
  prefix = "bench-" .. tostring(tid or 0) .. "-"
end

function request()
  counter = counter + 1
  return wrk.format("POST", "/api/v1/links",
    {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. key},
    '{"purpose":"magic_link","subject":"' .. prefix .. counter .. '"}')
end
