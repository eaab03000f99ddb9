-- Write back a batch of providers from a snapshot, offline and without a lease, with every
-- index and counter. A provider that exists already (it registered again after Redis lost its
-- data) is merged by its last_seen_at: the newer one wins; a tie keeps the one in Redis.
-- KEYS[1..10] the registry's fixed keys (lib.lua)
-- ARGV[1..8] the registry's fixed arguments (lib.lua)
-- then: p, and per provider: ID, n, n field/value pairs (status "offline", index_keys and
--       summary among them);
--       s, and per hardware shape: its providers' positions in the batch (1-based, each two
--       bytes big-endian), e, e index key/score pairs (the detail indexes and GPU buckets
--       every provider of the shape belongs to);
--       z, z GPU index/VRAM pairs (the sizes present in the batch: member and score the size);
--       i, i IDs of irregular providers;
--       k, k counter field/increment pairs (the batch's summary, under offline).
-- Returns the number of providers written.
-- Index members and counters come grouped for the whole batch: one ZADD per index key and
-- one HINCRBY per counter, rather than one call per provider and key; and the providers of an
-- index are named by their positions, once per shape, so each ID crosses the wire once.
local i = CTX_ARGS + 1
local skipped, less = {}, {}
local ids, written = {}, {}

local p = tonumber(ARGV[i]); i = i + 1
local firsts, hashes = {}, {}
for n = 1, p do
  ids[n], firsts[n], hashes[n] = ARGV[i], i + 2, hkey(ARGV[i])
  i = i + 2 + 2 * tonumber(ARGV[i + 1])
end
-- Usually none exists (Redis lost its data): one EXISTS for the batch, not one per provider.
local any_present = p > 0 and redis.call('EXISTS', unpack(hashes)) > 0
for n = 1, p do
  local id, hash, first = ids[n], hashes[n], firsts[n]
  local last = first - 1 + 2 * tonumber(ARGV[first - 1])
  local h = nil
  if any_present and redis.call('EXISTS', hash) == 1 then h = read_state(id) end
  if h then
    local seen_at = 0
    for j = first, last, 2 do
      if ARGV[j] == 'last_seen_at' then seen_at = tonumber(ARGV[j + 1]) or 0 end
    end
    if seen_at > (tonumber(redis.call('HGET', hash, 'last_seen_at')) or 0) then
      -- The snapshot's copy is newer: take the stale one out of everything, as a delete does.
      forget(id, h)
      h = nil
    end
  end
  if not h then
    redis.call('HSET', hash, unpack(ARGV, first, last))
    written[#written + 1] = 0
    written[#written + 1] = id
  else
    -- Rare: take this provider back out of the batch's members and counters.
    skipped[id] = true
    for j = first, last, 2 do
      if ARGV[j] == 'summary' and ARGV[j + 1] ~= '' then
        for _, e in ipairs(cjson.decode(ARGV[j + 1])) do
          local field = counter_field(OFFLINE, e[1], e[2])
          less[field] = (less[field] or 0) + e[3]
        end
      end
    end
  end
end

local s = tonumber(ARGV[i]); i = i + 1
local members, keys = {}, {}
for _ = 1, s do
  local positions, e = ARGV[i], tonumber(ARGV[i + 1])
  i = i + 2
  local shape = {}
  for j = 1, #positions, 2 do
    local high, low = string.byte(positions, j, j + 1)
    local id = ids[high * 256 + low]
    if not skipped[id] then shape[#shape + 1] = id end
  end
  for _ = 1, e do
    local key, score = ARGV[i], ARGV[i + 1]
    i = i + 2
    local m = members[key]
    if not m then
      m = {}
      members[key] = m
      keys[#keys + 1] = key
    end
    for _, id in ipairs(shape) do
      m[#m + 1] = score
      m[#m + 1] = id
    end
  end
end
-- One ZADD per index key for the batch, whatever the shapes of its members.
for _, key in ipairs(keys) do
  if #members[key] > 0 then redis.call('ZADD', key, unpack(members[key])) end
  catalog_add(key)
end

local z = tonumber(ARGV[i]); i = i + 1
for j = i, i + 2 * z - 1, 2 do
  redis.call('ZADD', ARGV[j], ARGV[j + 1], ARGV[j + 1])
  catalog_add(ARGV[j])
end
i = i + 2 * z

local n_irregular = tonumber(ARGV[i]); i = i + 1
local irregular = {}
for j = i, i + n_irregular - 1 do
  if not skipped[ARGV[j]] then irregular[#irregular + 1] = ARGV[j] end
end
i = i + n_irregular
if #irregular > 0 then redis.call('SADD', ctx.irregular, unpack(irregular)) end

local k = tonumber(ARGV[i]); i = i + 1
for j = i, i + 2 * k - 1, 2 do
  local n = tonumber(ARGV[j + 1]) - (less[ARGV[j]] or 0)
  if n ~= 0 then redis.call('HINCRBY', ctx.counts, ARGV[j], n) end
end

if #written > 0 then
  redis.call('ZADD', ctx.providers, unpack(written))
  redis.call('ZADD', ctx.status_prefix .. 'offline', unpack(written))
end
return #written / 2
