-- enqueue.lua: store a new job's record, index it and put it in its tenant's flow in its
-- class, atomically, unless the tenant is over a quota; with an idempotency key, a repeated
-- key returns the first job instead.
-- KEYS[1]  the job's record hash
-- KEYS[2]  pending list
-- KEYS[3]  the idempotency key's string (ignored when ARGV[4] is '0')
-- KEYS[4]  job index sorted set (member: job id, score: enqueue time, Unix ms)
-- ARGV[1]  the normalized entry
-- ARGV[2]  job id
-- ARGV[3]  retention in seconds (how long an idempotency key is remembered)
-- ARGV[4]  '1' when an idempotency key is given
-- ARGV[5]  key prefix P
-- ARGV[6]  tenant
-- ARGV[7]  priority class
-- ARGV[8]  deadline (Unix ms), or ''
-- Returns (as strings) {1, id} when stored, {0, existing id} for a repeated idempotency key,
-- {-1, id} when a job with this id already exists, {-2, quota, limit, retry after ms}
-- when the tenant is over a quota.
local P, tenant, prio = ARGV[5], ARGV[6], tonumber(ARGV[7])
local now = now_ms()
if ARGV[4] == '1' then
  local existing = redis.call('GET', KEYS[3])
  if existing then return {'0', existing} end
end
if redis.call('EXISTS', KEYS[1]) == 1 then return {'-1', ARGV[2]} end
local settings = settings_of(P, tenant)
if settings then
  local max_queued = tonumber(settings.max_queued)
  if max_queued then
    local queued = tonumber(redis.call('HGET', P .. 'tenant:' .. tenant, 'queued') or '0')
    if queued >= max_queued then return {'-2', 'max_queued', tostring(max_queued), '1000'} end
  end
  local budget = tonumber(settings.tokens_per_minute)
  if budget then
    local used = tonumber(redis.call('GET', P .. 'tokens:' .. tenant .. ':' .. math.floor(now / 60000)) or '0')
    if used >= budget then return {'-2', 'tokens_per_minute', tostring(budget), tostring(60000 - now % 60000)} end
  end
end
redis.call('HSET', KEYS[1], 'id', ARGV[2], 'tenant', tenant, 'status', 'queued', 'attempts', 0,
  'enqueued_at_ms', now, 'spec', ARGV[1])
push_back(P, KEYS[2], ARGV[1], tenant, prio)
tcount(P, tenant, 'queued', 1)
redis.call('SADD', P .. 'tenant_names', tenant)
redis.call('ZADD', KEYS[4], now, ARGV[2])
redis.call('ZADD', P .. 'index:' .. tenant, now, ARGV[2])
if ARGV[8] ~= '' then redis.call('ZADD', P .. 'deadlines', tonumber(ARGV[8]), ARGV[2]) end
if ARGV[4] == '1' then
  redis.call('SET', KEYS[3], ARGV[2], 'EX', tonumber(ARGV[3]))
end
return {'1', ARGV[2]}
