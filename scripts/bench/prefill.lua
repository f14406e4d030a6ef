-- wrk script: makes every one of 10,000 contacts a long conversation before a measurement.
-- Each of wrk's threads sends messages to its half of the contacts in turn, PREFILL_ROUNDS
-- (default 100) to each, then stops: 100 messages leave a contact with the most unanswered
-- messages it keeps (50), a full timeline (100 entries) and 100 remembered ids. Same body as
-- ../shared/bench/webhook.lua.
local counter = 0
local threads = {}
local rounds = tonumber(os.getenv("PREFILL_ROUNDS") or "100")
local per_thread = 5000
function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end
request = function()
  local n = counter
  counter = counter + 1
  local cid = (tid - 1) * per_thread + (n % per_thread) + 1
  local mid = string.format("p%d-%d", tid, n)
  local p = "message%5Badd%5D%5B0%5D%5B"
  local body = "account%5Bsubdomain%5D=appgpt&account%5Bid%5D=31257294"
    .. "&" .. p .. "id%5D=" .. mid
    .. "&" .. p .. "chat_id%5D=54caee02-e383-46d8-a9b7-1fb43f07cffe"
    .. "&" .. p .. "talk_id%5D=" .. cid
    .. "&" .. p .. "contact_id%5D=" .. cid
    .. "&" .. p .. "text%5D=Ol%C3%A1%2C+quero+saber+sobre+aposentadoria+por+invalidez"
    .. "&" .. p .. "created_at%5D=1764380000"
    .. "&" .. p .. "element_type%5D=2&" .. p .. "entity_type%5D=lead"
    .. "&" .. p .. "element_id%5D=" .. (cid + 500000) .. "&" .. p .. "entity_id%5D=" .. (cid + 500000)
    .. "&" .. p .. "type%5D=incoming"
    .. "&" .. p .. "author%5D%5Bid%5D=1db2f5cc-aea4-4f96-8d4f-a256ead5b7b0"
    .. "&" .. p .. "author%5D%5Btype%5D=external&" .. p .. "author%5D%5Bname%5D=Cliente"
    .. "&" .. p .. "origin%5D=waba"
  return wrk.format("POST", "/webhooks/kommo?token=s3cret", {["Content-Type"] = "application/x-www-form-urlencoded"}, body)
end
response = function(status, headers, body)
  if counter >= rounds * per_thread then
    wrk.thread:stop()
  end
end
