-- list.lua: list an organization's budgets, newest first, with their periods rolled over.
-- KEYS[1]   organization index     bk:{org}:all (zset, score = created ms)
-- KEYS[2]   events stream          bk:{org}:events
-- ARGV[1]   key prefix of the org  bk:{org}:
-- ARGV[2]   now_ms ('' = Redis TIME)
-- ARGV[3]   ledger id base (ledger_ + 30 hex) for period_reset entries
-- ARGV[4]   subject type filter ('' = any), ARGV[5] subject id filter ('' = any)
-- ARGV[6]   include disabled 0/1, ARGV[7] page size 1..1000, ARGV[8] offset 0..2^53-1
-- Returns   the shared reply with the page of budgets
-- Errors    BK_INVALID, BK_CORRUPT <key field>
-- Invariants only budgets of the page are read and rolled over; rollovers are written whole
local index_key, events_key = KEYS[1], KEYS[2]
local batch = new_batch(ARGV[1], now_ms(ARGV[2]), ARGV[3])
local st_filter, sid_filter = ARGV[4], ARGV[5]
local include_disabled = ARGV[6] == '1'
local page_size = arg_int(ARGV[7], 'limit', 1, 1000)
local offset = arg_int(ARGV[8], 'offset', 0, MAX_MICROS)

local page = {}
local skipped = 0
local ids = redis.call('ZREVRANGE', index_key, 0, -1)
for _, id in ipairs(ids) do
  if #page >= page_size then break end
  local b = load_budget(batch.prefix .. BUDGET_KEY .. id, FULL)
  if b == nil or b.id ~= id then corrupt(index_key, id) end
  local match = (st_filter == '' or b.st == st_filter) and (sid_filter == '' or b.sid == sid_filter)
    and (include_disabled or b.status ~= 'disabled')
  if match then
    if skipped < offset then skipped = skipped + 1 else table.insert(page, b) end
  end
end
for _, b in ipairs(page) do refresh(batch, b) end
flush(batch, events_key)
return reply(batch, page)
