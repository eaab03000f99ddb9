-- Turn lapsed leases and lapsed unconfirmed claims into transitions, a batch at a time.
-- KEYS[1..10] the registry's fixed keys (lib.lua)
-- ARGV[1..8] the registry's fixed arguments (lib.lua)
-- ARGV[9] batch size
-- Returns {now_ms, n, id, previous status, new status, ...} for each provider settled, where
-- n is how many lapsed entries were found (a full batch means: call again).
local batch = tonumber(ARGV[CTX_ARGS + 1])
local out, seen, found = {ctx.now, 0}, {}, 0
for _, index in ipairs({ctx.leases, ctx.claims}) do
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', index, '-inf', ctx.now, 'LIMIT', 0, batch)) do
    found = found + 1
    if not seen[id] then
      seen[id] = true
      local h = read_state(id)
      if h then
        local previous = h.status
        settle(id, h)
        if h.status ~= previous then
          out[#out + 1] = id
          out[#out + 1] = previous
          out[#out + 1] = h.status
        end
        -- Entries that no deadline backs any more (never expected) must not loop the sweeper.
        if h.status == 'offline' then redis.call('ZREM', ctx.leases, id) end
        if h.claim_id == nil or h.claim_confirmed == '1' then redis.call('ZREM', ctx.claims, id) end
      else
        -- Index entries of a provider deleted mid-way never outlive it.
        redis.call('ZREM', index, id)
      end
    end
  end
end
out[2] = found
return out
