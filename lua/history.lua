--- history.lua - the conversation history of one path, built from its events.
--
-- Provides: a history object fed with events in offset order (both when replaying a
-- stream after a restart and live, as the agent appends), answering "what are the turns
-- so far". Turns, in stream order:
--   * user turns: every send-user-message (all modes, background included) as text;
--     send-user-audio as an audio turn (kept for audio-capable models, skipped by text
--     models);
--   * assistant turns: one per request, placed where its request-started event is, holding
--     the concatenated text-delta parts of that request (interrupted and cancelled partial
--     answers included) and the Grok audio transcript deltas of a Grok request;
--   * the Grok transcript of a user audio turn
--     (conversation.item.input_audio_transcription.completed) becomes that turn's text.
-- Empty assistant turns (a request cancelled before any text) are left out of messages().
-- Must not: append events or keep anything but plain data (it is rebuilt at will).
local E = require("events")

local M = {}
M.__index = M

function M.new()
  return setmetatable({ turns = {}, by_request = {}, current = nil }, M)
end

local function payload_of(ev)
  local p = ev.payload
  if type(p) ~= "table" then
    return {}
  end
  return p
end

---Feeds one event (a decoded Event table: type, payload, offset...).
---@param ev table
function M:apply(ev)
  local t, p = ev.type, payload_of(ev)
  if t == E.user then
    if type(p.content) == "string" then
      self.turns[#self.turns + 1] = { role = "user", kind = "text", text = p.content, offset = ev.offset }
    end
  elseif t == E.audio then
    if type(p.audio) == "string" then
      self.turns[#self.turns + 1] = { role = "user", kind = "audio", audio = p.audio, offset = ev.offset }
    end
  elseif t == E.started then
    local turn = { role = "assistant", kind = "text", text = "", parts = {}, request = ev.offset }
    self.turns[#self.turns + 1] = turn
    if ev.offset ~= nil then
      self.by_request[ev.offset] = turn
    end
    self.current = turn
  elseif t == E.sse then
    local turn = self.by_request[p.requestOffset]
    local part = p.part
    if turn and type(part) == "table" and part.type == "text-delta" and type(part.delta) == "string" then
      turn.parts[#turn.parts + 1] = part.delta
    end
  elseif t == E.grok then
    -- Grok messages carry no requestOffset: they belong to the request in flight.
    local turn = self.current
    if turn and p.type == "response.output_audio_transcript.delta" and type(p.delta) == "string" then
      turn.parts[#turn.parts + 1] = p.delta
    elseif p.type == "conversation.item.input_audio_transcription.completed" and type(p.transcript) == "string" then
      -- the transcript of the user's latest audio turn: text models see it as that turn's text
      for i = #self.turns, 1, -1 do
        local t = self.turns[i]
        if t.role == "user" and t.kind == "audio" then
          t.transcript = p.transcript
          break
        end
      end
    end
  elseif t == E.ended or t == E.cancelled then
    if self.current and self.current.request == p.requestOffset then
      self.current = nil
    end
  end
end

---Text of the assistant turn of request `offset` so far ("" if unknown).
function M:answer(offset)
  local turn = self.by_request[offset]
  if not turn then
    return ""
  end
  return table.concat(turn.parts)
end

---The conversation as a list of {role = "user"|"assistant", text = string} (text turns)
---and {role = "user", audio = base64, text = <transcript or nil>} (audio turns), in order,
---empty answers omitted.
---@param opts table|nil {before = <request offset>}: only turns placed before that request
---@return table[]
function M:messages(opts)
  local before = opts and opts.before
  local out = {}
  for _, turn in ipairs(self.turns) do
    if before and turn.request == before then
      break
    end
    if turn.role == "assistant" then
      local text = table.concat(turn.parts)
      if text ~= "" then
        out[#out + 1] = { role = "assistant", text = text }
      end
    elseif turn.kind == "audio" then
      out[#out + 1] = { role = "user", audio = turn.audio, text = turn.transcript }
    else
      out[#out + 1] = { role = "user", text = turn.text }
    end
  end
  return out
end

return M
