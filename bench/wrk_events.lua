-- wrk script of bench.stream: POSTs event-stream items shaped like bench.delivery.source_events, each
-- event id unique across the run (wrk's threads interleave one global event number).
--
-- Arguments, after `--`:
--   1. events per request: 1 sends a single JSON object, more an array of that many items
--   2. known subscriptions: the items cycle over source_events' first N subscriptions, with their
--      External User IDs; 0: every event has a subscription (and user) the registry has never seen
--   3. wrk's thread count (-t)
--   4. the event kinds, comma-separated (cycled over)
--   5. (optional) the event ids' prefix, "wrk" by default: a warm-up run takes another one
-- Headers (Authorization, Content-Type) come from wrk's -H options.
-- done() prints one JSON line: requests answered and sent, duration, latency percentiles, errors.

local threads = {}

function setup(thread)
  thread:set("thread_number", #threads)
  table.insert(threads, thread)
end

function init(args)
  per_request = tonumber(args[1])
  known = tonumber(args[2])
  thread_count = tonumber(args[3])
  kinds = {}
  for kind in string.gmatch(args[4], "[^,]+") do
    table.insert(kinds, kind)
  end
  prefix = args[5] or "wrk"
  sent = 0  -- requests written; done() reads it with thread:get
  events = 0
end

local ITEM = '{"event":{"id":"%s-%010d","kind":"%s","timestamp":%d,"subscription_id":"%s",'
  .. '"subscription_device_type":"%s","external_id":"%s"},"message":%s,"data":{"target_id":"cta-upgrade"}}'
-- As in source_events: of every 8 events, 6 carry their message's details (one of 20 messages), one is a
-- late click with only the id of such a message, one a late click of one of 1,000 messages never described.
local DESCRIBED = '{"id":"3f1c2b9e-8d7a-4b6c-9e5f-%012d","name":"Spring sale reminder",'
  .. '"title":{"en":"50%% off today","de":"Heute 50%% Rabatt"},'
  .. '"contents":{"en":"Open the app to claim your discount before midnight"}}'
local LATE = '{"id":"3f1c2b9e-8d7a-4b6c-9e5f-%012d"}'
local NEVER_DESCRIBED = '{"id":"9e0d5a71-2c4b-4f3e-8a6d-%012d"}'
local LATE_EVERY = 8

local function item()
  local n = events * thread_count + thread_number
  events = events + 1
  local user, subscription, external
  if known > 0 then
    user = n % known
    subscription = string.format("0b7c%08d-5b6a-4978-8695-a4b3c2d1e0f%d", user, user % 2)
    external = string.format("user-%06d", user)
  else
    user = n
    subscription = string.format("0b7c%08d-0e3d-4a1b-9c2f-%012d", n % 100000000, n)
    external = string.format("new-user-%010d", n)
  end
  local device = user % 2 == 1 and "AndroidPush" or "iOS"
  local kind, message = kinds[n % #kinds + 1], string.format(DESCRIBED, n % 20)
  if n % LATE_EVERY == LATE_EVERY - 2 then
    kind, message = "message.push.clicked", string.format(LATE, n % 20)
  elseif n % LATE_EVERY == LATE_EVERY - 1 then
    kind, message = "message.push.clicked", string.format(NEVER_DESCRIBED, math.floor(n / LATE_EVERY) % 1000)
  end
  return string.format(ITEM, prefix, n, kind, 1763856000 + math.floor(n / 100), subscription, device, external, message)
end

function request()
  sent = sent + 1
  local body
  if per_request == 1 then
    body = item()
  else
    local items = {}
    for i = 1, per_request do
      items[i] = item()
    end
    body = "[" .. table.concat(items, ",") .. "]"
  end
  return wrk.format("POST", nil, nil, body)
end

function done(summary, latency, requests)
  local written = 0
  for _, thread in ipairs(threads) do
    written = written + thread:get("sent")
  end
  local errors = summary.errors
  io.write(string.format('{"requests": %d, "sent": %d, "duration_us": %d, "p50_us": %.0f, "p90_us": %.0f, '
                         .. '"p99_us": %.0f, "status": %d, "connect": %d, "read": %d, "write": %d, "timeout": %d}\n',
                         summary.requests, written, summary.duration, latency:percentile(50), latency:percentile(90),
                         latency:percentile(99), errors.status, errors.connect, errors.read, errors.write,
                         errors.timeout))
end
