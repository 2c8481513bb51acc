-- commit.lua: settle a hold: debit the actual amounts on the scope and drop the hold, atomically.
-- KEYS[1..n-3] subject index sets of the hold's scope, most specific first
-- KEYS[n-2]    hold record         bk:{org}:h:<hold_id>
-- KEYS[n-1]    request record      bk:{org}:idem:commit:<key> or bk:{org}:rq:<request id>
-- KEYS[n]      events stream       bk:{org}:events
-- ARGV[1]   key prefix of the org  bk:{org}:
-- ARGV[2]   now_ms ('' = Redis TIME)
-- ARGV[3]   ledger id base (ledger_ + 30 hex)
-- ARGV[4]   request fingerprint ('=' = a per-call request record), ARGV[5] record TTL ms
-- ARGV[6]   hold id, ARGV[7] meter_source, ARGV[8] ref_type, ARGV[9] ref_id, ARGV[10] session id,
--           ARGV[11] description ('' = none for 8..11)
-- ARGV[12]  currencies the usage could not be priced in, comma-separated ('' = none)
-- ARGV[13]  number of currencies k (0..64), then k pairs: currency, amount_micros 0..2^53-1
-- Returns   the shared reply with snapshots, like debit.lua ('replayed' + the stored reply on a replay)
-- Errors    BK_HOLD_NOT_FOUND (unknown or already resolved), BK_HOLD_EXPIRED, BK_INVALID,
--           BK_CORRUPT, BK_IDEMPOTENCY_CONFLICT, BK_UNPRICED
-- Invariants a hold resolves at most once; the actual amounts may exceed the hold and are
--            charged in full; nothing is written unless every check passed
local events_key, idem_key, hold_key = KEYS[#KEYS], KEYS[#KEYS - 1], KEYS[#KEYS - 2]
local subject_keys = {}
for i = 1, #KEYS - 3 do subject_keys[i] = KEYS[i] end
local batch = new_batch(ARGV[1], now_ms(ARGV[2]), ARGV[3])
local fingerprint, idem_ttl_ms = ARGV[4], arg_int(ARGV[5], 'idempotency ttl', 1, MAX_MICROS)
local hold_id = ARGV[6]
local source, ref_type, ref_id, session, description = ARGV[7], ARGV[8], ARGV[9], ARGV[10], ARGV[11]
local unpriced, amounts = ARGV[12], read_amounts(ARGV, 14)
local earlier = earlier_reply(batch, idem_key, fingerprint, function(receipt)
  return redelivered_scope(batch, receipt, subject_keys, events_key)
end)
if earlier ~= nil then return earlier end
local held = load_hold(hold_key, hold_id, batch.now)

local budgets = load_scope(batch, subject_keys, false, CHARGE)
release_hold(batch, held, budgets, hold_id, READ)
refuse_unpriced(budgets, unpriced)
charge(batch, budgets, amounts, source, ref_type, ref_id, session, description)
redis.call('DEL', hold_key)
flush(batch, events_key)
local out = reply(batch, budgets, push_snapshot)
idem_store(idem_key, fingerprint, batch, idem_ttl_ms, out)
return out
