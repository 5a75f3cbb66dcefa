-- Removes a dead process's members from one channel (events: reaping). One slot: the
-- channel's. Idempotent: a second run finds nothing, so each transition is reported once.
-- KEYS[1] members hash, KEYS[2] users hash (see occ_join.lua)
-- ARGV[1] the dead process
-- Returns {channel now empty (0/1), {user, connection id, ...} of users whose count hit 0}.
local all = redis.call('HGETALL', KEYS[1])
local prefix = ARGV[1] .. '\n'
local left = {}
local removed = 0
for i = 1, #all, 2 do
  local v = all[i + 1]
  if string.sub(v, 1, #prefix) == prefix then
    redis.call('HDEL', KEYS[1], all[i])
    removed = removed + 1
    local user = string.sub(v, #prefix + 1)
    if redis.call('HINCRBY', KEYS[2], user, -1) <= 0 then
      redis.call('HDEL', KEYS[2], user)
      left[#left + 1] = user
      left[#left + 1] = all[i]
    end
  end
end
local vacated = 0
if removed > 0 and redis.call('HLEN', KEYS[1]) == 0 then vacated = 1 end
return {vacated, left}
