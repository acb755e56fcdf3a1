-- release.lua: hand a leased, unfinished job back to the front of its flow.
-- The interrupted run is not counted as an attempt.
-- KEYS[1]  the worker's in-flight list
-- KEYS[2]  the job's record hash
-- KEYS[3]  pending list
-- ARGV[1]  the entry as held in the in-flight list
-- ARGV[2]  key prefix P
-- Returns 1 when handed back, 0 when the worker no longer held it.
local P = ARGV[2]
local held = redis.call('LREM', KEYS[1], 1, ARGV[1])
if held == 0 then return 0 end
local tenant = left_inflight(P, ARGV[1])
push_front(P, KEYS[3], ARGV[1])
if redis.call('HGET', KEYS[2], 'status') == 'running' then
  redis.call('HSET', KEYS[2], 'status', 'queued')
  redis.call('HINCRBY', KEYS[2], 'attempts', -1)
  tcount(P, tenant, 'queued', 1)
end
return 1
