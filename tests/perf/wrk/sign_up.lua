-- POST /users with a new username every time (a sign-up hashes its password: hash-bound).
-- Script args: a run nonce (letters and digits) that keeps usernames unique across runs.
local here = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
dofile(here .. "common.lua")

local nonce, counter
local headers = { ["Content-Type"] = "application/json" }

function scenario_init(args)
  nonce = args[1]
  counter = 0
end

function request()
  counter = counter + 1
  local body = string.format('{"username": "s%s_%d_%d", "password": "bench-password-1"}', nonce, thread_index, counter)
  return wrk.format("POST", "/users", headers, body)
end
