-- cancel.lua: cancel a queued job, or a running one too. A queued entry stays in its flow
-- and is dropped when leased; a running job's worker finds its record final when it ends.
-- KEYS[1]  the job's record hash
-- KEYS[2]  counters hash (outcomes, for metrics)
-- ARGV[1]  '1' to cancel a running job too
-- ARGV[2]  key prefix P
-- ARGV[3]  job id
-- Returns 'cancelled', 'running' (running and ARGV[1] is '0'), 'final' or 'missing'.
local P = ARGV[2]
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'missing' end
if status == 'running' and ARGV[1] ~= '1' then return 'running' end
if status ~= 'queued' and status ~= 'running' then return 'final' end
local tenant = redis.call('HGET', KEYS[1], 'tenant') or 'default'
if status == 'queued' then tcount(P, tenant, 'queued', -1) end
local now = now_ms()
redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at_ms', now)
ended(P, now, { ARGV[3] })
redis.call('HINCRBY', KEYS[2], 'cancelled', 1)
tcount(P, tenant, 'cancelled', 1)
redis.call('ZREM', P .. 'deadlines', ARGV[3])
return 'cancelled'
