-- Opens every script loaded with lib.lua (scripts.load_script puts it right after lib.lua):
-- the fixed KEYS and ARGV into ctx, the clock, the outage grace check.
begin(KEYS, ARGV)
