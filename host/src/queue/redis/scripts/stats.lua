-- Stats: ARGV = now, most expired batches to count. Returns {pending,
-- delayed, leased, dead}. Expired batches (up to the limit, so the call
-- stays short) count as pending; any beyond it still count as leased.
local now, lim = ARGV[1], tonumber(ARGV[2])
local due = redis.call('ZCOUNT', K.delayed, '-inf', now)
local expired = 0
for _, b in ipairs(redis.call('ZRANGEBYSCORE', K.leased, '-inf', now, 'LIMIT', 0, lim)) do
  expired = expired + count(b)
end
return {
  redis.call('LLEN', K.ready) + due + expired,
  redis.call('ZCARD', K.delayed) - due,
  tonumber(redis.call('GET', K.held) or 0) - expired,
  redis.call('ZCARD', K.deadz),
}
