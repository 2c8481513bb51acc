-- create.lua: create one budget and index it under its subject and its organization.
-- KEYS[1]   budget hash            bk:{org}:b:<budget_id>
-- KEYS[2]   subject index set      bk:{org}:s:<subject_type>:<subject_id>
-- KEYS[3]   organization index     bk:{org}:all (zset, score = created ms)
-- KEYS[4]   events stream          bk:{org}:events (unused; keeps the reply shape)
-- KEYS[5]   request record         bk:{org}:idem:create:<key> or bk:{org}:rq:<request id>
-- ARGV[1]   key prefix of the org  bk:{org}:
-- ARGV[2]   now_ms ('' = Redis TIME)
-- ARGV[3]   budget id, ARGV[4] organization id, ARGV[5] subject type (wire), ARGV[6] subject id
-- ARGV[7]   currency, ARGV[8] limit_micros 1..2^53-1, ARGV[9] soft_limit_micros ('' or 1..limit)
-- ARGV[10]  warn fraction ppm 0..1e6
-- ARGV[11]  period JSON ('' = none), ARGV[12] period kind ('' | 'd' | 'c'),
-- ARGV[13]  period seconds (kind d), ARGV[14] calendar unit (kind c)
-- ARGV[15]  metadata JSON ('' = none), ARGV[16] budgets per subject maximum
-- ARGV[17]  extra warning thresholds: ascending spent fractions in ppm, comma-separated ('' = none)
-- ARGV[18]  request fingerprint ('=' = a per-call request record), ARGV[19] record TTL ms
-- ARGV[20]  rollover_max micros 0..2^53-1 ('' = none; needs a period; limit + it <= 2^53-1)
--           (2^53-1 = kept for good: a keyed create replays for the budget's lifetime)
-- Returns   the shared reply with the new budget ('replayed' + the stored reply on a replay)
-- Errors    BK_LIMIT (limit/soft limit), BK_INVALID (arguments, duplicate id, too many budgets),
--           BK_IDEMPOTENCY_CONFLICT (same key, different request)
-- Invariants nothing is written unless every check passed; balance = limit; status active
local budget_key, subject_key, org_index_key, idem_key = KEYS[1], KEYS[2], KEYS[3], KEYS[5]
local prefix, now_arg, id, org, st, sid, cur = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5],
  ARGV[6], ARGV[7]
local limit_arg, soft_arg, wf_arg = ARGV[8], ARGV[9], ARGV[10]
local period, pk, ps_arg, pu, meta = ARGV[11], ARGV[12], ARGV[13], ARGV[14], ARGV[15]
local per_subject_max = tonumber(ARGV[16])
local thr_text = ARGV[17]
local roll_arg = ARGV[20] or ''
local fingerprint, idem_ttl_ms = ARGV[18], arg_int(ARGV[19], 'idempotency ttl', 1, MAX_MICROS)

local now = now_ms(now_arg)
local lim = tonumber(limit_arg)
if lim == nil or lim ~= math.floor(lim) or lim <= 0 or lim > MAX_MICROS then
  return fail('LIMIT', 'Limit must be positive')
end
local soft = nil
if soft_arg ~= '' then
  soft = tonumber(soft_arg)
  if soft == nil or soft ~= math.floor(soft) or soft <= 0 or soft > lim then
    return fail('LIMIT', 'Soft limit must be between 0 and limit')
  end
end
local wf = arg_int(wf_arg, 'warn_fraction_ppm', 0, PPM)
local thr = parse_thresholds(thr_text)
if thr == nil then
  return fail('INVALID', 'thresholds must be at most 16 ascending ppm in (0, 1e7]')
end
local ps = nil
if pk == 'd' then
  ps = arg_int(ps_arg, 'period seconds', 1, MAX_MICROS)
elseif pk == 'c' then
  if not CAL_UNITS[pu] then return fail('INVALID', 'unknown calendar unit') end
elseif pk ~= '' then
  return fail('INVALID', 'unknown period kind')
end
local batch = new_batch(prefix, now, nil)
local roll = nil
if roll_arg ~= '' then
  if pk == '' then return fail('INVALID', 'rollover_max needs a period') end
  roll = arg_int(roll_arg, 'rollover_max', 0, MAX_MICROS)
  if roll > MAX_MICROS - lim then
    return fail('LIMIT', 'limit + rollover_max must be at most 2^53-1 micro-units')
  end
end
local replay, receipt = idem_replay(idem_key, fingerprint, now)
if replay ~= nil then return replay end
if receipt ~= nil then
  local made = load_budget(budget_key, FULL)
  if made == nil then return fail('NOT_FOUND', budget_key) end
  refresh(batch, made)
  return redelivered(batch, receipt, { made }, push_record, KEYS[4])
end
if redis.call('EXISTS', budget_key) == 1 then return fail('INVALID', 'budget id already exists') end
if redis.call('SCARD', subject_key) >= per_subject_max then
  return fail('INVALID', 'a subject has at most ' .. fmt(per_subject_max) .. ' budgets')
end

local b = { key = budget_key, id = id, org = org, st = st, sid = sid, cur = cur, lim = lim,
  soft = soft, bal = lim, held = 0, wf = wf, period = period, pk = pk, ps = ps, pu = pu,
  meta = meta, status = 'active', op = 0, ack = 0, wz = 0, created = now, updated = now,
  thr = thr, thr_text = thr_text, thrf = 0, roll = roll, config = true }
b.pstart = period_start_at(b, now)
redis.call('HSET', budget_key, 'id', id, 'org', org, 'st', st, 'sid', sid, 'cur', cur,
  'created', fmt(now))
settle(batch, b, 'active', 0)
flush(batch, KEYS[4])
redis.call('SADD', subject_key, id)
redis.call('ZADD', org_index_key, now, id)
local out = reply(batch, { b })
idem_store(idem_key, fingerprint, batch, idem_ttl_ms, out)
return out
