-- lease.lua: lease up to ARGV[2] entries for one worker by the fair rule (flows.lua), start
-- those it can (start_jobs in flows.lua), and renew the worker's heartbeat.
-- KEYS[1]  pending list (producers LPUSH; the tail of the default tenant's interactive flow)
-- KEYS[2]  the worker's in-flight list
-- KEYS[3]  workers sorted set (member: worker id, score: lease deadline, Unix ms)
-- KEYS[4]  job index sorted set (member: job id, score: enqueue time, Unix ms)
-- ARGV[1]  worker id
-- ARGV[2]  the most entries to lease
-- ARGV[3]  lease duration in ms
-- ARGV[4]  key prefix P
-- ARGV[5]  job record key prefix
-- ARGV[6]  the most runs a job may have (one whose runs reached it is dead-lettered when
--          started)
-- Entries of jobs that already finished (cancelled while queued, or answered by a worker
-- thought dead) count among the ARGV[2] taken; those of capped tenants are dropped here,
-- the others when started.
-- An entry that names its job id as a string is started here; any other (no id, a numeric
-- id, not JSON) is left to the worker, which parses it and starts it (start.lua) or
-- dead-letters it.
-- Returns how many entries were taken (dropped ones included), then for each leased entry,
-- in the order taken, three items: the raw entry and its start verdict ('run' and the
-- attempt number, or 'skip' and the job's final status), or the raw entry, 'new' and ''
-- for one left to the worker.
local P = ARGV[4]
local now = now_ms()
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[3]), ARGV[1])
-- Entries pushed straight onto the pending list make the default flow ready (its length is
-- read only when it is not ready already).
if not is_ready(P, 0, 'default') and redis.call('LLEN', KEYS[1]) > 0 then activate(P, 0, 'default') end
local running = {}
local leased, taken = take(P, KEYS[1], tonumber(ARGV[2]), running, ARGV[5], now, tonumber(ARGV[6]))
if taken == 0 then return {} end
if #leased > 0 then redis.call('LPUSH', KEYS[2], unpack(leased)) end
for tenant, n in pairs(running) do
  if n ~= 0 then tcount(P, tenant, 'running', n) end
end
local startable, place = {}, {}
for i, entry in ipairs(leased) do
  local ok, job = pcall(cjson.decode, entry)
  local id = ok and type(job) == 'table' and job.job_id
  if type(id) == 'string' and id ~= '' and string.find(entry, '"' .. id .. '"', 1, true) then
    local deadline = job.deadline_at_ms
    startable[#startable + 1] = { raw = entry, normalized = entry, replace = false, id = id,
      deadline = type(deadline) == 'number' and deadline or nil, tenant = class_of_job(job) }
    place[i] = #startable
  end
end
local verdicts = start_jobs(P, now, KEYS[2], KEYS[4], ARGV[5], ARGV[1], startable)
local out = { tostring(taken) }
for i, entry in ipairs(leased) do
  out[#out + 1] = entry
  local k = place[i]
  if k then
    out[#out + 1] = verdicts[2 * k - 1]
    out[#out + 1] = verdicts[2 * k]
  else
    out[#out + 1] = 'new'
    out[#out + 1] = ''
  end
end
return out
