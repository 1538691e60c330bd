-- Peek: ARGV = now, state (pending|delayed|leased|dead), after id, limit.
-- Returns {at, bumped, element, ...}: `at` the visible-at or lease expiry
-- ('' when unknown), `bumped` 1 when the element's current delivery is not
-- yet counted in it (held or expired leases), and the element (a dead
-- letter for state dead). Ascending by id, ids above `after`, at most
-- `limit`. Dead letters are a range read of their id-scored set; the
-- other states are collected and sorted (cost grows with that state's size).
local now, state, after, limit = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
if state == 'dead' then
  local out = {}
  for _, d in ipairs(redis.call('ZRANGEBYSCORE', K.deadz, '(' .. ARGV[3], '+inf', 'LIMIT', 0, limit)) do
    out[#out + 1] = ''
    out[#out + 1] = 0
    out[#out + 1] = d
  end
  return out
end
local found = {}
local function add(e, at, bumped)
  local id = tonumber(idof(e))
  if id and id > after then found[#found + 1] = {id, at, bumped, e} end
end
local function batches(min, max)
  local b = redis.call('ZRANGEBYSCORE', K.leased, min, max, 'WITHSCORES')
  for i = 1, #b, 2 do
    for _, e in ipairs(elements(b[i])) do add(e, b[i + 1], 1) end
  end
end
if state == 'pending' then
  for _, e in ipairs(redis.call('LRANGE', K.ready, 0, -1)) do add(e, '', 0) end
  local d = redis.call('ZRANGEBYSCORE', K.delayed, '-inf', ARGV[1], 'WITHSCORES')
  for i = 1, #d, 2 do add(d[i], d[i + 1], 0) end
  batches('-inf', ARGV[1])
elseif state == 'delayed' then
  local d = redis.call('ZRANGEBYSCORE', K.delayed, '(' .. ARGV[1], '+inf', 'WITHSCORES')
  for i = 1, #d, 2 do add(d[i], d[i + 1], 0) end
elseif state == 'leased' then
  batches('(' .. ARGV[1], '+inf')
end
table.sort(found, function(x, y) return x[1] < y[1] end)
local out = {}
for i = 1, math.min(limit, #found) do
  out[#out + 1] = found[i][2]
  out[#out + 1] = found[i][3]
  out[#out + 1] = found[i][4]
end
return out
