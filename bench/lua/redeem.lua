-- POST /api/v1/links/redeem, each request a first use: every thread takes its own slice of
-- the pre-minted tokens in BENCH_TOKENS_FILE (one per line) and never repeats one. Running
-- out shows up as non-2xx answers (409 used), so the report would show it.
package.path = package.path .. ";" .. os.getenv("BENCH_LUA_DIR") .. "/?.lua"
require "common"
local key = os.getenv("BENCH_API_KEY")
local nthreads = tonumber(os.getenv("BENCH_THREADS") or "2")
local next_id = 0
local tokens = {}
local i = 0

function setup(thread)
  thread:set("tid", next_id)
  next_id = next_id + 1
end

function init(args)
  local n = 0
  for line in io.lines(os.getenv("BENCH_TOKENS_FILE")) do
    if n % nthreads == tid then
      tokens[#tokens + 1] = line
    end
    n = n + 1
  end
end

function request()
  i = i + 1
  local token = tokens[((i - 1) % #tokens) + 1]
  return wrk.format("POST", "/api/v1/links/redeem",
    {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. key},
    '{"purpose":"magic_link","token":"' .. token .. '"}')
end
