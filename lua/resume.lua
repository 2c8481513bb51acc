-- resume.lua: resume the paused budgets of the given subject levels of a scope.
-- KEYS[1..n-1] subject index sets of the levels to resume (bk:{org}:s:<type>:<id>)
-- KEYS[n-1]    request record      bk:{org}:rq:<request id>
-- KEYS[n]      events stream       bk:{org}:events
-- ARGV[1]   key prefix of the org  bk:{org}:
-- ARGV[2]   now_ms ('' = Redis TIME)
-- ARGV[3]   ledger id base (ledger_ + 30 hex) for period_reset entries
-- ARGV[4]   request fingerprint ('='), ARGV[5] record TTL ms (a resent call replays its reply)
-- Returns   the shared reply with the budgets that went from paused to active
-- Errors    BK_CORRUPT <key field>
-- Invariants the operator pause is cleared; a soft limit already reached counts as acknowledged
--            until the next period or a change of limit or soft limit; exhausted stays exhausted
local events_key, idem_key = KEYS[#KEYS], KEYS[#KEYS - 1]
local subject_keys = {}
for i = 1, #KEYS - 2 do subject_keys[i] = KEYS[i] end
local batch = new_batch(ARGV[1], now_ms(ARGV[2]), ARGV[3])
local fingerprint, idem_ttl_ms = ARGV[4], arg_int(ARGV[5], 'idempotency ttl', 1, MAX_MICROS)
local earlier = earlier_reply(batch, idem_key, fingerprint, function(receipt)
  return redelivered(batch, receipt, receipt_budgets(batch, receipt), push_record, events_key)
end)
if earlier ~= nil then return earlier end
local budgets = load_scope(batch, subject_keys, false, FULL)
local resumed = {}
for _, b in ipairs(budgets) do
  if b.status == 'paused' then
    local old_status, old_wz = b.status, b.wz
    b.op = 0
    if b.soft ~= nil and b.lim - b.bal >= b.soft then b.ack = 1 end
    settle(batch, b, old_status, old_wz)
    if b.status == 'active' then table.insert(resumed, b) end
  end
end
flush(batch, events_key)
local out = reply(batch, resumed)
idem_store(idem_key, fingerprint, batch, idem_ttl_ms, out, nil, ids_of(resumed))
return out
