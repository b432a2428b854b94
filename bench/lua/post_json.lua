-- POST a JSON body: wrk -s post_json.lua URL -- BODY
local report = dofile(os.getenv("BENCH_LUA_DIR") .. "/report.lua")

function init(args)
  wrk.method = "POST"
  wrk.body = args[1]
  wrk.headers["Content-Type"] = "application/json"
end

done = report
