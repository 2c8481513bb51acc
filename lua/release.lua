-- release.lua: drop a hold; its capacity is available again at once.
-- KEYS[1]   hold record            bk:{org}:h:<hold_id>
-- KEYS[2]   events stream          bk:{org}:events
-- ARGV[1]   key prefix of the org  bk:{org}:
-- ARGV[2]   now_ms ('' = Redis TIME)
-- ARGV[3]   ledger id base (ledger_ + 30 hex) for period_reset entries
-- ARGV[4]   hold id
-- Returns   the shared reply with the budgets the hold was on
-- Errors    BK_HOLD_NOT_FOUND (unknown or already resolved), BK_HOLD_EXPIRED, BK_CORRUPT
-- Invariants a hold resolves at most once
local hold_key, events_key = KEYS[1], KEYS[2]
local batch = new_batch(ARGV[1], now_ms(ARGV[2]), ARGV[3])
local hold_id = ARGV[4]
local held = load_hold(hold_key, hold_id, batch.now)
local budgets = release_hold(batch, held, {}, hold_id, true)
redis.call('DEL', hold_key)
flush(batch, events_key)
return reply(batch, budgets)
