package.path = package.path .. ";" .. os.getenv("BENCH_LUA_DIR") .. "/?.lua"
require "common"
wrk.method = "GET"
wrk.path = "/hello"
