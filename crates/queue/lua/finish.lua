-- finish.lua: record the outcomes of runs and release their leases, idempotently. Takes
-- the outcomes a worker has ready at once; counters several share are written once.
-- A job that already has a final status (succeeded, failed, dead, cancelled, expired) is
-- never overwritten, so a duplicate or late delivery cannot corrupt its record. Every
-- script that makes a record final notes the job in the `ended` sorted set, so one ZMSCORE
-- there tells it for the whole call; a job whose entry this worker no longer held (handed
-- back, and maybe finished by another worker) has its status read as well.
-- KEYS[1]      the worker's in-flight list
-- KEYS[2]      delayed retries sorted set (member: entry, score: due time, Unix ms)
-- KEYS[3]      dead-letter list
-- KEYS[4]      counters hash (outcomes and error kinds, for metrics)
-- KEYS[3+2i]   job i's record hash (i = 1..n)
-- KEYS[4+2i]   job i's result:{id}, the prototype-compatible answer string
-- ARGV[1]      key prefix P
-- ARGV[2]      retention of answers (result:{id}), in seconds
-- ARGV[3]      job record key prefix
-- ARGV[4]      the job events channel
-- then for each job, in order:
--   the entry as held in the in-flight list
--   outcome: succeeded | retry | failed | dead
--   retry delay in ms (retry)
--   the answer text (succeeded)
--   the dead-letter entry, JSON (dead)
--   '1' to write the record, '0' when the entry has no job id
--   tokens the run used (succeeded), for the tenant's per-minute budget
--   the job's tenant, or '' to read it from the entry
--   '1' when the record may hold an earlier run's error (cleared on success), else '0'
--   the message to publish on the events channel once the outcome is applied, or ''
--   N, then N field/value pairs to set on the record
-- Returns, per job, the outcome applied, 'final' when the record was already final, or
-- 'lost' for a retry whose lease had expired (the job was handed back and runs again).
local P, retention, records = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local now = now_ms()
local out = {}
local counts, tenant_counts, tokens = {}, {}, {}
local gone, ended_here = {}, {} -- ids of the jobs that ended here (a list, and a set)
local function add(t, k, n) t[k] = (t[k] or 0) + n end
local function tadd(tenant, field, n)
  tenant_counts[tenant] = tenant_counts[tenant] or {}
  add(tenant_counts[tenant], field, n)
end
-- Which of the jobs have ended already, by their ids (those with a record).
local ids = {}
for i = 1, (#KEYS - 4) / 2 do ids[i] = string.sub(KEYS[3 + 2 * i], #records + 1) end
local ended_at = #ids > 0 and redis.call('ZMSCORE', P .. 'ended', unpack(ids)) or {}
local a = 5
for i = 1, (#KEYS - 4) / 2 do
  local record_key, result_key = KEYS[3 + 2 * i], KEYS[4 + 2 * i]
  local entry, outcome, delay, answer = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  local dead_item, record, used = ARGV[a + 4], ARGV[a + 5] == '1', tonumber(ARGV[a + 6]) or 0
  local tenant, clear, event = ARGV[a + 7], ARGV[a + 8] == '1', ARGV[a + 9]
  local nfields = tonumber(ARGV[a + 10])
  local fields = {}
  local error_kind = nil
  for f = a + 11, a + 10 + 2 * nfields, 2 do
    fields[#fields + 1] = ARGV[f]
    fields[#fields + 1] = ARGV[f + 1]
    if ARGV[f] == 'error_kind' then error_kind = ARGV[f + 1] end
  end
  a = a + 11 + 2 * nfields
  if tenant == '' then tenant = class_of(entry) end
  local held = redis.call('LREM', KEYS[1], 1, entry)
  if held == 1 then tadd(tenant, 'running', -1) end
  local status = nil
  if record and (ended_at[i] or ended_here[ids[i]]) then
    status = 'ended'
  elseif record and held == 0 then
    status = redis.call('HGET', record_key, 'status')
  end
  if status == 'ended' or (status and TERMINAL[status]) then
    out[#out + 1] = 'final'
  elseif outcome == 'retry' and held == 0 then
    out[#out + 1] = 'lost'
  else
    -- A late answer for a job that was handed back: it no longer waits.
    if status == 'queued' then tadd(tenant, 'queued', -1) end
    if error_kind then add(counts, 'error:' .. error_kind, 1) end
    add(counts, outcome, 1)
    tadd(tenant, outcome, 1)
    if outcome == 'retry' then
      redis.call('ZADD', KEYS[2], now + tonumber(delay), entry)
      redis.call('HSET', record_key, 'status', 'queued', unpack(fields))
      tadd(tenant, 'queued', 1)
    else
      if outcome == 'dead' then redis.call('LPUSH', KEYS[3], dead_item) end
      if record then
        if outcome == 'succeeded' then
          redis.call('HSET', record_key, 'status', outcome, 'finished_at_ms', now, 'result', answer, unpack(fields))
          if clear then redis.call('HDEL', record_key, 'error_kind', 'error_message') end
          redis.call('SET', result_key, answer, 'EX', retention)
          if used > 0 then add(tokens, tenant, used) end
        else
          redis.call('HSET', record_key, 'status', outcome, 'finished_at_ms', now, unpack(fields))
        end
        gone[#gone + 1] = ids[i]
        ended_here[ids[i]] = true
      end
    end
    out[#out + 1] = outcome
    if event ~= '' then redis.call('PUBLISH', ARGV[4], event) end
  end
end
ended(P, now, gone)
for field, n in pairs(counts) do redis.call('HINCRBY', KEYS[4], field, n) end
for tenant, fields in pairs(tenant_counts) do
  for field, n in pairs(fields) do
    if n ~= 0 then tcount(P, tenant, field, n) end
  end
end
for tenant, n in pairs(tokens) do
  local key = P .. 'tokens:' .. tenant .. ':' .. math.floor(now / 60000)
  -- A minute's count is needed for two minutes at most; set when the minute begins.
  if redis.call('INCRBY', key, n) == n then redis.call('EXPIRE', key, 120) end
end
return out
