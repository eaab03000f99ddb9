-- Choosing providers by filters with set algebra, shared by query.lua and claim.lua
-- (prepended after lib.lua). The filters `f` come from fixed ARGV and KEYS positions:
-- KEYS[7] GPU index to filter on (its VRAM sizes; see lib.lua), or ""
-- KEYS[8] architecture index, or ""
-- KEYS[9] location index, or ""    KEYS[10..16] scratch keys, deleted before returning
-- ARGV[5] effective statuses wanted, comma-separated, or "" for any
-- ARGV[6] min VRAM in MB (0: none)    ARGV[7] min GPUs
-- ARGV[8] canonical model, or ""    ARGV[9] canonical architecture, or ""
-- ARGV[10] "1" for healthy GPUs only    ARGV[11] sort: "", "vram", "gpus" or "last_seen"
-- ARGV[12] "1" for descending order
local F_ARGS = CTX_ARGS + 8
local f = {
  gpu_key = KEYS[7], arch_key = KEYS[8], location_key = KEYS[9],
  tmp_range = KEYS[10], tmp_base = KEYS[11], tmp_status = {KEYS[12], KEYS[13], KEYS[14], KEYS[15], KEYS[16]},
  statuses = ARGV[CTX_ARGS + 1], min_vram = tonumber(ARGV[CTX_ARGS + 2]),
  min_gpus = tonumber(ARGV[CTX_ARGS + 3]), model = ARGV[CTX_ARGS + 4], arch = ARGV[CTX_ARGS + 5],
  healthy_only = ARGV[CTX_ARGS + 6] == '1', sort = ARGV[CTX_ARGS + 7],
  desc = ARGV[CTX_ARGS + 8] == '1',
}

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
    if (f.model == '' or model == f.model) and (f.arch == '' or arch == f.arch)
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

  -- The GPU buckets from `min_vram` up: the GPU index holds the sizes that have buckets.
  local sizes = {}
  if f.gpu_key ~= '' then
    sizes = redis.call('ZRANGEBYSCORE', f.gpu_key, f.min_vram, '+inf')
  end
  local function buckets(status)
    local keys = {}
    for _, vram in ipairs(sizes) do keys[#keys + 1] = f.gpu_key .. ':' .. vram .. ':' .. status end
    return keys
  end

  -- in_base(id): whether a provider passes the detail filters (status aside).
  local part_of, in_base = {}, nil
  if f.gpu_key ~= '' and f.arch_key == '' and f.location_key == '' then
    -- 1. GPU filters alone: the buckets of the wanted statuses are the parts, each already
    --    sorted by ID, disjoint, and counted by ZCARD: nothing is copied.
    for _, status in ipairs(wanted_list) do
      part_of[status] = buckets(status)
      for _, key in ipairs(part_of[status]) do sel.parts[#sel.parts + 1] = key end
    end
    in_base = function(id) return (passing_gpus(id)) >= f.min_gpus end
  else
    -- 1. Detail filters intersected into one base set (scores 0: sorted by ID).
    local sources, base = {}, nil
    if f.gpu_key ~= '' then
      local all = {}
      for _, status in ipairs(STATUSES) do
        for _, key in ipairs(buckets(status)) do all[#all + 1] = key end
      end
      if #all > 0 then
        store_by_id('ZUNIONSTORE', f.tmp_range, all)
        sel.scratch[#sel.scratch + 1] = f.tmp_range
      end
      sources[#sources + 1] = f.tmp_range  -- absent when no bucket matched: an empty set
    end
    if f.arch_key ~= '' then sources[#sources + 1] = f.arch_key end
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

  -- 4. Irregular providers passed the index arithmetic but may fail the per-GPU filters.
  if f.healthy_only or f.arch ~= '' then
    local in_added = {}
    for _, id in ipairs(sel.added) do in_added[id] = true end
    for _, id in ipairs(redis.call('SMEMBERS', ctx.irregular)) do
      local fields = redis.call('HMGET', hkey(id), 'status', 'gpu_keys')
      -- Only candidates matter: those of a wanted stored status, or added above.
      local candidate = any_status or part_of[fields[1]] ~= nil or in_added[id]
      if candidate and not sel.removed[id] and (count_passing(fields[2])) < f.min_gpus then
        if in_added[id] then
          in_added[id] = nil
        elseif in_any(part_of[fields[1]] or sel.parts, id) then
          remove(id)
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
