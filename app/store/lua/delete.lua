-- Deregister a provider: remove it from every index and counter, then delete its keys.
-- KEYS[1..10] the registry's fixed keys (lib.lua)
-- ARGV[1..8] the registry's fixed arguments (lib.lua)
-- ARGV[9] provider ID    ARGV[10] If-Match versions ("" for any)
-- ARGV[11] SHA-256 of the caller's provider token, which must equal the stored token_hash,
--         or "" when the caller's role allows it without one
-- Returns {code, version}: code 1 deleted, -1 no such provider, -2 the token does not match
-- (nothing deleted, version 0), -3 If-Match failed.
local a = CTX_ARGS
local id, if_match, token = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]

local h = read_state(id)
if not h then return {-1, 0} end
if token ~= '' and redis.call('HGET', hkey(id), 'token_hash') ~= token then return {-2, 0} end
if not version_matches(h, if_match) then return {-3, tonumber(h.version) or 0} end
settle(id, h)
end_claim(id, h, 'deregistered')
forget(id, h)
emit('deregistered', id, ctx.now, {'previous_status', h.status})
return {1, tonumber(h.version) or 0}
