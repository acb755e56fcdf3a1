-- reclaim_unknown.lua: hand back entries in a live worker's in-flight list that the worker
-- does not know it holds (a lease whose reply was lost when the connection broke).
-- KEYS[1]  the worker's in-flight list
-- KEYS[2]  pending list (its right end is leased next)
-- ARGV[1]  job record key prefix
-- ARGV[2..] the entries the worker holds
-- Returns the number of entries handed back. Job records are touched by name (prefix +
-- job_id from the entry), so this needs a standalone Redis.
local held = {}
for i = 2, #ARGV do held[ARGV[i]] = true end
local entries = redis.call('LRANGE', KEYS[1], 0, -1)
local moved = 0
-- Newest first, each pushed onto the leased end: the oldest ends up leased first.
for _, entry in ipairs(entries) do
  if not held[entry] then
    redis.call('LREM', KEYS[1], 1, entry)
    redis.call('RPUSH', KEYS[2], entry)
    moved = moved + 1
    local ok, job = pcall(cjson.decode, entry)
    if ok and type(job) == 'table' and type(job.job_id) == 'string' then
      local key = ARGV[1] .. job.job_id
      if redis.call('HGET', key, 'status') == 'running' then
        redis.call('HSET', key, 'status', 'queued')
        redis.call('HINCRBY', key, 'attempts', -1)
      end
    end
  end
end
return moved
