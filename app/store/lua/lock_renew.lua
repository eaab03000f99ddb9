-- Extend a lock's lease, only while the caller still holds it.
-- KEYS[1] lock key
-- ARGV[1] the holder's token    ARGV[2] lease length in ms
-- Returns 1 renewed, 0 the lock is gone or another holder has it.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
