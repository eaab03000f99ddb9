-- Write back a batch of providers from a snapshot, offline and without a lease, with every
-- index and counter; a provider that exists already (it registered while the restore ran) is
-- kept as it is.
-- KEYS[1..6] the registry's fixed keys (lib.lua)
-- ARGV[1..4] the registry's fixed arguments (lib.lua)
-- then, per provider: ID, irregular ("1" or "0"), n, n field/value pairs (status "offline",
-- gpu_keys and summary among them), m, m index key/score pairs
-- Returns the number of providers written.
local offline = ctx.status_prefix .. 'offline'
-- Members are gathered per index key and added with one ZADD per key, and counters with one
-- HINCRBY per field: a batch shares few keys, and one call per key costs far less than one
-- per provider and key.
local by_key, key_order, counters = {}, {}, {}
local function add(key, score, id)
  local members = by_key[key]
  if members == nil then
    members = {}
    by_key[key] = members
    key_order[#key_order + 1] = key
  end
  members[#members + 1] = score
  members[#members + 1] = id
end

local irregular_ids = {}
local written = 0
local i = CTX_ARGS + 1
while i <= #ARGV do
  local id, irregular, n = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local fields_at = i + 3
  local m_at = fields_at + 2 * n
  local m = tonumber(ARGV[m_at])
  local hash = hkey(id)
  if redis.call('EXISTS', hash) == 0 then
    local index_keys = {}
    for j = m_at + 1, m_at + 2 * m, 2 do
      add(ARGV[j], ARGV[j + 1], id)
      index_keys[#index_keys + 1] = ARGV[j]
    end
    redis.call('HSET', hash, 'index_keys', table.concat(index_keys, ' '),
      unpack(ARGV, fields_at, m_at - 1))
    for j = fields_at, m_at - 1, 2 do
      if ARGV[j] == 'summary' and ARGV[j + 1] ~= '' then
        for _, e in ipairs(cjson.decode(ARGV[j + 1])) do
          local field = 'offline|' .. e[1] .. '|' .. e[2]
          counters[field] = (counters[field] or 0) + e[3]
        end
      end
    end
    add(ctx.providers, 0, id)
    add(offline, 0, id)
    if irregular == '1' then irregular_ids[#irregular_ids + 1] = id end
    written = written + 1
  end
  i = m_at + 1 + 2 * m
end
for _, key in ipairs(key_order) do
  redis.call('ZADD', key, unpack(by_key[key]))
end
for field, n in pairs(counters) do
  redis.call('HINCRBY', ctx.counts, field, n)
end
if #irregular_ids > 0 then redis.call('SADD', ctx.irregular, unpack(irregular_ids)) end
return written
