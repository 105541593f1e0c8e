-- Check and take every quota of one scope, atomically; the same arithmetic as
-- backends/memory.py. Runs after common.lua (KEYS[1..5] are described there);
-- KEYS[6..] one counter per quota.
-- ARGV: now_us, rid, hold_us, then per quota: counter, kind (1 requests,
-- 2 tokens, 3 budget), limit, interval_us, amount, floor, period_end.
-- A budget counter is a hash: s spent, h held (nano-USD). A rate counter is
-- its theoretical arrival time in microseconds. A bucket with outstanding
-- lease grants (L) keeps room for them: it holds at most limit - L.
-- Returns {allowed, then per quota: fits, remaining, reset_us, retry_us}.
local now = tonumber(ARGV[1])
local rid = ARGV[2]
local hold_us = tonumber(ARGV[3])
local n = #KEYS - 5

local leased = settle_scope(now)

local quotas = {}
local results = {}
local allowed = 1
for i = 1, n do
  local a = 4 + (i - 1) * 7
  local q = {
    counter = ARGV[a], kind = tonumber(ARGV[a + 1]), limit = tonumber(ARGV[a + 2]),
    interval = tonumber(ARGV[a + 3]), amount = tonumber(ARGV[a + 4]), floor = tonumber(ARGV[a + 5]),
    period_end = tonumber(ARGV[a + 6]), key = KEYS[5 + i],
  }
  quotas[i] = q
  local held_out = leased and lent(q.counter) or 0
  local fits, taken, left, reset, retry
  if q.kind == 3 then
    local spent = tonumber(redis.call('HGET', q.key, 's') or '0')
    local held = tonumber(redis.call('HGET', q.key, 'h') or '0')
    if q.floor > spent then spent = q.floor end
    q.spent = spent
    left = q.limit - spent - held - held_out
    fits = q.amount <= left
    taken = left - q.amount
    reset = 0
    if q.period_end > 0 then reset = math.max(q.period_end * 1000000 - now, 0) end
    retry = fits and 0 or reset
  else
    local capacity = (q.limit - held_out) * q.interval
    local base = tonumber(redis.call('GET', q.key) or now)
    if base < now then base = now end
    local new_tat = base + q.amount * q.interval
    fits = new_tat - now <= capacity
    taken = math.floor((capacity - (new_tat - now)) / q.interval)
    left = math.max(math.floor((capacity - (base - now)) / q.interval), 0)
    reset = fits and (new_tat - now) or (base - now)
    retry = fits and 0 or (new_tat - now - capacity)
    q.new_tat = new_tat
  end
  if not fits then allowed = 0 end
  results[i] = {fits and 1 or 0, taken, left, reset, retry}
end

local out = {allowed}
for i = 1, n do
  local r = results[i]
  out[#out + 1] = r[1]
  out[#out + 1] = allowed == 1 and r[2] or r[3]
  out[#out + 1] = r[4]
  out[#out + 1] = r[5]
end
if allowed == 0 then return out end

local items = {}
for _, q in ipairs(quotas) do
  if q.kind == 3 then
    redis.call('HSET', q.key, 's', q.spent)
    redis.call('HINCRBY', q.key, 'h', q.amount)
    if q.period_end > 0 then redis.call('EXPIREAT', q.key, q.period_end + 86400) end
  else
    redis.call('SET', q.key, q.new_tat, 'PXAT', math.ceil(q.new_tat / 1000) + 1)
  end
  -- The counter's own key: later calls may carry other quotas (another endpoint
  -- class, another month), so a hold names what it took. Same hash tag, same slot.
  items[#items + 1] = {q.key, q.kind, q.interval, q.amount}
end
local expires = now + hold_us
redis.call('HSET', KEYS[1], rid, cjson.encode(items))
redis.call('ZADD', KEYS[2], expires, rid)
local keep = math.ceil(expires / 1000) + 60000
redis.call('PEXPIREAT', KEYS[1], keep, 'GT')
redis.call('PEXPIREAT', KEYS[2], keep, 'GT')
if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIREAT', KEYS[1], keep) end
if redis.call('PTTL', KEYS[2]) < 0 then redis.call('PEXPIREAT', KEYS[2], keep) end
return out
