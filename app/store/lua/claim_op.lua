-- Renew, confirm or release one provider's claim.
-- KEYS[1..10] the registry's fixed keys (lib.lua)
-- ARGV[1..8] the registry's fixed arguments (lib.lua)
-- ARGV[9] provider ID    ARGV[10] "renew", "confirm" or "release"    ARGV[11] claim ID
-- ARGV[12] SHA-256 of the caller's provider token (a daemon releasing its own claim), which
--         must equal the stored token_hash, or "" when the caller's role allows it without one
-- Returns {code, now_ms, the provider hash as a flat list}: code 1 done, -1 no such provider,
-- -2 the token does not match (nothing changed, empty list),
-- -4 the claim ID is not the provider's current claim (ended, lapsed, or another one).
local a = CTX_ARGS
local id, op, claim_id, token = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4] or ''

local h = read_state(id)
if not h then return {-1, ctx.now, {}} end
if token ~= '' and redis.call('HGET', hkey(id), 'token_hash') ~= token then
  return {-2, ctx.now, {}}
end
settle(id, h)
if h.claim_id ~= claim_id then return {-4, ctx.now, reply(id)} end

if op == 'renew' then
  if h.claim_confirmed ~= '1' then
    local deadline = ctx.now + tonumber(redis.call('HGET', hkey(id), 'claim_ttl_ms'))
    redis.call('HSET', hkey(id), 'claim_expires_at', deadline)
    redis.call('ZADD', ctx.claims, deadline, id)
    bump(id, h)
  end
elseif op == 'confirm' then
  if h.claim_confirmed ~= '1' then
    redis.call('HSET', hkey(id), 'claim_confirmed', '1')
    redis.call('HDEL', hkey(id), 'claim_expires_at')
    redis.call('ZREM', ctx.claims, id)
    bump(id, h)
    emit('claim_confirmed', id, ctx.now, {'claim_id', claim_id, 'version', h.version})
  end
else
  clear_claim(id, h)
  set_status(id, h, 'idle')
  bump(id, h)
  emit('claim_released', id, ctx.now, {'claim_id', claim_id, 'reason', 'released',
    'version', h.version})
end
return {1, ctx.now, reply(id)}
