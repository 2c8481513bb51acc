-- debit.lua: atomically charge every non-disabled budget of a scope in its own currency.
-- KEYS[1..n-2] subject index sets of the scope, most specific first (bk:{org}:s:<type>:<id>)
-- KEYS[n-1]    request record      bk:{org}:idem:debit:<key> or bk:{org}:rq:<request id>
-- KEYS[n]      events stream       bk:{org}:events
-- ARGV[1]   key prefix of the org  bk:{org}:
-- ARGV[2]   now_ms ('' = Redis TIME)
-- ARGV[3]   ledger id base (ledger_ + 30 hex)
-- ARGV[4]   request fingerprint ('=' = a per-call request record), ARGV[5] record TTL ms
-- ARGV[6]   meter_source, ARGV[7] ref_type, ARGV[8] ref_id, ARGV[9] session id,
--           ARGV[10] description ('' = none for 7..10)
-- ARGV[11]  currencies the usage could not be priced in, comma-separated ('' = none)
-- ARGV[12]  number of currencies k (0..64), then k pairs: currency, amount_micros 0..2^53-1
-- Returns   the shared reply: snapshots of the scope's non-disabled budgets after the debit, the entries
--           written (resets and debits), the events emitted; a replay of a stored reply is
--           the same prefixed with 'replayed' (and writes nothing)
-- Errors    BK_INVALID (arguments, balance range), BK_CORRUPT <key field>, BK_UNPRICED (a budget
--           of the scope is in an unpriced currency),
--           BK_IDEMPOTENCY_CONFLICT (same key, different request)
-- Invariants all or nothing: every budget is validated before the first write; a budget whose
--            currency amount is missing or zero is untouched (but still rolled over); paused
--            and exhausted budgets are charged too (usage is never dropped from the books)
local events_key, idem_key = KEYS[#KEYS], KEYS[#KEYS - 1]
local subject_keys = {}
for i = 1, #KEYS - 2 do subject_keys[i] = KEYS[i] end
local batch = new_batch(ARGV[1], now_ms(ARGV[2]), ARGV[3])
local fingerprint, idem_ttl_ms = ARGV[4], arg_int(ARGV[5], 'idempotency ttl', 1, MAX_MICROS)
local source, ref_type, ref_id, session, description = ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10]
local unpriced, amounts = ARGV[11], read_amounts(ARGV, 13)
local earlier = earlier_reply(batch, idem_key, fingerprint, function(receipt)
  return redelivered_scope(batch, receipt, subject_keys, events_key)
end)
if earlier ~= nil then return earlier end

local budgets = load_scope(batch, subject_keys, false, CHARGE)
refuse_unpriced(budgets, unpriced)
charge(batch, budgets, amounts, source, ref_type, ref_id, session, description)
flush(batch, events_key)
local out = reply(batch, budgets, push_snapshot)
idem_store(idem_key, fingerprint, batch, idem_ttl_ms, out)
return out
