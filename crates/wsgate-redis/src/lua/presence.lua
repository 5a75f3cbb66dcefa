-- A channel's presence, without the entries of dead nodes (which it removes on the way).
-- A node is alive while its key "<alive prefix><node>" exists: the node refreshes it with
-- a TTL, so a SIGKILLed node's entries vanish at most one TTL after its last refresh.
--
-- KEYS[1] presence hash {connection id = "<node>\n<user>"}
-- ARGV[1] alive key prefix
-- Returns { connection id, "<node>\n<user>", ... } for live nodes only
local all = redis.call('HGETALL', KEYS[1])
local alive = {}
local out = {}
for i = 1, #all, 2 do
  local v = all[i + 1]
  local node = string.sub(v, 1, (string.find(v, '\n', 1, true) or (#v + 1)) - 1)
  local live = alive[node]
  if live == nil then
    live = redis.call('EXISTS', ARGV[1] .. node) == 1
    alive[node] = live
  end
  if live then
    out[#out + 1] = all[i]
    out[#out + 1] = v
  else
    redis.call('HDEL', KEYS[1], all[i])
  end
end
return out
