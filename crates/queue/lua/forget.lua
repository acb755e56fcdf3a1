-- forget.lua: delete the records of jobs that ended more than the retention ago (each
-- job's end is noted in the `ended` sorted set); the oldest first, a bounded number a call.
-- ARGV[1]  key prefix P
-- ARGV[2]  job record key prefix
-- ARGV[3]  retention of finished records, in ms
-- ARGV[4]  the most records to delete in one call
-- Returns the number deleted.
local P, records = ARGV[1], ARGV[2]
local old = redis.call('ZRANGEBYSCORE', P .. 'ended', '-inf', now_ms() - tonumber(ARGV[3]),
  'LIMIT', 0, tonumber(ARGV[4]))
if #old == 0 then return 0 end
local keys = {}
for i, id in ipairs(old) do keys[i] = records .. id end
redis.call('DEL', unpack(keys))
redis.call('ZREM', P .. 'ended', unpack(old))
return #old
