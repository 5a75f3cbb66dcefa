-- Where a channel's stream stands and, when asked, what it holds after an offset.
-- Creates the epoch when the stream is new, so that a subscriber of an empty channel and
-- the first publisher agree on it.
--
-- KEYS[1] meta hash   KEYS[2] history stream
-- ARGV[1] since offset (-1 = position only)   ARGV[2] since epoch
-- Returns { epoch, offset, [entry_offset, data, published_at_us, exclude, event]... }
local meta = redis.call('HMGET', KEYS[1], 'e', 'o')
local epoch = meta[1]
local offset = tonumber(meta[2] or '0')
if not epoch then
  local t = redis.call('TIME')
  epoch = string.format('%x%05x', tonumber(t[1]), tonumber(t[2]))
  redis.call('HSET', KEYS[1], 'e', epoch)
  -- Whatever history is left belongs to the lost epoch: its ids would collide with ours.
  redis.call('DEL', KEYS[2])
end
local out = { epoch, offset }
local since = tonumber(ARGV[1])
if since >= 0 and epoch == ARGV[2] and since < offset then
  local entries = redis.call('XRANGE', KEYS[2], (since + 1) .. '-0', '+')
  for _, e in ipairs(entries) do
    local id = e[1]
    local f = e[2]
    local d, ts, x, ev = '', '0', '', ''
    for i = 1, #f, 2 do
      if f[i] == 'd' then d = f[i + 1]
      elseif f[i] == 't' then ts = f[i + 1]
      elseif f[i] == 'x' then x = f[i + 1]
      elseif f[i] == 'e' then ev = f[i + 1] end
    end
    out[#out + 1] = string.sub(id, 1, string.find(id, '-', 1, true) - 1)
    out[#out + 1] = d
    out[#out + 1] = ts
    out[#out + 1] = x
    out[#out + 1] = ev
  end
end
return out
