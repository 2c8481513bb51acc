-- check.lua: read the scope's non-disabled budgets for a check, rolling elapsed periods over.
-- KEYS[1..n-1] subject index sets of the scope, most specific first (bk:{org}:s:<type>:<id>)
-- KEYS[n]      events stream       bk:{org}:events
-- ARGV[1]   key prefix of the org  bk:{org}:
-- ARGV[2]   now_ms ('' = Redis TIME)
-- ARGV[3]   ledger id base (ledger_ + 30 hex) for period_reset entries
-- Returns   the shared reply with budget snapshots; budgetkit/_core/rules.py decides (SPEC §4-5)
-- Errors    BK_CORRUPT <key field>
-- Invariants writes only rollovers, each with its ledger entry and events
local events_key = KEYS[#KEYS]
local subject_keys = {}
for i = 1, #KEYS - 1 do subject_keys[i] = KEYS[i] end
local batch = new_batch(ARGV[1], now_ms(ARGV[2]), ARGV[3])
local budgets = load_scope(batch, subject_keys, false)
flush(batch, events_key)
return reply(batch, budgets, push_snapshot)
