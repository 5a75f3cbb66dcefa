-- Which of the connections a node runs it no longer holds: the record is gone (wiped, e.g.
-- by CLEAR_ALL_ON_START on another node) or names another owner (taken over).
-- KEYS the records of the node's running connections; ARGV[1] the node's id.
-- Returns the 1-based positions (in KEYS) of those no longer held.
local lost = {}
for i, key in ipairs(KEYS) do
  local cur = redis.call('GET', key)
  local held = false
  if cur then
    local ok, obj = pcall(cjson.decode, cur)
    held = ok and obj.owner == ARGV[1]
  end
  if not held then
    lost[#lost + 1] = i
  end
end
return lost
