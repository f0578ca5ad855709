-- vtasks scripts engine: the VTASKS.* commands of docs/PROTOCOL.md as one
-- Valkey/Redis function library, for servers that cannot load the module.
-- Same arguments, same replies, same errors, same keys.
--
--   FCALL <function> <numkeys> <keys...> <COMMAND> <args...>
--
-- The client loads this file with FUNCTION LOAD, under a library name made
-- from a hash of its text (`__FUNCTION_NAME__` below), so different vtasks
-- versions sharing a server never replace each other's code. It registers
-- three functions, by what their commands do when the server is full (see
-- Dispatch at the end).
-- COMMAND is the module command without its prefix (ENQUEUE, FETCHN, ...)
-- and args are exactly the module command's arguments. The keys declare,
-- for each queue the arguments name, in order, its ten keys
--   {q} {q}:ready {q}:delayed {q}:leased {q}:dead {q}:done {q}:wake {q}:waiting
--   {q}:schedules {q}:schedules:due
-- followed by the task keys {q}:t:<id> of every task id the arguments name.
-- A fetch also reads the tasks it picks from the ready set, whose ids no
-- caller can know in advance; their keys carry the queue's hash tag, so they
-- live in the declared keys' slot.
--
-- Scores, sequence numbers and times are integers below 2^53, which Lua's
-- numbers hold exactly; they are written with string.format('%d') because
-- tostring would switch to exponent notation above 10^14.

-- The call's keys and arguments, set by `dispatch` for each call.
local KEYS, ARGV

-- While the library loads, only a few globals exist (redis.call and the
-- base functions do not), so nothing is taken from them here; `dispatch`
-- sets these two for each call.
local call, pcall_redis

-- Limits and defaults (docs/PROTOCOL.md, "Limits"). The client replaces
-- each placeholder below with the value of the same name in the
-- vtasks-protocol crate, the module's own source of these numbers, before
-- loading the library.
local MAX_QUEUE_NAME = __MAX_QUEUE_NAME__
local MAX_ID_LEN = __MAX_ID_LEN__
local MAX_CONSUMER_LEN = __MAX_CONSUMER_LEN__
local MAX_PAYLOAD = __MAX_PAYLOAD__
local MAX_ERROR_TEXT = __MAX_ERROR_TEXT__
local MAX_ENQUEUE_BATCH = __MAX_ENQUEUE_BATCH__
local MAX_FETCH_COUNT = __MAX_FETCH_COUNT__
local MAX_QUEUES = __MAX_QUEUES__
local MAX_DURATION_MS = __MAX_DURATION_MS__
local MAX_TIMESTAMP_MS = __MAX_TIMESTAMP_MS__
local MAX_ATTEMPTS = __MAX_ATTEMPTS__
local MAX_LOST_LEASES = __MAX_LOST_LEASES__
local MIN_PRIORITY = __MIN_PRIORITY__
local MAX_PRIORITY = __MAX_PRIORITY__
local MAINTENANCE_BATCH = __MAINTENANCE_BATCH__
local BULK_BATCH = __BULK_BATCH__
local DEFAULT_LEASE_MS = __DEFAULT_LEASE_MS__
local DEFAULT_KEEP_MS = __DEFAULT_KEEP_MS__
local DEFAULT_MAX_ATTEMPTS = __DEFAULT_MAX_ATTEMPTS__
local DEFAULT_MAX_LOST_LEASES = __DEFAULT_MAX_LOST_LEASES__
local SCHEDULE_ID_PREFIX = '__SCHEDULE_ID_PREFIX__'
local SEQ_SPAN = 2 ^ 44 -- ready score = (MAX_PRIORITY - priority) * 2^44 + seq
local I64_MAX = '9223372036854775807'
-- How long a consumer sleeps on the wake list at most before it asks again.
local MAX_SLEEP_MS = __MAX_SLEEP_MS__
local MAX_SCHEDULES = __MAX_SCHEDULES__
local MAX_SCHEDULE_NAME = __MAX_SCHEDULE_NAME__
local MAX_SCHEDULE_SPEC = __MAX_SCHEDULE_SPEC__
local MAX_SCHEDULE_PAYLOAD = __MAX_SCHEDULE_PAYLOAD__
local SCHEDULE_GRACE_MS = __SCHEDULE_GRACE_MS__
local PENDING_SCHEDULES_PER_FETCH = __PENDING_SCHEDULES_PER_FETCH__
-- Most ids of vanished tasks one fetch drops (docs/PROTOCOL.md, "Memory").
local VANISHED_PER_FETCH = __VANISHED_PER_FETCH__
-- Least time between two warnings in the server log.
local WARN_EVERY_MS = __WARN_EVERY_MS__
-- A sleeper stays registered this long past its planned wake-up (its
-- round trip to BLPOP and back).
local SLEEP_MARGIN_MS = 1000
-- Chunk size for variadic calls (Lua's C stack holds about 8000 values).
local CHUNK = 1000

local function int(n)
  return string.format('%d', n)
end

-- Errors ------------------------------------------------------------------

-- Every error is raised before the first write, so a failed call changes
-- nothing; the reply is the message as given, code first.
local function fail(message)
  error({ err = message }, 0)
end

local function syntax(detail)
  fail('ERR syntax error: ' .. detail)
end

local function wrongtype()
  fail('WRONGTYPE Operation against a key holding the wrong kind of value')
end

-- Arguments -----------------------------------------------------------------

-- A cursor over ARGV, in the manner of the module's `Args`.
local Args = {}
Args.__index = Args

local function args_from(first)
  return setmetatable({ pos = first }, Args)
end

function Args:is_empty()
  return self.pos > #ARGV
end

function Args:remaining()
  local n = #ARGV - self.pos + 1
  if n < 0 then return 0 end
  return n
end

function Args:next(what)
  local item = ARGV[self.pos]
  if item == nil then syntax('missing ' .. what) end
  self.pos = self.pos + 1
  return item
end

-- An argument as error messages quote it (as the module's `shown`): at
-- most its first 64 bytes, then '...', control characters as '?'.
local function shown(arg)
  local text = string.gsub(string.sub(arg, 1, 64), '%c', '?')
  if #arg > 64 then text = text .. '...' end
  return text
end

function Args:next_keyword()
  local item = ARGV[self.pos]
  if item == nil then return nil end
  self.pos = self.pos + 1
  return string.upper(shown(item))
end

function Args:peek_is(keyword)
  local item = ARGV[self.pos]
  return item ~= nil and string.upper(item) == keyword
end

function Args:take_keyword(keyword)
  if self:peek_is(keyword) then
    self.pos = self.pos + 1
    return true
  end
  return false
end

function Args:finish()
  local extra = ARGV[self.pos]
  if extra ~= nil then syntax("unexpected argument '" .. shown(extra) .. "'") end
end

-- Parses a decimal integer as the module does (an i64), then checks the
-- range. `max_text` spells bounds that a double cannot print exactly.
local function parse_int(raw, what, min, max, max_text)
  -- string.find creates no strings (string.match would, per capture): this
  -- runs for every number of every item of a batch.
  local digits = #raw
  if string.byte(raw, 1) == 45 then digits = digits - 1 end -- '-'
  if not string.find(raw, '^%-?%d+$') or digits > 19
      or (digits == 19 and string.sub(raw, -19) > I64_MAX) then
    fail('ERR ' .. what .. ' must be an integer')
  end
  local value = tonumber(raw)
  if value < min or value > max then
    fail('ERR ' .. what .. ' must be between ' .. int(min) .. ' and ' .. (max_text or int(max)))
  end
  return value
end

function Args:next_int(what, min, max, max_text)
  return parse_int(self:next(what), what, min, max, max_text)
end

local function validate_id(id)
  if #id == 0 or #id > MAX_ID_LEN then fail('ERR task id must be 1-' .. MAX_ID_LEN .. ' bytes') end
end

local function validate_consumer(name)
  if #name == 0 or #name > MAX_CONSUMER_LEN or not string.find(name, '^[A-Za-z0-9_%.:%-@/]+$') then
    fail('ERR consumer name must be 1-' .. MAX_CONSUMER_LEN .. ' characters of A-Z a-z 0-9 _ . : - @ /')
  end
end

local function validate_payload(what, bytes)
  if #bytes > MAX_PAYLOAD then
    fail('ERR ' .. what .. ' of ' .. #bytes .. ' bytes exceeds the limit of ' .. MAX_PAYLOAD .. ' bytes')
  end
end

local function unknown_option(name)
  syntax("unknown option '" .. name .. "'")
end

-- Queues and their keys -----------------------------------------------------

local KEYS_PER_QUEUE = 10
local declared_queues -- queues taken from KEYS so far in this call

-- Validates a queue argument ({name}).
local function validate_queue(arg)
  local name = string.match(arg, '^{([A-Za-z0-9_%.:%-]+)}$')
  if name == nil or #name > MAX_QUEUE_NAME then
    fail("ERR invalid queue '" .. shown(arg) ..
      "': expected {name} where name is 1-" .. MAX_QUEUE_NAME .. " characters of A-Z a-z 0-9 _ . : -")
  end
end

-- Validates a queue argument and returns its keys, taken from KEYS: the
-- n-th queue named by the arguments owns KEYS[10(n-1)+1 .. 10n].
local function queue_keys(arg)
  validate_queue(arg)
  local base = declared_queues * KEYS_PER_QUEUE
  if KEYS[base + 1] ~= arg or KEYS[base + 10] ~= arg .. ':schedules:due' then
    fail('ERR the scripts engine needs the ten keys of queue ' .. arg ..
      ' declared in KEYS, in the order of the arguments')
  end
  declared_queues = declared_queues + 1
  return {
    name = arg,
    meta = KEYS[base + 1],
    ready = KEYS[base + 2],
    delayed = KEYS[base + 3],
    leased = KEYS[base + 4],
    dead = KEYS[base + 5],
    done = KEYS[base + 6],
    wake = KEYS[base + 7],
    waiting = KEYS[base + 8],
    schedules = KEYS[base + 9],
    schedules_due = KEYS[base + 10],
    task_prefix = arg .. ':t:',
  }
end

local function key_type(key)
  return call('TYPE', key).ok
end

-- Fails with WRONGTYPE if the queue hash (unless `sets_only`) or one of
-- `sets` holds a foreign type.
local function check_kinds(q, sets, sets_only)
  local t
  if not sets_only then
    t = key_type(q.meta)
    if t ~= 'none' and t ~= 'hash' then wrongtype() end
  end
  for _, key in ipairs(sets) do
    t = key_type(key)
    if t ~= 'none' and t ~= 'zset' then wrongtype() end
  end
end

-- Fails with WRONGTYPE if any key of the queue holds a foreign type.
local function check_types(q)
  check_kinds(q, { q.ready, q.delayed, q.leased, q.dead, q.done })
end

local function require_queue(q)
  check_types(q)
  if call('EXISTS', q.meta) == 0 then fail('NOQUEUE no such queue ' .. q.name) end
end

-- Variadic writes in chunks: ZADD key s1 m1 s2 m2 ..., ZREM key m1 m2 ...
local function zadd_pairs(key, pairs)
  for i = 1, #pairs, 2 * CHUNK do
    call('ZADD', key, unpack(pairs, i, math.min(i + 2 * CHUNK - 1, #pairs)))
  end
end

local function zrem_all(key, members)
  for i = 1, #members, CHUNK do
    call('ZREM', key, unpack(members, i, math.min(i + CHUNK - 1, #members)))
  end
end

-- Task records ----------------------------------------------------------------
-- `record` is eighteen words (docs/PROTOCOL.md): 1 version (2), 2 state,
-- 3 priority, 4 max_attempts, 5 attempts, 6 seq, 7 token, 8 enqueued_at,
-- 9 run_at, 10 ready_at, 11 started_at, 12 leased_at, 13 finished_at
-- (9-13 as offsets from enqueued_at, '-' when absent), 14 consumer,
-- 15 workers, 16 failed attempts, 17 lost leases, 18 lost-lease budget.

local W_STATE, W_PRIORITY, W_MAX, W_ATTEMPTS, W_SEQ, W_TOKEN, W_ENQUEUED = 2, 3, 4, 5, 6, 7, 8
local W_RUN_AT, W_READY_AT, W_STARTED_AT, W_LEASED_AT, W_FINISHED_AT = 9, 10, 11, 12, 13
local W_CONSUMER, W_WORKERS, W_FAILURES, W_LOST, W_MAX_LOST = 14, 15, 16, 17, 18

-- A record's words, version 2. A version-1 record (fifteen words, written
-- by earlier releases) is read as the module reads it: the attempts it
-- counted become failed attempts (less the one running, if leased), no
-- lease lost yet, the default lost-lease budget.
local function decode(text)
  local w, n = {}, 0
  for word in string.gmatch(text, '[^ ]+') do
    n = n + 1
    w[n] = word
  end
  if n == 15 and w[1] == '1' then
    local failures = tonumber(w[W_ATTEMPTS]) or 0
    if w[W_STATE] == 'leased' then failures = failures - 1 end
    if failures < 0 then failures = 0 end
    w[1], w[W_FAILURES], w[W_LOST], w[W_MAX_LOST] = '2', int(failures), '0', int(DEFAULT_MAX_LOST_LEASES)
  elseif n ~= 18 or w[1] ~= '2' then
    fail("ERR internal error: corrupt task record '" .. text .. "'")
  end
  return w
end

local function encode(w)
  return table.concat(w, ' ')
end

local function set_time(w, index, at)
  w[index] = int(at - tonumber(w[W_ENQUEUED]))
end

local function time_of(w, index)
  if w[index] == '-' then return nil end
  return tonumber(w[W_ENQUEUED]) + tonumber(w[index])
end

-- A task's record as stored, or nil if there is no such task. A task key
-- of another type fails the call before anything is written.
local function record_of(q, id)
  local record = pcall_redis('HGET', q.task_prefix .. id, 'record')
  if type(record) == 'table' then wrongtype() end
  return record or nil
end

-- A task's record words, or nil if there is no such task.
local function load(q, id)
  local record = record_of(q, id)
  return record and decode(record)
end

local function save(q, id, w)
  call('HSET', q.task_prefix .. id, 'record', encode(w))
end

local function ready_score(priority, seq)
  return (MAX_PRIORITY - priority) * SEQ_SPAN + seq
end

local function bump(q, counter, n)
  if n > 0 then call('HINCRBY', q.meta, counter, n) end
end

-- Reserves n consecutive ready-order numbers; returns the first.
local function allocate_seq(q, n)
  local last = call('HINCRBY', q.meta, 'seq', n)
  if last >= SEQ_SPAN then fail('ERR internal error: queue sequence exhausted') end
  return last - n + 1
end

local function truncate_error(text)
  if #text > MAX_ERROR_TEXT then return string.sub(text, 1, MAX_ERROR_TEXT) end
  return text
end

-- Wakes consumers sleeping on the queue's wake list (scripts-engine
-- consumers with nothing to do): one token per newly ready task, never more
-- tokens than sleepers, gone when the last sleeper's wait ends.
local function wake(q, n)
  -- As in the module, a foreign key in place of the waiting set or the
  -- wake list only means no wake-ups (this runs after the call's writes).
  local sleepers = pcall_redis('ZCARD', q.waiting)
  if type(sleepers) ~= 'number' or sleepers == 0 then return end
  local tokens = pcall_redis('LLEN', q.wake)
  if type(tokens) ~= 'number' then return end
  local room = sleepers - tokens
  if n > room then n = room end
  if n <= 0 then return end
  local tokens = {}
  for i = 1, n do tokens[i] = '1' end
  call('RPUSH', q.wake, unpack(tokens))
  local last = call('ZRANGE', q.waiting, -1, -1, 'WITHSCORES')
  call('PEXPIREAT', q.wake, last[2])
  -- Sleepers that wait on queues of several slots (in a cluster) cannot
  -- BLPOP all their wake lists at once: they listen on the queues' shard
  -- channels, named as the wake lists.
  call('SPUBLISH', q.wake, n)
end

local function server_now()
  local t = call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The record words of a task whose id was found in one of the queue's
-- sets, or nil if the task vanished: its key is gone (evicted by a
-- maxmemory-policy other than noeviction, deleted by hand) or holds no
-- record, in which case its remains are deleted (nothing runs without one).
local function load_queued(q, id)
  local w = load(q, id)
  if not w then call('DEL', q.task_prefix .. id) end
  return w
end

-- When the last warning went to the server log; at most one per
-- WARN_EVERY_MS (the library's state lives as long as the server's).
local last_warning_at, warnings_not_logged = nil, 0

-- Counts tasks that vanished from under their ids (`vanished` in STATS)
-- and says so in the server log: they are dropped, never run or retried.
local function vanished(q, set, n)
  if n == 0 then return end
  bump(q, 'vanished', n)
  local now = server_now()
  if last_warning_at ~= nil and now - last_warning_at < WARN_EVERY_MS then
    warnings_not_logged = warnings_not_logged + 1
    return
  end
  local line = 'vtasks: queue ' .. q.name .. ': ' .. n .. ' task(s) in the ' .. set ..
      ' set had no record (evicted: the server\'s maxmemory-policy is not noeviction, or deleted by hand)' ..
      ' and were dropped; STATS counts them as vanished'
  if warnings_not_logged > 0 then
    line = line .. ' (' .. warnings_not_logged .. ' more such findings since the last such line)'
  end
  last_warning_at, warnings_not_logged = now, 0
  redis.log(redis.LOG_WARNING, line)
end

-- Wakes the consumers whose sleep would outlast `at`, a deadline just
-- written (a delayed task, a retry): a sleep's length was decided before
-- it existed. They fetch again and sleep until it instead.
local function wake_before(q, at)
  local late = pcall_redis('ZCOUNT', q.waiting, '(' .. int(at + SLEEP_MARGIN_MS), '+inf')
  if type(late) == 'number' and late > 0 then wake(q, late) end
end

local function make_ready(q, id, w, seq, now, pairs)
  w[W_STATE] = 'ready'
  w[W_SEQ] = int(seq)
  set_time(w, W_READY_AT, now)
  save(q, id, w)
  pairs[#pairs + 1] = int(ready_score(tonumber(w[W_PRIORITY]), seq))
  pairs[#pairs + 1] = id
end

local function make_dead(q, id, w, error_text, now)
  w[W_STATE] = 'dead'
  set_time(w, W_FINISHED_AT, now)
  call('HSET', q.task_prefix .. id, 'record', encode(w), 'error', truncate_error(error_text))
  call('ZADD', q.dead, int(now), id)
end

-- Life cycle ------------------------------------------------------------------

-- The error kept on a task whose lease expired (`lost` counts this loss):
-- its worker stopped or stopped renewing. Worded as the module words it.
local function lost_lease_error(w, lost)
  if lost >= tonumber(w[W_MAX_LOST]) then
    local times = 'times'
    if lost == 1 then times = 'time' end
    return 'lease lost ' .. lost .. ' ' .. times .. ', its budget: the worker running it stopped (crash, kill, ' ..
        'or lost connection) before finishing it (last on attempt ' .. w[W_ATTEMPTS] .. ')'
  end
  return 'lease lost on attempt ' .. w[W_ATTEMPTS] .. ' (' .. lost .. ' of ' .. w[W_MAX_LOST] ..
      ' lost leases allowed): the worker running it stopped (crash, kill, or lost connection) before finishing it'
end

-- Schedules ---------------------------------------------------------------

-- A schedule's record in {q}:schedules (docs/PROTOCOL.md, "Schedules"):
-- `1 <priority> <attempts> <last|none> <enabled> <next> <last-run|-> <runs>
-- <skipped>`, a newline, the timing, a newline, the payload; <next> is
-- `@<ms>`, `p<after>` (pending since the run at <after>) or `-` (none).
-- {q}:schedules:due scores every schedule by its next occurrence, -1
-- while pending, IDLE_SCORE when disabled or over.
local IDLE_SCORE = 2 ^ 52
local PENDING_SCORE = -1

local function decode_schedule(record)
  local head, spec, payload = string.match(record, '^([^\n]*)\n([^\n]*)\n(.*)$')
  if head == nil then fail('ERR internal error: corrupt schedule record') end
  local w = {}
  for word in string.gmatch(head, '%S+') do w[#w + 1] = word end
  return {
    priority = tonumber(w[2]), attempts = tonumber(w[3]), catch_up = w[4], enabled = w[5] == '1',
    next = w[6], last = w[7], runs = tonumber(w[8]), skipped = tonumber(w[9]),
    spec = spec, payload = payload,
  }
end

local function encode_schedule(p)
  local enabled = '0'
  if p.enabled then enabled = '1' end
  return '1 ' .. int(p.priority) .. ' ' .. int(p.attempts) .. ' ' .. p.catch_up .. ' ' .. enabled .. ' ' ..
      p.next .. ' ' .. p.last .. ' ' .. int(p.runs) .. ' ' .. int(p.skipped) .. '\n' .. p.spec .. '\n' .. p.payload
end

local function due_score(p)
  local kind, value = string.sub(p.next, 1, 1), string.sub(p.next, 2)
  if kind == 'p' then return PENDING_SCORE end
  if kind == '@' and p.enabled then return tonumber(value) end
  return IDLE_SCORE
end

local function save_schedule(q, name, p)
  call('HSET', q.schedules, name, encode_schedule(p))
  call('ZADD', q.schedules_due, int(due_score(p)), name)
end

local function load_schedule(q, name)
  local record = call('HGET', q.schedules, name)
  if not record then return nil end
  return decode_schedule(record)
end

-- Whether the queue has schedules to look at, read once per call (one
-- TYPE for a queue without any: fetches pay next to nothing for the
-- feature). A schedule key of a foreign type means no schedules, as a
-- foreign wake list means no wake-ups: maintenance never fails a fetch
-- over it.
local function schedule_keys_ok(q)
  if q.scheduled == nil then
    q.scheduled = key_type(q.schedules_due) == 'zset' and key_type(q.schedules) == 'hash'
  end
  return q.scheduled
end

-- Enqueues a schedule's occurrence as a ready task, unless its id is
-- taken (exactly once). As ENQUEUE with that one task.
local function enqueue_occurrence(q, id, p, now)
  if call('EXISTS', q.task_prefix .. id) == 1 then return false end
  local seq = allocate_seq(q, 1)
  local record = '2 ready ' .. int(p.priority) .. ' ' .. int(p.attempts) .. ' 0 ' .. int(seq) .. ' 0 ' ..
      int(now) .. ' - 0 - - - - - 0 0 ' .. DEFAULT_MAX_LOST_LEASES
  call('HSET', q.task_prefix .. id, 'payload', p.payload, 'record', record)
  call('ZADD', q.ready, int(ready_score(p.priority, seq)), id)
  bump(q, 'enqueued', 1)
  wake(q, 1)
  return true
end

-- Fires the schedules due at `now`, earliest first (ties by name), at
-- most `limit`: each runs (its occurrence is enqueued) or, with catch-up
-- `none` and found later than SCHEDULE_GRACE_MS, is skipped. Its next
-- occurrence, the first after `now`, is left pending for the client to
-- compute (Lua parses no cron): FETCHN reports it, and SCHEDULENEXT sets it.
local function fire_schedules(q, now, limit)
  if not schedule_keys_ok(q) then return end
  local due = call('ZRANGEBYSCORE', q.schedules_due, 0, int(now), 'WITHSCORES', 'LIMIT', 0, limit)
  for i = 1, #due, 2 do
    local name, at = due[i], tonumber(due[i + 1])
    local p = load_schedule(q, name)
    if p then
      if p.catch_up == 'none' and now - at > SCHEDULE_GRACE_MS then
        p.skipped = p.skipped + 1
      else
        p.last = int(at)
        if enqueue_occurrence(q, SCHEDULE_ID_PREFIX .. name .. ':' .. int(at), p, now) then
          p.runs = p.runs + 1
        end
      end
      p.next = 'p' .. int(now)
      save_schedule(q, name, p)
    end
  end
end

-- Schedules whose next occurrence awaits the client: `{queue, name,
-- timing, after}` each, at most PENDING_SCHEDULES_PER_FETCH.
local function pending_schedules(q, out)
  if not schedule_keys_ok(q) then return end
  local names = call('ZRANGEBYSCORE', q.schedules_due, PENDING_SCORE, PENDING_SCORE,
    'LIMIT', 0, PENDING_SCHEDULES_PER_FETCH)
  for _, name in ipairs(names) do
    local p = load_schedule(q, name)
    if p and string.sub(p.next, 1, 1) == 'p' then
      out[#out + 1] = { q.name, name, p.spec, tonumber(string.sub(p.next, 2)) }
    end
  end
end

-- The earliest occurrence of the queue's enabled schedules, or nil.
local function next_occurrence(q)
  if not schedule_keys_ok(q) then return nil end
  local first = call('ZRANGEBYSCORE', q.schedules_due, 0, '(' .. int(IDLE_SCORE), 'WITHSCORES', 'LIMIT', 0, 1)
  return first[2] and tonumber(first[2])
end

-- Promotes due delayed tasks, returns expired leases (or dead-letters them
-- when their attempts are used) and forgets expired results; at most
-- `limit` entries of each kind.
local function maintain(q, now, limit)
  local to_ready = {}
  local function is_due(first) return first ~= nil and first <= now end
  local due = {}
  if is_due(q.first_delayed) then
    due = call('ZRANGEBYSCORE', q.delayed, '-inf', int(now), 'LIMIT', 0, limit)
  end
  if #due > 0 then
    zrem_all(q.delayed, due)
    local lost = 0
    for _, id in ipairs(due) do
      local w = load_queued(q, id)
      if w then to_ready[#to_ready + 1] = { id, w } else lost = lost + 1 end
    end
    vanished(q, 'delayed', lost)
  end

  local expired = {}
  if is_due(q.first_leased) then
    expired = call('ZRANGEBYSCORE', q.leased, '-inf', int(now), 'LIMIT', 0, limit)
  end
  -- Returned leases keep their sequence number, and so their place ahead
  -- of the tasks enqueued after them.
  local pairs, returned = {}, 0
  if #expired > 0 then
    zrem_all(q.leased, expired)
    local count, dead, lost = 0, 0, 0
    for _, id in ipairs(expired) do
      local w = load_queued(q, id)
      if not w then lost = lost + 1 end
      if w then
        count = count + 1
        local lost = tonumber(w[W_LOST]) + 1
        w[W_LOST] = int(lost)
        local message = lost_lease_error(w, lost)
        if lost >= tonumber(w[W_MAX_LOST]) then
          make_dead(q, id, w, message, now)
          dead = dead + 1
        else
          call('HSET', q.task_prefix .. id, 'error', message)
          make_ready(q, id, w, tonumber(w[W_SEQ]), now, pairs)
          returned = returned + 1
        end
      end
    end
    bump(q, 'dead', dead)
    bump(q, 'dead_lost', dead)
    bump(q, 'expired', count)
    vanished(q, 'leased', lost)
  end

  if #to_ready > 0 then
    local seq = allocate_seq(q, #to_ready)
    for i, item in ipairs(to_ready) do
      make_ready(q, item[1], item[2], seq + i - 1, now, pairs)
    end
  end
  if #pairs > 0 then
    zadd_pairs(q.ready, pairs)
    wake(q, #to_ready + returned)
  end

  if is_due(q.first_done) then
    local forgotten = call('ZRANGEBYSCORE', q.done, '-inf', int(now), 'LIMIT', 0, limit)
    if #forgotten > 0 then zrem_all(q.done, forgotten) end
  end

  fire_schedules(q, now, limit)
end

-- The lowest score of a sorted set, or nil if it is empty.
local function first_score(key)
  local first = call('ZRANGE', key, 0, 0, 'WITHSCORES')
  return first[2] and tonumber(first[2])
end

-- What FETCHN learns of a queue before it writes anything: whether it is
-- paused and the earliest deadline of each timed set (which tells
-- `maintain` whether it has work). Every key of the queue is read or typed
-- here, so one of a foreign type fails the call before any write.
local function survey(q)
  q.paused = call('HGET', q.meta, 'paused') == '1'
  q.first_delayed = first_score(q.delayed)
  q.first_leased = first_score(q.leased)
  q.first_done = first_score(q.done)
  check_kinds(q, { q.ready, q.dead }, true)
end

-- The earliest time maintenance has work on this queue, or nil.
local function next_due(q)
  local due
  for _, key in ipairs({ q.delayed, q.leased, q.done }) do
    local score = first_score(key)
    if score ~= nil and (due == nil or score < due) then due = score end
  end
  local occurrence = next_occurrence(q)
  if occurrence ~= nil and (due == nil or occurrence < due) then due = occurrence end
  return due
end

local function is_paused(q)
  return call('HGET', q.meta, 'paused') == '1'
end

-- Hot paths rewrite a record with one pattern match instead of splitting
-- it into words: Lua creates a string per word, and splitting plus joining
-- a record measured ~2.5 us, more than the commands around it. The
-- patterns capture runs of words that stay as they are. A record they do
-- not fit takes the word-by-word path.

-- Words 3-4, 5 (attempts), 6, 8 (enqueued_at), 9-10, 11 (started_at),
-- 13, 15 (workers), 16-18.
local LEASE_PATTERN = '^2 %a+ (%S+ %S+) (%d+) (%S+) %S+ (%d+) (%S+ %S+) (%S+) %S+ (%S+) %S+ (%S+) (%S+ %S+ %S+)$'

-- The record of a task leased to `consumer` under `token`, and its attempt.
local function leased_record(record, consumer, token, now)
  local pm, attempts, seq, enqueued, run_ready, started, finished, workers, budgets =
      string.match(record, LEASE_PATTERN)
  if pm == nil then -- not the usual shape (or a version-1 record): word by word
    local w = decode(record)
    pm, attempts, seq, enqueued = w[W_PRIORITY] .. ' ' .. w[W_MAX], w[W_ATTEMPTS], w[W_SEQ], w[W_ENQUEUED]
    run_ready, started, finished, workers = w[W_RUN_AT] .. ' ' .. w[W_READY_AT], w[W_STARTED_AT], w[W_FINISHED_AT],
        w[W_WORKERS]
    budgets = w[W_FAILURES] .. ' ' .. w[W_LOST] .. ' ' .. w[W_MAX_LOST]
  end
  attempts = tonumber(attempts) + 1
  local leased_at = int(now - tonumber(enqueued))
  if started == '-' then started = leased_at end
  if workers == '-' then
    workers = consumer
  elseif not string.find(',' .. workers .. ',', ',' .. consumer .. ',', 1, true) then
    workers = workers .. ',' .. consumer
  end
  return '2 leased ' .. pm .. ' ' .. attempts .. ' ' .. seq .. ' ' .. int(token) .. ' ' .. enqueued .. ' ' ..
      run_ready .. ' ' .. started .. ' ' .. leased_at .. ' ' .. finished .. ' ' .. consumer .. ' ' .. workers .. ' ' ..
      budgets, attempts
end

-- A leased record's token (word 7), enqueued_at (word 8) and where its
-- finished_at (word 13) starts and ends.
local ACK_PATTERN = '^2 leased %S+ %S+ %S+ %S+ (%d+) (%d+) %S+ %S+ %S+ %S+ ()%S+() '

-- Leases up to `count` ready tasks to `consumer`; appends them to `out`.
-- The caller surveyed the queue (`survey`).
local function fetch(q, consumer, count, lease_ms, now, out)
  if q.paused then return end
  local deadline = int(now + lease_ms)
  local handed, lost = 0, 0
  -- Ids whose task vanished are dropped and more are taken in their place,
  -- at most VANISHED_PER_FETCH per call (as the module does).
  while handed < count and lost < VANISHED_PER_FETCH do
    local popped = call('ZPOPMIN', q.ready, count - handed)
    if #popped == 0 then break end
    local found = {}
    for i = 1, #popped, 2 do
      local id = popped[i]
      local fields = call('HMGET', q.task_prefix .. id, 'record', 'payload')
      if fields[1] then
        found[#found + 1] = { id, fields[1], fields[2] }
      else
        lost = lost + 1
        call('DEL', q.task_prefix .. id) -- remains without a record, if any
      end
    end
    if #found > 0 then
      local last_token = call('HINCRBY', q.meta, 'token', #found)
      local leased = {}
      for i, task in ipairs(found) do
        local token = last_token - (i - 1)
        local record, attempts = leased_record(task[2], consumer, token, now)
        call('HSET', q.task_prefix .. task[1], 'record', record)
        leased[#leased + 1] = deadline
        leased[#leased + 1] = task[1]
        out[#out + 1] = { q.name, task[1], token, attempts, task[3] or '' }
      end
      zadd_pairs(q.leased, leased)
      handed = handed + #found
    end
  end
  vanished(q, 'ready', lost)
end

-- The task's record words if `token` holds its current lease, else the
-- refusal status.
local function check_lease(q, id, token)
  local w = load(q, id)
  if not w then return nil, 'NOTASK' end
  if w[W_STATE] ~= 'leased' or tonumber(w[W_TOKEN]) ~= token then return nil, 'STALE' end
  return w
end

local function ack(q, items, keep_ms, now)
  local outcomes, settled, done = {}, {}, {}
  for i, item in ipairs(items) do
    local task_key = q.task_prefix .. item.id
    local record = record_of(q, item.id)
    local token, enqueued, finished_from, finished_to
    if record then token, enqueued, finished_from, finished_to = string.match(record, ACK_PATTERN) end
    local held = token ~= nil and tonumber(token) == item.token
    local refused
    if not held then
      local w
      w, refused = check_lease(q, item.id, item.token) -- NOTASK or STALE, or an unusual record
      if w then
        held = true
        record = encode(w)
        token, enqueued, finished_from, finished_to = string.match(record, ACK_PATTERN)
      end
    end
    if held then
      outcomes[i] = 'OK'
      settled[#settled + 1] = item.id
      if keep_ms == 0 then
        call('DEL', task_key)
      else
        -- '2 leased ...' becomes '2 done ...' with finished_at set.
        local done_record = '2 done' .. string.sub(record, 9, finished_from - 1) ..
            int(now - tonumber(enqueued)) .. string.sub(record, finished_to)
        if item.result ~= '' then
          call('HSET', task_key, 'record', done_record, 'result', item.result)
        else
          call('HSET', task_key, 'record', done_record)
        end
        call('PEXPIREAT', task_key, int(now + keep_ms))
        done[#done + 1] = int(now + keep_ms)
        done[#done + 1] = item.id
      end
    else
      outcomes[i] = refused
    end
  end
  if #settled > 0 then
    zrem_all(q.leased, settled)
    zadd_pairs(q.done, done)
  end
  bump(q, 'acked', #settled)
  return outcomes
end

local function nack(q, items, now)
  local outcomes = {}
  local failed, retried, dead = 0, 0, 0
  local ready = {}
  local earliest = nil
  for i, item in ipairs(items) do
    local w, refused = check_lease(q, item.id, item.token)
    if not w then
      outcomes[i] = refused
    else
      failed = failed + 1
      local failures = tonumber(w[W_FAILURES]) + 1
      w[W_FAILURES] = int(failures)
      call('ZREM', q.leased, item.id)
      if item.delay == nil or failures >= tonumber(w[W_MAX]) then
        make_dead(q, item.id, w, item.error, now)
        dead = dead + 1
        outcomes[i] = 'DEAD'
      else
        retried = retried + 1
        call('HSET', q.task_prefix .. item.id, 'error', truncate_error(item.error))
        if item.delay == 0 then
          local seq = allocate_seq(q, 1)
          make_ready(q, item.id, w, seq, now, ready)
        else
          w[W_STATE] = 'delayed'
          set_time(w, W_RUN_AT, now + item.delay)
          save(q, item.id, w)
          call('ZADD', q.delayed, int(now + item.delay), item.id)
          if earliest == nil or now + item.delay < earliest then earliest = now + item.delay end
        end
        outcomes[i] = 'RETRY'
      end
    end
  end
  bump(q, 'failed', failed)
  bump(q, 'retried', retried)
  bump(q, 'dead', dead)
  if #ready > 0 then
    zadd_pairs(q.ready, ready)
    wake(q, #ready / 2)
  end
  if earliest ~= nil then wake_before(q, earliest) end
  return outcomes
end

-- Parsing shared by several commands ------------------------------------------

local function item_count(a, what, width)
  local n = a:next_int('item count', 1, MAX_FETCH_COUNT * 10)
  if a:remaining() < n * width then
    syntax(what .. ' announces ' .. n .. ' items of ' .. width .. ' arguments but only ' ..
      a:remaining() .. ' arguments follow')
  end
  return n
end

local function parse_token(a)
  return a:next_int('token', 1, 2 ^ 63, I64_MAX)
end

local function parse_ack_item(a)
  local id = a:next('task id')
  validate_id(id)
  local token = parse_token(a)
  local result = a:next('result')
  validate_payload('result', result)
  return { id = id, token = token, result = result }
end

local function parse_nack_item(a)
  local id = a:next('task id')
  validate_id(id)
  local token = parse_token(a)
  local raw = a:next('retry delay')
  local delay
  if string.upper(raw) ~= 'DEAD' then
    delay = parse_int(raw, 'retry delay', 0, MAX_DURATION_MS)
  end
  local error_text = a:next('error')
  return { id = id, token = token, delay = delay, error = error_text }
end

local function parse_lease_refs(a, what)
  local items = {}
  for i = 1, item_count(a, what, 2) do
    local id = a:next('task id')
    validate_id(id)
    items[i] = { id = id, token = parse_token(a) }
  end
  return items
end

local function statuses(list)
  local out = {}
  for i, s in ipairs(list) do out[i] = { ok = s } end
  return out
end

local function flags(list)
  local out = {}
  for i, b in ipairs(list) do out[i] = b and 1 or 0 end
  return out
end

-- Commands ----------------------------------------------------------------------

local commands = {}

-- Arity as the module declares it: positive exact, negative at least.
local ARITY = {
  ENQUEUE = -5, FETCHN = -5, ACK = -6, NACK = -7, EXTEND = -6, RELEASE = -5, GET = 3,
  STATS = 2, DEADLIST = -2, REQUEUE = -3, PURGE = -3, PAUSE = 2, RESUME = 2, CANCEL = -3,
  CLEAR = 2,
  SCHEDULE = -7, UNSCHEDULE = -3, SCHEDULENEXT = 5, SCHEDULES = 2,
}

function commands.ENQUEUE(a)
  local q = queue_keys(a:next('queue'))
  local maxlen
  if a:take_keyword('MAXLEN') then maxlen = a:next_int('MAXLEN', 0, 2 ^ 63, I64_MAX) end
  local tasks = {}
  while not a:is_empty() do
    if not a:take_keyword('TASK') then
      syntax("expected TASK, got '" .. (a:next_keyword() or '') .. "'")
    end
    if #tasks == MAX_ENQUEUE_BATCH then
      fail('ERR number of tasks in one ENQUEUE must be between 1 and ' .. MAX_ENQUEUE_BATCH)
    end
    local id = a:next('task id')
    validate_id(id)
    local payload = a:next('payload')
    validate_payload('payload', payload)
    local task = { id = id, payload = payload, priority = 0, attempts = DEFAULT_MAX_ATTEMPTS,
      lost = DEFAULT_MAX_LOST_LEASES }
    local scheduled = false
    while not a:is_empty() and not a:peek_is('TASK') do
      local option = a:next_keyword()
      if option == 'PRIORITY' then
        task.priority = a:next_int('PRIORITY', MIN_PRIORITY, MAX_PRIORITY)
      elseif option == 'ATTEMPTS' then
        task.attempts = a:next_int('ATTEMPTS', 1, MAX_ATTEMPTS)
      elseif option == 'LOSTLEASES' then
        task.lost = a:next_int('LOSTLEASES', 1, MAX_LOST_LEASES)
      elseif option == 'REPLACEFINISHED' then
        task.replace = true
      elseif (option == 'DELAY' or option == 'RUNAT') and scheduled then
        syntax('DELAY and RUNAT cannot be combined')
      elseif option == 'DELAY' then
        task.delay = a:next_int('DELAY', 0, MAX_DURATION_MS)
        scheduled = true
      elseif option == 'RUNAT' then
        task.run_at = a:next_int('RUNAT', 0, MAX_TIMESTAMP_MS)
        scheduled = true
      else
        unknown_option(option)
      end
    end
    tasks[#tasks + 1] = task
  end
  if #tasks == 0 then syntax('expected at least one TASK') end

  local now = server_now()
  -- An enqueue checks the keys it uses (not the leased, dead and done sets
  -- unless MAXLEN or a replacement needs them), all before its first write.
  local used = { q.ready, q.delayed }
  if maxlen then used[3] = q.leased end
  check_kinds(q, used)
  local added, replaced, seen = {}, {}, {}
  local new_count, ready_now = 0, 0
  -- Usually every id is new: one EXISTS over all the task keys says so,
  -- instead of one read per task. (A key of another type counts as
  -- existing, and the reads below then refuse it.)
  local any_exists = false
  for i = 1, #tasks, CHUNK do
    local keys = {}
    for j = i, math.min(i + CHUNK - 1, #tasks) do keys[#keys + 1] = q.task_prefix .. tasks[j].id end
    if call('EXISTS', unpack(keys)) > 0 then any_exists = true end
  end
  for i, task in ipairs(tasks) do
    local old = any_exists and load(q, task.id) or nil
    local free = old == nil
    if old and task.replace and (old[W_STATE] == 'done' or old[W_STATE] == 'dead') then
      replaced[#replaced + 1] = task.id
      free = true
    end
    if seen[task.id] then free = false end
    seen[task.id] = true
    added[i] = free
    if free then
      new_count = new_count + 1
      task.at = task.run_at or (now + (task.delay or 0))
      if task.at <= now then ready_now = ready_now + 1 end
    end
  end
  if new_count == 0 then return flags(added) end
  if #replaced > 0 then check_kinds(q, { q.done, q.dead }, true) end
  if maxlen then
    local held = call('ZCARD', q.ready) + call('ZCARD', q.delayed) + call('ZCARD', q.leased)
    if held + new_count > maxlen then
      fail('QUEUEFULL queue ' .. q.name .. ' holds ' .. held .. ' pending tasks; MAXLEN is ' .. int(maxlen))
    end
  end
  local seq = 0
  if ready_now > 0 then seq = allocate_seq(q, ready_now) end
  for _, id in ipairs(replaced) do
    call('ZREM', q.done, id)
    call('ZREM', q.dead, id)
    call('DEL', q.task_prefix .. id)
  end
  local now_text = int(now)
  local ready, delayed = {}, {}
  local earliest = nil
  for i, task in ipairs(tasks) do
    if added[i] then
      local record
      if task.at <= now then
        record = '2 ready ' .. task.priority .. ' ' .. task.attempts .. ' 0 ' .. int(seq) .. ' 0 ' ..
            now_text .. ' - 0 - - - - - 0 0 ' .. task.lost
        ready[#ready + 1] = int(ready_score(task.priority, seq))
        ready[#ready + 1] = task.id
        seq = seq + 1
      else
        record = '2 delayed ' .. task.priority .. ' ' .. task.attempts .. ' 0 0 0 ' .. now_text .. ' ' ..
            int(task.at - now) .. ' - - - - - - 0 0 ' .. task.lost
        delayed[#delayed + 1] = int(task.at)
        delayed[#delayed + 1] = task.id
        if earliest == nil or task.at < earliest then earliest = task.at end
      end
      call('HSET', q.task_prefix .. task.id, 'payload', task.payload, 'record', record)
    end
  end
  zadd_pairs(q.ready, ready)
  zadd_pairs(q.delayed, delayed)
  bump(q, 'enqueued', new_count)
  if ready_now > 0 then wake(q, ready_now) end
  if earliest ~= nil then wake_before(q, earliest) end
  return flags(added)
end

-- FETCHN replies [tasks, acks, nacks] like the module. The scripts engine
-- blocks in the client, not in the server: when BLOCK was given and nothing
-- was handed out, two more elements follow, how many ms to sleep on the
-- queues' wake lists (BLPOP) before asking again, and the sleeper's ticket.
-- The ticket (a member of each queue's waiting set, which counts sleepers
-- for wake-ups and STATS) is handed back with `SLEPT <ticket>` on the fetch
-- after the sleep, which takes it out of the waiting sets.
function commands.FETCHN(a)
  local n = a:next_int('numqueues', 1, MAX_QUEUES)
  local queues, index_of = {}, {}
  for i = 1, n do
    queues[i] = queue_keys(a:next('queue'))
    index_of[queues[i].name] = index_of[queues[i].name] or i
  end
  local consumer
  local count, lease_ms, keep_ms, block_ms = 1, DEFAULT_LEASE_MS, DEFAULT_KEEP_MS, nil
  local acks, nacks = {}, {}
  local slept
  local function queue_index(name)
    local i = index_of[name]
    if i == nil then
      fail('ERR queue ' .. shown(name) .. ' in ACK/NACK is not among the queues this FETCHN names')
    end
    return i
  end
  while true do
    local option = a:next_keyword()
    if option == nil then break end
    if option == 'CONSUMER' then
      consumer = a:next('CONSUMER')
      validate_consumer(consumer)
    elseif option == 'COUNT' then
      count = a:next_int('COUNT', 1, MAX_FETCH_COUNT)
    elseif option == 'LEASE' then
      lease_ms = a:next_int('LEASE', 1, MAX_DURATION_MS)
    elseif option == 'BLOCK' then
      block_ms = a:next_int('BLOCK', 0, MAX_DURATION_MS)
    elseif option == 'KEEP' then
      keep_ms = a:next_int('KEEP', 0, MAX_DURATION_MS)
    elseif option == 'SLEPT' then
      slept = a:next('SLEPT')
    elseif option == 'WAKE' then
      -- Queues of other slots whose new tasks end the module's wait; the
      -- library's sleepers are woken through each queue's shard channel
      -- instead (see `wake`), so they are only checked here.
      a:next_int('WAKE', 0, MAX_DURATION_MS)
      for _ = 1, a:next_int('WAKE queue count', 1, MAX_QUEUES) do validate_queue(a:next('queue')) end
    elseif option == 'ACK' then
      for _ = 1, item_count(a, 'ACK', 4) do
        local qi = queue_index(a:next('queue'))
        local item = parse_ack_item(a)
        item.queue = qi
        acks[#acks + 1] = item
      end
    elseif option == 'NACK' then
      for _ = 1, item_count(a, 'NACK', 5) do
        local qi = queue_index(a:next('queue'))
        local item = parse_nack_item(a)
        item.queue = qi
        nacks[#nacks + 1] = item
      end
    else
      unknown_option(option)
    end
  end
  if consumer == nil then syntax('CONSUMER <name> is required') end

  local now = server_now()
  for _, q in ipairs(queues) do survey(q) end
  -- Settle first, queue by queue, keeping each item's place in the reply.
  local ack_out, nack_out = {}, {}
  -- Runs `settle` on the items of queue `qi`, putting each outcome at its
  -- item's place in `out`.
  local function settle_queue(qi, all, out, settle)
    local positions, items = {}, {}
    for pos, item in ipairs(all) do
      if item.queue == qi then
        positions[#positions + 1] = pos
        items[#items + 1] = item
      end
    end
    if #items > 0 then
      for k, outcome in ipairs(settle(items)) do out[positions[k]] = outcome end
    end
  end
  for qi, q in ipairs(queues) do
    settle_queue(qi, acks, ack_out, function(items) return ack(q, items, keep_ms, now) end)
    settle_queue(qi, nacks, nack_out, function(items) return nack(q, items, now) end)
  end

  local tasks = {}
  for _, q in ipairs(queues) do
    -- The sleeper is awake again: it no longer counts.
    if slept then call('ZREM', q.waiting, slept) end
    maintain(q, now, MAINTENANCE_BATCH)
    if #tasks < count then fetch(q, consumer, count - #tasks, lease_ms, now, tasks) end
  end
  local reply = { tasks, statuses(ack_out), statuses(nack_out) }
  local pending = {}
  for _, q in ipairs(queues) do pending_schedules(q, pending) end
  if #tasks == 0 and block_ms ~= nil then
    -- Sleep until the block ends, the next deadline of these queues, or
    -- MAX_SLEEP_MS, whichever is first; enqueues wake the sleeper earlier.
    local sleep = MAX_SLEEP_MS
    if block_ms > 0 and block_ms < sleep then sleep = block_ms end
    for _, q in ipairs(queues) do
      local due = next_due(q)
      if due ~= nil and due - now < sleep then sleep = due - now end
    end
    if sleep < 1 then sleep = 1 end
    -- Registered for the sleep plus a margin for the round trip to BLPOP.
    -- The ticket tells apart sleepers that share a consumer name.
    local t = call('TIME')
    local ticket = consumer .. '#' .. t[1] .. t[2]
    local until_ms = int(now + sleep + SLEEP_MARGIN_MS)
    for _, q in ipairs(queues) do
      call('ZREMRANGEBYSCORE', q.waiting, '-inf', '(' .. int(now))
      call('ZADD', q.waiting, until_ms, ticket)
      local last = call('ZRANGE', q.waiting, -1, -1, 'WITHSCORES')
      call('PEXPIREAT', q.waiting, last[2])
    end
    reply[4] = sleep
    reply[5] = ticket
  end
  -- Schedules that ran and wait for their next occurrence, which Lua
  -- cannot compute: a last element the client takes off, computes and
  -- answers with SCHEDULENEXT (docs/PROTOCOL.md, "Schedules").
  if #pending > 0 then
    table.insert(pending, 1, { ok = 'schedules' })
    reply[#reply + 1] = pending
  end
  return reply
end

function commands.ACK(a)
  local q = queue_keys(a:next('queue'))
  local items = {}
  for i = 1, item_count(a, 'ACK', 3) do items[i] = parse_ack_item(a) end
  local keep = DEFAULT_KEEP_MS
  while true do
    local option = a:next_keyword()
    if option == nil then break end
    if option == 'KEEP' then
      keep = a:next_int('KEEP', 0, MAX_DURATION_MS)
    else
      unknown_option(option)
    end
  end
  local now = server_now()
  check_types(q)
  return statuses(ack(q, items, keep, now))
end

function commands.NACK(a)
  local q = queue_keys(a:next('queue'))
  local items = {}
  for i = 1, item_count(a, 'NACK', 4) do items[i] = parse_nack_item(a) end
  a:finish()
  local now = server_now()
  check_types(q)
  return statuses(nack(q, items, now))
end

function commands.EXTEND(a)
  local q = queue_keys(a:next('queue'))
  local lease = a:next_int('lease', 1, MAX_DURATION_MS)
  local items = parse_lease_refs(a, 'EXTEND')
  a:finish()
  local now = server_now()
  check_types(q)
  local outcomes, renewed = {}, {}
  local deadline = int(now + lease)
  for i, item in ipairs(items) do
    local w, refused = check_lease(q, item.id, item.token)
    outcomes[i] = w and 'OK' or refused
    if w then
      renewed[#renewed + 1] = deadline
      renewed[#renewed + 1] = item.id
    end
  end
  zadd_pairs(q.leased, renewed)
  return statuses(outcomes)
end

function commands.RELEASE(a)
  local q = queue_keys(a:next('queue'))
  local items = parse_lease_refs(a, 'RELEASE')
  a:finish()
  local now = server_now()
  check_types(q)
  local outcomes, ready = {}, {}
  local released = 0
  for i, item in ipairs(items) do
    local w, refused = check_lease(q, item.id, item.token)
    outcomes[i] = w and 'OK' or refused
    if w then
      released = released + 1
      call('ZREM', q.leased, item.id)
      local attempts = tonumber(w[W_ATTEMPTS]) - 1
      if attempts < 0 then attempts = 0 end
      w[W_ATTEMPTS] = int(attempts)
      make_ready(q, item.id, w, tonumber(w[W_SEQ]), now, ready)
    end
  end
  zadd_pairs(q.ready, ready)
  bump(q, 'released', released)
  if released > 0 then wake(q, released) end
  return statuses(outcomes)
end

function commands.GET(a)
  local q = queue_keys(a:next('queue'))
  local id = a:next('task id')
  validate_id(id)
  a:finish()
  local w = load(q, id)
  if not w then return false end
  local out = {}
  local function put(name, value)
    out[#out + 1] = { ok = name }
    out[#out + 1] = value
  end
  put('status', w[W_STATE])
  put('priority', w[W_PRIORITY])
  put('attempts', w[W_ATTEMPTS])
  put('max_attempts', w[W_MAX])
  put('failed_attempts', w[W_FAILURES])
  put('lost_leases', w[W_LOST])
  put('max_lost_leases', w[W_MAX_LOST])
  put('enqueued_at', w[W_ENQUEUED])
  local deadline
  if w[W_STATE] == 'leased' then deadline = call('ZSCORE', q.leased, id) end
  for _, field in ipairs({ { 'run_at', W_RUN_AT }, { 'started_at', W_STARTED_AT }, { 'leased_at', W_LEASED_AT } }) do
    local at = time_of(w, field[2])
    if at then put(field[1], int(at)) end
  end
  if deadline then put('deadline', int(tonumber(deadline))) end
  local finished = time_of(w, W_FINISHED_AT)
  if finished then put('finished_at', int(finished)) end
  if w[W_CONSUMER] ~= '-' then put('consumer', w[W_CONSUMER]) end
  if w[W_WORKERS] ~= '-' then put('workers', w[W_WORKERS]) end
  local stored = call('HMGET', q.task_prefix .. id, 'error', 'result', 'payload')
  if stored[1] then put('error', stored[1]) end
  if stored[2] then put('result', stored[2]) end
  if stored[3] then put('payload', stored[3]) end
  return out
end

-- Age of the task that has waited longest in the ready set: the lowest
-- sequence number across the priority bands; only non-empty bands are
-- visited.
local function oldest_ready_age(q, now)
  local oldest_seq, oldest_id
  local from = '-inf'
  while true do
    local first = call('ZRANGEBYSCORE', q.ready, from, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
    if #first == 0 then break end
    local score = tonumber(first[2])
    local band = math.floor(score / SEQ_SPAN)
    local seq = score - band * SEQ_SPAN
    if oldest_seq == nil or seq < oldest_seq then
      oldest_seq, oldest_id = seq, first[1]
    end
    from = int((band + 1) * SEQ_SPAN)
  end
  if oldest_id == nil then return 0 end
  local w = load(q, oldest_id)
  local ready_at = (w and time_of(w, W_READY_AT)) or now
  if now - ready_at < 0 then return 0 end
  return now - ready_at
end

function commands.STATS(a)
  local q = queue_keys(a:next('queue'))
  a:finish()
  local now = server_now()
  require_queue(q)
  local out = {}
  local function put(name, value)
    out[#out + 1] = { ok = name }
    out[#out + 1] = value
  end
  put('ready', call('ZCARD', q.ready))
  put('delayed', call('ZCARD', q.delayed))
  put('leased', call('ZCARD', q.leased))
  put('dead', call('ZCARD', q.dead))
  put('done', call('ZCOUNT', q.done, int(now + 1), '+inf'))
  put('overdue_leases', call('ZCOUNT', q.leased, '-inf', int(now)))
  put('paused', is_paused(q) and 1 or 0)
  put('blocked', call('ZCOUNT', q.waiting, int(now), '+inf'))
  put('oldest_ready_age_ms', oldest_ready_age(q, now))
  local names = { 'enqueued', 'acked', 'failed', 'retried', 'expired', 'dead_lettered', 'released',
    'requeued', 'cancelled', 'purged', 'vanished', 'leases_cut', 'dead_lost' }
  local counters = call('HMGET', q.meta, 'enqueued', 'acked', 'failed', 'retried', 'expired', 'dead',
    'released', 'requeued', 'cancelled', 'purged', 'vanished', 'leases_cut', 'dead_lost')
  for i, name in ipairs(names) do put(name, tonumber(counters[i] or 0)) end
  return out
end

function commands.DEADLIST(a)
  local q = queue_keys(a:next('queue'))
  local offset, count = '0', 100
  while true do
    local option = a:next_keyword()
    if option == nil then break end
    if option == 'OFFSET' then
      offset = a:next('OFFSET')
      parse_int(offset, 'OFFSET', 0, 2 ^ 63, I64_MAX)
    elseif option == 'COUNT' then
      count = a:next_int('COUNT', 1, BULK_BATCH)
    else
      unknown_option(option)
    end
  end
  require_queue(q)
  local entries = call('ZRANGEBYSCORE', q.dead, '-inf', '+inf', 'WITHSCORES', 'LIMIT', offset, count)
  local out = {}
  for i = 1, #entries, 2 do
    local id = entries[i]
    local w = load(q, id)
    local error_text = call('HGET', q.task_prefix .. id, 'error')
    out[#out + 1] = { id, tonumber(entries[i + 1]), w and tonumber(w[W_ATTEMPTS]) or 0, error_text or '' }
  end
  return out
end

local function parse_selection(a)
  local keyword = a:next_keyword()
  if keyword == 'ALL' then
    a:finish()
    return nil
  elseif keyword == 'IDS' then
    local ids = {}
    while not a:is_empty() do
      local id = a:next('task id')
      validate_id(id)
      ids[#ids + 1] = id
    end
    if #ids == 0 then syntax('IDS needs at least one task id') end
    return ids
  end
  syntax('expected ALL or IDS <id> [<id> ...]')
end

local function select_dead(q, ids)
  if ids == nil then
    return call('ZRANGEBYSCORE', q.dead, '-inf', '+inf', 'LIMIT', 0, BULK_BATCH)
  end
  local found = {}
  for _, id in ipairs(ids) do
    if call('ZSCORE', q.dead, id) then found[#found + 1] = id end
  end
  return found
end

function commands.REQUEUE(a)
  local q = queue_keys(a:next('queue'))
  local selection = parse_selection(a)
  local now = server_now()
  require_queue(q)
  local ids = select_dead(q, selection)
  if #ids == 0 then return 0 end
  local seq = allocate_seq(q, #ids)
  local ready = {}
  for i, id in ipairs(ids) do
    call('ZREM', q.dead, id)
    local w = load(q, id)
    if w then
      w[W_ATTEMPTS], w[W_FAILURES], w[W_LOST] = '0', '0', '0'
      w[W_FINISHED_AT] = '-'
      make_ready(q, id, w, seq + i - 1, now, ready)
    end
  end
  zadd_pairs(q.ready, ready)
  bump(q, 'requeued', #ids)
  wake(q, #ids)
  return #ids
end

function commands.PURGE(a)
  local q = queue_keys(a:next('queue'))
  local selection = parse_selection(a)
  require_queue(q)
  local ids = select_dead(q, selection)
  for _, id in ipairs(ids) do
    call('ZREM', q.dead, id)
    call('DEL', q.task_prefix .. id)
  end
  bump(q, 'purged', #ids)
  return #ids
end

function commands.PAUSE(a)
  local q = queue_keys(a:next('queue'))
  a:finish()
  check_types(q)
  call('HSET', q.meta, 'paused', '1')
  return { ok = 'OK' }
end

function commands.RESUME(a)
  local q = queue_keys(a:next('queue'))
  a:finish()
  check_types(q)
  local was_paused = is_paused(q)
  -- The field stays (as 0) so the queue hash, and so the queue, exists.
  call('HSET', q.meta, 'paused', '0')
  if was_paused then wake(q, call('ZCARD', q.ready)) end
  return { ok = 'OK' }
end

function commands.CANCEL(a)
  local q = queue_keys(a:next('queue'))
  local ids = {}
  while not a:is_empty() do
    local id = a:next('task id')
    validate_id(id)
    ids[#ids + 1] = id
  end
  check_types(q)
  local out, cancelled = {}, 0
  for i, id in ipairs(ids) do
    local removed = call('ZREM', q.ready, id) == 1 or call('ZREM', q.delayed, id) == 1
    if removed then
      call('DEL', q.task_prefix .. id)
      cancelled = cancelled + 1
    end
    out[i] = removed and 1 or 0
  end
  bump(q, 'cancelled', cancelled)
  return out
end

-- Deletes up to BULK_BATCH waiting tasks: ready ones first, in the order
-- FETCHN hands them out (ready-set score order), then delayed ones,
-- earliest due first. Each is what a CANCEL of its id would have deleted,
-- and counts in `cancelled`. The caller repeats until the reply is 0.
function commands.CLEAR(a)
  local q = queue_keys(a:next('queue'))
  a:finish()
  require_queue(q)
  local cleared = 0
  for _, set in ipairs({ q.ready, q.delayed }) do
    local room = BULK_BATCH - cleared
    if room == 0 then break end
    local ids = call('ZRANGE', set, 0, room - 1)
    zrem_all(set, ids)
    for _, id in ipairs(ids) do call('DEL', q.task_prefix .. id) end
    cleared = cleared + #ids
  end
  bump(q, 'cancelled', cleared)
  return cleared
end

-- Schedules (docs/PROTOCOL.md, "Schedules") ---------------------------------

local function validate_schedule_name(name)
  if #name == 0 or #name > MAX_SCHEDULE_NAME or not string.find(name, '^[A-Za-z0-9_%.:%-@/]+$') then
    fail('ERR schedule name must be 1-' .. MAX_SCHEDULE_NAME .. ' characters of A-Z a-z 0-9 _ . : - @ /')
  end
end

-- The timing is opaque here (clients compute its occurrences): a short
-- line of printable ASCII, as the module checks it.
local function validate_schedule_spec(spec)
  if #spec == 0 or #spec > MAX_SCHEDULE_SPEC or string.find(spec, '[^\32-\126]') then
    fail('ERR schedule timing must be 1-' .. MAX_SCHEDULE_SPEC .. ' bytes of printable ASCII')
  end
end

local function check_schedule_keys(q)
  local t = key_type(q.schedules)
  if t ~= 'none' and t ~= 'hash' then wrongtype() end
  t = key_type(q.schedules_due)
  if t ~= 'none' and t ~= 'zset' then wrongtype() end
end

function commands.SCHEDULE(a)
  local q = queue_keys(a:next('queue'))
  local name = a:next('schedule name')
  validate_schedule_name(name)
  local spec = a:next('timing')
  validate_schedule_spec(spec)
  local payload = a:next('payload')
  if #payload > MAX_SCHEDULE_PAYLOAD then
    fail('ERR schedule payload of ' .. #payload .. ' bytes exceeds the limit of ' .. MAX_SCHEDULE_PAYLOAD .. ' bytes')
  end
  local def = { spec = spec, payload = payload, priority = 0, attempts = DEFAULT_MAX_ATTEMPTS,
    catch_up = 'last', enabled = true }
  local next
  while true do
    local option = a:next_keyword()
    if option == nil then break end
    if option == 'NEXT' then
      next = a:next_int('NEXT', 0, MAX_TIMESTAMP_MS)
    elseif option == 'PRIORITY' then
      def.priority = a:next_int('PRIORITY', MIN_PRIORITY, MAX_PRIORITY)
    elseif option == 'ATTEMPTS' then
      def.attempts = a:next_int('ATTEMPTS', 1, MAX_ATTEMPTS)
    elseif option == 'CATCHUP' then
      local value = a:next_keyword()
      if value == 'LAST' then def.catch_up = 'last'
      elseif value == 'NONE' then def.catch_up = 'none'
      else syntax('CATCHUP must be LAST or NONE') end
    elseif option == 'DISABLED' then
      def.enabled = false
    else
      unknown_option(option)
    end
  end
  if next == nil then syntax('NEXT <unix-ms> is required') end
  check_types(q)
  check_schedule_keys(q)
  local old = load_schedule(q, name)
  local outcome = 'added'
  if old then
    if old.spec == def.spec and old.payload == def.payload and old.priority == def.priority and
        old.attempts == def.attempts and old.catch_up == def.catch_up and old.enabled == def.enabled then
      return { ok = 'unchanged' }
    end
    outcome = 'changed'
    def.last, def.runs, def.skipped = old.last, old.runs, old.skipped
  else
    if call('ZCARD', q.schedules_due) >= MAX_SCHEDULES then
      fail('ERR queue ' .. q.name .. ' holds ' .. MAX_SCHEDULES .. ' schedules, the most one queue holds')
    end
    def.last, def.runs, def.skipped = '-', 0, 0
  end
  def.next = '@' .. int(next)
  save_schedule(q, name, def)
  -- The queue exists from now on, as after PAUSE.
  if call('HEXISTS', q.meta, 'paused') == 0 then call('HSET', q.meta, 'paused', '0') end
  if def.enabled then wake_before(q, next) end
  return { ok = outcome }
end

function commands.UNSCHEDULE(a)
  local q = queue_keys(a:next('queue'))
  local names = {}
  while not a:is_empty() do
    local name = a:next('schedule name')
    validate_schedule_name(name)
    names[#names + 1] = name
  end
  check_types(q)
  check_schedule_keys(q)
  local removed = 0
  for _, name in ipairs(names) do
    if call('HDEL', q.schedules, name) == 1 then
      call('ZREM', q.schedules_due, name)
      removed = removed + 1
    end
  end
  return removed
end

function commands.SCHEDULENEXT(a)
  local q = queue_keys(a:next('queue'))
  local name = a:next('schedule name')
  validate_schedule_name(name)
  local after = a:next_int('after', 0, MAX_TIMESTAMP_MS)
  local next
  if a:take_keyword('NONE') then next = nil else next = a:next_int('next', 0, MAX_TIMESTAMP_MS) end
  a:finish()
  check_types(q)
  check_schedule_keys(q)
  local p = load_schedule(q, name)
  if p == nil or p.next ~= 'p' .. int(after) then return 0 end
  if next == nil then p.next = '-' else p.next = '@' .. int(next) end
  save_schedule(q, name, p)
  if next ~= nil and p.enabled then wake_before(q, next) end
  return 1
end

function commands.SCHEDULES(a)
  local q = queue_keys(a:next('queue'))
  a:finish()
  check_types(q)
  check_schedule_keys(q)
  local names = call('ZRANGE', q.schedules_due, 0, -1)
  table.sort(names)
  local out = {}
  for _, name in ipairs(names) do
    local p = load_schedule(q, name)
    if p then
      local item = {}
      local function put(field, value)
        item[#item + 1] = { ok = field }
        item[#item + 1] = value
      end
      put('name', name)
      put('timing', p.spec)
      put('payload', p.payload)
      put('priority', p.priority)
      put('attempts', p.attempts)
      put('catch_up', { ok = p.catch_up })
      put('enabled', p.enabled and 1 or 0)
      local kind, value = string.sub(p.next, 1, 1), string.sub(p.next, 2)
      if kind == '@' then put('next', tonumber(value)) end
      if kind == 'p' then put('pending_since', tonumber(value)) end
      if p.last ~= '-' then
        put('last', tonumber(p.last))
        put('last_id', SCHEDULE_ID_PREFIX .. name .. ':' .. p.last)
      end
      put('runs', p.runs)
      put('skipped', p.skipped)
      out[#out + 1] = item
    end
  end
  return out
end

-- Dispatch ------------------------------------------------------------------------

-- The library registers three functions, one per kind of command, because
-- function flags decide what a server at its `maxmemory` (with the
-- `noeviction` policy) still runs (docs/PROTOCOL.md, "Memory"):
--   __FUNCTION_NAME__          adds work (ENQUEUE, REQUEUE, SCHEDULE); no flags, so a
--                              full server refuses it with an OOM error
--                              before it runs;
--   __FUNCTION_NAME___settle   drains and settles (FETCHN, ACK, NACK,
--                              EXTEND, RELEASE) and frees or flags (PURGE,
--                              CANCEL, CLEAR, PAUSE, RESUME, UNSCHEDULE,
--                              SCHEDULENEXT); `allow-oom`, so a
--                              full server still drains its backlog;
--   __FUNCTION_NAME___read     reads (GET, STATS, DEADLIST, SCHEDULES); `no-writes`,
--                              called with FCALL_RO, runs when full and on
--                              read-only replicas.
-- Each function runs only its own commands, so a caller cannot slip work
-- past a full server through the `allow-oom` function.
local FUNCTION_OF = {
  ENQUEUE = '__FUNCTION_NAME__', REQUEUE = '__FUNCTION_NAME__',
  FETCHN = '__FUNCTION_NAME___settle', ACK = '__FUNCTION_NAME___settle',
  NACK = '__FUNCTION_NAME___settle', EXTEND = '__FUNCTION_NAME___settle',
  RELEASE = '__FUNCTION_NAME___settle', PURGE = '__FUNCTION_NAME___settle',
  CANCEL = '__FUNCTION_NAME___settle', CLEAR = '__FUNCTION_NAME___settle',
  PAUSE = '__FUNCTION_NAME___settle',
  RESUME = '__FUNCTION_NAME___settle',
  GET = '__FUNCTION_NAME___read', STATS = '__FUNCTION_NAME___read',
  DEADLIST = '__FUNCTION_NAME___read',
  SCHEDULE = '__FUNCTION_NAME__', UNSCHEDULE = '__FUNCTION_NAME___settle',
  SCHEDULENEXT = '__FUNCTION_NAME___settle', SCHEDULES = '__FUNCTION_NAME___read',
}

local function dispatch(keys, args, function_name)
  KEYS, ARGV = keys, args
  call, pcall_redis = redis.call, redis.pcall
  declared_queues = 0
  local name = ARGV[1] and string.upper(ARGV[1])
  local command = name and commands[name]
  if command == nil then
    fail("ERR unknown command 'VTASKS." .. tostring(ARGV[1]) .. "'")
  end
  if FUNCTION_OF[name] ~= function_name then
    fail('ERR VTASKS.' .. name .. ' runs in function ' .. FUNCTION_OF[name] .. ', not ' .. function_name)
  end
  local arity = ARITY[name]
  local given = #ARGV -- the command name plus its arguments, as the server counts
  if (arity > 0 and given ~= arity) or (arity < 0 and given < -arity) then
    -- The server names the command as the client spelled it; the client
    -- sends the name after the prefix as given, so the prefix follows its
    -- case.
    local prefix = ARGV[1] == string.lower(ARGV[1]) and 'vtasks.' or 'VTASKS.'
    fail("ERR wrong number of arguments for '" .. prefix .. ARGV[1] .. "' command")
  end
  return command(args_from(2))
end

redis.register_function {
  function_name = '__FUNCTION_NAME__',
  callback = function(keys, args) return dispatch(keys, args, '__FUNCTION_NAME__') end,
}
redis.register_function {
  function_name = '__FUNCTION_NAME___settle',
  callback = function(keys, args) return dispatch(keys, args, '__FUNCTION_NAME___settle') end,
  flags = { 'allow-oom' },
}
redis.register_function {
  function_name = '__FUNCTION_NAME___read',
  callback = function(keys, args) return dispatch(keys, args, '__FUNCTION_NAME___read') end,
  flags = { 'no-writes' },
}
