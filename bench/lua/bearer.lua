-- GET with a Bearer token: wrk -s bearer.lua URL -- TOKEN
local report = dofile(os.getenv("BENCH_LUA_DIR") .. "/report.lua")

function init(args)
  wrk.headers["Authorization"] = "Bearer " .. args[1]
end

done = report
