-- enqueue.lua: store a new job's record and push it onto the pending list, atomically.
-- KEYS[1]  the job's record hash
-- KEYS[2]  pending list
-- ARGV[1]  the normalized entry
-- ARGV[2]  job id
-- Returns 1, or 0 when a job with this id already exists.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'id', ARGV[2], 'status', 'queued', 'attempts', 0,
  'enqueued_at_ms', now, 'spec', ARGV[1])
redis.call('LPUSH', KEYS[2], ARGV[1])
return 1
