-- Where a channel's stream stands and, when asked, what it holds after an offset.
-- Creates the epoch when the stream is new, so that a subscriber of an empty channel and
-- the first publisher agree on it.
--
-- KEYS[1] meta hash   KEYS[2] history stream
-- ARGV[1] since offset (-1 = position only)   ARGV[2] since epoch
-- Returns { epoch, offset, [entry_offset, data, published_at_us, exclude, event]... }
-- stream_epoch: timeline.lua, prepended to this script (rotates the epoch when Redis's
-- timeline changed).
local epoch = stream_epoch()
local offset = tonumber(redis.call('HGET', KEYS[1], 'o') or '0')
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
