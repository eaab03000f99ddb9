-- Rewrite a batch of providers' GPUs as layout 3 keeps them (gpu_fragments.py): the migration
-- from layouts 1 and 2, whose hashes hold the list as JSON in `gpus`. Python computes the
-- new fields from what it read; a provider whose `gpus` or `gpu_live` changed since then
-- (a heartbeat) is left for the next pass. Idempotent.
-- KEYS[1..10] the registry's fixed keys (lib.lua)    ARGV[1..8] the fixed arguments (lib.lua)
-- ARGV[9..] per provider: ID, the `gpus` read, the `gpu_live` read ("" for none),
--           the new `gpu_specs` and the new `gpu_live`
-- Returns how many providers it rewrote.
local done = 0
for i = CTX_ARGS + 1, #ARGV, 5 do
  local hash = hkey(ARGV[i])
  local v = redis.call('HMGET', hash, 'gpus', 'gpu_live', 'gpu_specs')
  if v[1] == ARGV[i + 1] and (v[2] or '') == ARGV[i + 2] and not v[3] then
    redis.call('HSET', hash, 'gpu_specs', ARGV[i + 3], 'gpu_live', ARGV[i + 4])
    redis.call('HDEL', hash, 'gpus')
    done = done + 1
  end
end
return done
