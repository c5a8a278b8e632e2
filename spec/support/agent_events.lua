-- spec/support/agent_events.lua - the event types of the agent layer (agents-api.md §6) by
-- short name, for the unit and functional specs (one list instead of a copy per spec).
--
-- Provides: a table {config, user, audio, cancel, started, sse, grok, ended, cancelled,
-- interrupted, ai_error} -> the event type string.
-- Must not: hold anything but the names (specs decide what they expect of them).
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
