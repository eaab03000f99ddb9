-- Claim `count` live, idle, unclaimed providers matching the filters, all or nothing.
-- KEYS[1..10] the registry's fixed keys (lib.lua)    KEYS[11..20] filter keys (select.lua)
-- ARGV[1..8] the registry's fixed arguments (lib.lua)    ARGV[9..18] filters (select.lua;
-- the statuses argument is ignored)
-- ARGV[19] count    ARGV[20] claim TTL in ms    ARGV[21] claimant    ARGV[22] claim ID
-- Returns {1, now_ms, expires_at_ms, {hash as a flat list}, ...} when granted, or
-- {-2, now_ms, live providers matching the filters, how many of them were free}.
local wanted, ttl, claimant, claim_id =
  tonumber(ARGV[F_ARGS + 1]), tonumber(ARGV[F_ARGS + 2]), ARGV[F_ARGS + 3], ARGV[F_ARGS + 4]

local sel = select_candidates('idle')
local free = selection_total(sel)
if free < wanted then
  selection_done(sel)
  local live = select_candidates('idle,busy,maintenance,error')
  local matched = selection_total(live)
  selection_done(live)
  return {-2, ctx.now, matched, free}
end

local chosen = {}
if f.sort == '' then
  chosen = selection_by_id(sel, '', wanted)
else
  for _, row in ipairs(selection_sorted(sel, '', '', wanted)) do chosen[#chosen + 1] = row[1] end
end
selection_done(sel)

local deadline = ctx.now + ttl
local out = {1, ctx.now, deadline}
for i = 1, wanted do
  local id = chosen[i]
  local h = read_state(id)
  settle(id, h)  -- a claim that lapsed unswept is written to the feed before the new one
  set_status(id, h, 'busy')
  redis.call('HSET', hkey(id), 'claim_id', claim_id, 'claimant', claimant,
    'claim_expires_at', deadline, 'claim_ttl_ms', ttl)
  redis.call('ZADD', ctx.claims, deadline, id)
  bump(id, h)
  emit('claimed', id, ctx.now, {'claim_id', claim_id, 'claimant', claimant,
    'expires_at', deadline, 'version', h.version})
  out[#out + 1] = reply(id)
end
return out
