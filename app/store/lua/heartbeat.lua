-- Renew a provider's lease, optionally set its status and merge live GPU metrics.
-- KEYS[1] provider hash    KEYS[2] lease key    KEYS[3] leases (zset by deadline ms)
-- KEYS[4] irregular (set)
-- ARGV[1] provider ID    ARGV[2] lease TTL in ms    ARGV[3] new status, or "" to keep it
-- ARGV[4] GPU metrics as a JSON list matched to the GPUs by position, or ""
-- ARGV[5] status key prefix
-- Returns {code, now_ms, previous effective status, the provider hash as a flat list}:
-- code 1 renewed, -1 no such provider.
local hash, lease, leases, irregular = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local id, ttl, wanted, metrics, status_prefix =
  ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5]
local now = now_ms()

local old = redis.call('HMGET', hash, 'status', 'lease_expires_at')
if old[1] == false then return {-1, now, '', {}} end
local stored, deadline = old[1], tonumber(old[2]) or 0
local previous = stored
if deadline <= now then previous = 'offline' end

local status = wanted
if status == '' then
  if previous == 'offline' then status = 'idle' else status = stored end
end

if status == 'offline' then
  -- The daemon is shutting down: the lease ends now.
  redis.call('DEL', lease)
  redis.call('ZREM', leases, id)
  deadline = now
else
  deadline = now + ttl
  redis.call('SET', lease, now, 'PX', ttl)
  redis.call('ZADD', leases, deadline, id)
end
move_status(status_prefix, id, stored, status)

if metrics ~= '' then
  local gpus = cjson.decode(redis.call('HGET', hash, 'gpus'))
  for i, live in ipairs(cjson.decode(metrics)) do
    if gpus[i] then
      for field, value in pairs(live) do gpus[i][field] = value end
    end
  end
  redis.call('HSET', hash, 'gpus', cjson.encode(gpus))
  mark_irregular(irregular, id, redis.call('HGET', hash, 'gpu_keys'), gpus)
end

redis.call('HSET', hash, 'status', status, 'last_seen_at', now, 'lease_expires_at', deadline)
return {1, now, previous, redis.call('HGETALL', hash)}
