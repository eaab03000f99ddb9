-- Replace a provider's token hash, after checking the caller's token. Not a change of
-- details, status or claim: no version bump, no event.
-- KEYS[1..10] the registry's fixed keys (lib.lua)
-- ARGV[1..8] the registry's fixed arguments (lib.lua)
-- ARGV[9] provider ID
-- ARGV[10] SHA-256 of the caller's provider token, which must equal the stored token_hash,
--         or "" when the caller's role allows it without one (admin)
-- ARGV[11] SHA-256 of the new token
-- Returns 1 replaced, -1 no such provider, -2 the token does not match (nothing changed).
local a = CTX_ARGS
local id, expected, new_token = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
local stored = redis.call('HMGET', hkey(id), 'id', 'token_hash')
if stored[1] == false then return -1 end
if expected ~= '' and stored[2] ~= expected then return -2 end
redis.call('HSET', hkey(id), 'token_hash', new_token)
return 1
