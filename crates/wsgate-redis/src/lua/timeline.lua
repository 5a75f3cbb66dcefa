-- Shared head of the scripts that read or write a channel's stream (publish.lua,
-- recover.lua): the stream's epoch, created when the stream is new and rotated when Redis's
-- timeline changed since the epoch was recorded.
--
-- The meta hash (KEYS[1]) records the run id of the Redis process that wrote it (`r`). A
-- different run id means this data went through a restart (an AOF that may miss its last
-- second, a snapshot restore) or a fail-over (a replica that may be behind): offsets may
-- have gone back, so the same epoch could name two different publications. The stream is
-- started again under a new epoch instead; subscribers are told (`epoch_changed`, or
-- `gap: epoch_changed` on recovery) rather than silently given lower offsets.
-- KEYS[1] meta hash {e = epoch, o = offset, r = run id}   KEYS[2] history stream
local function stream_epoch()
  local run = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
  local meta = redis.call('HMGET', KEYS[1], 'e', 'r')
  local epoch, recorded = meta[1], meta[2]
  if epoch and recorded == run then
    return epoch
  end
  if epoch and not recorded then
    -- Written by a version that did not record run ids: adopt this timeline.
    redis.call('HSET', KEYS[1], 'r', run)
    return epoch
  end
  -- A new stream (first use, history lost, or another timeline): a new epoch, from the
  -- server's clock, and offsets from 1 again.
  local t = redis.call('TIME')
  epoch = string.format('%x%05x', tonumber(t[1]), tonumber(t[2]))
  redis.call('HSET', KEYS[1], 'e', epoch, 'o', 0, 'r', run)
  -- Whatever history is left belongs to the lost epoch: its ids would collide with ours.
  redis.call('DEL', KEYS[2])
  return epoch
end
