-- Record an attempt's answer, or drop its reservation; only while the attempt owns the key.
-- KEYS[1] the record; ARGV[1] owner, ARGV[2] 'done' or 'abandon', ARGV[3] the answer (JSON, for done)
-- Returns 1 when settled, 0 when another attempt owns the key or it is gone.
local raw = redis.call('GET', KEYS[1])
if not raw then
  return 0
end
local record = cjson.decode(raw)
if record.o ~= ARGV[1] then
  return 0
end
if ARGV[2] == 'abandon' then
  -- Only a write that never ran may be tried afresh; once it ran, its reply stays.
  if record.s ~= 'pending' then
    return 0
  end
  redis.call('DEL', KEYS[1])
  return 1
end
record.s, record.a, record.u = 'done', cjson.decode(ARGV[3]), nil
redis.call('SET', KEYS[1], cjson.encode(record), 'KEEPTTL')
return 1
