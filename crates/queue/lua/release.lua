-- release.lua: hand a leased, unfinished job back to the front of the queue.
-- The interrupted run is not counted as an attempt.
-- KEYS[1]  the worker's in-flight list
-- KEYS[2]  pending list (its right end is leased next)
-- KEYS[3]  the job's record hash
-- ARGV[1]  the entry as held in the in-flight list
-- Returns 1 when handed back, 0 when the worker no longer held it.
local held = redis.call('LREM', KEYS[1], 1, ARGV[1])
if held == 0 then return 0 end
redis.call('RPUSH', KEYS[2], ARGV[1])
if redis.call('HGET', KEYS[3], 'status') == 'running' then
  redis.call('HSET', KEYS[3], 'status', 'queued')
  redis.call('HINCRBY', KEYS[3], 'attempts', -1)
end
return 1
