-- reclaim.lua: hand back everything one worker holds and forget the worker.
-- Used for workers whose lease expired (they stopped heartbeating) and on deregistration.
-- Entries go to the leased end of the pending list, oldest nearest to it, so order is kept.
-- Records of the jobs are touched by name (job record prefix + job_id from the entry), so
-- this script needs a standalone Redis (or all keys in one hash slot).
-- KEYS[1]  workers sorted set
-- KEYS[2]  the worker's in-flight list
-- KEYS[3]  pending list
-- ARGV[1]  worker id
-- ARGV[2]  'expired' to act only if the worker's deadline has passed, 'now' to act at once
-- ARGV[3]  job record key prefix
-- Returns the number of entries handed back, or -1 when the worker is alive after all.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[2] == 'expired' then
  local deadline = redis.call('ZSCORE', KEYS[1], ARGV[1])
  if deadline and tonumber(deadline) > now then return -1 end
end
local moved = 0
while true do
  local entry = redis.call('LMOVE', KEYS[2], KEYS[3], 'LEFT', 'RIGHT')
  if not entry then break end
  moved = moved + 1
  local ok, job = pcall(cjson.decode, entry)
  if ok and type(job) == 'table' and type(job.job_id) == 'string' then
    local key = ARGV[3] .. job.job_id
    if redis.call('HGET', key, 'status') == 'running' then
      redis.call('HSET', key, 'status', 'queued')
    end
  end
end
redis.call('ZREM', KEYS[1], ARGV[1])
return moved
