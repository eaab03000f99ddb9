-- The registry's FUNCTION library: lib.lua and the hot path's code loaded once (FUNCTION
-- LOAD), so that a call runs only its own work. scripts.FunctionLibrary puts in front of
-- this the library's name line and `local VERSION`, a digest of the code, so that two
-- releases sharing one Redis each call their own.
-- registry_heartbeat_<VERSION>: heartbeat.lua's KEYS, ARGV and reply.
redis.register_function('registry_heartbeat_' .. VERSION, function(keys, argv)
  local renewed, h = renew(keys, argv)
  if renewed then return renewed end
  -- The state renew read stands unless the outage grace just rewrote it.
  if begin(keys, argv) then h = nil end
  return heartbeat(argv, h)
end)
