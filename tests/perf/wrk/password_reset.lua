-- POST /password-reset for the seeded users' addresses, each request from another client address.
-- The service trusts 127.0.0.1 as a proxy (the bench sets TRUSTED_PROXIES), so X-Forwarded-For is the client:
-- 10.<thread>.x.y, a new one for each request, so the per-address throttle counts each at most once a run.
-- Script args: file of email addresses.
local here = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
dofile(here .. "common.lua")

local emails, position, sent
local headers = { ["Content-Type"] = "application/json" }

function scenario_init(args)
  emails = read_lines(args[1])
  position = (thread_index * 7919) % #emails
  sent = 0
end

function request()
  position = position % #emails + 1
  sent = sent + 1
  headers["X-Forwarded-For"] = string.format("10.%d.%d.%d", thread_index % 256, math.floor(sent / 256) % 256, sent % 256)
  return wrk.format("POST", "/password-reset", headers, '{"email":"' .. emails[position] .. '"}')
end
