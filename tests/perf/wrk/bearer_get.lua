-- GET one path with a bearer token, cycling through the tokens of many users.
-- Script args: path, file of access tokens (one a line).
local here = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
dofile(here .. "common.lua")

local path, tokens, position

function scenario_init(args)
  path = args[1]
  tokens = read_lines(args[2])
  -- Threads start at different users so they do not walk the same rows in step.
  position = (thread_index * 7919) % #tokens
end

function request()
  position = position % #tokens + 1
  return wrk.format("GET", path, { ["Authorization"] = "Bearer " .. tokens[position] })
end
