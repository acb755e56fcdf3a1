-- reclaim_unknown.lua: hand back entries in a live worker's in-flight list that the worker
-- does not know it holds (a lease whose reply was lost when the connection broke).
-- KEYS[1]  the worker's in-flight list
-- KEYS[2]  pending list
-- ARGV[1]  job record key prefix
-- ARGV[2]  key prefix P
-- ARGV[3..] the entries the worker holds
-- Returns the number of entries handed back.
local P = ARGV[2]
local held = {}
for i = 3, #ARGV do held[ARGV[i]] = true end
local entries = redis.call('LRANGE', KEYS[1], 0, -1)
local moved = 0
-- Newest first, each pushed onto the front of its flow: the oldest ends up leased first.
for _, entry in ipairs(entries) do
  if not held[entry] then
    redis.call('LREM', KEYS[1], 1, entry)
    local tenant = left_inflight(P, entry)
    push_front(P, KEYS[2], entry)
    moved = moved + 1
    local ok, job = pcall(cjson.decode, entry)
    if ok and type(job) == 'table' and type(job.job_id) == 'string' then
      local key = ARGV[1] .. job.job_id
      if redis.call('HGET', key, 'status') == 'running' then
        redis.call('HSET', key, 'status', 'queued')
        redis.call('HINCRBY', key, 'attempts', -1)
        tcount(P, tenant, 'queued', 1)
      end
    end
  end
end
return moved
