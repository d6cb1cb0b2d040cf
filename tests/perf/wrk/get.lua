-- GET wrk's URL path as is, no credentials (the reference app's /floor).
local here = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
dofile(here .. "common.lua")
