-- The registry's FUNCTION library: lib.lua and the hot path's code loaded once (FUNCTION
-- LOAD), so that a call runs only its own work. scripts.FunctionLibrary puts in front of
-- this the library's name line and `local VERSION`, a digest of the code, so that two
-- releases sharing one Redis each call their own.
-- registry_heartbeat_<VERSION>: heartbeat.lua's KEYS, ARGV and reply.
redis.register_function('registry_heartbeat_' .. VERSION, function(keys, argv)
  begin(keys, argv)
  return heartbeat(argv)
end)
