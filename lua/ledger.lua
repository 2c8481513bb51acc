-- ledger.lua: one page of a budget's ledger, newest first (reverse insertion order).
-- KEYS[1]   budget hash            bk:{org}:b:<budget_id>
-- KEYS[2]   ledger stream          bk:{org}:l:<budget_id>
-- ARGV[1]   page size 1..1000, ARGV[2] offset 0..100000
-- Returns   { budget currency, n, n * 9 fields: id, budget id, amount_micros, meter_source, ref_type, ref_id,
--           session id, description, created ms }
-- Errors    BK_NOT_FOUND <key>, BK_INVALID
-- Invariants read only; reads at most offset + page size stream entries
local budget_key, ledger_key = KEYS[1], KEYS[2]
local page_size = arg_int(ARGV[1], 'limit', 1, 1000)
local offset = arg_int(ARGV[2], 'offset', 0, 100000)
local currency = redis.call('HGET', budget_key, 'cur')
if not currency then return fail('NOT_FOUND', budget_key) end
local rows = redis.call('XREVRANGE', ledger_key, '+', '-', 'COUNT', offset + page_size)
local out = { currency, 0 }
local n = 0
for i = offset + 1, #rows do
  local h = {}
  local flat = rows[i][2]
  for j = 1, #flat, 2 do h[flat[j]] = flat[j + 1] end
  for _, f in ipairs({ 'id', 'bid', 'amt', 'src', 'rt', 'ri', 'sess', 'desc', 'ts' }) do
    table.insert(out, h[f] or '')
  end
  n = n + 1
end
out[2] = n
return out
