-- POST /token, password grant, cycling through seeded usernames (each login verifies an Argon2 hash).
-- Script args: file of usernames, their password (URL-safe characters only).
local here = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
dofile(here .. "common.lua")

local usernames, password, position
local headers = { ["Content-Type"] = "application/x-www-form-urlencoded" }

function scenario_init(args)
  usernames = read_lines(args[1])
  password = args[2]
  position = (thread_index * 7919) % #usernames
end

function request()
  position = position % #usernames + 1
  return wrk.format("POST", "/token", headers, "grant_type=password&username=" .. usernames[position] .. "&password=" .. password)
end
