-- POST /token, refresh_token grant. A refresh token is good once, so each thread keeps a queue: it starts
-- with its share of the seeded tokens and every 200 puts back the new token the answer carries.
-- Script args: file of seeded refresh tokens, wrk's thread count.
local here = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
dofile(here .. "common.lua")

local queue, head, tail
local headers = { ["Content-Type"] = "application/x-www-form-urlencoded" }

function scenario_init(args)
  queue = read_lines(args[1], tonumber(args[2]))
  head, tail = 1, #queue
end

function request()
  local token = "queue-empty"  -- only if answers stopped carrying tokens; it then shows as a 401
  if head <= tail then
    token = queue[head]
    queue[head] = nil
    head = head + 1
  end
  return wrk.format("POST", "/token", headers, "grant_type=refresh_token&refresh_token=" .. token)
end

function response(status, headers, body)
  count_status(status)
  if status == 200 then
    local token = body:match('"refresh_token":"([^"]+)"')
    if token ~= nil then
      tail = tail + 1
      queue[tail] = token
    end
  end
end
