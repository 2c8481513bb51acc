-- release.lua: drop a hold; its capacity is available again at once.
-- KEYS[1]   hold record            bk:{org}:h:<hold_id>
-- KEYS[2]   events stream          bk:{org}:events
-- KEYS[3]   request record         bk:{org}:rq:<request id>
-- ARGV[1]   key prefix of the org  bk:{org}:
-- ARGV[2]   now_ms ('' = Redis TIME)
-- ARGV[3]   ledger id base (ledger_ + 30 hex) for period_reset entries
-- ARGV[4]   hold id, ARGV[5] request fingerprint ('='), ARGV[6] record TTL ms
-- Returns   the shared reply with the budgets the hold was on (a resent call: the first reply)
-- Errors    BK_HOLD_NOT_FOUND (unknown or already resolved), BK_HOLD_EXPIRED, BK_CORRUPT
-- Invariants a hold resolves at most once
local hold_key, events_key, idem_key = KEYS[1], KEYS[2], KEYS[3]
local batch = new_batch(ARGV[1], now_ms(ARGV[2]), ARGV[3])
local hold_id = ARGV[4]
local fingerprint, idem_ttl_ms = ARGV[5], arg_int(ARGV[6], 'idempotency ttl', 1, MAX_MICROS)
local earlier = earlier_reply(batch, idem_key, fingerprint, function(receipt)
  return redelivered(batch, receipt, receipt_budgets(batch, receipt), push_record, events_key)
end)
if earlier ~= nil then return earlier end
local held = load_hold(hold_key, hold_id, batch.now)
local budgets = release_hold(batch, held, {}, hold_id, FULL)
redis.call('DEL', hold_key)
flush(batch, events_key)
local out = reply(batch, budgets)
idem_store(idem_key, fingerprint, batch, idem_ttl_ms, out, nil, ids_of(budgets))
return out
