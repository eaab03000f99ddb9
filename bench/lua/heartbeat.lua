-- Heartbeats: PUT /providers/{id}/status with {"status": "<its status>"}, rotating over the
-- providers of a file, so that every heartbeat renews a different lease and keeps the
-- provider's status (the query's selectivity stays the same during the run).
-- Script arguments: [1] path of a file of "id status" lines, [2] the number of wrk threads.
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "report.lua")

local started = 0
function setup(thread)
  thread:set("thread_index", started)
  started = started + 1
end

local paths, bodies, n, i = {}, {}, 0, 0
local headers = {["Content-Type"] = "application/json"}

function init(args)
  for line in io.lines(args[1]) do
    local id, status = line:match("^(%S+) (%S+)$")
    if id then
      n = n + 1
      paths[n] = "/providers/" .. id .. "/status"
      bodies[n] = '{"status":"' .. status .. '"}'
    end
  end
  if n == 0 then error("no providers in " .. args[1]) end
  -- Threads start at different offsets so that they do not beat the same providers.
  i = math.floor(n * (thread_index or 0) / tonumber(args[2] or 1))
end

function request()
  i = i % n + 1
  return wrk.format("PUT", paths[i], headers, bodies[i])
end
