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
-- An element this layout did not write is moved as it is, never an error
-- that would stop every lease of the queue.
local function bump(e)
  local a = string.find(e, ':', 1, true)
  local b = a and string.find(e, ':', a + 1, true)
  local n = b and tonumber(string.sub(e, a + 1, b - 1))
  if not n then return e end
  return string.sub(e, 1, a) .. (n + 1) .. string.sub(e, b)
end
