-- _lib.lua: shared prelude, prepended by the Python runtime to every operation script.
-- Not an operation itself (the leading underscore keeps it out of the script registry).
--
-- Budget hash fields (all strings; amounts are integer micro-units, times integer ms):
--   id org st sid cur     identity: budget id, organization, subject type (wire), subject id, currency
--   lim soft bal held     limit (>0), soft limit spent-amount ('' = none), balance, outstanding holds
--   wf                    warn fraction in parts per million, 0..1000000
--   period pk ps pu       period JSON as given ('' = none); kind 'd' (seconds ps) or 'c' (unit pu)
--   roll                  rollover_max: unused balance carried into the next period, at most
--                         this ('' = none; SPEC §11)
--   pstart                start of the current period in ms ('' = no period)
--   meta                  metadata JSON ('' = none)
--   status op ack wz      status; operator pause 0/1; soft limit acknowledged 0/1; in warning zone 0/1
--   thr thrf              extra warning thresholds: spent fractions in ppm, ascending, comma-
--                         separated ('' = none, at most 16); bitmask of those fired this period
--   created updated       ms
-- Ledger stream entries (P:{org}:l:<budget id>): id bid amt src [rt ri sess desc] ts; the four
-- optional fields are left out when all are '' (readers take a missing field as '').
-- Reply shape shared by every script that returns budgets (see budgetkit/_core/replies.py):
--   { now_ms, n_budgets, n_budgets * (19 record | 10 snapshot) fields,
--     n_entries, n_entries * 9 ledger fields, n_events, n_events * 10 event fields
--     [, valid_until_ms: snapshot replies only] }
--   Scope scripts (check, debit, reserve, commit) send snapshots; the others full records.
-- Errors are raised as 'BK_<CODE> <message>' and always before the first write.

local MAX_MICROS = 9007199254740991
local PPM = 1000000
local MS_PER_DAY = 86400000
local ENTRIES_PER_CALL_MAX = 255
local CURRENCIES_PER_CALL_MAX = 64
local LEDGER_ID_BASE_LEN = 37  -- 'ledger_' + 30 hex: a call's entry ids add 2 hex digits
-- Key suffixes after the organization's prefix (ARGV[1] = P:{org}:), for the keys a script finds
-- by a budget id. budgetkit/_core/keys.py names every suffix (KEY_SUFFIXES);
-- tests/test_shared_constants.py keeps the two equal.
local BUDGET_KEY, LEDGER_KEY, HOLD_INDEX_KEY, HOLD_AMOUNTS_KEY = 'b:', 'l:', 'hz:', 'ha:'

local function fail(code, message)
  return redis.error_reply('BK_' .. code .. ' ' .. message)
end

-- Aborts the script with a BK_ error (a plain string: fakeredis loses error tables).
local function raise(code, message)
  error('BK_' .. code .. ' ' .. message)
end

local function fmt(n)
  return string.format('%d', n)
end

-- An integer argument in [lo, hi], or a BK_INVALID error naming it.
local function arg_int(value, name, lo, hi)
  local n = tonumber(value)
  if n == nil or n ~= math.floor(n) or n < lo or n > hi then
    raise('INVALID', name .. ' must be an integer in [' .. fmt(lo) .. ', ' .. fmt(hi) .. ']')
  end
  return n
end

local function now_ms(arg)
  if arg ~= nil and arg ~= '' then
    return arg_int(arg, 'now_ms', 0, MAX_MICROS)
  end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Calendar arithmetic (UTC, proleptic Gregorian), after H. Hinnant's civil-date algorithms.
local function civil_from_days(z)
  z = z + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
    - math.floor(doe / 146096)) / 365)
  local y = yoe + era * 400
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local m = mp < 10 and mp + 3 or mp - 9
  if m <= 2 then y = y + 1 end
  return y, m
end

local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = m > 2 and m - 3 or m + 9
  local doy = math.floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

-- Start (ms) of the UTC calendar bucket holding t_ms.
local function bucket_start(t_ms, unit)
  local days = math.floor(t_ms / MS_PER_DAY)
  if unit == 'hour' then return math.floor(t_ms / 3600000) * 3600000 end
  if unit == 'day' then return days * MS_PER_DAY end
  if unit == 'week' then return (days - (days + 3) % 7) * MS_PER_DAY end
  local y, m = civil_from_days(days)
  if unit == 'month' then return days_from_civil(y, m, 1) * MS_PER_DAY end
  return days_from_civil(y, 1, 1) * MS_PER_DAY
end

local function period_start_at(b, t_ms)
  if b.pk == 'c' then return bucket_start(t_ms, b.pu) end
  if b.pk == 'd' then return t_ms end
  return nil
end

local STATUSES = { active = true, paused = true, exhausted = true, disabled = true }
local CAL_UNITS = { hour = true, day = true, week = true, month = true, year = true }

local function corrupt(key, field)
  raise('CORRUPT', key .. ' field ' .. field)
end

-- A stored integer field's text (false/nil = missing) in [lo, hi], or BK_CORRUPT naming it.
local function stored_int(text, key, field, lo, hi)
  local n = tonumber(text)
  if n == nil or n ~= math.floor(n) or n < lo or n > hi then corrupt(key, field) end
  return n
end

-- True for a stored optional field that holds a value (not missing, not '').
local function present(text)
  return text and text ~= ''
end

-- What a read of a budget hash takes: configuration only where it is used (issue 14).
--   READ    check, reserve, a hold's budgets: identity, limits, balance state, period
--   CHARGE  debit, commit: READ + the thresholds a charge may fire
--   FULL    records shown to callers and admin writes: the whole hash, identity checked in full
-- No hot read takes 'updated' (only written) or 'roll' (read when a period rolls over, with the
-- thresholds it re-arms: load_rollover_fields). The positions below are the HMGET replies'.
local READ, CHARGE, FULL = 'read', 'charge', 'full'
local BUDGET_FIELDS = { 'id', 'cur', 'lim', 'soft', 'bal', 'held', 'wf', 'pk', 'ps', 'pu',
  'pstart', 'status', 'op', 'ack', 'wz', 'thr', 'thrf', 'roll', 'updated', 'created' }
local THRESHOLDS_MAX = 16
local THRESHOLD_PPM_MAX = 10 * PPM

-- Thresholds from their stored text ('' = none): ascending ppm in (0, 10e6], at most 16; nil when
-- malformed.
local function parse_thresholds(text)
  local list = {}
  if text == nil or text == '' then return list end
  for part in string.gmatch(text, '[^,]+') do
    local n = tonumber(part)
    if n == nil or n ~= math.floor(n) or n <= 0 or n > THRESHOLD_PPM_MAX then return nil end
    if #list > 0 and n <= list[#list] then return nil end
    table.insert(list, n)
    if #list > THRESHOLDS_MAX then return nil end
  end
  return list
end

-- The stored values of a budget hash in BUDGET_FIELDS order (false = missing; the first READ or
-- CHARGE fields only) and, for FULL, the whole hash by field; nil when the key does not exist.
-- The hot reads name their fields literally: one HMGET, no unpack.
local function read_values(key, mode)
  if mode == READ then
    local v = redis.call('HMGET', key, 'id', 'cur', 'lim', 'soft', 'bal', 'held', 'wf', 'pk',
      'ps', 'pu', 'pstart', 'status', 'op', 'ack', 'wz')
    if not v[1] then return nil end
    return v
  end
  if mode == CHARGE then
    local v = redis.call('HMGET', key, 'id', 'cur', 'lim', 'soft', 'bal', 'held', 'wf', 'pk',
      'ps', 'pu', 'pstart', 'status', 'op', 'ack', 'wz', 'thr', 'thrf')
    if not v[1] then return nil end
    return v
  end
  local flat = redis.call('HGETALL', key)
  if #flat == 0 then return nil end
  local h, v = {}, {}
  for i = 1, #flat, 2 do h[flat[i]] = flat[i + 1] end
  for i, f in ipairs(BUDGET_FIELDS) do v[i] = h[f] or false end
  return v, h
end

local SUBJECT_TYPES = { session = true, app_channel = true, app = true, agent = true, user = true,
  org = true }
local ID_CHARS_MAX = 256

-- An opaque identifier as budgetkit writes them: 1..256 bytes, no whitespace, no braces.
local function is_identifier(v)
  return type(v) == 'string' and v ~= '' and #v <= ID_CHARS_MAX and not string.find(v, '[%s{}]')
end

-- True when ``text`` is '' or valid JSON (cjson is in Redis's Lua and in fakeredis).
local function is_json_or_empty(text)
  if text == '' then return true end
  local ok = pcall(cjson.decode, text)
  return ok
end

-- Identity of a budget hash: its id must be the one in its key, the currency a currency code
-- (every read); a FULL read also checks the organization, the subject, the period and the
-- metadata (validate_full_identity).
-- Ids and currencies seen valid before, so the hot path matches their patterns once per
-- library load, not on every call (the library's state lives as long as the server's Lua VM;
-- only valid strings are remembered, so a corrupted field is still caught on every read).
local KNOWN_MAX = 10000
local known_ids, known_currencies, known_count = {}, {}, 0

-- Remembers a valid id ('id') or currency ('cur'); both sets start over past KNOWN_MAX.
local function remember(kind, value)
  if known_count >= KNOWN_MAX then known_ids, known_currencies, known_count = {}, {}, 0 end
  known_count = known_count + 1
  if kind == 'id' then known_ids[value] = true else known_currencies[value] = true end
end

local function valid_id(id)
  if known_ids[id] then return true end
  if type(id) ~= 'string' or #id ~= 37 or not string.find(id, '^bdgt_%x+$') then return false end
  remember('id', id)
  return true
end

local function valid_currency(cur)
  if known_currencies[cur] then return true end
  if type(cur) ~= 'string' or #cur > 32 or not string.find(cur, '^[a-z0-9_]+$') then
    return false
  end
  remember('cur', cur)
  return true
end

-- The fields only a FULL read checks: organization, subject, period JSON and metadata, so a
-- hand-edited record can never be written through or shown half-parsed.
local function validate_full_identity(key, h, pk)
  if not is_identifier(h.org) then corrupt(key, 'org') end
  if not SUBJECT_TYPES[h.st or ''] then corrupt(key, 'st') end
  if not is_identifier(h.sid) then corrupt(key, 'sid') end
  local period = h.period or ''
  if (pk == '') ~= (period == '') or not is_json_or_empty(period) then corrupt(key, 'period') end
  if period ~= '' then
    local kind = cjson.decode(period)
    kind = type(kind) == 'table' and kind.type or nil
    local expected = (kind == 'duration' or kind == 'rolling') and 'd' or (kind == 'calendar' and 'c')
    if expected ~= pk then corrupt(key, 'period') end
  end
  if not is_json_or_empty(h.meta or '') then corrupt(key, 'meta') end
end

-- Thresholds and their fired bitmask from stored texts onto ``b``.
local function parse_threshold_fields(b, thr_text, thrf_text)
  b.thr_text = thr_text or ''
  b.thr = parse_thresholds(b.thr_text)
  if b.thr == nil then corrupt(b.key, 'thr') end
  b.thrf = 0
  if present(thrf_text) then b.thrf = stored_int(thrf_text, b.key, 'thrf', 0, 65535) end
  b.thrf0 = b.thrf
end

local function parse_roll(b, roll_text)
  if present(roll_text) then b.roll = stored_int(roll_text, b.key, 'roll', 0, MAX_MICROS - b.lim) end
  b.roll_known = true
end

-- Reads and validates one budget hash, the fields ``mode`` takes (READ, CHARGE or FULL; see
-- BUDGET_FIELDS); nil when the key does not exist. Every number read is range-checked.
local function load_budget(key, mode)
  local v, h = read_values(key, mode)
  if v == nil then return nil end
  local id, cur, pk, status = v[1], v[2], v[8] or '', v[12]
  if not valid_id(id) or string.sub(key, -(#id + 2)) ~= 'b:' .. id then corrupt(key, 'id') end
  if not valid_currency(cur) then corrupt(key, 'cur') end
  if not STATUSES[status or ''] then corrupt(key, 'status') end
  local lim = stored_int(v[3], key, 'lim', 1, MAX_MICROS)
  local bal = stored_int(v[5], key, 'bal', -MAX_MICROS, MAX_MICROS)
  local held = stored_int(v[6], key, 'held', 0, MAX_MICROS)
  local op, ack = stored_int(v[13], key, 'op', 0, 1), stored_int(v[14], key, 'ack', 0, 1)
  local wz = stored_int(v[15], key, 'wz', 0, 1)
  -- <name>0: the balance state as read, so that flush writes only what changed
  local b = { key = key, id = id, cur = cur, status = status, lim = lim, pk = pk, pu = v[10] or '',
    bal = bal, held = held, wf = stored_int(v[7], key, 'wf', 0, PPM), op = op, ack = ack, wz = wz,
    bal0 = bal, held0 = held, status0 = status, op0 = op, ack0 = ack, wz0 = wz }
  if present(v[4]) then b.soft = stored_int(v[4], key, 'soft', 1, lim) end
  if pk == 'd' then
    b.ps = stored_int(v[9], key, 'ps', 1, MAX_MICROS)
  elseif pk == 'c' then
    if not CAL_UNITS[b.pu] then corrupt(key, 'pu') end
  elseif pk ~= '' then
    corrupt(key, 'pk')
  end
  if pk ~= '' then b.pstart = stored_int(v[11], key, 'pstart', 0, MAX_MICROS) end
  b.pstart0 = b.pstart
  if mode ~= READ then parse_threshold_fields(b, v[16], v[17]) end
  if mode == FULL then
    validate_full_identity(key, h, pk)
    parse_roll(b, v[18])
    b.updated = stored_int(v[19], key, 'updated', 0, MAX_MICROS)
    b.created = stored_int(v[20], key, 'created', 0, MAX_MICROS)
    b.org, b.st, b.sid, b.period, b.meta = h.org, h.st, h.sid, h.period or '', h.meta or ''
  end
  return b
end

-- The fields only a rollover uses, on a budget read without them: the carry (rollover_max) and
-- the thresholds it re-arms. One more HMGET, once per elapsed period.
local function load_rollover_fields(b)
  if b.roll_known then return end
  local v = redis.call('HMGET', b.key, 'roll', 'thr', 'thrf')
  if b.thrf == nil then parse_threshold_fields(b, v[2], v[3]) end
  parse_roll(b, v[1])
end

-- Warning threshold floor(wf * lim / 1e6), exact for lim <= 2^53 (split to stay below 2^53).
local function warn_at(b)
  local hi = math.floor(b.lim / PPM)
  local lo = b.lim - hi * PPM
  return b.wf * hi + math.floor(b.wf * lo / PPM)
end

-- Status from the balance, the soft limit and the operator pause (SPEC §4).
local function derive_status(b)
  if b.status == 'disabled' then return 'disabled' end
  if b.bal <= 0 then return 'exhausted' end
  if b.op == 1 then return 'paused' end
  if b.soft ~= nil and b.ack == 0 and b.lim - b.bal >= b.soft then return 'paused' end
  return 'active'
end

-- Per-call accumulator: ledger entries and events to write, budgets to save, ids to hand out.
local function new_batch(prefix, now, id_base)
  return { prefix = prefix, now = now, id_base = id_base, entries = {}, events = {}, dirty = {},
    order = {}, holds = {}, unholds = {} }
end

local function next_entry_id(batch)
  local n = #batch.entries
  if n >= ENTRIES_PER_CALL_MAX then raise('INVALID', 'too many ledger entries in one call') end
  if batch.id_base == nil or string.len(batch.id_base) ~= LEDGER_ID_BASE_LEN then
    raise('INVALID', 'ledger id base must be ledger_ + 30 hex digits')
  end
  return batch.id_base .. string.format('%02x', n)
end

local function add_entry(batch, b, amount, source, ref_type, ref_id, session, description)
  local e = { id = next_entry_id(batch), bid = b.id, amt = amount, src = source,
    rt = ref_type or '', ri = ref_id or '', sess = session or '', desc = description or '',
    ts = batch.now, key = batch.prefix .. LEDGER_KEY .. b.id }
  table.insert(batch.entries, e)
  return e
end

local function mark_dirty(batch, b)
  if not batch.dirty[b.id] then
    batch.dirty[b.id] = b
    table.insert(batch.order, b)
  end
end

local function add_event(batch, b, event_type, threshold_ppm)
  table.insert(batch.events, { type = event_type, b = b, bal = b.bal, lim = b.lim,
    soft = b.soft, ack = b.ack, thr = threshold_ppm })
end

-- Smallest spend that reaches ``ppm`` of the limit: ceil(ppm * lim / 1e6), exact below 2^53.
local function spend_at(ppm, lim)
  local hi = math.floor(lim / PPM)
  local lo = lim - hi * PPM
  local low_part = ppm * lo
  local whole = ppm * hi + math.floor(low_part / PPM)
  if low_part % PPM ~= 0 then whole = whole + 1 end
  return whole
end

-- Extra warning thresholds: each fires once per period when the spend reaches it.
local function fire_thresholds(batch, b)
  local spent = b.lim - b.bal
  for i, ppm in ipairs(b.thr) do
    local bit = 2 ^ (i - 1)
    if math.floor(b.thrf / bit) % 2 == 0 and spent >= spend_at(ppm, b.lim) then
      b.thrf = b.thrf + bit
      add_event(batch, b, 'budget.threshold', ppm)
    end
  end
end

-- Re-derives the status after a mutation and records the edge-triggered events (SPEC §9).
local function settle(batch, b, old_status, old_wz)
  if b.status ~= 'disabled' then b.status = derive_status(b) end
  b.wz = (b.bal <= warn_at(b)) and 1 or 0
  local s = b.status
  if old_wz == 0 and b.wz == 1 and s ~= 'exhausted' and s ~= 'disabled' then
    add_event(batch, b, 'budget.warning')
  end
  if s == 'paused' and old_status ~= 'paused' then add_event(batch, b, 'budget.paused') end
  if s == 'exhausted' and old_status ~= 'exhausted' then add_event(batch, b, 'budget.exhausted') end
  if s == 'active' and (old_status == 'paused' or old_status == 'exhausted') then
    add_event(batch, b, 'budget.resumed')
  end
  if s ~= 'disabled' then fire_thresholds(batch, b) end
  b.updated = batch.now
  mark_dirty(batch, b)
end

-- Applies an elapsed period: balance back to the limit, aligned start, a period_reset entry.
-- Index of the UTC calendar bucket holding t_ms: consecutive buckets have consecutive indexes.
local function bucket_index(t_ms, unit)
  local days = math.floor(t_ms / MS_PER_DAY)
  if unit == 'hour' then return math.floor(t_ms / 3600000) end
  if unit == 'day' then return days end
  if unit == 'week' then return math.floor((days + 3) / 7) end
  local y, m = civil_from_days(days)
  if unit == 'month' then return y * 12 + m end
  return y
end

-- The balance after ``periods`` (>= 1) resets with no spend in between (SPEC §11): the limit,
-- plus what rolls over: min(max(balance, 0), rollover_max) at the first reset, and at each
-- further one min(the carry + limit, rollover_max).
local function balance_after_resets(b, periods)
  if b.roll == nil then return b.lim end
  local carry = math.min(math.max(b.bal, 0), b.roll)
  local room = b.roll - carry
  if periods > 1 and room > 0 then
    if periods - 1 >= room / b.lim then carry = b.roll else carry = carry + (periods - 1) * b.lim end
  end
  return b.lim + carry
end

local function rollover(batch, b)
  if b.pk == '' or batch.now < b.pstart then return end
  local start, periods
  if b.pk == 'd' then
    local len = b.ps * 1000
    if batch.now - b.pstart < len then return end
    periods = math.floor((batch.now - b.pstart) / len)
    start = b.pstart + periods * len
  else
    start = bucket_start(batch.now, b.pu)
    if start <= b.pstart then return end
    periods = bucket_index(batch.now, b.pu) - bucket_index(b.pstart, b.pu)
  end
  load_rollover_fields(b)
  local old_status, old_wz = b.status, b.wz
  local new_bal = balance_after_resets(b, periods)
  add_entry(batch, b, b.bal - new_bal, 'period_reset', 'period', fmt(b.pstart), nil, nil)
  b.bal = new_bal
  b.ack = 0
  b.thrf = 0
  b.pstart = start
  settle(batch, b, old_status, old_wz)
end

-- Outstanding holds of a budget: zset hold id -> expiry ms, hash hold id -> amount_micros.
local HOLDS_PURGE_MAX = 1000

local function hold_index_keys(batch, budget_id)
  return batch.prefix .. HOLD_INDEX_KEY .. budget_id, batch.prefix .. HOLD_AMOUNTS_KEY .. budget_id
end

-- When the budget's earliest outstanding hold expires (ms; nil: no hold in its index).
local function earliest_hold_ms(zkey)
  return tonumber(redis.call('ZRANGEBYSCORE', zkey, '-inf', '+inf', 'WITHSCORES', 'LIMIT', 0,
    1)[2])
end

-- Releases up to HOLDS_PURGE_MAX expired holds of a budget (in memory; flush writes them).
-- Also notes when the earliest hold left expires (b.holds_until, for valid_until; MAX_MICROS =
-- no hold; nil = not known, after a purge): one read of the earliest hold when none expired.
local function purge_expired_holds(batch, b)
  if b.held == 0 then
    b.holds_until = MAX_MICROS
    return
  end
  local zkey, akey = hold_index_keys(batch, b.id)
  local earliest = earliest_hold_ms(zkey)
  if earliest == nil or earliest > batch.now then
    b.holds_until = earliest
    return
  end
  local expired = redis.call('ZRANGEBYSCORE', zkey, '-inf', batch.now, 'LIMIT', 0, HOLDS_PURGE_MAX)
  if #expired == 0 then return end
  local amounts = redis.call('HMGET', akey, unpack(expired))
  for i, hold_id in ipairs(expired) do
    b.held = b.held - (tonumber(amounts[i]) or 0)
    table.insert(batch.unholds, { zkey, akey, hold_id })
  end
  if b.held < 0 then corrupt(b.key, 'held') end
  mark_dirty(batch, b)
end

-- Brings a budget up to date: elapsed period rolled over, expired holds released.
local function refresh(batch, b)
  rollover(batch, b)
  purge_expired_holds(batch, b)
end

-- Takes one hold off a budget (in memory); false when the budget no longer carries it.
local function unhold(batch, b, hold_id)
  local zkey, akey = hold_index_keys(batch, b.id)
  local amount = tonumber(redis.call('HGET', akey, hold_id))
  if amount == nil then return false end
  b.held = b.held - amount
  if b.held < 0 then corrupt(b.key, 'held') end
  table.insert(batch.unholds, { zkey, akey, hold_id })
  mark_dirty(batch, b)
  return true
end

local function opt(n)
  if n == nil then return '' end
  return fmt(n)
end

-- The balance-state fields of a dirty budget to write, as HSET arguments: all of them for a
-- budget created or reconfigured (b.config), else those that differ from what was read
-- (<name>0) and 'updated' when set (a change by a hold alone keeps it). A READ leaves
-- thresholds alone (b.thrf nil); a debit usually writes 'bal' and 'updated' only.
local function changed_state(b)
  if b.config then
    return { 'bal', fmt(b.bal), 'held', fmt(b.held), 'pstart', opt(b.pstart), 'status', b.status,
      'op', fmt(b.op), 'ack', fmt(b.ack), 'wz', fmt(b.wz), 'thrf', fmt(b.thrf),
      'updated', fmt(b.updated) }
  end
  local f, n = {}, 0
  if b.bal ~= b.bal0 then f[n + 1], f[n + 2], n = 'bal', fmt(b.bal), n + 2 end
  if b.held ~= b.held0 then f[n + 1], f[n + 2], n = 'held', fmt(b.held), n + 2 end
  if b.status ~= b.status0 then f[n + 1], f[n + 2], n = 'status', b.status, n + 2 end
  if b.op ~= b.op0 then f[n + 1], f[n + 2], n = 'op', fmt(b.op), n + 2 end
  if b.ack ~= b.ack0 then f[n + 1], f[n + 2], n = 'ack', fmt(b.ack), n + 2 end
  if b.wz ~= b.wz0 then f[n + 1], f[n + 2], n = 'wz', fmt(b.wz), n + 2 end
  if b.pstart ~= b.pstart0 then f[n + 1], f[n + 2], n = 'pstart', opt(b.pstart), n + 2 end
  if b.thrf ~= b.thrf0 then f[n + 1], f[n + 2], n = 'thrf', fmt(b.thrf), n + 2 end
  if b.updated ~= nil then f[n + 1], f[n + 2] = 'updated', fmt(b.updated) end
  return f
end

-- Persists every dirty budget, hold change, ledger entry and event of the batch: the write path
-- of every script, except a few writes a script makes itself (create.lua's identity fields and
-- indexes, reserve.lua's hold record, a hold's deletion, request records).
local function flush(batch, events_key)
  for _, b in ipairs(batch.order) do
    -- The hot path (debit, holds, rollover) changes only the balance-state fields; create and
    -- update set b.config to write the configuration too.
    local fields = changed_state(b)
    if #fields > 0 then redis.call('HSET', b.key, unpack(fields)) end
    if b.config then
      redis.call('HSET', b.key, 'lim', fmt(b.lim), 'soft', opt(b.soft), 'wf', fmt(b.wf),
        'period', b.period, 'pk', b.pk, 'ps', opt(b.ps), 'pu', b.pu, 'meta', b.meta,
        'thr', b.thr_text, 'roll', opt(b.roll))
    end
  end
  for _, u in ipairs(batch.unholds) do
    redis.call('ZREM', u[1], u[3])
    redis.call('HDEL', u[2], u[3])
  end
  for _, h in ipairs(batch.holds) do
    redis.call('ZADD', h[1], h[4], h[3])
    redis.call('HSET', h[2], h[3], fmt(h[5]))
  end
  for _, e in ipairs(batch.entries) do
    if e.rt == '' and e.ri == '' and e.sess == '' and e.desc == '' then
      e.sid = redis.call('XADD', e.key, '*', 'id', e.id, 'bid', e.bid, 'amt', fmt(e.amt),
        'src', e.src, 'ts', fmt(e.ts))
    else
      e.sid = redis.call('XADD', e.key, '*', 'id', e.id, 'bid', e.bid, 'amt', fmt(e.amt),
        'src', e.src, 'rt', e.rt, 'ri', e.ri, 'sess', e.sess, 'desc', e.desc, 'ts', fmt(e.ts))
    end
  end
  for _, ev in ipairs(batch.events) do
    ev.sid = redis.call('XADD', events_key, '*', 'type', ev.type, 'bid', ev.b.id,
      'bal', fmt(ev.bal), 'lim', fmt(ev.lim), 'cur', ev.b.cur, 'soft', opt(ev.soft),
      'ack', fmt(ev.ack), 'ts', fmt(batch.now), 'thr', opt(ev.thr))
  end
end

local function push_record(out, b)
  local fields = { b.id, b.org, b.st, b.sid, b.cur, fmt(b.lim), opt(b.soft), fmt(b.bal),
    fmt(b.held), fmt(b.wf), b.period, opt(b.pstart), b.meta, b.status, fmt(b.op),
    fmt(b.ack), fmt(b.created), fmt(b.updated), opt(b.roll) }
  for _, v in ipairs(fields) do table.insert(out, v) end
end

-- What a check needs of a budget (SNAPSHOT_WIDTH = 10 fields; numbers as integer replies); the
-- last is the 1-based index of the scope's subject key the budget was found under (0 = none).
local function push_snapshot(out, b)
  local n = #out
  out[n + 1], out[n + 2], out[n + 3], out[n + 4], out[n + 5] = b.id, b.cur, b.lim, b.bal, b.held
  out[n + 6], out[n + 7], out[n + 8], out[n + 9] = b.soft or '', b.status, b.ack, b.wf
  out[n + 10] = b.level or 0
end

-- Start (ms) of the UTC calendar bucket after the one starting at start_ms.
local function next_bucket_start(start_ms, unit)
  if unit == 'hour' then return start_ms + 3600000 end
  if unit == 'day' then return start_ms + MS_PER_DAY end
  if unit == 'week' then return start_ms + 7 * MS_PER_DAY end
  local y, m = civil_from_days(math.floor(start_ms / MS_PER_DAY))
  if unit == 'month' then
    if m == 12 then y, m = y + 1, 1 else m = m + 1 end
    return days_from_civil(y, m, 1) * MS_PER_DAY
  end
  return days_from_civil(y + 1, 1, 1) * MS_PER_DAY
end

-- Until when (ms, exclusive; MAX_MICROS = no end) the budgets stay as they are by the clock
-- alone: the earliest end of a current period (rollover) or expiry of an outstanding hold
-- (release). The check cache (budgetkit._core.checkcache) serves a scope's snapshots until
-- then unless a write invalidates them first. Call after flush: the holds are in their zsets.
local function valid_until(batch, budgets)
  local until_ms = MAX_MICROS
  for _, b in ipairs(budgets) do
    if b.pk == 'd' then
      until_ms = math.min(until_ms, b.pstart + b.ps * 1000)
    elseif b.pk == 'c' then
      until_ms = math.min(until_ms, next_bucket_start(b.pstart, b.pu))
    end
    if b.held > 0 then
      -- Known since the refresh (a hold taken or resolved since only moves it earlier or
      -- leaves it early: never later than the truth), else read now.
      local hold_until = b.holds_until
      if hold_until == nil then hold_until = earliest_hold_ms(hold_index_keys(batch, b.id)) end
      if hold_until then until_ms = math.min(until_ms, hold_until) end
    end
  end
  return until_ms
end

-- The shared reply: budgets (in the given order, each pushed by push_budget: push_record by
-- default, push_snapshot for the scope scripts), then entries, then events. Counts, amounts and
-- times are integer replies (exact below 2^53), text fields are strings. A snapshot reply ends
-- with one more integer: valid_until(budgets).
local function reply(batch, budgets, push_budget)
  push_budget = push_budget or push_record
  local out = { batch.now, #budgets }
  for _, b in ipairs(budgets) do push_budget(out, b) end
  local n = #out + 1
  out[n] = #batch.entries
  for _, e in ipairs(batch.entries) do
    out[n + 1], out[n + 2], out[n + 3], out[n + 4], out[n + 5] = e.id, e.bid, e.amt, e.src, e.rt
    out[n + 6], out[n + 7], out[n + 8], out[n + 9] = e.ri, e.sess, e.desc, e.ts
    n = n + 9
  end
  n = n + 1
  out[n] = #batch.events
  for _, ev in ipairs(batch.events) do
    out[n + 1], out[n + 2], out[n + 3], out[n + 4] = ev.sid or '', ev.type, ev.b.id, ev.bal
    out[n + 5], out[n + 6], out[n + 7], out[n + 8] = ev.lim, ev.b.cur, opt(ev.soft), ev.ack
    out[n + 9], out[n + 10] = batch.now, opt(ev.thr)
    n = n + 10
  end
  if push_budget == push_snapshot then out[n + 1] = valid_until(batch, budgets) end
  return out
end

-- Budgets of the scope's subject index sets, most specific level first, each level's budgets in
-- id order (ids are time-ordered), with their elapsed periods rolled over; read as ``mode``
-- (READ, CHARGE or FULL; default READ).
local function load_scope(batch, subject_keys, include_disabled, mode)
  local budgets = {}
  for level, skey in ipairs(subject_keys) do
    local ids = redis.call('SMEMBERS', skey)
    table.sort(ids)
    for _, id in ipairs(ids) do
      local b = load_budget(batch.prefix .. BUDGET_KEY .. id, mode or READ)
      if b == nil or b.id ~= id then corrupt(skey, id) end
      b.level = level
      if include_disabled or b.status ~= 'disabled' then table.insert(budgets, b) end
    end
  end
  for _, b in ipairs(budgets) do refresh(batch, b) end
  return budgets
end

-- k (currency, amount_micros) pairs starting at argv[first]; k = argv[first - 1] (0..64).
local function read_amounts(argv, first)
  local n = arg_int(argv[first - 1], 'currency count', 0, CURRENCIES_PER_CALL_MAX)
  local amounts = {}
  for i = 0, n - 1 do
    amounts[argv[first + 2 * i]] = arg_int(argv[first + 2 * i + 1], 'amount_micros', 0, MAX_MICROS)
  end
  return amounts
end

-- Refuses the call (before any write) when a budget of the scope is in a currency the usage
-- could not be priced in; ``text`` lists those currencies, comma-separated ('' = none).
local function refuse_unpriced(budgets, text)
  if text == '' then return end
  local unpriced = {}
  for cur in string.gmatch(text, '[^,]+') do unpriced[cur] = true end
  for _, b in ipairs(budgets) do
    if unpriced[b.cur] then
      raise('UNPRICED', b.cur .. ' budget ' .. b.id .. ' is in the scope but the usage has no '
        .. b.cur .. ' price')
    end
  end
end

-- Charges each budget the amount of its currency (validated for range first), in memory.
local function charge(batch, budgets, amounts, source, ref_type, ref_id, session, description)
  for _, b in ipairs(budgets) do
    local amount = amounts[b.cur]
    if amount ~= nil and b.bal - amount < -MAX_MICROS then
      raise('INVALID', 'balance of ' .. b.id .. ' would leave the representable range')
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
end

-- Hold records outlive their TTL by this grace period, so a late commit is told HOLD_EXPIRED
-- (not HOLD_NOT_FOUND) for that long.
local HOLD_RECORD_GRACE_MS = 3600000

-- A hold record as {budget id -> amount_micros}; errors when unknown, resolved or expired.
local function load_hold(hold_key, hold_id, now)
  local flat = redis.call('HGETALL', hold_key)
  if #flat == 0 then raise('HOLD_NOT_FOUND', hold_id .. ' is unknown or already resolved') end
  local h, amounts = {}, {}
  for i = 1, #flat, 2 do
    h[flat[i]] = flat[i + 1]
    if string.sub(flat[i], 1, 2) == 'b:' then amounts[string.sub(flat[i], 3)] = flat[i + 1] end
  end
  local expires = tonumber(h.exp)
  if expires == nil then corrupt(hold_key, 'exp') end
  if expires <= now then raise('HOLD_EXPIRED', hold_id .. ' expired; record the usage with debit') end
  return amounts
end

-- Takes the hold off every budget it is on (loading those not in ``budgets`` as ``mode``: READ
-- or FULL); returns them.
local function release_hold(batch, held, budgets, hold_id, mode)
  local by_id, touched = {}, {}
  for _, b in ipairs(budgets) do by_id[b.id] = b end
  local ids = {}
  for bid, _ in pairs(held) do table.insert(ids, bid) end
  table.sort(ids)
  for _, bid in ipairs(ids) do
    local b = by_id[bid]
    if b == nil then
      b = load_budget(batch.prefix .. BUDGET_KEY .. bid, mode)
      if b ~= nil then refresh(batch, b) end
    end
    if b ~= nil and unhold(batch, b, hold_id) then table.insert(touched, b) end
  end
  return touched
end

-- Prefixes tags to a reply (e.g. 'granted', a hold id): the client reads them before the shape.
local function tagged(tags, out)
  local result = {}
  for _, t in ipairs(tags) do table.insert(result, t) end
  for _, v in ipairs(out) do table.insert(result, v) end
  return result
end


-- Request records make every mutation exactly-once (budgetkit/_core/redelivery.py). Two kinds, under a
-- declared key, judged expired by the operation clock (batch.now; the key TTL only reclaims
-- memory):
-- * Idempotency records (a caller's key; fingerprint = a hash of the request): a list
--   [fingerprint, expires_ms, reply...]; a retry gets the stored reply prefixed with 'replayed'.
--   Expiry NEVER_MS keeps one for good (a keyed create).
-- * Receipts (no caller key: fingerprint AUTO_FINGERPRINT, key P:{org}:rq:<request id>, kept for
--   the client's redelivery window): a small string 'expires|now|tags|budget ids|entries|events'
--   (entries as <budget id>:<ledger stream id>, events as stream ids, each list comma-separated).
--   The same command sent again (a client's retry after a lost reply) applies nothing and gets
--   the reply rebuilt by ``redelivered``: the first call's tags, entries and events read back
--   from the streams, and its budgets as they are now.
local IDEM_PUSH_CHUNK = 500
local AUTO_FINGERPRINT = '='
local NEVER_MS = MAX_MICROS

local function split(text, sep)
  local out = {}
  if text == '' then return out end
  for part in string.gmatch(text, '[^' .. sep .. ']+') do table.insert(out, part) end
  return out
end

-- The stored reply of an earlier call with this key, or nil, and (for a receipt) the receipt
-- table { now, tags, budget_ids, entries, events }; BK_IDEMPOTENCY_CONFLICT when a caller's key
-- was used for a different request. fingerprint '' = no record.
local function idem_replay(key, fingerprint, now)
  if fingerprint == '' then return nil, nil end
  if fingerprint == AUTO_FINGERPRINT then
    local text = redis.call('GET', key)
    if not text then return nil, nil end
    local parts = {}
    for part in string.gmatch(text .. '|', '([^|]*)|') do table.insert(parts, part) end
    if #parts ~= 6 or tonumber(parts[1]) == nil then corrupt(key, 'receipt') end
    if tonumber(parts[1]) <= now then return nil, nil end
    return nil, { now = tonumber(parts[2]), tags = split(parts[3], ','),
      budget_ids = split(parts[4], ','), entries = split(parts[5], ','),
      events = split(parts[6], ',') }
  end
  local stored = redis.call('LRANGE', key, 0, -1)
  if #stored < 2 or tonumber(stored[2]) == nil or tonumber(stored[2]) <= now then
    return nil, nil
  end
  if stored[1] ~= fingerprint then
    raise('IDEMPOTENCY_CONFLICT', 'the idempotency key was used for a different request')
  end
  local out = { 'replayed' }
  for i = 3, #stored do table.insert(out, stored[i]) end
  return out, nil
end

-- Records a call: its reply ``out`` under a caller's key, or its receipt (``tags`` and the ids
-- of the budgets its reply shows, ``budget_ids``; '' entries for none) under a request key.
local function idem_store(key, fingerprint, batch, ttl_ms, out, tags, budget_ids)
  if fingerprint == '' then return end
  local now = batch.now
  local expires = ttl_ms == NEVER_MS and NEVER_MS or now + ttl_ms
  if fingerprint == AUTO_FINGERPRINT then
    local entries, events = {}, {}
    for i, e in ipairs(batch.entries) do entries[i] = e.bid .. ':' .. e.sid end
    for i, ev in ipairs(batch.events) do events[i] = ev.sid end
    local text = table.concat({ fmt(expires), fmt(now), table.concat(tags or {}, ','),
      table.concat(budget_ids or {}, ','), table.concat(entries, ','),
      table.concat(events, ',') }, '|')
    redis.call('SET', key, text, 'PX', ttl_ms)
    return
  end
  local texts = { fingerprint, fmt(expires) }
  for _, v in ipairs(out) do table.insert(texts, type(v) == 'number' and fmt(v) or v) end
  redis.call('DEL', key)
  for i = 1, #texts, IDEM_PUSH_CHUNK do
    redis.call('RPUSH', key, unpack(texts, i, math.min(i + IDEM_PUSH_CHUNK - 1, #texts)))
  end
  if ttl_ms ~= NEVER_MS then redis.call('PEXPIRE', key, ttl_ms) end
end

local ENTRY_FIELDS = { 'id', 'bid', 'amt', 'src', 'rt', 'ri', 'sess', 'desc', 'ts' }
local EVENT_FIELDS = { 'type', 'bid', 'bal', 'lim', 'cur', 'soft', 'ack', 'ts', 'thr' }

-- One stream entry's fields as a table (nil when it was trimmed away).
local function stream_fields(key, id)
  local rows = redis.call('XRANGE', key, id, id)
  if #rows == 0 then return nil end
  local h, flat = {}, rows[1][2]
  for j = 1, #flat, 2 do h[flat[j]] = flat[j + 1] end
  return h
end

-- The ids of ``budgets``, for a receipt.
local function ids_of(budgets)
  local ids = {}
  for i, b in ipairs(budgets) do ids[i] = b.id end
  return ids
end

-- The reply of a redelivered call (see the receipts above), in the shared reply shape; writes
-- nothing. ``budgets`` as they are now, pushed by ``push_budget``.
local function redelivered(batch, receipt, budgets, push_budget, events_key)
  local out = {}
  for _, t in ipairs(receipt.tags) do table.insert(out, t) end
  table.insert(out, receipt.now)
  table.insert(out, #budgets)
  for _, b in ipairs(budgets) do push_budget(out, b) end
  local rows = {}
  for _, ref in ipairs(receipt.entries) do
    local bid, sid = string.match(ref, '^([^:]+):(.+)$')
    local h = bid and stream_fields(batch.prefix .. LEDGER_KEY .. bid, sid)
    if h then table.insert(rows, h) end
  end
  table.insert(out, #rows)
  for _, h in ipairs(rows) do
    for _, f in ipairs(ENTRY_FIELDS) do table.insert(out, h[f] or '') end
  end
  local events = {}
  for _, sid in ipairs(receipt.events) do
    local h = stream_fields(events_key, sid)
    if h then table.insert(events, { sid, h }) end
  end
  table.insert(out, #events)
  for _, ev in ipairs(events) do
    table.insert(out, ev[1])
    for _, f in ipairs(EVENT_FIELDS) do table.insert(out, ev[2][f] or '') end
  end
  return out
end

-- The budgets a receipt names as they are now (whole records, rolled over in memory).
local function receipt_budgets(batch, receipt)
  local budgets = {}
  for _, bid in ipairs(receipt.budget_ids) do
    local b = load_budget(batch.prefix .. BUDGET_KEY .. bid, FULL)
    if b ~= nil then
      refresh(batch, b)
      table.insert(budgets, b)
    end
  end
  return budgets
end

-- A scope script's reply to a redelivered call: the scope's budgets now, as snapshots.
local function redelivered_scope(batch, receipt, subject_keys, events_key)
  local budgets = load_scope(batch, subject_keys, false)
  return redelivered(batch, receipt, budgets, push_snapshot, events_key)
end

-- The reply of a call that was applied before (a caller's retry: the stored reply; a resend:
-- ``rebuild(receipt)``), or nil: the call runs.
local function earlier_reply(batch, idem_key, fingerprint, rebuild)
  local replay, receipt = idem_replay(idem_key, fingerprint, batch.now)
  if replay ~= nil then return replay end
  if receipt ~= nil then return rebuild(receipt) end
  return nil
end
