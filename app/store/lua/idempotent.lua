-- Run a write only while this attempt owns its Idempotency-Key, and record the write's reply
-- in the same script: the effect and the record cannot diverge, whatever happens to the
-- connection afterwards.
-- KEYS: the write's own, then the record last. ARGV: the write's own, then the owner last.
-- Returns the write's reply; {'!fenced'} when another attempt owns the key (nothing written).
local idem_key, idem_owner = KEYS[#KEYS], ARGV[#ARGV]
local idem_raw = redis.call('GET', idem_key)
local idem = idem_raw and cjson.decode(idem_raw)
if not idem or idem.o ~= idem_owner then
  return {'!fenced'}
end
if idem.s ~= 'pending' then
  -- The same attempt's script arrived twice (a client that re-sends after a timeout).
  return idem.r
end
-- The write sees its own KEYS and ARGV, as if it were called alone.
local KEYS, ARGV = {unpack(KEYS, 1, #KEYS - 1)}, {unpack(ARGV, 1, #ARGV - 1)}
local function idem_write()
--@write
end
local reply = idem_write()
idem.s, idem.r, idem.u = 'ran', reply, nil
redis.call('SET', idem_key, cjson.encode(idem), 'KEEPTTL')
return reply
