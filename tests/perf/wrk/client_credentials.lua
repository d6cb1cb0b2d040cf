-- POST /token, client_credentials grant, cycling through the seeded API keys (an HMAC check each, no Argon2).
-- Script args: file of "client_id client_secret" lines (URL-safe characters only).
local here = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
dofile(here .. "common.lua")

local bodies, position
local headers = { ["Content-Type"] = "application/x-www-form-urlencoded" }

function scenario_init(args)
  bodies = {}
  for _, line in ipairs(read_lines(args[1])) do
    local client_id, client_secret = line:match("^(%S+) (%S+)$")
    bodies[#bodies + 1] = "grant_type=client_credentials&client_id=" .. client_id .. "&client_secret=" .. client_secret
  end
  position = (thread_index * 7919) % #bodies
end

function request()
  position = position % #bodies + 1
  return wrk.format("POST", "/token", headers, bodies[position])
end
