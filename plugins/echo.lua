--- echo.lua - the `echo` model: answers any prompt by streaming it back word by word.
--
-- Provides: a model with no upstream and no API key, going through exactly the parts and
-- lifecycle events of a real model (response-metadata, text-start, text-delta per word,
-- text-end, finish with usage), so the whole agent loop can be tried and tested offline.
-- `agents.models.echo.delay_ms` in config.lua sets a pause before each word (so interrupt
-- and cancel can be watched). Usage counts words: inputTokens = words of the whole
-- conversation sent (history + prompt), outputTokens = words answered; inputTokens thus
-- grows from request to request like a real model's.
-- Must not: do anything at load time but register.

local function count_words(s)
  local n = 0
  for _ in s:gmatch("%S+") do
    n = n + 1
  end
  return n
end

local obj = ds.json.obj

models.register("echo", {
  inputs = { text = true },
  start = function(_, ctx)
    local text = ctx.prompt.text or ""
    local delay = tonumber(ctx.config.delay_ms) or 0
    local input = 0
    for _, m in ipairs(ctx.messages) do
      if m.text then
        input = input + count_words(m.text)
      end
    end
    local id = "echo-" .. ctx.request_offset
    ctx:emit(obj("type", "response-metadata", "id", id, "modelId", "echo", "timestamp", ds.iso_now()))
    local item = "msg-" .. ctx.request_offset
    ctx:emit(obj("type", "text-start", "id", item))
    local n = 0
    for word in text:gmatch("%S+") do
      if delay > 0 then
        ds.sleep(delay)
      end
      ctx:emit(obj("type", "text-delta", "id", item, "delta", n == 0 and word or (" " .. word)))
      n = n + 1
    end
    ctx:emit(obj("type", "text-end", "id", item))
    ctx:emit(obj("type", "finish", "reason", "stop", "usage",
      obj("inputTokens", input, "outputTokens", n, "totalTokens", input + n)))
  end,
})
