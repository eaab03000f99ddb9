-- Shared helpers: prepended to every script when it is loaded (once, at start-up), and the
-- first part of the registry's FUNCTION library (functions.lua), where they are loaded once.
--
-- Every script receives the registry's fixed keys first, in this order, so that these helpers
-- can find them (CTX_KEYS below); scripts list their own keys after them:
--   KEYS[1] providers (zset of all IDs, scores 0)   KEYS[2] leases (zset by lease deadline ms)
--   KEYS[3] claims (zset by unconfirmed-claim deadline ms)   KEYS[4] irregular (set)
--   KEYS[5] events (stream)   KEYS[6] counts (hash of summary counters)
--   KEYS[7] GPU model catalog   KEYS[8] architecture catalog (hashes: canonical -> folded name)
--   KEYS[9] pulse (string)   KEYS[10] grace (sorted set by grace deadline ms)
-- and ARGV[1] provider hash key prefix, ARGV[2] status key prefix, ARGV[3] lease key prefix,
-- ARGV[4] events max length, ARGV[5] GPU model index prefix, ARGV[6] architecture index prefix,
-- ARGV[7] lease TTL in ms, ARGV[8] blind after this many ms without a pulse (0: never).
-- Nothing here runs at load time: `begin(keys, argv)` (at the end) opens each call; a script
-- gets it from begin.lua, a function calls it first.
local CTX_KEYS, CTX_ARGS = 10, 8

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The current call's fixed keys and arguments, and the registry's one clock: Redis server
-- time, the same for every instance. Filled by `begin`.
local ctx = {}

local function hkey(id) return ctx.hash_prefix .. id end

-- The fields every state transition needs, read in one call.
-- STATE_FIELDS, STATUSES, CLAIM_FIELDS, counter_field and the other constants come from the
-- prelude generated from app/rules.py (scripts.py puts it first).
-- A provider's state from HMGET of `fields` (status first); nil when it does not exist.
-- fields_of: the same from values already read.
local function fields_of(names, values)
  if values[1] == false then return nil end
  local h = {}
  for i, name in ipairs(names) do
    if values[i] ~= false then h[name] = values[i] end
  end
  return h
end

local function read_fields(id, fields)
  return fields_of(fields, redis.call('HMGET', hkey(id), unpack(fields)))
end

local function read_state(id)
  return read_fields(id, STATE_FIELDS)
end

-- Append one event to the change feed; `extra` is a flat list of field/value pairs.
local function emit(kind, id, at, extra)
  local args = {'XADD', ctx.events, 'MAXLEN', '~', ctx.events_max_len, '*',
    'type', kind, 'provider_id', id, 'at', at}
  for _, v in ipairs(extra or {}) do args[#args + 1] = v end
  redis.call(unpack(args))
end

-- Summary counters: field "<status>|<kind>|<name>" of the counts hash (counter_field). A provider's
-- contribution (its "summary" field, JSON [[kind, name, n], ...]) is counted under its
-- stored status and moved whenever that status changes.
local function count(summary, status, sign)
  if not summary or summary == '' then return end
  for _, e in ipairs(cjson.decode(summary)) do
    local field = counter_field(status, e[1], e[2])
    if redis.call('HINCRBY', ctx.counts, field, sign * e[3]) == 0 then
      redis.call('HDEL', ctx.counts, field)
    end
  end
end

-- The catalogs: every GPU model and architecture that has an index, canonical name to folded
-- name, so that a substring filter finds its indexes without reading a provider. A model is
-- catalogued while its index of "at least 1 GPU" exists, an architecture while its index does.
local function catalog_entry(index)
  if string.sub(index, 1, #ctx.arch_prefix) == ctx.arch_prefix then
    return ctx.arch_catalog, string.sub(index, #ctx.arch_prefix + 1)
  end
  if string.sub(index, 1, #ctx.gpu_prefix) == ctx.gpu_prefix and string.sub(index, -2) == ':1' then
    return ctx.gpu_catalog, string.sub(index, #ctx.gpu_prefix + 1, -3)
  end
  return nil, nil
end

-- The folded name of a canonical one (keys.py: quote_plus of the folded name).
local function unquote(canonical)
  local plain = string.gsub(canonical, '+', ' ')
  return (string.gsub(plain, '%%(%x%x)', function(hex) return string.char(tonumber(hex, 16)) end))
end

local function catalog_add(index)
  local catalog, name = catalog_entry(index)
  if catalog then redis.call('HSET', catalog, name, unquote(name)) end
end

local function catalog_drop_if_empty(index)
  local catalog, name = catalog_entry(index)
  if catalog and redis.call('EXISTS', index) == 0 then redis.call('HDEL', catalog, name) end
end

-- GPU buckets: a provider's "bucket_stems" field lists "<GPU index>:<vram>" stems; it is in
-- the bucket "<stem>:<stored status>" (every member scored by the VRAM), and each GPU index
-- key holds the VRAM sizes that have buckets (member and score the size).
local function bucket_add(stems, id, status)
  if not stems then return end
  for stem in string.gmatch(stems, '%S+') do
    local index, vram = string.match(stem, '^(.*):(%d+)$')
    redis.call('ZADD', stem .. BUCKET_SEP .. status, vram, id)
    if redis.call('ZADD', index, vram, vram) == 1 then catalog_add(index) end
  end
end

local function bucket_remove(stems, id, status)
  if not stems then return end
  for stem in string.gmatch(stems, '%S+') do
    redis.call('ZREM', stem .. BUCKET_SEP .. status, id)
    local empty = true
    for _, s in ipairs(STATUSES) do
      if redis.call('EXISTS', stem .. BUCKET_SEP .. s) == 1 then empty = false; break end
    end
    if empty then
      local index, vram = string.match(stem, '^(.*):(%d+)$')
      redis.call('ZREM', index, vram)
      catalog_drop_if_empty(index)
    end
  end
end

-- Change the stored status, keeping the status sets, GPU buckets and counters in step.
local function set_status(id, h, new)
  local old = h.status
  if old == new then return end
  if old then
    redis.call('ZREM', ctx.status_prefix .. old, id)
    count(h.summary, old, -1)
    if h.bucket_stems then
      for stem in string.gmatch(h.bucket_stems, '%S+') do
        redis.call('ZREM', stem .. BUCKET_SEP .. old, id)
      end
    end
  end
  redis.call('ZADD', ctx.status_prefix .. new, 0, id)
  count(h.summary, new, 1)
  bucket_add(h.bucket_stems, id, new)
  redis.call('HSET', hkey(id), 'status', new)
  h.status = new
end

local function bump(id, h)
  h.version = redis.call('HINCRBY', hkey(id), 'version', 1)
end

-- A provider heard from (or gone) is out of grace.
local function end_grace(id, h)
  if h.grace_until then
    redis.call('ZREM', ctx.grace, id)
    redis.call('HDEL', hkey(id), 'grace_until')
    h.grace_until = nil
  end
end

local function clear_claim(id, h)
  redis.call('HDEL', hkey(id), unpack(CLAIM_FIELDS))
  redis.call('ZREM', ctx.claims, id)
  h.claim_id, h.claimant, h.claim_expires_at, h.claim_confirmed = nil, nil, nil, nil
end

local function claim_lapsed(h)
  return h.claim_id ~= nil and h.claim_confirmed ~= '1'
    and (tonumber(h.claim_expires_at) or 0) <= ctx.now
end

local function lease_lapsed(h)
  return h.status ~= 'offline' and (tonumber(h.lease_expires_at) or 0) <= ctx.now
end

-- The status a provider shows now: offline from its lease deadline on, idle again from the
-- deadline of an unconfirmed claim on, else the stored status.
-- The same rule as rules.effective_status (tests/test_rules.py checks that they agree).
local function effective(h)
  if h.status == nil or h.status == OFFLINE or (tonumber(h.lease_expires_at) or 0) <= ctx.now then
    return OFFLINE
  end
  if claim_lapsed(h) then return IDLE end
  return h.status
end

-- Call fn(id, state) once for each provider whose stored status is stale: its lease or its
-- unconfirmed claim passed its deadline and no sweep has settled it yet.
local function each_unsettled(fn)
  local seen = {}
  for _, index in ipairs({ctx.leases, ctx.claims}) do
    for _, id in ipairs(redis.call('ZRANGEBYSCORE', index, '-inf', ctx.now)) do
      if not seen[id] then
        seen[id] = true
        local h = read_state(id)
        if h and effective(h) ~= h.status then fn(id, h) end
      end
    end
  end
end

-- Bring the stored state up to date with deadlines that passed (neither bumps the version):
-- an unconfirmed claim that lapsed first makes the provider idle again; a lease that lapsed
-- ends any claim and makes it offline. Emits the events in the order they happened.
local function settle(id, h)
  local lease = tonumber(h.lease_expires_at) or 0
  if claim_lapsed(h) and (tonumber(h.claim_expires_at) < lease or h.status == 'offline') then
    emit('claim_expired', id, h.claim_expires_at, {'claim_id', h.claim_id,
      'claimant', h.claimant or ''})
    clear_claim(id, h)
    set_status(id, h, 'idle')
  end
  if lease_lapsed(h) then
    if h.claim_id then
      emit('claim_released', id, lease, {'claim_id', h.claim_id, 'reason', 'lease_lapsed'})
      clear_claim(id, h)
    end
    local previous = h.status
    set_status(id, h, 'offline')
    redis.call('ZREM', ctx.leases, id)
    end_grace(id, h)
    emit('offline', id, lease, {'previous_status', previous, 'reason', 'lease_lapsed'})
  end
end

-- End a claim because of something the daemon or an operator did.
local function end_claim(id, h, reason)
  if h.claim_id then
    emit('claim_released', id, ctx.now, {'claim_id', h.claim_id, 'reason', reason})
    clear_claim(id, h)
  end
end

-- Renew the lease from now; `...`: more field/value pairs for the same HSET.
local function renew_lease(id, ttl, h, ...)
  end_grace(id, h)
  local deadline = ctx.now + ttl
  redis.call('SET', ctx.lease_prefix .. id, ctx.now, 'PX', ttl)
  redis.call('ZADD', ctx.leases, deadline, id)
  redis.call('HSET', hkey(id), 'last_seen_at', ctx.now, 'lease_expires_at', deadline, ...)
  return deadline
end

-- "If-Match": ARGV value "" accepts any version, else a comma list of acceptable versions.
local function version_matches(h, wanted)
  if wanted == '' then return true end
  local current = tostring(h.version or 0)
  for v in string.gmatch(wanted, '[^,]+') do
    if v == current then return true end
  end
  return false
end

-- The same rule as rules.is_irregular (tests/test_rules.py checks that they agree).
-- A provider is irregular when index arithmetic alone cannot answer a per-GPU filter for it:
-- a GPU is unhealthy, or its GPUs differ in canonical model or architecture.
-- gpu_keys: one "model|architecture|vram" token per GPU, in GPU order, with "!" after the
-- VRAM of an unhealthy GPU.
local function is_irregular(gpu_keys)
  local first = nil
  for kind, unhealthy in string.gmatch(gpu_keys, '(%S-|%S-)|%d+(!?)') do
    if unhealthy == UNHEALTHY_MARK then return true end
    if first == nil then first = kind elseif kind ~= first then return true end
  end
  return false
end

local function mark_irregular(id, gpu_keys)
  if is_irregular(gpu_keys) then
    redis.call('SADD', ctx.irregular, id)
  else
    redis.call('SREM', ctx.irregular, id)
  end
end

-- Remove a provider from the detail indexes listed in its hash (space-separated keys).
local function drop_indexes(index_keys, id)
  if not index_keys then return end
  for key in string.gmatch(index_keys, '%S+') do
    redis.call('ZREM', key, id)
    catalog_drop_if_empty(key)
  end
end

-- Take a provider out of every index, set and counter, and delete its keys (its events stay).
local function forget(id, h)
  drop_indexes(h.index_keys, id)
  bucket_remove(h.bucket_stems, id, h.status)
  count(h.summary, h.status, -1)
  redis.call('ZREM', ctx.status_prefix .. h.status, id)
  for _, index in ipairs({ctx.providers, ctx.leases, ctx.claims, ctx.grace}) do
    redis.call('ZREM', index, id)
  end
  redis.call('SREM', ctx.irregular, id)
  redis.call('DEL', hkey(id), ctx.lease_prefix .. id)
end

local function reply(id)
  return redis.call('HGETALL', hkey(id))
end

-- Outage grace. Every serving process writes Redis's time to the pulse twice a second
-- (pulse.lua). A script that finds the pulse older than `blind_after` learns that for that long
-- no process reached Redis (every instance down, Redis unreachable or paused): the registry was
-- blind and no daemon could renew its lease. Each lease that lapsed while it was blind, or runs
-- out within one lease from now, then runs one full lease from now, under grace, and so does
-- each unconfirmed claim with its own TTL. The first script after the outage does it, before
-- its own work, so no read or sweep ever sees those lapses. No pulse key (no process has
-- pulsed yet): nothing to compare with.
local function grant_grace(blind_since)
  local deadline = ctx.now + ctx.lease_ttl
  local ids = redis.call('ZRANGEBYSCORE', ctx.leases, '(' .. blind_since, '(' .. deadline)
  for _, id in ipairs(ids) do
    local hash = hkey(id)
    redis.call('ZADD', ctx.leases, deadline, id)
    redis.call('ZADD', ctx.grace, deadline, id)
    redis.call('HSET', hash, 'lease_expires_at', deadline, 'grace_until', deadline)
    redis.call('SET', ctx.lease_prefix .. id, redis.call('HGET', hash, 'last_seen_at') or ctx.now,
      'PX', ctx.lease_ttl)
  end
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', ctx.claims, '(' .. blind_since, '+inf')) do
    local ttl = tonumber(redis.call('HGET', hkey(id), 'claim_ttl_ms')) or 0
    local claim_deadline = ctx.now + ttl
    if claim_deadline > tonumber(redis.call('ZSCORE', ctx.claims, id)) then
      redis.call('ZADD', ctx.claims, claim_deadline, id)
      redis.call('HSET', hkey(id), 'claim_expires_at', claim_deadline)
    end
  end
  -- One event for the whole fleet (its provider_id is ""): one per provider would flush the feed.
  emit('outage', '', ctx.now, {'blind_since', blind_since, 'leases', #ids})
end

-- Open a call: fill ctx from its fixed keys and arguments, read the clock, and grant the
-- outage grace first if the registry was blind (one GET of the pulse). Returns true when it
-- granted grace (leases changed), else nil.
local function begin(keys, argv)
  ctx.providers, ctx.leases, ctx.claims, ctx.irregular = keys[1], keys[2], keys[3], keys[4]
  ctx.events, ctx.counts, ctx.gpu_catalog, ctx.arch_catalog = keys[5], keys[6], keys[7], keys[8]
  ctx.pulse, ctx.grace = keys[9], keys[10]
  ctx.hash_prefix, ctx.status_prefix, ctx.lease_prefix = argv[1], argv[2], argv[3]
  ctx.events_max_len, ctx.gpu_prefix, ctx.arch_prefix = tonumber(argv[4]), argv[5], argv[6]
  ctx.lease_ttl, ctx.blind_after = tonumber(argv[7]), tonumber(argv[8])
  ctx.now = now_ms()
  if ctx.blind_after > 0 then
    local pulse = tonumber(redis.call('GET', ctx.pulse))
    if pulse and ctx.now - pulse > ctx.blind_after then
      grant_grace(pulse)
      redis.call('SET', ctx.pulse, ctx.now)
      return true
    end
  end
end
