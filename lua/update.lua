-- update.lua: change a budget's limit, soft limit, status, period, warn fraction or metadata.
-- KEYS[1]   budget hash            bk:{org}:b:<budget_id>
-- KEYS[2]   events stream          bk:{org}:events
-- KEYS[3]   request record         bk:{org}:rq:<request id>
-- ARGV[1]   key prefix of the org  bk:{org}:
-- ARGV[2]   now_ms ('' = Redis TIME)
-- ARGV[3]   ledger id base (ledger_ + 30 hex)
-- ARGV[4]   the patch: a JSON object of the fields given (absent = unchanged), every value a
--           string: limit (micros 1..2^53-1), soft_limit (micros, '' = clear), status ('active' |
--           'paused' | 'disabled'), period ([period JSON ('' = clear), kind '' | 'd' | 'c',
--           seconds (kind d), calendar unit (kind c)]), warn_fraction_ppm (0..1e6), metadata
--           (JSON, '' = clear), thresholds (ascending spent fractions in ppm, comma-separated),
--           rollover_max (micros 0..2^53-1-limit, '' = clear; needs a period)
-- ARGV[5]   request fingerprint ('='), ARGV[6] record TTL ms (a resent call replays its reply)
-- Returns   the shared reply with the budget
-- Errors    BK_NOT_FOUND, BK_LIMIT, BK_STATUS, BK_INVALID, BK_CORRUPT
-- Invariants 0 < soft <= limit holds for the result; a limit change moves the balance by the
--            same delta and writes a limit_change entry (amount = -delta); status re-derived
local budget_key, events_key, idem_key = KEYS[1], KEYS[2], KEYS[3]
local batch = new_batch(ARGV[1], now_ms(ARGV[2]), ARGV[3])
local fingerprint, idem_ttl_ms = ARGV[5], arg_int(ARGV[6], 'idempotency ttl', 1, MAX_MICROS)
local decoded_ok, patch = pcall(cjson.decode, ARGV[4])
if not decoded_ok or type(patch) ~= 'table' then return fail('INVALID', 'patch must be JSON') end
local PATCH_TEXT = { limit = true, soft_limit = true, status = true, warn_fraction_ppm = true,
  metadata = true, thresholds = true, rollover_max = true }
for name, value in pairs(patch) do
  local text_ok = PATCH_TEXT[name] and type(value) == 'string'
  local period_ok = name == 'period' and type(value) == 'table' and #value == 4
  for i = 1, period_ok and 4 or 0 do period_ok = period_ok and type(value[i]) == 'string' end
  if not (text_ok or period_ok) then return fail('INVALID', 'patch field ' .. tostring(name)) end
end
local replay, receipt = idem_replay(idem_key, fingerprint, batch.now)
if replay ~= nil then return replay end
local lim_given, soft_given, status_given = patch.limit ~= nil, patch.soft_limit ~= nil,
  patch.status ~= nil
local period_given, wf_given = patch.period ~= nil, patch.warn_fraction_ppm ~= nil
local meta_given, thr_given = patch.metadata ~= nil, patch.thresholds ~= nil
local period = patch.period or { '', '', '', '' }

local b = load_budget(budget_key, FULL)
if b == nil then return fail('NOT_FOUND', budget_key) end
refresh(batch, b)  -- in memory only until flush, like every change below
if receipt ~= nil then return redelivered(batch, receipt, { b }, push_record, events_key) end

local lim = b.lim
if lim_given then
  lim = tonumber(patch.limit)
  if lim == nil or lim ~= math.floor(lim) or lim <= 0 or lim > MAX_MICROS then
    return fail('LIMIT', 'Limit must be positive')
  end
end
local soft = b.soft
if soft_given then
  soft = nil
  if patch.soft_limit ~= '' then soft = tonumber(patch.soft_limit) end
  if patch.soft_limit ~= '' and soft == nil then
    return fail('LIMIT', 'Soft limit must be a number')
  end
end
if soft ~= nil and (soft ~= math.floor(soft) or soft <= 0 or soft > lim) then
  return fail('LIMIT', 'Soft limit must be between 0 and limit')
end
local status = patch.status
if status_given and status ~= 'active' and status ~= 'paused' and status ~= 'disabled' then
  return fail('STATUS', 'status can be set to active, paused or disabled')
end
local wf = b.wf
if wf_given then wf = arg_int(patch.warn_fraction_ppm, 'warn_fraction_ppm', 0, PPM) end
local pk, ps, pu = period[2], nil, period[4]
if period_given then
  if pk == 'd' then
    ps = arg_int(period[3], 'period seconds', 1, MAX_MICROS)
  elseif pk == 'c' then
    if not CAL_UNITS[pu] then return fail('INVALID', 'unknown calendar unit') end
  elseif pk ~= '' then
    return fail('INVALID', 'unknown period kind')
  end
end
local thr = b.thr
if thr_given then
  thr = parse_thresholds(patch.thresholds)
  if thr == nil then
    return fail('INVALID', 'thresholds must be at most 16 ascending ppm in (0, 1e7]')
  end
end
local roll = b.roll
if patch.rollover_max ~= nil then
  roll = nil
  if patch.rollover_max ~= '' then
    roll = arg_int(patch.rollover_max, 'rollover_max', 0, MAX_MICROS)
  end
end
local resulting_pk = period_given and pk or b.pk
if roll ~= nil and resulting_pk == '' then return fail('INVALID', 'rollover_max needs a period') end
if roll ~= nil and roll > MAX_MICROS - lim then
  return fail('LIMIT', 'limit + rollover_max must be at most 2^53-1 micro-units')
end
local delta = lim - b.lim
if b.bal + delta > MAX_MICROS or b.bal + delta < -MAX_MICROS then
  return fail('LIMIT', 'balance would leave the representable range')
end

-- Everything is valid: apply the change.
local old_status, old_wz = b.status, b.wz
if delta ~= 0 then
  add_entry(batch, b, -delta, 'limit_change', 'limit_change', nil, nil, nil)
  b.bal = b.bal + delta
end
if delta ~= 0 or soft ~= b.soft then b.ack = 0 end
b.lim, b.soft, b.wf, b.roll = lim, soft, wf, roll
if period_given and period[1] ~= b.period then
  b.period, b.pk, b.ps, b.pu = period[1], pk, ps, pu
  b.pstart = period_start_at(b, batch.now)
end
if meta_given then b.meta = patch.metadata end
if thr_given and patch.thresholds ~= b.thr_text then
  b.thr, b.thr_text, b.thrf = thr, patch.thresholds, 0  -- new thresholds fire when reached
end
if status_given then
  if status == 'disabled' then
    b.status = 'disabled'
  elseif status == 'paused' then
    b.op = 1  -- an operator pause; a disabled budget stays disabled until an explicit active
    if b.status ~= 'disabled' then b.status = 'active' end  -- re-derived below: paused
  else
    b.op = 0
    b.status = 'active'
  end
end
b.config = true
settle(batch, b, old_status, old_wz)
flush(batch, events_key)
local out = reply(batch, { b })
idem_store(idem_key, fingerprint, batch, idem_ttl_ms, out)
return out
