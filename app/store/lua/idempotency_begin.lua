-- Reserve an Idempotency-Key for this attempt, or report what an earlier attempt left.
-- KEYS[1] the record (a JSON string: s state, o owner, f body fingerprint, n salt,
--         u in-flight deadline in ms while pending, r the write's reply once it ran, a the answer)
-- ARGV[1] owner (random, this attempt's), ARGV[2] fingerprint, ARGV[3] salt,
--      ARGV[4] now in ms (the app's clock), ARGV[5] in-flight bound in ms, ARGV[6] window in ms
-- Returns {outcome, record}: new | mismatch | busy | done | ran | takeover.
local raw = redis.call('GET', KEYS[1])
local now, in_flight = tonumber(ARGV[4]), tonumber(ARGV[5])
if not raw then
  local record = cjson.encode({s = 'pending', o = ARGV[1], f = ARGV[2], n = ARGV[3], u = now + in_flight})
  redis.call('SET', KEYS[1], record, 'PX', ARGV[6])
  return {'new', record}
end
local record = cjson.decode(raw)
if record.f ~= ARGV[2] then
  return {'mismatch', raw}
end
if record.s == 'done' then
  return {'done', raw}
end
if record.s == 'pending' and record.u > now then
  return {'busy', raw}
end
-- The write already ran (its answer was lost), or the earlier attempt is past its bound: this
-- attempt takes the key over. Should the earlier attempt's write still arrive, idempotent.lua
-- finds another owner and does nothing.
record.o = ARGV[1]
if record.s == 'pending' then
  record.u = now + in_flight
end
local encoded = cjson.encode(record)
redis.call('SET', KEYS[1], encoded, 'KEEPTTL')
return {record.s == 'ran' and 'ran' or 'takeover', encoded}
