-- A connection leaves a channel (events: occupancy). One slot: the channel's.
-- KEYS[1] members hash, KEYS[2] users hash (see occ_join.lua)
-- ARGV[1] connection id
-- Returns nil when it was not a member, else {user, user 1 -> 0, channel 1 -> 0}.
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then return false end
redis.call('HDEL', KEYS[1], ARGV[1])
local user = string.sub(v, (string.find(v, '\n', 1, true) or 0) + 1)
local left = 0
if redis.call('HINCRBY', KEYS[2], user, -1) <= 0 then
  redis.call('HDEL', KEYS[2], user)
  left = 1
end
local vacated = 0
if redis.call('HLEN', KEYS[1]) == 0 then vacated = 1 end
return {user, left, vacated}
