-- Appends one publication to a channel's stream and (optionally) announces it to the nodes.
-- One round trip orders everything: the offset increment, the history append and the
-- PUBLISH happen atomically, so nodes see publications of a channel in offset order.
--
-- KEYS[1] meta hash {e = epoch, o = offset, r = run id}
-- KEYS[2] history stream (entry ids are "<offset>-0")
-- Then, only when used (a Redis Cluster refuses a key of another slot, even an empty one):
--   the channel's own pub/sub channel (ARGV[8] = 'PUBLISH' or 'SPUBLISH'; same hash tag)
--   the idempotency key's record, a hash {f = fingerprint, o, e, t} (ARGV[10] not ''): a
--   repeat within its TTL publishes nothing and answers the first publication
-- ARGV[1] channel name   ARGV[2] data   ARGV[3] excluded user ("" = none)
-- ARGV[4] history size (0 = keep no history)   ARGV[5] Socket.IO event ("" = none)
-- ARGV[6] milliseconds the channel's keys live after this publication (0 = forever)
-- ARGV[7] excluded connection ("" = none; delivery only, not kept in history)
-- ARGV[8] how to announce: '' (not: the NATS broker does that), 'ALL' (PUBLISH on ARGV[9],
--         which every node subscribes to), 'PUBLISH' or 'SPUBLISH' (on the channel's own
--         pub/sub channel, a key of this script)
-- ARGV[9] the all-nodes pub/sub channel (with 'ALL'). An argument, not a key: a classic
--         pub/sub channel belongs to no slot.
-- ARGV[10] request fingerprint ("" = no idempotency key)   ARGV[11] idempotency window in ms
-- Returns { offset, epoch, published_at_us, receivers, repeat }: repeat 0 = published,
-- 1 = a repeat (the first publication's position), 2 = the key was used for another request
local next_key = 3
local channel_pubsub, once
if ARGV[8] == 'PUBLISH' or ARGV[8] == 'SPUBLISH' then
  channel_pubsub = KEYS[next_key]
  next_key = next_key + 1
end
if ARGV[10] ~= '' then
  once = KEYS[next_key]
end
if once then
  local seen = redis.call('HMGET', once, 'f', 'o', 'e', 't')
  if seen[1] then
    if seen[1] ~= ARGV[10] then
      return { 0, '', '0', 0, 2 }
    end
    return { tonumber(seen[2]), seen[3], seen[4], 0, 1 }
  end
end
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
if ARGV[8] ~= '' then
  -- Wire format (see wire.rs): "c <offset> <epoch> <us> <len(channel)> <len(exclude)> <len(event)>
  -- <len(exclude connection)>\n" followed by channel, excluded user, event, excluded connection
  -- and data.
  local msg = 'c ' .. offset .. ' ' .. epoch .. ' ' .. now_us .. ' ' .. #ARGV[1] .. ' ' .. #ARGV[3]
    .. ' ' .. #ARGV[5] .. ' ' .. #ARGV[7] .. '\n' .. ARGV[1] .. ARGV[3] .. ARGV[5] .. ARGV[7]
    .. ARGV[2]
  if channel_pubsub then
    receivers = redis.call(ARGV[8], channel_pubsub, msg)
  else
    receivers = redis.call('PUBLISH', ARGV[9], msg)
  end
end
if once then
  redis.call('HSET', once, 'f', ARGV[10], 'o', offset, 'e', epoch, 't', now_us)
  redis.call('PEXPIRE', once, ARGV[11])
end
return { offset, epoch, now_us, receivers, 0 }
