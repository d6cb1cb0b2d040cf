-- GET /users/{id} as one admin, cycling through a range of user ids.
-- Script args: admin access token, first id, last id.
local here = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
dofile(here .. "common.lua")

local headers, first_id, span, position

function scenario_init(args)
  headers = { ["Authorization"] = "Bearer " .. args[1] }
  first_id = tonumber(args[2])
  span = tonumber(args[3]) - first_id + 1
  position = (thread_index * 7919) % span
end

function request()
  position = (position + 1) % span
  return wrk.format("GET", "/users/" .. (first_id + position), headers)
end
