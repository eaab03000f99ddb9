-- Filter providers with set algebra in Redis, count them, and return one page.
-- KEYS[1..10] the registry's fixed keys (lib.lua)    KEYS[11..20] filter keys (select.lua)
-- ARGV[1..8] the registry's fixed arguments (lib.lua)    ARGV[9..18] filters (select.lua)
-- ARGV[19] page size    ARGV[20] cursor ID, or ""    ARGV[21] cursor sort value, or ""
-- Returns {now_ms, total, has_more, id, sort value, id, sort value, ...}, flat (a nested
-- table per row costs Redis a fifth of the script's time to convert); the store reads the
-- rows' fields with one pipelined HMGET each (selection.py says why).
local limit, cursor_id, cursor_value =
  tonumber(ARGV[F_ARGS + 1]), ARGV[F_ARGS + 2], ARGV[F_ARGS + 3]

local sel = select_candidates(f.statuses)
local total = selection_total(sel)
local rows = {}
if f.sort == '' then
  for _, id in ipairs(selection_by_id(sel, cursor_id, limit)) do rows[#rows + 1] = {id, ''} end
else
  rows = selection_sorted(sel, cursor_value, cursor_id, limit)
end
selection_done(sel)

local out = {ctx.now, total, 0}
if #rows > limit then out[3] = 1 end
for i = 1, math.min(limit, #rows) do
  out[#out + 1], out[#out + 2] = rows[i][1], tostring(rows[i][2])
end
return out
