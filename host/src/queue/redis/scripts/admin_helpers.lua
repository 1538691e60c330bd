-- Helpers of the operator scripts (admin_*.lua), prepended after
-- helpers.lua. `field(e, n)` is the position of the n-th ':' of an
-- element; `keyof` its unique key (or nil); `undead` the element inside a
-- dead letter; `fresh` the element with its delivery count reset to 0.
local function colon(e, n)
  local p = 0
  for _ = 1, n do
    p = string.find(e, ':', p + 1, true)
    if not p then return nil end
  end
  return p
end
local function keyof(e)
  local a, b = colon(e, 3), colon(e, 4)
  if not b then return nil end
  local n = string.sub(e, a + 1, b - 1)
  if n == '-' then return nil end
  return string.sub(e, b + 1, b + tonumber(n))
end
local function undead(d)
  local b = colon(d, 2)
  local n = b and tonumber(string.sub(d, colon(d, 1) + 1, b - 1))
  if not n then return nil end
  return string.sub(d, b + 1 + n)
end
local function fresh(e)
  local a, b = colon(e, 1), colon(e, 2)
  if not b then return e end
  return string.sub(e, 1, a) .. '0' .. string.sub(e, b)
end
-- Finds the element with id `id` in list `key`, reading 1000 at a time.
local function in_list(key, id)
  local at = 0
  while true do
    local part = redis.call('LRANGE', key, at, at + 999)
    for _, e in ipairs(part) do
      if idof(e) == id then return e end
    end
    if #part < 1000 then return nil end
    at = at + 1000
  end
end
-- Finds the element with id `id` in sorted set `key`; returns it and its score.
local function in_zset(key, id)
  local at = 0
  while true do
    local part = redis.call('ZRANGE', key, at, at + 999, 'WITHSCORES')
    for i = 1, #part, 2 do
      if idof(part[i]) == id then return part[i], tonumber(part[i + 1]) end
    end
    if #part < 2000 then return nil end
    at = at + 1000
  end
end
-- Finds the element with id `id` in a lease batch; returns it, its batch,
-- the batch's elements and the lease expiry.
local function in_leases(id)
  local batches = redis.call('ZRANGE', K.leased, 0, -1, 'WITHSCORES')
  for i = 1, #batches, 2 do
    local els = elements(batches[i])
    for _, e in ipairs(els) do
      if idof(e) == id then return e, batches[i], els, tonumber(batches[i + 1]) end
    end
  end
  return nil
end
