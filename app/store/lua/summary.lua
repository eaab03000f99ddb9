-- Capacity counters by effective status, without reading every provider: the counters kept by
-- the writes, corrected for deadlines that passed and were not swept yet.
-- KEYS[1..6] the registry's fixed keys (lib.lua)
-- ARGV[1..4] the registry's fixed arguments (lib.lua)
-- Returns {now_ms, field, value, ...} with fields "<status>|<kind>|<name>".
local counts = {}
local flat = redis.call('HGETALL', ctx.counts)
for i = 1, #flat, 2 do counts[flat[i]] = tonumber(flat[i + 1]) end

local seen = {}
for _, index in ipairs({ctx.leases, ctx.claims}) do
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', index, '-inf', ctx.now)) do
    if not seen[id] then
      seen[id] = true
      local h = read_state(id)
      if h and h.summary then
        local now_status = effective(h)
        if now_status ~= h.status then
          for _, e in ipairs(cjson.decode(h.summary)) do
            local from = h.status .. '|' .. e[1] .. '|' .. e[2]
            local to = now_status .. '|' .. e[1] .. '|' .. e[2]
            counts[from] = (counts[from] or 0) - e[3]
            counts[to] = (counts[to] or 0) + e[3]
          end
        end
      end
    end
  end
end

local out = {ctx.now}
for field, value in pairs(counts) do
  if value ~= 0 then
    out[#out + 1] = field
    out[#out + 1] = value
  end
end
return out
