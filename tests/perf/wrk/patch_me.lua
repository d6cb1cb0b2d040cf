-- PATCH /users/me with a new full_name, cycling through the tokens of many users.
-- Script args: file of access tokens.
local here = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
dofile(here .. "common.lua")

local tokens, position, counter

function scenario_init(args)
  tokens = read_lines(args[1])
  position = (thread_index * 7919) % #tokens
  counter = 0
end

function request()
  position = position % #tokens + 1
  counter = counter + 1
  local body = string.format('{"full_name": "Bench %d-%d"}', thread_index, counter)
  return wrk.format("PATCH", "/users/me", {
    ["Authorization"] = "Bearer " .. tokens[position],
    ["Content-Type"] = "application/json",
  }, body)
end
