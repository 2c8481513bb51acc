-- top_up.lua: credit a budget (a negative ledger entry) and re-derive its status.
-- KEYS[1]   budget hash            bk:{org}:b:<budget_id>
-- KEYS[2]   events stream          bk:{org}:events
-- KEYS[3]   request record         bk:{org}:idem:top_up:<key> or bk:{org}:rq:<request id>
-- ARGV[1]   key prefix of the org  bk:{org}:
-- ARGV[2]   now_ms ('' = Redis TIME)
-- ARGV[3]   ledger id base (ledger_ + 30 hex)
-- ARGV[4]   request fingerprint ('=' = a per-call request record), ARGV[5] record TTL ms
-- ARGV[6]   amount_micros 1..2^53-1, ARGV[7] description ('' = none)
-- Returns   the shared reply with the budget ('replayed' + the stored reply on a replay)
-- Errors    BK_NOT_FOUND, BK_INVALID (amount, balance range), BK_CORRUPT,
--           BK_IDEMPOTENCY_CONFLICT
-- Invariants entry amount = -amount, meter_source manual, ref_type top_up; balance += amount
local budget_key, events_key, idem_key = KEYS[1], KEYS[2], KEYS[3]
local batch = new_batch(ARGV[1], now_ms(ARGV[2]), ARGV[3])
local fingerprint, idem_ttl_ms = ARGV[4], arg_int(ARGV[5], 'idempotency ttl', 1, MAX_MICROS)
local amount = arg_int(ARGV[6], 'amount_micros', 1, MAX_MICROS)
local replay, receipt = idem_replay(idem_key, fingerprint, batch.now)
if replay ~= nil then return replay end
local b = load_budget(budget_key, FULL)
if b == nil then return fail('NOT_FOUND', budget_key) end
refresh(batch, b)
if receipt ~= nil then return redelivered(batch, receipt, { b }, push_record, events_key) end
if b.bal + amount > MAX_MICROS then
  return fail('INVALID', 'balance would exceed the largest amount')
end
local old_status, old_wz = b.status, b.wz
add_entry(batch, b, -amount, 'manual', 'top_up', nil, nil, ARGV[7])
b.bal = b.bal + amount
settle(batch, b, old_status, old_wz)
flush(batch, events_key)
local out = reply(batch, { b })
idem_store(idem_key, fingerprint, batch, idem_ttl_ms, out)
return out
