-- Compare-and-set of an upstream record's owner.
-- KEYS[1] the record, KEYS[2] the expected owner's lease (alive) key, KEYS[3] its take
-- count
-- ARGV[1] expected owner, ARGV[2] new owner, ARGV[3] "1": only while the expected owner
-- has no lease and its take count is still ARGV[6] ("" = none), ARGV[4] / ARGV[5] the
-- expected / new owner as JSON strings (as the record's serializer writes them).
-- Returns the updated record, or false when the record is gone, names another owner, the
-- expected owner is alive, or took its lease again since the claimer's first look. Redis
-- runs scripts one at a time: of several survivors claiming the same record at once,
-- exactly one sees the old owner.
if ARGV[3] == '1' then
  if redis.call('EXISTS', KEYS[2]) == 1 then
    return false
  end
  if (redis.call('GET', KEYS[3]) or '') ~= ARGV[6] then
    return false
  end
end
local rec = redis.call('GET', KEYS[1])
if not rec then
  return false
end
local ok, obj = pcall(cjson.decode, rec)
if not ok or obj.owner ~= ARGV[1] then
  return false
end
-- `id` precedes `owner` and cannot contain an unescaped quote, so the first occurrence
-- is the top-level field.
local from = '"owner":' .. ARGV[4]
local s, e = string.find(rec, from, 1, true)
if not s then
  return false
end
local updated = string.sub(rec, 1, s - 1) .. '"owner":' .. ARGV[5] .. string.sub(rec, e + 1)
redis.call('SET', KEYS[1], updated)
return updated
