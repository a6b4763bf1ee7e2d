-- POST /api/v1/links/verify with one token, over and over (verification consumes nothing).
package.path = package.path .. ";" .. os.getenv("BENCH_LUA_DIR") .. "/?.lua"
require "common"
local key = os.getenv("BENCH_API_KEY")
local token = os.getenv("BENCH_TOKEN")
wrk.method = "POST"
wrk.path = "/api/v1/links/verify"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. key
wrk.body = '{"purpose":"magic_link","token":"' .. token .. '"}'
