-- Compare-and-set of an upstream record's owner.
-- KEYS[1] the record, KEYS[2] the expected owner's lease (alive) key
-- ARGV[1] expected owner, ARGV[2] new owner, ARGV[3] "1": only while the expected owner
-- has no lease, ARGV[4] / ARGV[5] the expected / new owner as JSON strings (as the
-- record's serializer writes them).
-- Returns the updated record, or false when the record is gone, names another owner, or
-- the expected owner is alive. Redis runs scripts one at a time: of several survivors
-- claiming the same record at once, exactly one sees the old owner.
if ARGV[3] == '1' and redis.call('EXISTS', KEYS[2]) == 1 then
  return false
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
