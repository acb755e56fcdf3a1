-- counts.lua: how many entries wait, how many of them are in deferrable classes (below
-- interactive, 0), and when the oldest of those was enqueued.
-- KEYS[1]  pending list
-- ARGV[1]  key prefix P
-- ARGV[2]  job record key prefix
-- Returns {pending, deferrable, enqueue time of the oldest deferrable (Unix ms) or 0}.
local P = ARGV[1]
local pending, deferrable, oldest = redis.call('LLEN', KEYS[1]), 0, nil
for _, prio in ipairs(redis.call('ZRANGE', P .. 'classes', 0, -1)) do
  for _, tenant in ipairs(redis.call('ZRANGE', P .. 'class:' .. prio, 0, -1)) do
    local flow = flow_key(P, prio, tenant)
    local n = redis.call('LLEN', flow)
    pending = pending + n
    if tonumber(prio) < 0 and n > 0 then
      deferrable = deferrable + n
      local ok, job = pcall(cjson.decode, redis.call('LINDEX', flow, 0))
      if ok and type(job) == 'table' and type(job.job_id) == 'string' then
        local at = tonumber(redis.call('HGET', ARGV[2] .. job.job_id, 'enqueued_at_ms'))
        if at and (not oldest or at < oldest) then oldest = at end
      end
    end
  end
end
return {pending, deferrable, oldest or 0}
