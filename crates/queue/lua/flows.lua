-- flows.lua: the queue's shared steps (the fair queue's, and starting leased jobs), put in
-- front of the scripts that use them.
-- A job waits in its tenant's flow in its priority class; each class has a sorted set of
-- the tenants with work (score: the head's tag) and a clock (the rule is FairClock's in
-- greenscale-core). The default tenant's interactive flow is the pending list producers
-- push onto (its right end is leased next), so a prototype producer's LPUSH, a list-length
-- trigger and a job handed back on shutdown are what they always were. Keys are named from the prefix P (`greenscale:<list>:`), so these scripts need a
-- standalone Redis (or all keys in one hash slot).

local TERMINAL = { succeeded = true, failed = true, dead = true, cancelled = true, expired = true }

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The tenant and class of a decoded entry (`job`, a table or anything else), read
-- leniently: what cannot be read is the default tenant's, interactive (such an entry is
-- dead-lettered when leased).
local function class_of_job(job)
  local tenant, prio = 'default', 0
  if type(job) == 'table' then
    local t = job.tenant
    if type(t) == 'string' and #t > 0 and #t <= 64 and not string.find(t, '[^%w%-_%.]') then
      tenant = t
    end
    local p = job.priority
    if p == 'batch' then
      prio = -10
    elseif p == 'interactive' then
      prio = 0
    else
      p = tonumber(p)
      if p and p == math.floor(p) and p >= -100 and p <= 100 then prio = p end
    end
  end
  return tenant, prio
end

-- The tenant and class of a raw entry (see class_of_job).
local function class_of(entry)
  local ok, job = pcall(cjson.decode, entry)
  return class_of_job(ok and job)
end

-- A tenant's stored settings (a table) or nil; `cache` (a table, or nil) keeps what one
-- script call has read already.
local function settings_of(P, tenant, cache)
  if cache and cache[tenant] ~= nil then return cache[tenant] or nil end
  local found = false
  local s = redis.call('HGET', P .. 'tenants', tenant)
  if s then
    local ok, v = pcall(cjson.decode, s)
    if ok and type(v) == 'table' then found = v end
  end
  if cache then cache[tenant] = found end
  return found or nil
end

local function weight_of(settings)
  if settings and type(settings.weight) == 'number' and settings.weight > 0 then
    return settings.weight
  end
  return 1
end

-- Notes that jobs ended at `now` (Unix ms): their records are kept for the retention from
-- then, and deleted by maintenance (forget.lua) after it. `ids` may be empty.
local function ended(P, now, ids)
  if #ids == 0 then return end
  local args = {}
  for _, id in ipairs(ids) do
    args[#args + 1] = now
    args[#args + 1] = id
  end
  redis.call('ZADD', P .. 'ended', unpack(args))
end

-- Adds delta to a tenant's counter (queued, running, or an outcome).
local function tcount(P, tenant, field, delta)
  redis.call('HINCRBY', P .. 'tenant:' .. tenant, field, delta)
end

local function flow_key(P, prio, tenant)
  return P .. 'flow:' .. prio .. ':' .. tenant
end

local function is_ingress(prio, tenant)
  return tonumber(prio) == 0 and tenant == 'default'
end

-- Whether a flow is ready (listed among its class's tenants with work).
local function is_ready(P, prio, tenant)
  return redis.call('ZSCORE', P .. 'class:' .. prio, tenant) ~= false
end

-- Makes a flow ready, its head tagged max(V, finish), unless it is.
local function activate(P, prio, tenant)
  if is_ready(P, prio, tenant) then return end
  local ckey = P .. 'class:' .. prio
  local clock = P .. 'clock:' .. prio
  local v = tonumber(redis.call('HGET', clock, 'v') or '0')
  local f = tonumber(redis.call('HGET', clock, 'f:' .. tenant) or '0')
  redis.call('ZADD', ckey, math.max(v, f), tenant)
  redis.call('ZADD', P .. 'classes', prio, prio)
end

-- Appends an entry to its flow (the default interactive one: onto the pending list) and
-- tells listeners.
local function push_back(P, ingress, entry, tenant, prio)
  if is_ingress(prio, tenant) then
    redis.call('LPUSH', ingress, entry)
  else
    redis.call('RPUSH', flow_key(P, prio, tenant), entry)
    redis.call('PUBLISH', P .. 'arrivals', '1')
  end
  activate(P, prio, tenant)
end

-- Puts an entry at the front of its flow, to be leased next there.
local function push_front(P, ingress, entry)
  local tenant, prio = class_of(entry)
  if is_ingress(prio, tenant) then
    redis.call('RPUSH', ingress, entry)
  else
    redis.call('LPUSH', flow_key(P, prio, tenant), entry)
    redis.call('PUBLISH', P .. 'arrivals', '1')
  end
  activate(P, prio, tenant)
end

-- What becomes of a capped tenant's entry once leased, as far as its place under the cap
-- goes (`records`: the record key prefix; `now`: Unix ms): 'final' when its job has a
-- final status already (it is dropped here), 'given_up' when it is started only to be
-- dead-lettered (its runs reached `max_attempts`) or expired (its deadline passed), else
-- nil.
local function fate_of(records, entry, now, max_attempts)
  local ok, job = pcall(cjson.decode, entry)
  if not (ok and type(job) == 'table') then return nil end
  local id = job.job_id
  if type(id) ~= 'string' and type(id) ~= 'number' then return nil end
  local state = redis.call('HMGET', records .. tostring(id), 'status', 'attempts')
  if state[1] and TERMINAL[state[1]] then return 'final' end
  local deadline = job.deadline_at_ms
  if (tonumber(state[2]) or 0) >= max_attempts
    or (type(deadline) == 'number' and deadline <= now) then
    return 'given_up'
  end
  return nil
end

-- Takes up to `want` entries by the fair rule: each from the highest class with a ready
-- tenant, in it the lowest head tag (ties: tenant name) among tenants below their
-- max_running. Moves the class clocks and the flows' tags. A tenant that stays first takes
-- its next entries in one pop, so a lease costs a few commands per tenant, not per entry.
-- `running` (tenant -> count) counts what this call took, on top of the stored counts, for
-- the max_running checks; the caller adds it to the stored counts. An entry of a capped
-- tenant whose job is final already (cancelled while queued, or answered by a worker
-- thought dead; `records` is the record key prefix) is dropped here, so it holds no place
-- of the cap; other such entries are dropped when started. One that will be given up when
-- started (see fate_of; `now` in Unix ms, `max_attempts` the runs a job may have) is
-- taken but frees its place at once, so the tenant's next entry can follow it in the same
-- call. Returns the entries in the order taken, and how many were taken (dropped ones
-- included). The caller makes the default flow ready first when producers pushed straight
-- onto the pending list.
local function take(P, ingress, want, running, records, now, max_attempts)
  local out, taken = {}, 0
  local freed = {} -- tenant -> its entries taken here that will not run
  local settings_cache = {}
  -- Set when an entry pushed onto the list was sent to another flow: the classes and tags
  -- are read again, as a one-at-a-time pick would after it.
  local again = true
  while again and taken < want do
    again = false
    for _, prio in ipairs(redis.call('ZREVRANGE', P .. 'classes', 0, -1)) do
      local ckey = P .. 'class:' .. prio
      -- The ready tenants in tag order; `at` skips those at their max_running.
      local at = 0
      while taken < want and not again do
        local ready = redis.call('ZRANGE', ckey, at, at + 1, 'WITHSCORES')
        if #ready == 0 then
          if at == 0 then redis.call('ZREM', P .. 'classes', prio) end
          break
        end
        local tenant, head = ready[1], tonumber(ready[2])
        local rival_tag = tonumber(ready[4]) -- the next ready tenant's tag, or nil
        local settings = settings_of(P, tenant, settings_cache)
        local limit = want - taken
        local cap = settings and tonumber(settings.max_running)
        if cap then
          local stored = tonumber(redis.call('HGET', P .. 'tenant:' .. tenant, 'running') or '0')
          limit = math.min(limit, cap - stored - (running[tenant] or 0) + (freed[tenant] or 0))
        end
        if limit <= 0 then
          at = at + 1
        else
          -- The tags of the picks this tenant wins in a row: its first, then each while it
          -- stays strictly below the next tenant's (a tie is left to the next round).
          local step = 1 / weight_of(settings)
          local tags = { head }
          while #tags < limit and (not rival_tag or tags[#tags] + step < rival_tag) do
            tags[#tags + 1] = tags[#tags] + step
          end
          local from_ingress = is_ingress(prio, tenant)
          local flow = from_ingress and ingress or flow_key(P, prio, tenant)
          local n, drained, rerouted, dropped, given_up = 0, false, false, 0, 0
          while n < #tags and not drained and not again do
            local asked = #tags - n
            local got = redis.call(from_ingress and 'RPOP' or 'LPOP', flow, asked) or {}
            drained = #got < asked
            for i, entry in ipairs(got) do
              local t, p = tenant, prio
              if from_ingress then t, p = class_of(entry) end
              if not is_ingress(p, t) and from_ingress then
                -- an entry pushed straight onto the list that names another tenant or class
                push_back(P, ingress, entry, t, p)
                rerouted = true
              else
                n = n + 1
                taken = taken + 1
                local fate = cap and fate_of(records, entry, now, max_attempts)
                if fate == 'final' then
                  dropped = dropped + 1
                else
                  out[#out + 1] = entry
                  if fate == 'given_up' then given_up = given_up + 1 end
                end
                if rerouted then
                  -- the rest goes back, in its order, for the next round
                  if i < #got then
                    local rest = {}
                    for j = #got, i + 1, -1 do rest[#rest + 1] = got[j] end
                    redis.call('RPUSH', ingress, unpack(rest))
                    drained = false
                  end
                  again = true
                  break
                end
              end
            end
          end
          if rerouted then again = true end
          if n > 0 then
            local nxt = tags[n] + step
            redis.call('HSET', P .. 'clock:' .. prio, 'v', tags[n], 'f:' .. tenant, nxt)
            running[tenant] = (running[tenant] or 0) + n - dropped
            freed[tenant] = (freed[tenant] or 0) + given_up
            if not drained and redis.call('LLEN', flow) > 0 then
              redis.call('ZADD', ckey, nxt, tenant)
            else
              redis.call('ZREM', ckey, tenant)
            end
          else
            redis.call('ZREM', ckey, tenant) -- nothing left: the next one moves up to `at`
          end
        end
      end
      if taken >= want or again then break end
    end
  end
  return out, taken
end

-- An entry left a worker's in-flight list: it no longer counts as its tenant's running.
local function left_inflight(P, entry)
  local tenant = class_of(entry)
  tcount(P, tenant, 'running', -1)
  return tenant
end


-- Marks leased jobs as running, drops those that already have a final status and expires
-- those past their deadline (both leave the in-flight list). What several jobs share
-- (indexes, tenant names, counters) is written once per call.
-- `jobs`: a list of {raw = the entry as leased, normalized = the entry with its job id (the
-- record's spec for a job first seen here), replace = true when the normalized entry takes
-- the raw one's place in the in-flight list (the raw one has no job id of its own), id,
-- deadline (Unix ms, or nil), tenant}. `now`: the time (Unix ms); `records`: the record key
-- prefix.
-- Returns, per job, two items: 'run' and its attempt number, or 'skip' and its final status.
local function start_jobs(P, now, inflight, index, records, worker, jobs)
  local out = {}
  local left, dequeued = {}, {}      -- tenant -> entries leaving in-flight / the queued count
  local indexed, by_tenant = {}, {}  -- ZADD arguments for jobs first seen here
  local dated = {}                   -- ids whose deadline no longer applies
  local gone = {}                    -- ids of jobs expired here
  local function add(t, tenant) t[tenant] = (t[tenant] or 0) + 1 end
  -- A job first seen here (pushed straight onto the list): what its record starts with, and
  -- its place in the indexes.
  local function first_seen(fields, job)
    for _, v in ipairs({ 'id', job.id, 'tenant', job.tenant, 'spec', job.normalized, 'enqueued_at_ms', now }) do
      fields[#fields + 1] = v
    end
    indexed[#indexed + 1] = now
    indexed[#indexed + 1] = job.id
    by_tenant[job.tenant] = by_tenant[job.tenant] or {}
    table.insert(by_tenant[job.tenant], now)
    table.insert(by_tenant[job.tenant], job.id)
  end
  for _, job in ipairs(jobs) do
    local record = records .. job.id
    local state = redis.call('HMGET', record, 'status', 'attempts')
    local status = state[1] or nil
    if job.deadline then dated[#dated + 1] = job.id end
    if job.deadline and job.deadline <= now and not (status and TERMINAL[status]) then
      redis.call('LREM', inflight, 1, job.raw)
      add(left, job.tenant)
      if status == 'queued' then add(dequeued, job.tenant) end
      local fields = { 'status', 'expired', 'finished_at_ms', now, 'error_message',
        'not started before its deadline (checked ' .. (now - job.deadline) .. ' ms after it); it was never run' }
      if not status then
        first_seen(fields, job)
        fields[#fields + 1] = 'attempts'
        fields[#fields + 1] = 0
      end
      redis.call('HSET', record, unpack(fields))
      gone[#gone + 1] = job.id
      redis.call('HINCRBY', P .. 'counters', 'expired', 1)
      tcount(P, job.tenant, 'expired', 1)
      out[#out + 1] = 'skip'
      out[#out + 1] = 'expired'
    elseif status and TERMINAL[status] then
      redis.call('LREM', inflight, 1, job.raw)
      add(left, job.tenant)
      out[#out + 1] = 'skip'
      out[#out + 1] = status
    else
      if job.replace then
        redis.call('LREM', inflight, 1, job.raw)
        redis.call('LPUSH', inflight, job.normalized)
      end
      if status == 'queued' then add(dequeued, job.tenant) end
      local attempts = (tonumber(state[2]) or 0) + 1
      local fields = { 'status', 'running', 'started_at_ms', now, 'worker_id', worker, 'attempts', attempts }
      if not status then first_seen(fields, job) end
      redis.call('HSET', record, unpack(fields))
      out[#out + 1] = 'run'
      out[#out + 1] = tostring(attempts)
    end
  end
  if #indexed > 0 then
    redis.call('ZADD', index, unpack(indexed))
    local names = {}
    for tenant, pairs_ in pairs(by_tenant) do
      redis.call('ZADD', P .. 'index:' .. tenant, unpack(pairs_))
      names[#names + 1] = tenant
    end
    redis.call('SADD', P .. 'tenant_names', unpack(names))
  end
  if #dated > 0 then redis.call('ZREM', P .. 'deadlines', unpack(dated)) end
  ended(P, now, gone)
  for tenant, n in pairs(dequeued) do tcount(P, tenant, 'queued', -n) end
  for tenant, n in pairs(left) do tcount(P, tenant, 'running', -n) end
  return out
end
