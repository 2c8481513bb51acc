-- get.lua: read one budget of an organization, rolling its period over first.
-- KEYS[1]   budget hash            bk:{org}:b:<budget_id>
-- KEYS[2]   events stream          bk:{org}:events
-- ARGV[1]   key prefix of the org  bk:{org}:
-- ARGV[2]   now_ms ('' = Redis TIME)
-- ARGV[3]   ledger id base (ledger_ + 30 hex) for a period_reset entry
-- Returns   the shared reply with the budget
-- Errors    BK_NOT_FOUND <id>, BK_CORRUPT <key field>
-- Invariants a rollover is written with its ledger entry and events, or nothing is written
local budget_key, events_key = KEYS[1], KEYS[2]
local batch = new_batch(ARGV[1], now_ms(ARGV[2]), ARGV[3])
local b = load_budget(budget_key, FULL)
if b == nil then return fail('NOT_FOUND', budget_key) end
refresh(batch, b)
flush(batch, events_key)
return reply(batch, { b })
