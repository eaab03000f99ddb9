-- Shared helpers, prepended to every script when it is loaded (once, at start-up).

-- The registry's one clock: Redis server time in milliseconds, the same for every instance.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Move a provider between the status sets (all scores 0, so members sort by ID).
local function move_status(status_prefix, id, old, new)
  if old and old ~= new then
    redis.call('ZREM', status_prefix .. old, id)
  end
  redis.call('ZADD', status_prefix .. new, 0, id)
end

-- A provider is irregular when index arithmetic alone cannot answer a per-GPU filter for it:
-- a GPU is unhealthy, or its GPUs differ in canonical model or architecture.
-- gpu_keys: one "model|architecture" token per GPU, in GPU order.
local function is_irregular(gpu_keys, gpus)
  local first = nil
  for token in string.gmatch(gpu_keys, '%S+') do
    if first == nil then first = token elseif token ~= first then return true end
  end
  for _, gpu in ipairs(gpus) do
    if gpu['is_healthy'] == false then return true end
  end
  return false
end

local function mark_irregular(irregular_key, id, gpu_keys, gpus)
  if is_irregular(gpu_keys, gpus) then
    redis.call('SADD', irregular_key, id)
  else
    redis.call('SREM', irregular_key, id)
  end
end

-- Remove a provider from the detail indexes listed in its hash (space-separated keys).
local function drop_indexes(index_keys, id)
  if not index_keys then return end
  for key in string.gmatch(index_keys, '%S+') do
    redis.call('ZREM', key, id)
  end
end

