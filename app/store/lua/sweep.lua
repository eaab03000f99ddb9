-- Turn lapsed leases into offline transitions, a batch at a time.
-- KEYS[1] leases (zset by deadline ms)
-- ARGV[1] provider hash key prefix    ARGV[2] status key prefix    ARGV[3] batch size
-- Returns {now_ms, id, previous status, deadline, id, ...} for each provider turned offline.
local leases = KEYS[1]
local hash_prefix, status_prefix, batch = ARGV[1], ARGV[2], tonumber(ARGV[3])
local now = now_ms()
local out = {now}
local lapsed = redis.call('ZRANGEBYSCORE', leases, '-inf', now, 'WITHSCORES', 'LIMIT', 0, batch)
for i = 1, #lapsed, 2 do
  local id, deadline = lapsed[i], lapsed[i + 1]
  local hash = hash_prefix .. id
  local stored = redis.call('HGET', hash, 'status')
  redis.call('ZREM', leases, id)
  if stored and stored ~= 'offline' then
    move_status(status_prefix, id, stored, 'offline')
    redis.call('HSET', hash, 'status', 'offline')
    out[#out + 1] = id
    out[#out + 1] = stored
    out[#out + 1] = deadline
  end
end
return out
