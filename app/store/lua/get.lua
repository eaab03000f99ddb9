-- Read one provider (a script, so that outage grace is settled before the read: lib.lua).
-- KEYS[1..10] the registry's fixed keys (lib.lua)
-- ARGV[1..8] the registry's fixed arguments (lib.lua)    ARGV[9] provider ID
-- Returns {now_ms, the provider hash as a flat list (empty: no such provider)}.
return {ctx.now, redis.call('HGETALL', hkey(ARGV[CTX_ARGS + 1]))}
