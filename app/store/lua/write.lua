-- Register a provider (create or replace in place) or update its details, with every index,
-- in one atomic step.
-- KEYS[1] provider hash    KEYS[2] lease key    KEYS[3] leases (zset by deadline ms)
-- KEYS[4] providers (all IDs)    KEYS[5] irregular (set)
-- ARGV[1] provider ID    ARGV[2] mode: "register" or "update"    ARGV[3] lease TTL in ms
-- ARGV[4] status to set on register    ARGV[5] status key prefix
-- ARGV[6] n, the number of detail fields, then n field/value pairs (they include gpus and
--         gpu_keys), then index key/score pairs to the end
-- Returns {code, now_ms, the provider hash as a flat list}: code 1 created, 0 replaced or
-- updated, -1 no such provider (update).
local hash, lease, leases, providers, irregular = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local id, mode, ttl, status, status_prefix = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
local now = now_ms()

local old = redis.call('HMGET', hash, 'status', 'registered_at', 'last_seen_at',
  'lease_expires_at', 'index_keys')
local exists = old[1] ~= false
if mode == 'update' and not exists then return {-1, now, {}} end

local n = tonumber(ARGV[6])
local fields = {}
local gpus_json, gpu_keys = '[]', ''
for i = 7, 6 + 2 * n, 2 do
  local name, value = ARGV[i], ARGV[i + 1]
  fields[#fields + 1] = name
  fields[#fields + 1] = value
  if name == 'gpus' then gpus_json = value elseif name == 'gpu_keys' then gpu_keys = value end
end

drop_indexes(old[5], id)
local index_keys = {}
for i = 7 + 2 * n, #ARGV, 2 do
  redis.call('ZADD', ARGV[i], ARGV[i + 1], id)
  index_keys[#index_keys + 1] = ARGV[i]
end

local registered_at = old[2] or now
local last_seen, deadline
if mode == 'register' then
  last_seen, deadline = now, now + ttl
  redis.call('SET', lease, now, 'PX', ttl)
  redis.call('ZADD', leases, deadline, id)
  move_status(status_prefix, id, old[1] or nil, status)
else
  status, last_seen, deadline = old[1], old[3], old[4]
end

redis.call('DEL', hash)
redis.call('HSET', hash, 'id', id, 'status', status, 'registered_at', registered_at,
  'last_seen_at', last_seen, 'lease_expires_at', deadline,
  'index_keys', table.concat(index_keys, ' '), unpack(fields))
redis.call('ZADD', providers, 0, id)
mark_irregular(irregular, id, gpu_keys, cjson.decode(gpus_json))
local code = 1
if exists then code = 0 end
return {code, now, redis.call('HGETALL', hash)}
