-- Lease: ARGV = now, until, max, promote_limit. Promotes due retries and
-- reclaims expired batches first. Returns {} or {batch, {element, ...}}.
local pre = KEYS[1]
local now, untl, max, lim = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local due = redis.call('ZRANGEBYSCORE', pre .. 'delayed', '-inf', now, 'LIMIT', 0, lim)
if #due > 0 then
  if #due < lim then
    -- Everything due was read, so this removes exactly those.
    redis.call('ZREMRANGEBYSCORE', pre .. 'delayed', '-inf', now)
  else
    chunked('ZREM', pre .. 'delayed', due)
  end
  chunked('RPUSH', pre .. 'ready', due)
end
local expired = redis.call('ZRANGEBYSCORE', pre .. 'leased', '-inf', now, 'LIMIT', 0, lim)
if #expired > 0 then
  local back = {}
  for _, batch in ipairs(expired) do
    local l = pre .. 'l:' .. batch
    -- The expired delivery counts as an attempt.
    for _, e in ipairs(redis.call('LRANGE', l, 0, -1)) do back[#back + 1] = bump(e) end
    redis.call('DEL', l)
  end
  chunked('ZREM', pre .. 'leased', expired)
  if #back > 0 then
    redis.call('DECRBY', pre .. 'held', #back)
    chunked('RPUSH', pre .. 'ready', back)
  end
end
local got = redis.call('LPOP', pre .. 'ready', max)
if not got then return {} end
local batch = redis.call('INCR', pre .. 'bseq')
chunked('RPUSH', pre .. 'l:' .. batch, got)
redis.call('ZADD', pre .. 'leased', untl, batch)
redis.call('INCRBY', pre .. 'held', #got)
return {batch, got}
