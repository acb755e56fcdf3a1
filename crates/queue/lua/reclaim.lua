-- reclaim.lua: hand back everything one worker holds and forget the worker.
-- Used for workers whose lease expired (they stopped heartbeating) and on deregistration.
-- Entries go to the front of their flows, the oldest first, so order is kept.
-- KEYS[1]  workers sorted set
-- KEYS[2]  the worker's in-flight list
-- KEYS[3]  pending list
-- ARGV[1]  worker id
-- ARGV[2]  'expired' to act only if the worker's deadline has passed, 'now' to act at once
-- ARGV[3]  job record key prefix
-- ARGV[4]  key prefix P
-- Returns the number of entries handed back, or -1 when the worker is alive after all.
local P = ARGV[4]
if ARGV[2] == 'expired' then
  local deadline = redis.call('ZSCORE', KEYS[1], ARGV[1])
  if deadline and tonumber(deadline) > now_ms() then return -1 end
end
local moved = 0
-- The in-flight list's left end is the newest: pushing each onto the front of its flow
-- leaves the oldest in front.
while true do
  local entry = redis.call('LPOP', KEYS[2])
  if not entry then break end
  moved = moved + 1
  local tenant = left_inflight(P, entry)
  push_front(P, KEYS[3], entry)
  local ok, job = pcall(cjson.decode, entry)
  if ok and type(job) == 'table' and type(job.job_id) == 'string' then
    local key = ARGV[3] .. job.job_id
    if redis.call('HGET', key, 'status') == 'running' then
      redis.call('HSET', key, 'status', 'queued')
      tcount(P, tenant, 'queued', 1)
    end
  end
end
redis.call('ZREM', KEYS[1], ARGV[1])
return moved
