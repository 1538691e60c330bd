-- Dead letters: ARGV = op (retry|purge), now, mode (all|ids), then for
-- `all` the cursor id and the most to read, for `ids` the ids. Retry moves
-- a dead letter to the tail of `ready` with its delivery count reset and
-- its unique key taken again (one a live task holds stays dead); purge
-- deletes it. Returns {done, last id read, read}; for `all` the caller
-- calls again from the last id while a full page was read.
local op, now, mode = ARGV[1], ARGV[2], ARGV[3]
local dz = K.deadz
local picked = {}
local last, read = 0, 0
if mode == 'all' then
  local b = redis.call('ZRANGEBYSCORE', dz, '(' .. ARGV[4], '+inf', 'LIMIT', 0, tonumber(ARGV[5]), 'WITHSCORES')
  for i = 1, #b, 2 do
    picked[#picked + 1] = b[i]
    last = b[i + 1]
  end
  read = #picked
else
  for i = 4, #ARGV do
    for _, d in ipairs(redis.call('ZRANGEBYSCORE', dz, ARGV[i], ARGV[i])) do picked[#picked + 1] = d end
  end
end
local done = 0
local back = {}
for _, d in ipairs(picked) do
  if op == 'purge' then
    done = done + redis.call('ZREM', dz, d)
  else
    local e = undead(d)
    local key = e and keyof(e)
    if e and not (key and redis.call('HEXISTS', K.unique, key) == 1) then
      if key then redis.call('HSET', K.unique, key, idof(e)) end
      redis.call('ZREM', dz, d)
      back[#back + 1] = fresh(e)
      done = done + 1
    end
  end
end
if #back > 0 then
  chunked('RPUSH', K.ready, back)
  redis.call('PUBLISH', WAKE, '')
end
return {done, tostring(last), read}
