-- start.lua: mark leased jobs as running (see start_jobs in flows.lua), for entries the
-- lease could not start itself: those without a job id of their own, which the worker
-- normalizes first. Takes a whole lease batch at once.
-- KEYS[1]    the worker's in-flight list
-- KEYS[2]    job index sorted set (member: job id, score: enqueue time, Unix ms)
-- ARGV[1]    worker id
-- ARGV[2]    key prefix P
-- ARGV[3]    job record key prefix
-- ARGV[6i-2] job i's entry as leased (raw, as the producer pushed it)
-- ARGV[6i-1] job i's normalized entry (with job_id): its record's spec
-- ARGV[6i]   '1' when the normalized entry replaces the raw one in the in-flight list
--            (the raw one has no job id of its own), else '0'
-- ARGV[6i+1] job i's id
-- ARGV[6i+2] job i's deadline (Unix ms), or ''
-- ARGV[6i+3] job i's tenant
-- Returns, per job, two items: 'run' and its attempt number, or 'skip' and its final status.
-- The caller dead-letters a job whose attempts exceed its budget (its workers kept dying).
local jobs = {}
for a = 4, #ARGV, 6 do
  jobs[#jobs + 1] = { raw = ARGV[a], normalized = ARGV[a + 1], replace = ARGV[a + 2] == '1',
    id = ARGV[a + 3], deadline = tonumber(ARGV[a + 4]), tenant = ARGV[a + 5] }
end
return start_jobs(ARGV[2], now_ms(), KEYS[1], KEYS[2], ARGV[3], ARGV[1], jobs)
