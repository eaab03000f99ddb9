-- Renew a provider's lease, optionally set its status and merge live GPU metrics: the
-- function `heartbeat(argv)`, run as the FUNCTION `registry_heartbeat_<version>` (functions.lua)
-- and as a script (heartbeat_script.lua: under an Idempotency-Key, or on Redis 6).
-- KEYS[1..10] the registry's fixed keys (lib.lua)
-- ARGV[1..8] the registry's fixed arguments (lib.lua)
-- ARGV[9] provider ID    ARGV[10] lease TTL in ms    ARGV[11] new status, or "" to keep it
-- ARGV[12] GPU metrics as a JSON list matched to the GPUs by position, or ""
-- ARGV[13] If-Match versions ("" for any)
-- ARGV[14] SHA-256 of the caller's provider token, which must equal the stored token_hash,
--          or "" when the caller's role allows it without one
-- ARGV[15] the per-provider heartbeat limits, "<amount> <window ms>" pairs separated by
--          spaces (rate_limit_heartbeat), or "" for none
-- ARGV[16] "" or, when the metrics give every live field of every GPU, "=" and their health
--          marks as `marks` below reads them from gpu_keys (providers.live_health)
-- Returns {code, now_ms, fields}: code 1 renewed, fields {status, last_seen_at,
-- lease_expires_at, version}; -1 no such provider ({}); -2 the token does not match ({});
-- -4 over the heartbeat limit ({ms until a window closes}); -3 If-Match failed (the same
-- fields as 1). Nothing is written unless the code is 1, so refused heartbeats do not count.

-- What a plain renewal reads, in one HMGET: what tells whether the state changes, the
-- token, the limit's windows. What only a change of status needs is read then (MORE_FIELDS).
local HEARTBEAT_FIELDS = {'status', 'lease_expires_at', 'claim_id', 'claim_expires_at',
  'claim_confirmed', 'version', 'grace_until', 'token_hash', 'heartbeat_windows', 'gpu_keys'}

-- The health marks of gpu_keys: one "!" per unhealthy GPU, the GPUs separated by spaces.
local function marks(gpu_keys)
  return (string.gsub(gpu_keys or '', '[^%s!]+', ''))
end
local MORE_FIELDS = {'summary', 'bucket_stems', 'claimant'}

local function read_more(id, h)
  local v = redis.call('HMGET', hkey(id), unpack(MORE_FIELDS))
  for i, name in ipairs(MORE_FIELDS) do
    if v[i] ~= false then h[name] = v[i] end
  end
end

-- Count an accepted heartbeat against the limits: one fixed window per limit, opened by the
-- first heartbeat it counts, kept in the provider's hash as "<end ms> <count>" pairs.
-- Returns the field's new value; or nil and the ms until the full window closes; or nil, nil
-- when there is no limit.
local function count_heartbeat(limits, counted)
  if limits == '' then return nil, nil end
  local now = ctx.now
  local state = {}
  for n in string.gmatch(counted or '', '%d+') do state[#state + 1] = tonumber(n) end
  local out, i, wait = {}, 0, nil
  for amount, window in string.gmatch(limits, '(%d+) (%d+)') do
    local ends, n = state[2 * i + 1], state[2 * i + 2]
    i = i + 1
    if not ends or not n or ends <= now then ends, n = now + tonumber(window), 0 end
    if n >= tonumber(amount) then wait = math.max(wait or 0, ends - now) end
    out[#out + 1], out[#out + 2] = ends, n + 1
  end
  if wait then return nil, wait end
  return table.concat(out, ' '), nil
end

-- `gpu_live` split at GPU_SEP: one piece per GPU, "" for a GPU without live values.
local function gpu_parts(text)
  local parts, from = {}, 1
  while true do
    local at = string.find(text, GPU_SEP, from, true)
    if not at then
      parts[#parts + 1] = string.sub(text, from)
      return parts
    end
    parts[#parts + 1] = string.sub(text, from, at - 1)
    from = at + 1
  end
end

local function decoded_parts(text)
  if string.sub(text, 1, 1) == '[' then return cjson.decode(text) end  -- layout 2's JSON list
  local values = {}
  for i, part in ipairs(gpu_parts(text)) do values[i] = cjson.decode('{' .. part .. '}') end
  return values
end

-- A GPU's live values as its `gpu_live` piece: JSON object members in LIVE_GPU_FIELDS order.
local function live_piece(values)
  local out = {}
  for _, name in ipairs(LIVE_GPU_FIELDS) do
    if values[name] ~= nil then out[#out + 1] = '"' .. name .. '":' .. cjson.encode(values[name]) end
  end
  return table.concat(out, ',')
end

-- Live values that are not plain (some fields only, a health change, another number of
-- GPUs) go over the stored ones by position; only `gpu_live` changes, never the GPU specs.
-- The health marks of the GPU tokens follow is_healthy.
local function merge_metrics(id, metrics)
  local stored = redis.call('HMGET', hkey(id), 'gpu_live', 'gpu_keys')
  local live, incoming = decoded_parts(stored[1] or ''), decoded_parts(metrics)
  local tokens, pieces = {}, {}
  for token in string.gmatch(stored[2] or '', '%S+') do
    local i = #tokens + 1
    local values = live[i] or {}
    for field, value in pairs(incoming[i] or {}) do values[field] = value end
    pieces[i] = live_piece(values)
    local plain = string.gsub(token, UNHEALTHY_MARK .. '$', '')
    if values.is_healthy == false then token = plain .. UNHEALTHY_MARK
    elseif values.is_healthy == true then token = plain end
    tokens[i] = token
  end
  local gpu_keys = table.concat(tokens, ' ')
  redis.call('HSET', hkey(id), 'gpu_live', table.concat(pieces, GPU_SEP), 'gpu_keys', gpu_keys)
  mark_irregular(id, gpu_keys)
end

-- The plain renewal, before `begin`: a live provider's heartbeat that changes nothing but its
-- lease and live GPU values (no new status, nothing lapsed, no grace to end, metrics whole
-- and with the stored health), accepted. It reads the clock and the hash and writes the lease
-- key, the leases index and the hash (the metrics as they came, in `gpu_live`: they replace
-- the last ones whole): not the pulse, because nothing it reads or writes depends on an
-- outage (its own lease has not lapsed, and every other script checks the pulse before it
-- reads a lease: see grant_grace).
-- Returns heartbeat()'s reply; or nil and the state it read (as read_fields returns it), when
-- the heartbeat is not plain: the caller then runs `begin` and the full `heartbeat`.
local function renew(keys, argv)
  local a = CTX_ARGS
  local id = argv[a + 1]
  -- What renew_lease needs of ctx (begin fills the rest, when the heartbeat is not plain).
  ctx.hash_prefix, ctx.lease_prefix, ctx.leases = argv[1], argv[3], keys[2]
  local now = now_ms()
  ctx.now = now
  local v = redis.call('HMGET', hkey(id), unpack(HEARTBEAT_FIELDS))
  local status, wanted, token, if_match = v[1], argv[a + 3], argv[a + 6], argv[a + 5]
  local metrics, health = argv[a + 4], argv[a + 8] or ''
  local plain = status ~= false and status ~= OFFLINE and not v[7]
    and (metrics == '' or (health ~= '' and '=' .. marks(v[10]) == health))
    and (token == '' or v[8] == token) and (tonumber(v[2]) or 0) > now
    and not (v[3] and v[5] ~= '1' and (tonumber(v[4]) or 0) <= now)
    and (wanted == '' or wanted == status or (wanted == IDLE and v[3]))
    and (if_match == '' or version_matches({version = v[6] or nil}, if_match))
  local windows, wait
  if plain then
    windows, wait = count_heartbeat(argv[a + 7] or '', v[9] or nil)
    plain = not wait
  end
  if not plain then return nil, fields_of(HEARTBEAT_FIELDS, v) end
  local more = {}
  if windows then more[#more + 1], more[#more + 2] = 'heartbeat_windows', windows end
  if metrics ~= '' then more[#more + 1], more[#more + 2] = 'gpu_live', metrics end
  -- Not under grace (v[7] is nil): renew_lease ends none.
  local deadline = renew_lease(id, tonumber(argv[a + 2]), {}, unpack(more))
  return {1, now, {status, now, deadline, v[6] or 0}}
end

-- `h`: the provider's HEARTBEAT_FIELDS if the call has read them already (renew), else nil.
local function heartbeat(argv, h)
  local a = CTX_ARGS
  local id, ttl, wanted, metrics, if_match, token, limits =
    argv[a + 1], tonumber(argv[a + 2]), argv[a + 3], argv[a + 4], argv[a + 5], argv[a + 6],
    argv[a + 7] or ''

  h = h or read_fields(id, HEARTBEAT_FIELDS)
  if not h then return {-1, ctx.now, {}} end
  if token ~= '' and h.token_hash ~= token then return {-2, ctx.now, {}} end
  local windows, wait = count_heartbeat(limits, h.heartbeat_windows)
  if wait then return {-4, ctx.now, {wait}} end
  if not version_matches(h, if_match) then
    return {-3, ctx.now,
      redis.call('HMGET', hkey(id), 'status', 'last_seen_at', 'lease_expires_at', 'version')}
  end

  if h.status == 'offline' or (wanted ~= '' and wanted ~= h.status) or claim_lapsed(h)
      or lease_lapsed(h) then
    read_more(id, h)
  end
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

  local deadline = ctx.now
  if status == 'offline' then
    -- The daemon is shutting down: the lease ends now.
    redis.call('DEL', ctx.lease_prefix .. id)
    redis.call('ZREM', ctx.leases, id)
    end_grace(id, h)
    if windows then
      redis.call('HSET', hkey(id), 'last_seen_at', ctx.now, 'lease_expires_at', ctx.now,
        'heartbeat_windows', windows)
    else
      redis.call('HSET', hkey(id), 'last_seen_at', ctx.now, 'lease_expires_at', ctx.now)
    end
  elseif windows then
    deadline = renew_lease(id, ttl, h, 'heartbeat_windows', windows)
  else
    deadline = renew_lease(id, ttl, h)
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

  if metrics ~= '' then merge_metrics(id, metrics) end

  -- The answer from what the call read and wrote: no second read of the hash.
  return {1, ctx.now, {h.status, ctx.now, deadline, h.version or 0}}
end
