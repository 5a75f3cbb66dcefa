-- Appends one publication to a channel's stream and (optionally) announces it to the nodes.
-- One round trip orders everything: the offset increment, the history append and the
-- PUBLISH happen atomically, so nodes see publications of a channel in offset order.
--
-- KEYS[1] meta hash {e = epoch, o = offset, r = run id}
-- KEYS[2] history stream (entry ids are "<offset>-0")
-- KEYS[3] (optional) the channel's own pub/sub channel (same hash tag, so same slot)
-- ARGV[1] channel name   ARGV[2] data   ARGV[3] excluded user ("" = none)
-- ARGV[4] history size (0 = keep no history)   ARGV[5] Socket.IO event ("" = none)
-- ARGV[6] milliseconds the channel's keys live after this publication (0 = forever)
-- ARGV[7] pub/sub channel of the nodes ("" = do not publish: the NATS broker does that).
--         An argument, not a key: a classic pub/sub channel belongs to no slot, and in a
--         Redis Cluster every key of a script must hash to the slot of KEYS[1].
-- ARGV[8] with KEYS[3]: 'SPUBLISH' (a shard channel, Redis Cluster) or 'PUBLISH'
-- Returns { offset, epoch, published_at_us, receivers }
local t = redis.call('TIME')
-- Built as text: Lua numbers would print 16 digits in exponent notation.
local now_us = t[1] .. string.format('%06d', tonumber(t[2]))
-- stream_epoch: timeline.lua, prepended to this script.
local epoch = stream_epoch()
local offset = redis.call('HINCRBY', KEYS[1], 'o', 1)
local size = tonumber(ARGV[4])
if size > 0 then
  local entry = { 'd', ARGV[2], 't', now_us }
  if ARGV[3] ~= '' then
    entry[#entry + 1] = 'x'
    entry[#entry + 1] = ARGV[3]
  end
  if ARGV[5] ~= '' then
    entry[#entry + 1] = 'e'
    entry[#entry + 1] = ARGV[5]
  end
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', size, offset .. '-0', unpack(entry))
end
local ttl = tonumber(ARGV[6])
if ttl > 0 then
  -- An idle channel is forgotten: its keys expire (a later stream gets a new epoch).
  redis.call('PEXPIRE', KEYS[1], ttl)
  if size > 0 then
    redis.call('PEXPIRE', KEYS[2], ttl)
  end
end
local receivers = 0
if KEYS[3] or ARGV[7] ~= '' then
  -- Wire format (see wire.rs): "c <offset> <epoch> <us> <len(channel)> <len(exclude)> <len(event)>\n"
  -- followed by channel, excluded user, event and data.
  local msg = 'c ' .. offset .. ' ' .. epoch .. ' ' .. now_us .. ' ' .. #ARGV[1] .. ' ' .. #ARGV[3]
    .. ' ' .. #ARGV[5] .. '\n' .. ARGV[1] .. ARGV[3] .. ARGV[5] .. ARGV[2]
  if KEYS[3] then
    receivers = redis.call(ARGV[8], KEYS[3], msg)
  else
    receivers = redis.call('PUBLISH', ARGV[7], msg)
  end
end
return { offset, epoch, now_us, receivers }
