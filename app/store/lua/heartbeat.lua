-- Renew a provider's lease, optionally set its status and merge live GPU metrics.
-- KEYS[1..10] the registry's fixed keys (lib.lua)
-- ARGV[1..8] the registry's fixed arguments (lib.lua)
-- ARGV[9] provider ID    ARGV[10] lease TTL in ms    ARGV[11] new status, or "" to keep it
-- ARGV[12] GPU metrics as a JSON list matched to the GPUs by position, or ""
-- ARGV[13] If-Match versions ("" for any)
-- ARGV[14] SHA-256 of the caller's provider token, which must equal the stored token_hash,
--          or "" when the caller's role allows it without one
-- Returns {code, now_ms, {status, last_seen_at, lease_expires_at, version}}: code 1 renewed,
-- -1 no such provider, -2 the token does not match (nothing changed, empty list),
-- -3 If-Match failed (a heartbeat answers little: it is the hot path).
local a = CTX_ARGS
local id, ttl, wanted, metrics, if_match, token =
  ARGV[a + 1], tonumber(ARGV[a + 2]), ARGV[a + 3], ARGV[a + 4], ARGV[a + 5], ARGV[a + 6]

local h = read_state(id)
if not h then return {-1, ctx.now, {}} end
if token ~= '' and redis.call('HGET', hkey(id), 'token_hash') ~= token then
  return {-2, ctx.now, {}}
end
local function ack()
  return redis.call('HMGET', hkey(id), 'status', 'last_seen_at', 'lease_expires_at', 'version')
end
if not version_matches(h, if_match) then return {-3, ctx.now, ack()} end

-- A lease or claim that lapsed before this heartbeat is written to the feed first.
settle(id, h)
local was = h.status

local status = was
if wanted == '' or (wanted == 'idle' and h.claim_id) then
  -- No status, or "idle" from a daemon that has not heard of its job yet: the claim holds.
  if was == 'offline' then status = 'idle' end
elseif wanted == 'maintenance' or wanted == 'error' or wanted == 'offline' then
  end_claim(id, h, wanted)
  status = wanted
else
  status = wanted
end

if status == 'offline' then
  -- The daemon is shutting down: the lease ends now.
  redis.call('DEL', ctx.lease_prefix .. id)
  redis.call('ZREM', ctx.leases, id)
  end_grace(id, h)
  redis.call('HSET', hkey(id), 'last_seen_at', ctx.now, 'lease_expires_at', ctx.now)
else
  renew_lease(id, ttl, h)
end

if status ~= was then
  set_status(id, h, status)
  bump(id, h)
  if was == 'offline' then
    emit('online', id, ctx.now, {'status', status, 'version', h.version})
  else
    emit('status_changed', id, ctx.now, {'from', was, 'to', status, 'version', h.version})
  end
end

if metrics ~= '' then
  local gpus = cjson.decode(redis.call('HGET', hkey(id), 'gpus'))
  for i, live in ipairs(cjson.decode(metrics)) do
    if gpus[i] then
      for field, value in pairs(live) do gpus[i][field] = value end
    end
  end
  -- Health marks of the GPU tokens follow is_healthy.
  local tokens, i = {}, 0
  for token in string.gmatch(redis.call('HGET', hkey(id), 'gpu_keys') or '', '%S+') do
    i = i + 1
    local plain = string.gsub(token, '!$', '')
    if gpus[i] and gpus[i]['is_healthy'] == false then plain = plain .. '!' end
    tokens[#tokens + 1] = plain
  end
  local gpu_keys = table.concat(tokens, ' ')
  redis.call('HSET', hkey(id), 'gpus', cjson.encode(gpus), 'gpu_keys', gpu_keys)
  mark_irregular(id, gpu_keys)
end

return {1, ctx.now, ack()}
