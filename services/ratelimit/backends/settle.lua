-- Settle or release one reservation in one scope; the same arithmetic as
-- backends/memory.py (MemoryBackend._finish). Runs after common.lua (KEYS[1..5]
-- are described there).
-- ARGV: now_us, rid, mode ('settle' or 'release'), used_tokens, used_nano.
-- Returns 1 when the reservation was found, 0 when it had lapsed or was settled.
local now = tonumber(ARGV[1])
local rid = ARGV[2]
local release = ARGV[3] == 'release'
local used_tokens = tonumber(ARGV[4])
local used_nano = tonumber(ARGV[5])

-- Expired leases are charged before this refund, in the order things happened.
if redis.call('EXISTS', KEYS[4]) == 1 then reclaim(now, redis_now()) end

local raw = redis.call('HGET', KEYS[1], rid)
if not raw then return 0 end
redis.call('HDEL', KEYS[1], rid)
redis.call('ZREM', KEYS[2], rid)

for _, item in ipairs(cjson.decode(raw)) do
  local key, kind, interval, amount = item[1], item[2], item[3], item[4]
  if kind == 3 then
    redis.call('HINCRBY', key, 'h', -amount)
    if not release then redis.call('HINCRBY', key, 's', used_nano) end
  elseif release or kind == 2 then
    -- A request that ran counts whatever it used; tokens move to what was used.
    rate_adjust(key, now, (release and 0 or used_tokens) - amount, interval)
  end
end
return 1
