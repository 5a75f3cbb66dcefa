-- A survivor takes a dead process's leftovers (events: reaping). One slot: the process's.
-- KEYS[1] its alive key, KEYS[2] its connections hash {id = user}, KEYS[3] its channels
-- set, KEYS[4] the reaping lock
-- ARGV[1] the claiming process, ARGV[2] lock milliseconds
-- Returns nil while the process lives or another survivor holds the lock, else
-- {{id, user, ...}, {channel, ...}}.
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
if not redis.call('SET', KEYS[4], ARGV[1], 'NX', 'PX', ARGV[2]) then return false end
return {redis.call('HGETALL', KEYS[2]), redis.call('SMEMBERS', KEYS[3])}
