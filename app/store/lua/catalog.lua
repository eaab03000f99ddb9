-- Catalogue the GPU models and architectures of a batch of providers: the migration to
-- layout 2, for a Redis written before the catalogs existed. Idempotent.
-- KEYS[1..10] the registry's fixed keys (lib.lua)
-- ARGV[1..8] the registry's fixed arguments (lib.lua)    ARGV[7..] provider IDs
-- Returns how many of the providers exist.
local found = 0
for i = CTX_ARGS + 1, #ARGV do
  local v = redis.call('HMGET', hkey(ARGV[i]), 'bucket_stems', 'index_keys')
  if v[1] or v[2] then found = found + 1 end
  for stem in string.gmatch(v[1] or '', '%S+') do
    catalog_add((string.match(stem, '^(.*):%d+$')))
  end
  for key in string.gmatch(v[2] or '', '%S+') do catalog_add(key) end
end
return found
