-- Choosing providers by filters with set algebra, shared by query.lua and claim.lua
-- (prepended after lib.lua). The filters `f` come from fixed ARGV and KEYS positions:
-- KEYS[11] GPU index of any model ("at least k GPUs"), when VRAM or a count is asked without
--         a model, or "" / "<prefix>tmp:none"
-- KEYS[12] location index, or "" / "<prefix>tmp:none"    KEYS[13..20] scratch keys, deleted before returning
-- ARGV[9] effective statuses wanted, comma-separated, or "" for any
-- ARGV[10] min VRAM in MB (0: none)    ARGV[11] min GPUs
-- ARGV[12] folded substring of the GPU model, or ""   ARGV[13] canonical exact model, or ""
-- ARGV[14] folded substring of the architecture, or ""   ARGV[15] canonical exact one, or ""
-- ARGV[16] "1" for healthy GPUs only    ARGV[17] sort: "", "vram", "gpus" or "last_seen"
-- ARGV[18] "1" for descending order
local F_ARGS = CTX_ARGS + 10

-- The canonical names in `catalog` whose folded name contains `needle` and that equal
-- `exact` when it is given; nil when neither is given (no filter). The catalogs hold a few
-- hundred names at most: this reads no provider.
local function resolve(catalog, needle, exact)
  if needle == '' and exact == '' then return nil end
  local names = {}
  if exact ~= '' then
    local folded = redis.call('HGET', catalog, exact)
    if folded and string.find(folded, needle, 1, true) then names[1] = exact end
    return names
  end
  local flat = redis.call('HGETALL', catalog)
  for i = 1, #flat, 2 do
    if string.find(flat[i + 1], needle, 1, true) then names[#names + 1] = flat[i] end
  end
  return names
end

local function as_set(names)
  if names == nil then return nil end
  local set = {}
  for _, name in ipairs(names) do set[name] = true end
  return set
end

-- An unused filter key is "" or the registry's "tmp:none" (a Redis Cluster refuses "", which
-- hashes to another slot than the registry's keys).
local NO_KEY = string.sub(ctx.hash_prefix, 1, -#PROVIDER_SUFFIX - 1) .. NO_KEY_SUFFIX
local function given(key)
  if key == NO_KEY then return '' end
  return key
end

local f = {
  any_gpu_key = given(KEYS[CTX_KEYS + 1]), location_key = given(KEYS[CTX_KEYS + 2]),
  tmp_range = KEYS[CTX_KEYS + 3], tmp_base = KEYS[CTX_KEYS + 4], tmp_arch = KEYS[CTX_KEYS + 5],
  tmp_status = {KEYS[CTX_KEYS + 6], KEYS[CTX_KEYS + 7], KEYS[CTX_KEYS + 8], KEYS[CTX_KEYS + 9],
    KEYS[CTX_KEYS + 10]},
  statuses = ARGV[CTX_ARGS + 1], min_vram = tonumber(ARGV[CTX_ARGS + 2]),
  min_gpus = tonumber(ARGV[CTX_ARGS + 3]),
  models = resolve(ctx.gpu_catalog, ARGV[CTX_ARGS + 4], ARGV[CTX_ARGS + 5]),
  archs = resolve(ctx.arch_catalog, ARGV[CTX_ARGS + 6], ARGV[CTX_ARGS + 7]),
  healthy_only = ARGV[CTX_ARGS + 8] == '1', sort = ARGV[CTX_ARGS + 9],
  desc = ARGV[CTX_ARGS + 10] == '1',
}
f.model_set, f.arch_set = as_set(f.models), as_set(f.archs)
-- The GPU indexes to read: one per model matched, else the any-model one, else none.
f.gpu_keys = {}
if f.models then
  for _, model in ipairs(f.models) do
    f.gpu_keys[#f.gpu_keys + 1] = ctx.gpu_prefix .. model .. ':' .. f.min_gpus
  end
elseif f.any_gpu_key ~= '' then
  f.gpu_keys[1] = f.any_gpu_key
end
f.gpu_filter = f.models ~= nil or f.any_gpu_key ~= ''
f.arch_keys = {}
for _, arch in ipairs(f.archs or {}) do f.arch_keys[#f.arch_keys + 1] = ctx.arch_prefix .. arch end
-- A provider whose wanted GPUs are of several matched models is in none of their indexes
-- "at least k" for k > 1; such a provider is irregular, and found among those.
f.spans_models = f.models ~= nil and #f.models > 1 and f.min_gpus > 1

local function member(key, id)
  return redis.call('ZSCORE', key, id) ~= false
end

-- ZUNIONSTORE or ZINTERSTORE of `keys` into `dest` with weights 0: every score 0, so the
-- result sorts by ID.
local function store_by_id(command, dest, keys)
  local args = {command, dest, #keys}
  for _, key in ipairs(keys) do args[#args + 1] = key end
  args[#args + 1] = 'WEIGHTS'
  for _ = 1, #keys do args[#args + 1] = 0 end
  redis.call(unpack(args))
end

-- How many GPUs of a "gpu_keys" field pass the per-GPU filters, and the largest VRAM of them.
local function count_passing(gpu_keys)
  local n, largest = 0, 0
  for model, arch, vram, unhealthy in string.gmatch(gpu_keys or '', '(%S-)|(%S-)|(%d+)(!?)') do
    vram = tonumber(vram)
    if (f.model_set == nil or f.model_set[model]) and (f.arch_set == nil or f.arch_set[arch])
        and vram >= f.min_vram and not (f.healthy_only and unhealthy == '!') then
      n = n + 1
      if vram > largest then largest = vram end
    end
  end
  return n, largest
end

local function passing_gpus(id)
  return count_passing(redis.call('HGET', hkey(id), 'gpu_keys'))
end

-- The providers matching `f` with one of `statuses` (a comma list, "" for any), as disjoint
-- ID-ordered parts plus corrections: IDs to remove from the parts and IDs to add.
local function select_candidates(statuses)
  local sel = {parts = {}, removed = {}, n_removed = 0, added = {}, scratch = {}}

  local wanted, any_status = {}, true
  for status in string.gmatch(statuses, '[^,]+') do wanted[status] = true; any_status = false end
  local wanted_list = {}
  if any_status then wanted_list = STATUSES else
    for _, status in ipairs(STATUSES) do
      if wanted[status] then wanted_list[#wanted_list + 1] = status end
    end
  end

  -- The GPU buckets from `min_vram` up: each GPU index holds the sizes that have buckets.
  local sizes = {}
  for _, gpu_key in ipairs(f.gpu_keys) do
    sizes[gpu_key] = redis.call('ZRANGEBYSCORE', gpu_key, f.min_vram, '+inf')
  end
  local function buckets(status)
    local keys = {}
    for _, gpu_key in ipairs(f.gpu_keys) do
      for _, vram in ipairs(sizes[gpu_key]) do
        keys[#keys + 1] = gpu_key .. ':' .. vram .. ':' .. status
      end
    end
    return keys
  end

  -- in_base(id): whether a provider passes the detail filters (status aside).
  local part_of, in_base, base = {}, nil, nil
  if #f.gpu_keys == 1 and f.archs == nil and f.location_key == '' then
    -- 1. One GPU index alone: the buckets of the wanted statuses are the parts, each already
    --    sorted by ID, disjoint, and counted by ZCARD: nothing is copied.
    for _, status in ipairs(wanted_list) do
      part_of[status] = buckets(status)
      for _, key in ipairs(part_of[status]) do sel.parts[#sel.parts + 1] = key end
    end
    in_base = function(id) return (passing_gpus(id)) >= f.min_gpus end
  else
    -- 1. Detail filters intersected into one base set (scores 0: sorted by ID). A filter
    --    that matched no index at all is a key that does not exist: an empty set.
    local sources = {}
    local function union_of(keys, dest)
      if #keys == 1 then return keys[1] end
      if #keys > 1 then
        store_by_id('ZUNIONSTORE', dest, keys)
        sel.scratch[#sel.scratch + 1] = dest
      end
      return dest
    end
    if f.gpu_filter then
      local all = {}
      for _, status in ipairs(STATUSES) do
        for _, key in ipairs(buckets(status)) do all[#all + 1] = key end
      end
      if #all > 0 then
        store_by_id('ZUNIONSTORE', f.tmp_range, all)
        sel.scratch[#sel.scratch + 1] = f.tmp_range
      end
      sources[#sources + 1] = f.tmp_range
    end
    if f.archs then sources[#sources + 1] = union_of(f.arch_keys, f.tmp_arch) end
    if f.location_key ~= '' then sources[#sources + 1] = f.location_key end
    if #sources == 1 then
      base = sources[1]
    elseif #sources > 1 then
      store_by_id('ZINTERSTORE', f.tmp_base, sources)
      sel.scratch[#sel.scratch + 1] = f.tmp_base
      base = f.tmp_base
    end

    -- 2. One part per stored status wanted: disjoint, since a provider has one stored status.
    if any_status then
      sel.parts[1] = base or ctx.providers
    else
      for i, status in ipairs(wanted_list) do
        local key = ctx.status_prefix .. status
        if base then
          redis.call('ZINTERSTORE', f.tmp_status[i], 2, base, key, 'WEIGHTS', 0, 0)
          sel.scratch[#sel.scratch + 1] = f.tmp_status[i]
          key = f.tmp_status[i]
        end
        sel.parts[#sel.parts + 1] = key
        part_of[status] = {key}
      end
    end
    in_base = function(id) return base == nil or member(base, id) end
  end

  local function in_any(keys, id)
    for _, key in ipairs(keys) do
      if member(key, id) then return true end
    end
    return false
  end

  local function remove(id)
    if not sel.removed[id] then sel.removed[id] = true; sel.n_removed = sel.n_removed + 1 end
  end

  -- 3. Deadlines that passed but were not swept yet: the stored status is stale.
  if not any_status then
    each_unsettled(function(id, h)
      local now_status, stored = effective(h), h.status
      if part_of[stored] and not wanted[now_status] then
        if in_any(part_of[stored], id) then remove(id) end
      elseif not part_of[stored] and wanted[now_status] then
        if in_base(id) then sel.added[#sel.added + 1] = id end
      end
    end)
  end

  -- 4. Irregular providers passed the index arithmetic but may fail the per-GPU filters, or,
  --    when their wanted GPUs span several models, pass them outside the indexes.
  if f.healthy_only or f.archs or f.spans_models then
    local in_added = {}
    for _, id in ipairs(sel.added) do in_added[id] = true end
    for _, id in ipairs(redis.call('SMEMBERS', ctx.irregular)) do
      local fields = redis.call('HMGET', hkey(id), 'status', 'gpu_keys')
      local passes = (count_passing(fields[2])) >= f.min_gpus
      -- Only candidates matter: those of a wanted stored status, or added above.
      local candidate = any_status or part_of[fields[1]] ~= nil or in_added[id]
      if candidate and not sel.removed[id] and not passes then
        if in_added[id] then
          in_added[id] = nil
        elseif in_any(part_of[fields[1]] or sel.parts, id) then
          remove(id)
        end
      elseif f.spans_models and passes and not in_added[id] and not member(base, id)
          and (f.location_key == '' or member(f.location_key, id)) then
        local h = read_state(id)
        if h and (any_status or wanted[effective(h)]) then
          sel.added[#sel.added + 1] = id
          in_added[id] = true
        end
      end
    end
    local kept = {}
    for _, id in ipairs(sel.added) do if in_added[id] then kept[#kept + 1] = id end end
    sel.added = kept
  end
  return sel
end

local function selection_total(sel)
  local total = #sel.added - sel.n_removed
  for _, key in ipairs(sel.parts) do total = total + redis.call('ZCARD', key) end
  return total
end

-- Up to `limit` + 1 IDs after `cursor` (an ID, or "") in ID order.
local function selection_by_id(sel, cursor, limit)
  local from = '-'
  if cursor ~= '' then from = '(' .. cursor end
  local ids = {}
  for _, key in ipairs(sel.parts) do
    for _, id in ipairs(redis.call('ZRANGEBYLEX', key, from, '+', 'LIMIT', 0, limit + 1 + sel.n_removed)) do
      if not sel.removed[id] then ids[#ids + 1] = id end
    end
  end
  for _, id in ipairs(sel.added) do
    if cursor == '' or id > cursor then ids[#ids + 1] = id end
  end
  table.sort(ids)
  local out = {}
  for k = 1, math.min(#ids, limit + 1) do out[k] = ids[k] end
  return out
end

-- Every selected ID with its sort value, in the order of f.sort (ties by ID), after the cursor
-- (value, ID) when one is given; at most `limit` + 1.
local function selection_sorted(sel, cursor_value, cursor_id, limit)
  local rows = {}
  local function add(id)
    local value
    if f.sort == 'last_seen' then
      value = tonumber(redis.call('HGET', hkey(id), 'last_seen_at')) or 0
    else
      local n, largest = passing_gpus(id)
      if f.sort == 'gpus' then value = n else value = largest end
    end
    rows[#rows + 1] = {id, value}
  end
  for _, key in ipairs(sel.parts) do
    for _, id in ipairs(redis.call('ZRANGE', key, 0, -1)) do
      if not sel.removed[id] then add(id) end
    end
  end
  for _, id in ipairs(sel.added) do add(id) end
  local function before(x, y)
    if x[2] ~= y[2] then
      if f.desc then return x[2] > y[2] end
      return x[2] < y[2]
    end
    return x[1] < y[1]
  end
  table.sort(rows, before)
  local out = {}
  local cursor = nil
  if cursor_id ~= '' then cursor = {cursor_id, tonumber(cursor_value)} end
  for _, row in ipairs(rows) do
    if cursor == nil or before(cursor, row) then
      out[#out + 1] = row
      if #out > limit then break end
    end
  end
  return out
end

local function selection_done(sel)
  if #sel.scratch > 0 then redis.call('DEL', unpack(sel.scratch)) end
end
