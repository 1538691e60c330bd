-- Lua helpers: `chunked` runs `cmd key` with `list` appended and `mget`
-- reads `list` with `cmd key`, both in chunks that stay under Lua's stack
-- limit for `unpack`, so one call serves a whole batch. `idof` is the id
-- of an element; `bump` counts one more delivery in it.
local function chunked(cmd, key, list)
  for i = 1, #list, 1000 do
    redis.call(cmd, key, unpack(list, i, math.min(i + 999, #list)))
  end
end
local function mget(cmd, key, list)
  if #list <= 1000 then return redis.call(cmd, key, unpack(list)) end
  local out = {}
  for i = 1, #list, 1000 do
    local part = redis.call(cmd, key, unpack(list, i, math.min(i + 999, #list)))
    for _, v in ipairs(part) do out[#out + 1] = v end
  end
  return out
end
local function idof(e)
  local p = string.find(e, ':', 1, true)
  return p and string.sub(e, 1, p - 1) or e
end
-- A batch leased by a registered host is named `<n>.<nonce>@<host>` and
-- listed in `holders` as `<host>\0<batch>` until it is gone; `hold` lists
-- it, `unhold` takes it off.
local function holding(batch)
  local at = string.find(batch, '@', 1, true)
  return at and (string.sub(batch, at + 1) .. '\0' .. batch)
end
local function hold(batch)
  local m = holding(batch)
  if m then redis.call('ZADD', K.holders, 0, m) end
end
local function unhold(batch)
  local m = holding(batch)
  if m then redis.call('ZREM', K.holders, m) end
end
-- A batch's elements are one MessagePack array in `batches` and their
-- count is in `sizes` (so a whole ack need not read the array). `put`
-- writes both, `drop` deletes both, `elements` reads the array ({} when
-- the batch has none) and `count` the count.
local function put(batch, els)
  redis.call('HSET', K.batches, batch, cmsgpack.pack(els))
  redis.call('HSET', K.sizes, batch, #els)
end
local function drop(batch)
  redis.call('HDEL', K.batches, batch)
  redis.call('HDEL', K.sizes, batch)
end
local function elements(batch)
  local rec = redis.call('HGET', K.batches, batch)
  if not rec then return {} end
  return cmsgpack.unpack(rec)
end
local function count(batch)
  return tonumber(redis.call('HGET', K.sizes, batch) or 0)
end
-- An element this layout did not write is moved as it is, never an error
-- that would stop every lease of the queue.
local function bump(e)
  local a = string.find(e, ':', 1, true)
  local b = a and string.find(e, ':', a + 1, true)
  local n = b and tonumber(string.sub(e, a + 1, b - 1))
  if not n then return e end
  return string.sub(e, 1, a) .. (n + 1) .. string.sub(e, b)
end
-- The work budget of one call: it moves at most `left_n` elements and
-- about `left_b` bytes, so no call blocks Redis long or grows the Lua heap
-- without bound; what does not fit is left for the next call. The first
-- element always fits, so an element larger than the budget still moves.
local left_n, left_b, took, biggest = 0, 0, 0, 0
local function budget(n, b)
  left_n, left_b, took, biggest = n, b, 0, 0
end
-- Charges `e` if it fits.
local function fits(e)
  if left_n <= 0 or (took > 0 and #e > left_b) then return false end
  left_n, left_b, took = left_n - 1, left_b - #e, took + 1
  if #e > biggest then biggest = #e end
  return true
end
-- How many elements to read next: none once the budget is spent, one
-- until an element's size is known, then what the bytes left allow for
-- elements as big as the biggest seen (at most 1000 per read).
local function span()
  if left_n <= 0 or (took > 0 and left_b <= 0) then return 0 end
  if biggest == 0 then return 1 end
  return math.max(1, math.min(left_n, 1000, math.floor(left_b / biggest)))
end
-- Takes from the head of list `key` what fits the budget: returns the
-- elements and whether the list was read to its end.
local function take(key)
  local out, stop = {}, false
  while not stop do
    local n = span()
    if n == 0 then return out, false end
    local part = redis.call('LRANGE', key, #out, #out + n - 1)
    stop = #part < n
    for _, e in ipairs(part) do
      if not fits(e) then return out, false end
      out[#out + 1] = e
    end
  end
  return out, true
end
-- Takes from batch `batch` what fits the budget, oldest first: returns
-- the elements and whether they were all it held (then its record is
-- gone; else the rest stays in it).
local function take_batch(batch)
  local els = elements(batch)
  local out = {}
  for _, e in ipairs(els) do
    if not fits(e) then break end
    out[#out + 1] = e
  end
  if #out == #els then
    drop(batch)
    return out, true
  end
  if #out == 0 then return out, false end
  local rest = {}
  for i = #out + 1, #els do rest[#rest + 1] = els[i] end
  put(batch, rest)
  return out, false
end
