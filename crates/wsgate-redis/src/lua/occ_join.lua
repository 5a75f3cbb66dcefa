-- A connection subscribes to a channel (events: occupancy). One slot: the channel's.
-- KEYS[1] members hash {connection id = "<process>\n<user>"}
-- KEYS[2] users hash {user = connections}
-- ARGV[1] connection id, ARGV[2] process, ARGV[3] user
-- Returns {channel 0 -> 1, user 0 -> 1} as 0/1 each; {0, 0} when already a member.
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2] .. '\n' .. ARGV[3]) == 0 then
  return {0, 0}
end
local channel = 0
if redis.call('HLEN', KEYS[1]) == 1 then channel = 1 end
local user = 0
if redis.call('HINCRBY', KEYS[2], ARGV[3], 1) == 1 then user = 1 end
return {channel, user}
