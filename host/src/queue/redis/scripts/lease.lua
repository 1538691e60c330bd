-- Lease: ARGV = now, until, max, nonce, budget elements, budget bytes.
-- First moves due retries and expired batches back to `ready` (at most the
-- budget per call; a big expired batch moves in parts over several calls),
-- then hands out up to `max` elements (again at most the budget) as batch
-- `<n>.<nonce>`, where n counts batches and the nonce is the caller's
-- random number: a batch number that comes back after Redis lost writes
-- never names another holder's batch. A nonce `<random>@<host>` names
-- the registered host taking the lease: the batch joins that host's set
-- `h:<host>`, which `reclaim.lua` empties when the host is gone.
-- Returns {} or {batch, {element, ...}}.
local pre = KEYS[1]
local now, untl, max, nonce = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local cap_n, cap_b = tonumber(ARGV[5]), tonumber(ARGV[6])
budget(cap_n, cap_b)
local ready = pre .. 'ready'
-- Due retries, oldest first; each part read is removed before the next.
while true do
  local n = span()
  if n == 0 then break end
  local part = redis.call('ZRANGEBYSCORE', pre .. 'delayed', '-inf', now, 'LIMIT', 0, n)
  local due = {}
  for _, e in ipairs(part) do
    if not fits(e) then break end
    due[#due + 1] = e
  end
  if #due > 0 then
    chunked('ZREM', pre .. 'delayed', due)
    chunked('RPUSH', ready, due)
  end
  if #due < n then break end
end
-- Expired batches, earliest expiry first.
local moved = 0
while span() > 0 do
  local expired = redis.call('ZRANGEBYSCORE', pre .. 'leased', '-inf', now, 'LIMIT', 0, 100)
  if #expired == 0 then break end
  local gone = {}
  for _, batch in ipairs(expired) do
    local l = pre .. 'l:' .. batch
    local els, all = take(l)
    if #els > 0 then
      -- The expired delivery counts as an attempt.
      local back = {}
      for i, e in ipairs(els) do back[i] = bump(e) end
      chunked('RPUSH', ready, back)
      moved = moved + #els
    end
    if all then
      redis.call('DEL', l)
      unhold(pre, batch)
      gone[#gone + 1] = batch
    else
      -- Out of budget: the rest stays in the batch for the next call.
      if #els > 0 then redis.call('LTRIM', l, #els, -1) end
      break
    end
  end
  chunked('ZREM', pre .. 'leased', gone)
  if #gone < #expired then break end
end
if moved > 0 then redis.call('DECRBY', pre .. 'held', moved) end
-- The hand-out has a budget of its own, so recovery never starves it.
budget(math.min(max, cap_n), cap_b)
local got = take(ready)
if #got == 0 then return {} end
redis.call('LTRIM', ready, #got, -1)
local batch = redis.call('INCR', pre .. 'bseq') .. '.' .. nonce
chunked('RPUSH', pre .. 'l:' .. batch, got)
redis.call('ZADD', pre .. 'leased', untl, batch)
local at = string.find(nonce, '@', 1, true)
if at then redis.call('SADD', pre .. 'h:' .. string.sub(nonce, at + 1), batch) end
redis.call('INCRBY', pre .. 'held', #got)
return {batch, got}
