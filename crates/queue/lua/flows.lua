-- flows.lua: the fair queue's shared steps, put in front of the scripts that use them.
-- A job waits in its tenant's flow in its priority class; each class has a sorted set of
-- the tenants with work (score: the head's tag) and a clock (the rule is FairClock's in
-- greenscale-core). The default tenant's interactive flow is the pending list producers
-- push onto (its right end is leased next), so a prototype producer's LPUSH, a list-length
-- trigger and a job handed back on shutdown are what they always were. Keys are named from the prefix P (`greenscale:<list>:`), so these scripts need a
-- standalone Redis (or all keys in one hash slot).

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The tenant and class of an entry, read leniently (what cannot be read is the default
-- tenant's, interactive; it is dead-lettered when leased).
local function class_of(entry)
  local tenant, prio = 'default', 0
  local ok, job = pcall(cjson.decode, entry)
  if ok and type(job) == 'table' then
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

-- Makes a flow ready, its head tagged max(V, finish), unless it is.
local function activate(P, prio, tenant)
  local ckey = P .. 'class:' .. prio
  if redis.call('ZSCORE', ckey, tenant) then return end
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

-- Takes the next entry by the fair rule: the highest class with a ready tenant, in it the
-- lowest head tag (ties: tenant name) among tenants below their max_running. Moves the
-- class clock and the flow's tag. Returns the entry and its tenant, or nil. `settings_cache`
-- keeps the tenants' settings read in this script call. The caller makes the default flow
-- ready first when producers pushed straight onto the pending list.
local function pick(P, ingress, settings_cache)
  local classes = redis.call('ZREVRANGE', P .. 'classes', 0, -1)
  for _, prio in ipairs(classes) do
    local ckey = P .. 'class:' .. prio
    -- The ready tenants one at a time, lowest tag first: usually the first is taken.
    local at = 0
    while true do
      local ready = redis.call('ZRANGE', ckey, at, at, 'WITHSCORES')
      if #ready == 0 then
        if at == 0 then redis.call('ZREM', P .. 'classes', prio) end
        break
      end
      local tenant, head = ready[1], tonumber(ready[2])
      local settings = settings_of(P, tenant, settings_cache)
      local cap = settings and tonumber(settings.max_running)
      local take = true
      if cap then
        local running = tonumber(redis.call('HGET', P .. 'tenant:' .. tenant, 'running') or '0')
        take = running < cap
      end
      if take then
        local from_ingress = is_ingress(prio, tenant)
        local flow = from_ingress and ingress or flow_key(P, prio, tenant)
        local entry
        if from_ingress then
          entry = redis.call('RPOP', ingress)
          while entry do
            -- an entry pushed straight onto the list that names another tenant or class
            local t, p = class_of(entry)
            if is_ingress(p, t) then break end
            push_back(P, ingress, entry, t, p)
            entry = redis.call('RPOP', ingress)
          end
        else
          entry = redis.call('LPOP', flow)
        end
        if entry then
          local nxt = head + 1 / weight_of(settings)
          redis.call('HSET', P .. 'clock:' .. prio, 'v', head, 'f:' .. tenant, nxt)
          local more = redis.call('LLEN', flow) > 0
          if more then
            redis.call('ZADD', ckey, nxt, tenant)
          else
            redis.call('ZREM', ckey, tenant)
          end
          return entry, tenant
        end
        redis.call('ZREM', ckey, tenant) -- nothing left: the next one moves up to `at`
      else
        at = at + 1
      end
    end
  end
  return nil
end

-- An entry left a worker's in-flight list: it no longer counts as its tenant's running.
local function left_inflight(P, entry)
  local tenant = class_of(entry)
  tcount(P, tenant, 'running', -1)
  return tenant
end

local TERMINAL = { succeeded = true, failed = true, dead = true, cancelled = true, expired = true }
