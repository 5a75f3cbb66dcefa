-- Writes an upstream record unless it now names another owner (fencing: a node that was
-- declared dead and replaced cannot take the record back with a late state write).
-- KEYS[1] the record, KEYS[2] the index; ARGV[1] record JSON, ARGV[2] its owner, ARGV[3] id,
-- ARGV[4] '1' for an update: a missing record (wiped) is not re-created (returns -1).
local cur = redis.call('GET', KEYS[1])
if not cur and ARGV[4] == '1' then
  return -1
end
if cur then
  local ok, obj = pcall(cjson.decode, cur)
  if ok and obj.owner ~= ARGV[2] then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[3])
return 1
