-- cancel.lua: cancel a queued or running job. A queued entry stays on the list and is
-- dropped when leased; a running job's worker finds its record final when it finishes.
-- KEYS[1]  the job's record hash
-- ARGV[1]  retention of finished records, in seconds
-- Returns 'cancelled', 'final' (already finished) or 'missing'.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'missing' end
if status ~= 'queued' and status ~= 'running' then return 'final' end
redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at_ms', now)
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
return 'cancelled'
