--- events.lua - the event types of the agent layer (agents-api.md §6), one list for
-- agent.lua, llm_loop.lua, history.lua and grok.lua.
--
-- Provides: a table from short name (config, user, audio, cancel, started, sse, grok,
-- ended, cancelled, interrupted, ai_error) to the event type string.
-- Must not: hold anything but the names (what an event means is decided where it is used).
return {
  config = "iterate:agent:config:set",
  user = "iterate:agent:action:send-user-message:called",
  audio = "iterate:agent:action:send-user-audio:called",
  cancel = "iterate:agent:action:cancel-request:called",
  started = "iterate:llm-loop:request-started",
  sse = "iterate:llm-loop:response:sse",
  grok = "iterate:grok:response:sse",
  ended = "iterate:llm-loop:request-ended",
  cancelled = "iterate:llm-loop:request-cancelled",
  interrupted = "iterate:llm-loop:request-interrupted",
  ai_error = "iterate:ai:error",
}
