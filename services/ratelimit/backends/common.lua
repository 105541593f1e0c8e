-- Shared by every script (backends/redis.py puts it in front of each): lapsing
-- holds, reclaiming expired leases and charging used units; the same arithmetic
-- as backends/memory.py (_ScopeState). All keys share the scope's hash tag.
--
-- KEYS[1] holds hash (rid -> json items), KEYS[2] holds zset (rid by expiry,
-- caller's clock), KEYS[3] lease hash (counter|holder -> "kind\tinterval\t
-- granted\tcounter\tkey"), KEYS[4] lease zset (counter|holder by expiry, on
-- Redis' own clock), KEYS[5] lent hash (counter -> L, the sum of the counter's
-- grants; #counter -> how many holders have one).
-- Times are microseconds. Lua numbers are doubles: exact below 2^53, and
-- redis.call writes them with 17 digits, so they go through as integers.

local LEASE_ENTRY = '^(%d+)\t(%d+)\t(%d+)\t([^\t]*)\t(.*)$'
-- Lease keys outlive their last grant by a day: an expired grant is charged by
-- the next operation on the scope, and after a day idle its charge has drained
-- (rate buckets) or the ledger floor holds the spend (budgets).
local LEASE_KEEP_MS = 86400000

local function redis_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- Reservations past their hold give their held spend back.
local function lapse_holds(now)
  local lapsed = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
  for _, old in ipairs(lapsed) do
    local raw = redis.call('HGET', KEYS[1], old)
    if raw then
      for _, item in ipairs(cjson.decode(raw)) do
        if item[2] == 3 then
          redis.call('HINCRBY', item[1], 'h', -item[4])
        end
      end
      redis.call('HDEL', KEYS[1], old)
    end
    redis.call('ZREM', KEYS[2], old)
  end
end

-- Move a rate counter by delta units at time at (rate_adjust in memory.py): a
-- refund never fills past full, extra use is owed even beyond capacity.
local function rate_adjust(key, at, delta, interval)
  local tat = tonumber(redis.call('GET', key) or at)
  if delta < 0 then
    tat = math.max(tat + delta * interval, at)
  else
    tat = math.max(tat, at) + delta * interval
  end
  if tat > at then
    redis.call('SET', key, tat, 'PXAT', math.ceil(tat / 1000) + 1)
  else
    redis.call('DEL', key)
  end
end

-- Count units a holder used (negative: refunded) as spent at time at.
local function charge(kind, key, interval, used, at, floor)
  if used == 0 then return end
  if kind == 3 then
    local spent = tonumber(redis.call('HGET', key, 's') or '0')
    redis.call('HSET', key, 's', math.max(math.max(spent, floor) + used, floor))
  else
    rate_adjust(key, at, used, interval)
  end
end

-- Remove one holder's lease on one counter; returns it, or nil when there is none.
local function end_lease(member)
  local raw = redis.call('HGET', KEYS[3], member)
  if not raw then return nil end
  redis.call('HDEL', KEYS[3], member)
  redis.call('ZREM', KEYS[4], member)
  local kind, interval, granted, counter, key = string.match(raw, LEASE_ENTRY)
  local lease = {
    kind = tonumber(kind), interval = tonumber(interval), granted = tonumber(granted), counter = counter, key = key,
  }
  if redis.call('HINCRBY', KEYS[5], '#' .. counter, -1) <= 0 then
    redis.call('HDEL', KEYS[5], '#' .. counter, counter)
  else
    redis.call('HINCRBY', KEYS[5], counter, -lease.granted)
  end
  return lease
end

-- Expired leases that were never reported count as fully used, charged at the
-- last moment they could have been used: their expiry, translated from Redis'
-- clock onto the caller's (now is the caller's, rnow Redis').
local function reclaim(now, rnow)
  local expired = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', rnow, 'WITHSCORES')
  for i = 1, #expired, 2 do
    local lease = end_lease(expired[i])
    if lease then
      charge(lease.kind, lease.key, lease.interval, lease.granted, now - (rnow - tonumber(expired[i + 1])), 0)
    end
  end
end

-- What every operation on a scope does first; returns whether it has leases left.
local function settle_scope(now)
  lapse_holds(now)
  if redis.call('EXISTS', KEYS[4]) == 0 then return false end
  reclaim(now, redis_now())
  return redis.call('EXISTS', KEYS[5]) == 1
end

local function lent(counter)
  return tonumber(redis.call('HGET', KEYS[5], counter) or '0')
end

-- Script body follows.
