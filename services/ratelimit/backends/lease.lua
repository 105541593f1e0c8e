-- Take, renew or give back one holder's leases on counters of one scope,
-- atomically; the same arithmetic as backends/memory.py (MemoryBackend._claim).
-- Runs after common.lua (KEYS[1..5] are described there); KEYS[6..] one counter
-- per claim.
-- ARGV: now_us (caller's clock), ttl_us, holder, then per claim: counter, kind,
-- limit, interval_us, floor, period_end, used, want.
-- Per claim: the holder's previous grant leaves L, its reported used units are
-- charged now (without a live lease only refunds apply: an expired one was
-- charged in full), then it gets min(want, floor(available / (holders + 1))).
-- Grants expire on Redis' clock, so every replica agrees when they lapse.
-- Returns {expires_us (Redis' clock), then per claim: granted, remaining, reset_us}.
local now = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local holder = ARGV[3]

lapse_holds(now)
local rnow = redis_now()
reclaim(now, rnow)
local expires = rnow + ttl
local out = {expires}
local granted_any = false

for i = 1, #KEYS - 5 do
  local a = 4 + (i - 1) * 8
  local counter, kind, limit, interval = ARGV[a], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local floor, period_end = tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5])
  local used, want = tonumber(ARGV[a + 6]), tonumber(ARGV[a + 7])
  local key = KEYS[5 + i]
  local member = counter .. '|' .. holder

  if not end_lease(member) then used = math.min(used, 0) end
  charge(kind, key, interval, used, now, floor)

  local out_lent = lent(counter)
  local holders = tonumber(redis.call('HGET', KEYS[5], '#' .. counter) or '0')
  local available, tat
  if kind == 3 then
    local spent = tonumber(redis.call('HGET', key, 's') or '0')
    local held = tonumber(redis.call('HGET', key, 'h') or '0')
    available = limit - math.max(spent, floor) - held - out_lent
  else
    tat = math.max(tonumber(redis.call('GET', key) or now), now)
    available = math.max(math.floor(((limit - out_lent) * interval - (tat - now)) / interval), 0)
  end

  local granted = 0
  if want > 0 and available > 0 then granted = math.min(want, math.floor(available / (holders + 1))) end
  if granted > 0 then
    granted_any = true
    redis.call('HSET', KEYS[3], member, string.format('%d\t%.0f\t%.0f\t%s\t%s', kind, interval, granted, counter, key))
    redis.call('ZADD', KEYS[4], expires, member)
    redis.call('HINCRBY', KEYS[5], counter, granted)
    redis.call('HINCRBY', KEYS[5], '#' .. counter, 1)
  end

  local reset = 0
  if kind == 3 then
    if period_end > 0 then
      reset = math.max(period_end * 1000000 - now, 0)
      if redis.call('EXISTS', key) == 1 then redis.call('EXPIREAT', key, period_end + 86400) end
    end
  else
    reset = tat - now + (out_lent + granted) * interval
  end
  out[#out + 1] = granted
  out[#out + 1] = available - granted
  out[#out + 1] = reset
end

if granted_any then
  local keep = math.ceil(expires / 1000) + LEASE_KEEP_MS
  for k = 3, 5 do
    redis.call('PEXPIREAT', KEYS[k], keep, 'GT')
    if redis.call('PTTL', KEYS[k]) < 0 then redis.call('PEXPIREAT', KEYS[k], keep) end
  end
end
return out
