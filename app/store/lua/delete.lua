-- Deregister a provider: remove it from every index, then delete its keys.
-- KEYS[1] provider hash    KEYS[2] lease key    KEYS[3] leases    KEYS[4] providers
-- KEYS[5] irregular
-- ARGV[1] provider ID    ARGV[2] status key prefix
-- Returns 1 deleted, 0 no such provider.
local hash, lease, leases, providers, irregular = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local id, status_prefix = ARGV[1], ARGV[2]

local old = redis.call('HMGET', hash, 'status', 'index_keys')
if old[1] == false then return 0 end
drop_indexes(old[2], id)
redis.call('ZREM', status_prefix .. old[1], id)
redis.call('ZREM', leases, id)
redis.call('ZREM', providers, id)
redis.call('SREM', irregular, id)
redis.call('DEL', hash, lease)
return 1
