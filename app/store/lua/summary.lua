-- Capacity counters by effective status, without reading every provider: the counters kept by
-- the writes, corrected for deadlines that passed and were not swept yet.
-- KEYS[1..10] the registry's fixed keys (lib.lua)
-- ARGV[1..8] the registry's fixed arguments (lib.lua)
-- Returns {now_ms, providers in outage grace, field, value, ...} with fields
-- "<status>|<kind>|<name>".
local counts = {}
local flat = redis.call('HGETALL', ctx.counts)
for i = 1, #flat, 2 do counts[flat[i]] = tonumber(flat[i + 1]) end

each_unsettled(function(_, h)
  if not h.summary then return end
  local now_status = effective(h)
  for _, e in ipairs(cjson.decode(h.summary)) do
    local from = counter_field(h.status, e[1], e[2])
    local to = counter_field(now_status, e[1], e[2])
    counts[from] = (counts[from] or 0) - e[3]
    counts[to] = (counts[to] or 0) + e[3]
  end
end)

local out = {ctx.now, redis.call('ZCOUNT', ctx.grace, '(' .. ctx.now, '+inf')}
for field, value in pairs(counts) do
  if value ~= 0 then
    out[#out + 1] = field
    out[#out + 1] = value
  end
end
return out
