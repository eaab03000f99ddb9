-- Filter providers with set algebra in Redis, count them, and return one page in ID order.
-- KEYS[1] providers (all IDs)    KEYS[2] leases (zset by deadline ms)    KEYS[3] irregular
-- KEYS[4] GPU index to filter on, or ""    KEYS[5] architecture index, or ""
-- KEYS[6] location index, or ""    KEYS[7..13] scratch keys, deleted before returning
-- ARGV[1] provider hash key prefix    ARGV[2] status key prefix    ARGV[3] page size
-- ARGV[4] cursor: the last ID of the previous page, or ""
-- ARGV[5] effective statuses wanted, comma-separated, or "" for any
-- ARGV[6] min VRAM in MB (0: none)    ARGV[7] min GPUs
-- ARGV[8] "1" when irregular providers need a per-GPU check (healthy_only or architecture)
-- ARGV[9] canonical model, or ""    ARGV[10] canonical architecture, or ""
-- ARGV[11] "1" for healthy GPUs only
-- Returns {now_ms, total, has_more, {id, hash as a flat list}, ...}.
local providers, leases, irregular = KEYS[1], KEYS[2], KEYS[3]
local gpu_key, arch_key, location_key = KEYS[4], KEYS[5], KEYS[6]
local tmp_range, tmp_base = KEYS[7], KEYS[8]
local hash_prefix, status_prefix = ARGV[1], ARGV[2]
local limit, cursor = tonumber(ARGV[3]), ARGV[4]
local min_vram, min_gpus = tonumber(ARGV[6]), tonumber(ARGV[7])
local check_irregular = ARGV[8] == '1'
local model, arch, healthy_only = ARGV[9], ARGV[10], ARGV[11] == '1'
local now = now_ms()
local scratch = {}

local function member(key, id)
  return redis.call('ZSCORE', key, id) ~= false
end

-- 1. The detail filters, intersected into one ID-ordered (all scores 0) base set.
local sources, base = {}, nil
if gpu_key ~= '' then
  local src = gpu_key
  -- Only narrow by VRAM when some member is below the bound.
  if min_vram > 0 and #redis.call('ZRANGEBYSCORE', gpu_key, '-inf', '(' .. min_vram,
      'LIMIT', 0, 1) > 0 then
    redis.call('ZRANGESTORE', tmp_range, gpu_key, min_vram, '+inf', 'BYSCORE')
    scratch[#scratch + 1] = tmp_range
    src = tmp_range
  end
  sources[#sources + 1] = src
end
if arch_key ~= '' then sources[#sources + 1] = arch_key end
if location_key ~= '' then sources[#sources + 1] = location_key end
if #sources == 1 and gpu_key == '' then
  base = sources[1]
elseif #sources > 0 then
  -- Weights 0 make every score 0, so the result sorts by ID.
  local args = {'ZINTERSTORE', tmp_base, #sources}
  for _, key in ipairs(sources) do args[#args + 1] = key end
  args[#args + 1] = 'WEIGHTS'
  for _ = 1, #sources do args[#args + 1] = 0 end
  redis.call(unpack(args))
  scratch[#scratch + 1] = tmp_base
  base = tmp_base
end

-- 2. The candidates as disjoint ID-ordered parts, one per stored status wanted.
local wanted, parts, part_of = {}, {}, {}
for status in string.gmatch(ARGV[5], '[^,]+') do wanted[status] = true end
local any_status = next(wanted) == nil
if any_status then
  parts[1] = base or providers
else
  local i = 0
  for status in pairs(wanted) do
    local key = status_prefix .. status
    if base then
      i = i + 1
      local tmp = KEYS[8 + i]
      redis.call('ZINTERSTORE', tmp, 2, base, key, 'WEIGHTS', 0, 0)
      scratch[#scratch + 1] = tmp
      key = tmp
    end
    parts[#parts + 1] = key
    part_of[status] = key
  end
end

-- 3. Leases that lapsed but were not swept yet: their stored status is stale, they are
--    offline from their deadline on.
local removed, n_removed, added = {}, 0, {}
local function remove(id)
  if not removed[id] then removed[id] = true; n_removed = n_removed + 1 end
end
if not any_status then
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', leases, '-inf', now)) do
    local stored = redis.call('HGET', hash_prefix .. id, 'status')
    if stored and stored ~= 'offline' then
      if part_of[stored] and not wanted['offline'] then
        if member(part_of[stored], id) then remove(id) end
      elseif not part_of[stored] and wanted['offline'] then
        if base == nil or member(base, id) then added[#added + 1] = id end
      end
    end
  end
end

-- 4. Irregular providers passed the index arithmetic but may fail the per-GPU filters.
local function passes(id)
  local fields = redis.call('HMGET', hash_prefix .. id, 'gpus', 'gpu_keys')
  local gpus, i, count = cjson.decode(fields[1]), 0, 0
  for token in string.gmatch(fields[2], '%S+') do
    i = i + 1
    local gpu = gpus[i]
    local sep = string.find(token, '|', 1, true)
    if (model == '' or string.sub(token, 1, sep - 1) == model)
        and (arch == '' or string.sub(token, sep + 1) == arch)
        and (not healthy_only or gpu['is_healthy'] ~= false)
        and (tonumber(gpu['vram_mb']) or 0) >= min_vram then
      count = count + 1
    end
  end
  return count >= min_gpus
end
if check_irregular then
  local in_added = {}
  for _, id in ipairs(added) do in_added[id] = true end
  for _, id in ipairs(redis.call('SMEMBERS', irregular)) do
    if not removed[id] and not passes(id) then
      if in_added[id] then
        in_added[id] = nil
      else
        for _, key in ipairs(parts) do
          if member(key, id) then remove(id); break end
        end
      end
    end
  end
  local kept = {}
  for _, id in ipairs(added) do if in_added[id] then kept[#kept + 1] = id end end
  added = kept
end

-- 5. Count, then merge the parts' next IDs after the cursor into one page.
local total = #added - n_removed
for _, key in ipairs(parts) do total = total + redis.call('ZCARD', key) end
local from = '-'
if cursor ~= '' then from = '(' .. cursor end
local page = {}
for _, key in ipairs(parts) do
  for _, id in ipairs(redis.call('ZRANGEBYLEX', key, from, '+', 'LIMIT', 0, limit + 1 + n_removed)) do
    if not removed[id] then page[#page + 1] = id end
  end
end
for _, id in ipairs(added) do
  if cursor == '' or id > cursor then page[#page + 1] = id end
end
table.sort(page)

local out = {now, total, 0}
if #page > limit then out[3] = 1 end
for i = 1, math.min(limit, #page) do
  out[#out + 1] = {page[i], redis.call('HGETALL', hash_prefix .. page[i])}
end
if #scratch > 0 then redis.call('DEL', unpack(scratch)) end
return out
