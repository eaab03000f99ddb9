-- The heartbeat as a script (EVALSHA): the write under an Idempotency-Key (idempotent.lua
-- wraps it), and every heartbeat on a Redis without FUNCTIONs. KEYS and ARGV: heartbeat.lua.
return heartbeat(ARGV)
