-- Release a lock, only if the caller still holds it (its lease may have lapsed meanwhile).
-- KEYS[1] lock key
-- ARGV[1] the holder's token
-- Returns 1 released, 0 the lock is gone or another holder has it.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
