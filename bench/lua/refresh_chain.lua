-- POST /api/v1/auth/refresh, each request with the refresh token an earlier answer
-- handed out (they rotate: each is good once). One wrk thread, so one pool:
-- wrk -t1 -cN -s refresh_chain.lua URL -- TOKEN1,...,TOKEN(N+1): one per connection,
-- and one for the request wrk builds once before it starts, which it never sends.
local report = dofile(os.getenv("BENCH_LUA_DIR") .. "/report.lua")
local pool = {}

function init(args)
  for token in string.gmatch(args[1], "[^,]+") do
    table.insert(pool, token)
  end
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  -- An empty pool (an answer without a new token) sends a token that fails: counted.
  local token = table.remove(pool) or "exhausted"
  return wrk.format(nil, nil, nil, '{"refresh_token": "' .. token .. '"}')
end

function response(status, headers, body)
  local token = string.match(body, '"refresh_token"%s*:%s*"([^"]+)"')
  if token then
    table.insert(pool, token)
  end
end

done = report
