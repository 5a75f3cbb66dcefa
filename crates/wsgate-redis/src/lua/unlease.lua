-- Deletes a node's lease only if this process holds it (a hand-over must never end
-- another process's lease).
-- KEYS[1] the node's alive (lease) key; ARGV[1] this process's lease token
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
