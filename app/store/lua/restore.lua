-- Write back a batch of providers from a snapshot, offline and without a lease, with every
-- index and counter. A provider that exists already (it registered again after Redis lost its
-- data) is merged by its last_seen_at: the newer one wins; a tie keeps the one in Redis.
-- KEYS[1..10] the registry's fixed keys (lib.lua)
-- ARGV[1..8] the registry's fixed arguments (lib.lua)
-- then: p, and per provider: ID, n, n field/value pairs (status "offline", index_keys and
--       summary among them);
--       g, and per index key: the key, c, c score/ID pairs (the batch's members of that key);
--       i, i IDs of irregular providers;
--       k, k counter field/increment pairs (the batch's summary, under offline).
-- Returns the number of providers written.
-- Members and counters come grouped by key: one ZADD per index key and one HINCRBY per counter
-- for the whole batch, rather than one call per provider and key.
local i = CTX_ARGS + 1
local skipped, any_skipped, less = {}, false, {}
local written = {}

local p = tonumber(ARGV[i]); i = i + 1
for _ = 1, p do
  local id, n = ARGV[i], tonumber(ARGV[i + 1])
  local first, last = i + 2, i + 1 + 2 * n
  local hash = hkey(id)
  local h = read_state(id)
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
    skipped[id], any_skipped = true, true
    for j = first, last, 2 do
      if ARGV[j] == 'summary' and ARGV[j + 1] ~= '' then
        for _, e in ipairs(cjson.decode(ARGV[j + 1])) do
          local field = counter_field(OFFLINE, e[1], e[2])
          less[field] = (less[field] or 0) + e[3]
        end
      end
    end
  end
  i = last + 1
end

local g = tonumber(ARGV[i]); i = i + 1
for _ = 1, g do
  local key, c = ARGV[i], tonumber(ARGV[i + 1])
  local first, last = i + 2, i + 1 + 2 * c
  if not any_skipped then
    redis.call('ZADD', key, unpack(ARGV, first, last))
  else
    local members = {}
    for j = first, last, 2 do
      if not skipped[ARGV[j + 1]] then
        members[#members + 1] = ARGV[j]
        members[#members + 1] = ARGV[j + 1]
      end
    end
    if #members > 0 then redis.call('ZADD', key, unpack(members)) end
  end
  catalog_add(key)
  i = last + 1
end

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
