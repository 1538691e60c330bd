-- Stats: ARGV = now, most expired batches to count. Returns {pending,
-- delayed, leased, dead}. Expired batches (up to the limit, so the call
-- stays short) count as pending; any beyond it still count as leased.
local pre = KEYS[1]
local now, lim = ARGV[1], tonumber(ARGV[2])
local due = redis.call('ZCOUNT', pre .. 'delayed', '-inf', now)
local expired = 0
for _, b in ipairs(redis.call('ZRANGEBYSCORE', pre .. 'leased', '-inf', now, 'LIMIT', 0, lim)) do
  expired = expired + redis.call('LLEN', pre .. 'l:' .. b)
end
return {
  redis.call('LLEN', pre .. 'ready') + due + expired,
  redis.call('ZCARD', pre .. 'delayed') - due,
  tonumber(redis.call('GET', pre .. 'held') or 0) - expired,
  redis.call('ZCARD', pre .. 'deadz'),
}
