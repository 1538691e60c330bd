-- Push: ARGV = capacity (0 = none), now, shape, then per task the fields
-- its shape needs (each argument costs Redis a parse and Lua a string, so
-- the common batches send fewer):
-- - `p` (no key, no delay): the element without its `id:0:` head;
-- - `k` (all keyed, no delay): key, element without head;
-- - `g` (anything else): has_key (`1`/`0`), key, element without head, delay_ms.
--
-- Returns {0} when the batch does not fit, else {1, first_id, i1, id1, i2,
-- id2, ...}: created tasks get consecutive ids from first_id in batch
-- order, and task i (0-based) of each pair is a duplicate of the existing
-- task id.
local cap, now, shape = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local stride = (shape == 'p' and 1) or (shape == 'k' and 2) or 4
local known = {}
if shape ~= 'p' then
  local keys = {}
  if shape == 'k' then
    for b = 4, #ARGV, 2 do keys[#keys + 1] = ARGV[b] end
  else
    for b = 4, #ARGV, 4 do
      if ARGV[b] == '1' then keys[#keys + 1] = ARGV[b + 1] end
    end
  end
  if #keys > 0 then
    local ids = mget('HMGET', K.unique, keys)
    for j, k in ipairs(keys) do
      if ids[j] then known[k] = ids[j] end
    end
  end
end
local id = tonumber(redis.call('GET', K.seq) or 0)
local first = id + 1
local out, uniq, ready, delayed = {1, first}, {}, {}, {}
if shape == 'p' then
  for b = 4, #ARGV do
    id = id + 1
    ready[#ready + 1] = id .. ':0:' .. ARGV[b]
  end
else
  for b = 4, #ARGV, stride do
    local keyed, k, rest, delay
    if shape == 'k' then
      keyed, k, rest, delay = true, ARGV[b], ARGV[b + 1], 0
    else
      keyed, k, rest, delay = ARGV[b] == '1', ARGV[b + 1], ARGV[b + 2], tonumber(ARGV[b + 3])
    end
    local dup = keyed and known[k]
    if dup then
      out[#out + 1] = (b - 4) / stride
      out[#out + 1] = dup
    else
      id = id + 1
      if keyed then
        known[k] = id
        uniq[#uniq + 1] = k
        uniq[#uniq + 1] = id
      end
      local e = id .. ':0:' .. rest
      if delay > 0 then
        delayed[#delayed + 1] = now + delay
        delayed[#delayed + 1] = e
      else
        ready[#ready + 1] = e
      end
    end
  end
end
local fresh = id - first + 1
if fresh == 0 then return out end
if cap > 0 then
  local count = redis.call('LLEN', K.ready) + redis.call('ZCARD', K.delayed)
    + tonumber(redis.call('GET', K.held) or 0)
  if count + fresh > cap then return {0} end
end
redis.call('SET', K.seq, id)
chunked('HSET', K.unique, uniq)
chunked('ZADD', K.delayed, delayed)
chunked('RPUSH', K.ready, ready)
-- Idle hosts wait on this channel instead of polling.
if #ready > 0 then redis.call('PUBLISH', WAKE, '') end
return out
