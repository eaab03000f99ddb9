-- Register a provider (create, or replace in place) or update its details, with every index,
-- counter and event, in one atomic step.
-- KEYS[1..10] the registry's fixed keys (lib.lua)
-- ARGV[1..8] the registry's fixed arguments (lib.lua)
-- ARGV[9] provider ID    ARGV[10] mode: "register" or "update"    ARGV[11] lease TTL in ms
-- ARGV[12] status to set on register    ARGV[13] If-Match versions ("" for any)
-- ARGV[14] SHA-256 of a new provider token: stored when the provider is created, or replaced
--          by a caller that presented no token (admin); "" keeps the stored one
-- ARGV[15] credential check: "" none (the caller's role allows it), "!" the provider must not
--          exist yet, else the SHA-256 that the stored token_hash must equal
-- ARGV[16] n, the number of detail fields, then n field/value pairs (a value "" removes the
--          field), then index key/score pairs to the end
-- Returns {code, now_ms, the provider hash as a flat list}: code 1 created, 0 replaced or
-- updated, -1 no such provider (update), -2 the credential check failed (nothing changed,
-- empty list), -3 If-Match failed.
local a = CTX_ARGS
local id, mode, ttl, status, if_match, new_token, expected =
  ARGV[a + 1], ARGV[a + 2], tonumber(ARGV[a + 3]), ARGV[a + 4], ARGV[a + 5], ARGV[a + 6], ARGV[a + 7]
local hash = hkey(id)
local DERIVED_FIELDS = {summary = true, gpu_keys = true, bucket_stems = true}
local GPU_FIELDS = {gpu_specs = 'gpus', gpu_live = 'gpus', gpus = 'gpus'}

local h = read_state(id)
if mode == 'update' and not h then return {-1, ctx.now, {}} end
-- The credential first: a caller without it learns nothing, not even the version.
local stored_token = h and redis.call('HGET', hash, 'token_hash')
if expected ~= '' and not (expected == '!' and not h) and stored_token ~= expected then
  return {-2, ctx.now, {}}
end
if h and not version_matches(h, if_match) then return {-3, ctx.now, reply(id)} end
if new_token ~= '' and (not h or expected == '') then
  redis.call('HSET', hash, 'token_hash', new_token)
end

local n = tonumber(ARGV[a + 8])
local names, values, new_summary, gpu_keys, stems = {}, {}, '', '', ''
for i = a + 9, a + 8 + 2 * n, 2 do
  names[#names + 1], values[#values + 1] = ARGV[i], ARGV[i + 1]
  if ARGV[i] == 'summary' then new_summary = ARGV[i + 1]
  elseif ARGV[i] == 'gpu_keys' then gpu_keys = ARGV[i + 1]
  elseif ARGV[i] == 'bucket_stems' then stems = ARGV[i + 1] end
end

local previous = nil
local changed = {}
if h then
  settle(id, h)
  previous = h.status
  local old = redis.call('HMGET', hash, unpack(names))
  -- The event names what changed as the API names it: a GPU's specs or live values are "gpus".
  local seen = {}
  for i, name in ipairs(names) do
    local shown = DERIVED_FIELDS[name] and '' or GPU_FIELDS[name] or name
    if (old[i] or '') ~= values[i] and shown ~= '' and not seen[shown] then
      changed[#changed + 1], seen[shown] = shown, true
    end
  end
  -- Take the old details out of the counters and indexes; the new ones go in below.
  count(h.summary, h.status, -1)
  drop_indexes(h.index_keys, id)
  bucket_remove(h.bucket_stems, id, h.status)
end

for i, name in ipairs(names) do
  if values[i] == '' then
    redis.call('HDEL', hash, name)
  else
    redis.call('HSET', hash, name, values[i])
  end
end
local index_keys = {}
for i = a + 9 + 2 * n, #ARGV, 2 do
  if redis.call('ZADD', ARGV[i], ARGV[i + 1], id) == 1 then catalog_add(ARGV[i]) end
  index_keys[#index_keys + 1] = ARGV[i]
end
redis.call('HSET', hash, 'id', id, 'index_keys', table.concat(index_keys, ' '))
redis.call('ZADD', ctx.providers, 0, id)
mark_irregular(id, gpu_keys)

if mode == 'update' then
  count(new_summary, h.status, 1)
  bucket_add(stems, id, h.status)
  bump(id, h)
  emit('updated', id, ctx.now, {'changed', table.concat(changed, ','), 'version', h.version})
  return {0, ctx.now, reply(id)}
end

-- Registration: a fresh start of the daemon, and its first heartbeat.
if h then
  end_claim(id, h, 'reregistered')
  redis.call('ZREM', ctx.status_prefix .. h.status, id)
else
  h = {}
  redis.call('HSET', hash, 'registered_at', ctx.now)
end
redis.call('ZADD', ctx.status_prefix .. status, 0, id)
redis.call('HSET', hash, 'status', status)
count(new_summary, status, 1)
bucket_add(stems, id, status)
renew_lease(id, ttl, h)
bump(id, h)
emit('registered', id, ctx.now, {'status', status, 'version', h.version,
  'reregistered', previous and '1' or '0'})
if previous == 'offline' then
  emit('online', id, ctx.now, {'status', status})
end
if previous then return {0, ctx.now, reply(id)} end
return {1, ctx.now, reply(id)}
