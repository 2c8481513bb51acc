-- debit.lua: atomically charge every non-disabled budget of a scope in its own currency.
-- KEYS[1..n-1] subject index sets of the scope, most specific first (bk:{org}:s:<type>:<id>)
-- KEYS[n]      events stream       bk:{org}:events
-- ARGV[1]   key prefix of the org  bk:{org}:
-- ARGV[2]   now_ms ('' = Redis TIME)
-- ARGV[3]   ledger id base (ledger_ + 30 hex)
-- ARGV[4]   meter_source, ARGV[5] ref_type, ARGV[6] ref_id, ARGV[7] session id, ARGV[8] description
--           ('' = none for 5..8)
-- ARGV[9]   number of currencies k (0..64), then k pairs: currency, amount_micros 0..2^53-1
-- Returns   the shared reply: the scope's non-disabled budgets after the debit, the entries
--           written (resets and debits), the events emitted
-- Errors    BK_INVALID (arguments, balance range), BK_CORRUPT <key field>
-- Invariants all or nothing: every budget is validated before the first write; a budget whose
--            currency amount is missing or zero is untouched (but still rolled over); paused
--            and exhausted budgets are charged too (usage is never dropped from the books)
local events_key = KEYS[#KEYS]
local subject_keys = {}
for i = 1, #KEYS - 1 do subject_keys[i] = KEYS[i] end
local batch = new_batch(ARGV[1], now_ms(ARGV[2]), ARGV[3])
local source, ref_type, ref_id, session, description = ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local n_currencies = arg_int(ARGV[9], 'currency count', 0, 64)
local amounts = {}
for i = 1, n_currencies do
  amounts[ARGV[8 + 2 * i]] = arg_int(ARGV[9 + 2 * i], 'amount_micros', 0, MAX_MICROS)
end

local budgets = load_scope(batch, subject_keys, false)
for _, b in ipairs(budgets) do
  local amount = amounts[b.cur]
  if amount ~= nil and b.bal - amount < -MAX_MICROS then
    return fail('INVALID', 'balance of ' .. b.id .. ' would leave the representable range')
  end
end
for _, b in ipairs(budgets) do
  local amount = amounts[b.cur]
  if amount ~= nil and amount > 0 then
    local old_status, old_wz = b.status, b.wz
    add_entry(batch, b, amount, source, ref_type, ref_id, session, description)
    b.bal = b.bal - amount
    settle(batch, b, old_status, old_wz)
  end
end
flush(batch, events_key)
return reply(batch, budgets)
