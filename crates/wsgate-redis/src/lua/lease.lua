-- Takes or renews one process's lease on a node id.
-- KEYS[1] the node's alive (lease) key, KEYS[2] the instance set, KEYS[3] the node's take
-- count (`lease-takes:<node>`)
-- ARGV[1] this process's lease token, ARGV[2] TTL in ms, ARGV[3] the node id
-- Returns {'renewed', 0} when the lease was this process's, {'taken', 0} when it was free
-- (new, expired, or lost with a Redis restart), {'held', <ms left>} when another process
-- holds it (nothing is changed then). Every take bumps the take count, so a claimer that
-- saw the lease missing twice knows whether it stayed missing in between.
local current = redis.call('GET', KEYS[1])
if current and current ~= ARGV[1] then
  return {'held', redis.call('PTTL', KEYS[1])}
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
if current then
  return {'renewed', 0}
end
redis.call('INCR', KEYS[3])
redis.call('PEXPIRE', KEYS[3], 86400000)
return {'taken', 0}
