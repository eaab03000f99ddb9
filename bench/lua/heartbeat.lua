-- Heartbeats: PUT /providers/{id}/status with {"status": "<its status>"}, rotating over the
-- providers of a file, so that every heartbeat renews a different lease and keeps the
-- provider's status (the query's selectivity stays the same during the run).
-- Script arguments: [1] path of a file of "id status" or "id status token" lines, [2] the
-- number of wrk threads. With a token, each heartbeat sends it as its provider's daemon does
-- (Authorization: Bearer <token>).
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "report.lua")

local started = 0
function setup(thread)
  thread:set("thread_index", started)
  started = started + 1
end

local requests, n, i = {}, 0, 0

-- At most this many providers are beaten: building a million requests in each thread's
-- init takes longer than wrk's run (a fleet of 1,000,000 stays 1,000,000 in Redis).
local MAX_PROVIDERS = 200000

function init(args)
  for line in io.lines(args[1]) do
    if n >= MAX_PROVIDERS then break end
    local id, status, token = line:match("^(%S+) (%S+) ?(%S*)$")
    if id then
      n = n + 1
      local headers = {["Content-Type"] = "application/json"}
      if token ~= "" then headers["Authorization"] = "Bearer " .. token end
      requests[n] = wrk.format("PUT", "/providers/" .. id .. "/status", headers,
        '{"status":"' .. status .. '"}')
    end
  end
  if n == 0 then error("no providers in " .. args[1]) end
  -- Threads start at different offsets so that they do not beat the same providers.
  i = math.floor(n * (thread_index or 0) / tonumber(args[2] or 1))
end

function request()
  i = i % n + 1
  return requests[i]
end
