-- reserve.lua: place a hold on every budget of a scope, or deny it and write nothing.
-- KEYS[1..n-3] subject index sets of the scope, most specific first (bk:{org}:s:<type>:<id>)
-- KEYS[n-2]    hold record         bk:{org}:h:<hold_id> (hash: exp, sess, b:<budget_id> amounts)
-- KEYS[n-1]    request record      bk:{org}:idem:reserve:<key> or bk:{org}:rq:<request id>
-- KEYS[n]      events stream       bk:{org}:events
-- ARGV[1]   key prefix of the org  bk:{org}:
-- ARGV[2]   now_ms ('' = Redis TIME)
-- ARGV[3]   ledger id base (ledger_ + 30 hex) for period_reset entries
-- ARGV[4]   request fingerprint ('=' = a per-call request record), ARGV[5] record TTL ms
-- ARGV[6]   hold id (hold_ + 32 hex), ARGV[7] hold TTL ms 1..2^53-1, ARGV[8] session id ('' = none)
-- ARGV[9]   budgets required 0/1: with 1, a scope without a non-disabled budget is denied
-- ARGV[10]  number of currencies k (0..64), then k pairs: currency, amount_micros 0..2^53-1
-- Returns   { 'granted', hold id, expires ms, shared reply with snapshots } or
--           { 'denied', budget id that cannot cover its amount ('' = no budget and budgets
--           are required), '', shared reply } (nothing written)
-- Errors    BK_INVALID, BK_CORRUPT <key field>, BK_IDEMPOTENCY_CONFLICT
-- Invariants granted iff for every non-disabled budget with an amount in its currency:
--            not exhausted, not paused, amount <= balance - outstanding holds (inclusive);
--            holds never change balance; expiry is judged by the same clock as periods
local events_key, idem_key, hold_key = KEYS[#KEYS], KEYS[#KEYS - 1], KEYS[#KEYS - 2]
local subject_keys = {}
for i = 1, #KEYS - 3 do subject_keys[i] = KEYS[i] end
local batch = new_batch(ARGV[1], now_ms(ARGV[2]), ARGV[3])
local fingerprint, idem_ttl_ms = ARGV[4], arg_int(ARGV[5], 'idempotency ttl', 1, MAX_MICROS)
local hold_id, ttl_ms, session = ARGV[6], arg_int(ARGV[7], 'hold ttl', 1, MAX_MICROS), ARGV[8]
local budgets_required = ARGV[9] == '1'
local amounts = read_amounts(ARGV, 11)
local earlier = earlier_reply(batch, idem_key, fingerprint, function(receipt)
  return redelivered_scope(batch, receipt, subject_keys, events_key)
end)
if earlier ~= nil then return earlier end
if redis.call('EXISTS', hold_key) == 1 then return fail('INVALID', 'hold id already exists') end

local budgets = load_scope(batch, subject_keys, false)
if budgets_required and #budgets == 0 then
  return tagged({ 'denied', '', '' }, reply(batch, budgets, push_snapshot))
end
for _, b in ipairs(budgets) do
  local amount = amounts[b.cur]
  if amount ~= nil and amount > 0 then
    if b.status == 'exhausted' or b.status == 'paused' or amount > b.bal - b.held then
      return tagged({ 'denied', b.id, '' }, reply(batch, budgets, push_snapshot))
    end
  end
end
local expires = batch.now + ttl_ms
local record = { 'exp', fmt(expires), 'sess', session }  -- the hold record, one HSET
for _, b in ipairs(budgets) do
  local amount = amounts[b.cur]
  if amount ~= nil and amount > 0 then
    local zkey, akey = hold_index_keys(batch, b.id)
    table.insert(batch.holds, { zkey, akey, hold_id, expires, amount })
    b.held = b.held + amount
    if b.holds_until ~= nil then b.holds_until = math.min(b.holds_until, expires) end
    record[#record + 1], record[#record + 2] = 'b:' .. b.id, fmt(amount)
    mark_dirty(batch, b)
  end
end
redis.call('HSET', hold_key, unpack(record))
redis.call('PEXPIRE', hold_key, ttl_ms + HOLD_RECORD_GRACE_MS)
flush(batch, events_key)
local tags = { 'granted', hold_id, fmt(expires) }
local out = tagged(tags, reply(batch, budgets, push_snapshot))
idem_store(idem_key, fingerprint, batch, idem_ttl_ms, out, tags)
return out
