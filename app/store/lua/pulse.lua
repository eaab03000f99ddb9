-- The pulse of one serving process: the registry can reach Redis now (see lib.lua, outage
-- grace, which runs before this if the pulse had stopped).
-- KEYS[1..10] the registry's fixed keys (lib.lua)
-- ARGV[1..8] the registry's fixed arguments (lib.lua)
-- Returns now_ms.
redis.call('SET', ctx.pulse, ctx.now)
return ctx.now
