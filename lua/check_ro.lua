-- check_ro.lua: check's read-only variant, for replicas (called with EVALSHA_RO).
-- KEYS[1..n-1] subject index sets of the scope, most specific first (bk:{org}:s:<type>:<id>)
-- KEYS[n]      events stream       bk:{org}:events (not written)
-- ARGV[1]   key prefix of the org  bk:{org}:
-- ARGV[2]   now_ms ('' = Redis TIME)
-- ARGV[3]   ledger id base (ledger_ + 30 hex), unused: nothing is written
-- Returns   the shared reply with budget snapshots as check.lua would return them: elapsed periods
--           rolled over and expired holds released in memory only; no entries, no events
-- Errors    BK_CORRUPT <key field>
-- Invariants writes nothing (a replica refuses writes); what it reports is as fresh as the
--            replica: replication lag is the staleness
local subject_keys = {}
for i = 1, #KEYS - 1 do subject_keys[i] = KEYS[i] end
local batch = new_batch(ARGV[1], now_ms(ARGV[2]), ARGV[3])
local budgets = load_scope(batch, subject_keys, false)
return reply(new_batch(ARGV[1], batch.now, ARGV[3]), budgets, push_snapshot)
