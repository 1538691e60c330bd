-- Stats: ARGV = now. Returns {pending, delayed, leased, dead}.
local pre = KEYS[1]
local now = ARGV[1]
local due = redis.call('ZCOUNT', pre .. 'delayed', '-inf', now)
local expired = 0
for _, b in ipairs(redis.call('ZRANGEBYSCORE', pre .. 'leased', '-inf', now)) do
  expired = expired + redis.call('LLEN', pre .. 'l:' .. b)
end
return {
  redis.call('LLEN', pre .. 'ready') + due + expired,
  redis.call('ZCARD', pre .. 'delayed') - due,
  tonumber(redis.call('GET', pre .. 'held') or 0) - expired,
  redis.call('LLEN', pre .. 'dead'),
}
