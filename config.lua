-- config.lua: durable-stream's configuration, read once at start-up.
--
-- Every key is optional; the value shown is the built-in default. Unknown keys are
-- refused (a typo must not silently run with a default). Command-line flags
-- (--host, --port, --data-dir, --storage, --fsync, --long-poll-timeout, --log-level)
-- override what is set here; so does PORT in the environment (below --port). This file is
-- Lua: os.getenv() and arithmetic work. It is evaluated under a bound (100 million
-- instructions, 2 s, 64 MB): a file that loops or grows without end refuses the start,
-- naming the file, instead of hanging it.
return {
  host = "127.0.0.1",         -- listen address; keep loopback unless behind a proxy (README: "Exposing the server")
  port = 3000,                -- 0 picks a free port; PORT in the environment overrides it, --port both
  data_dir = ".data",         -- YAML store root: streams live in <data_dir>/streams/<path>.yaml
  storage = "yaml",           -- "yaml" (durable, human-readable) or "memory" (tests, demos)

  -- Durability against power loss (every acknowledged append always survives kill -9):
  --   "always"   fsync before each 204, batched across concurrent appends (group commit)
  --   "interval" fsync dirty files every fsync_interval_ms (lose at most that on power loss)
  --   "never"    leave flushing to the kernel
  fsync = "interval",
  fsync_interval_ms = 1000,

  log_level = "info",         -- debug | info | warn | error | off (logs go to stderr)

  limits = {
    max_body_bytes = 1048576,           -- larger request bodies get 413
    max_header_bytes = 16384,           -- request line + headers; larger get 431
    max_json_depth = 64,                -- deeper event JSON gets 400
    max_connections = 16384,            -- beyond this, new connections get 503
    header_timeout_ms = 10000,          -- whole request head must arrive within (slowloris)
    body_timeout_ms = 30000,            -- request body must keep arriving within
    idle_timeout_ms = 60000,            -- idle keep-alive connections are closed after
    subscriber_backlog_bytes = 4194304, -- unsent bytes before a slow SSE reader is dropped
    tail_cache_bytes = 33554432,        -- per-stream memory cache of its newest events (catch-up reads them without the disk)
    tail_cache_total_bytes = 268435456, -- all streams' caches together; the least recently written streams give way first
    max_open_files = 4096,              -- YAML store descriptors kept open (LRU; the fd limit is raised to fit)
  },

  sse = {
    keepalive_ms = 15000,               -- a live /agents read gets ": keepalive" this long after the last byte sent on its connection
  },

  protocol = {                          -- the Durable Streams protocol under /v1/stream/*
    long_poll_timeout_ms = 30000,       -- live=long-poll waits this long before 204
    sse_reconnect_ms = 60000,           -- SSE responses end after this (clients reconnect)
    subscriptions = true,               -- the reserved webhook / pull-wake subscription APIs
    -- Webhooks never reach loopback, private, link-local, CGNAT, multicast or other
    -- non-public addresses (checked after resolving the host, at creation and at every
    -- delivery) and need https. Networks listed here are allowed anyway, plain http
    -- included, e.g. { "127.0.0.0/8" } for a receiver on this machine in development.
    webhook_allow_networks = {},
  },
  -- Browsers: the web pages (origins) that may call this server. A request whose Origin
  -- header names any other origin gets 403 and changes nothing, whatever its method, content
  -- type or route: a page you visit cannot post to your agents with your API keys (CSRF).
  -- Requests without Origin (curl, servers) are not affected. Entries: exact origins
  -- ("https://app.example"), "scheme://host:*" (any port), "null" (sandboxed iframes,
  -- file:// pages), or "*" alone for every origin. A list replaces this default.
  cors = {
    allowed_origins = { "http://localhost:*", "http://127.0.0.1:*", "http://[::1]:*" },
  },

  -- The agent layer (lua/ policy + plugins/); `agents = false` turns it off entirely.
  -- Documented key by key in README.md, "Agents and plugins".
  agents = {
    default_model = "openai",           -- model of a path before any iterate:agent:config:set
    models = {
      openai = {
        model = "gpt-4o",
        base_url = "https://api.openai.com/v1", -- OPENAI_BASE_URL in the environment overrides it
        api_key_env = "OPENAI_API_KEY",  -- name of the environment variable, never the key
        system_prompt = nil,             -- optional system prompt sent first
        api = "responses",               -- "responses" or "chat" (Chat Completions servers)
        connect_timeout_ms = 10000,      -- TCP + TLS connect
        timeout_ms = 600000,             -- a whole answer must finish within
        stall_timeout_ms = 120000,       -- longest silence (no byte received) before giving up
      },
      grok = {                           -- xAI realtime voice over a WebSocket
        url = "wss://api.x.ai/v1/realtime", -- XAI_REALTIME_URL in the environment overrides it
        model = nil,                     -- sent as ?model=<name> when set
        api_key_env = "XAI_API_KEY",     -- name of the environment variable, never the key
        voice = "ara",
        instructions = "You are a helpful voice assistant. Keep your responses conversational and concise since they will be spoken aloud.",
        -- the server transcribes the user's audio, so a spoken turn joins the history as
        -- text (every model sees it); false: no transcription
        input_audio_transcription = { model = "whisper-large-v3-turbo" },
        -- server voice activity detection, sent as given (keys beyond these pass through);
        -- false sends null (no server VAD)
        turn_detection = { type = "server_vad", threshold = 0.5, prefix_padding_ms = 300,
                           silence_duration_ms = 500, create_response = true },
        idle_timeout_ms = 300000,        -- close a path's idle realtime connection after
        ready_timeout_ms = 10000,        -- wait this long for session.updated after connecting
        connect_timeout_ms = 10000,      -- TCP + TLS + WebSocket handshake
        response_timeout_ms = 60000,     -- a silent upstream fails the request after
        transcription_timeout_ms = 5000, -- an audio prompt waits this long after the answer for its transcription
      },
      echo = {
        delay_ms = 0,                    -- pause before each streamed word (demos, tests)
      },
    },
    prefixes = nil,                     -- list of path prefixes served by the agent; nil = all
    plugin_dir = "plugins",             -- relative to the directory holding lua/
    plugins_enabled = nil,              -- list of plugin names to load; nil = all found
    plugins_disabled = {},              -- plugin names never loaded
    -- Every key below is type-checked: a wrong type refuses the start, naming the key.
    instruction_budget = 10000000,      -- work units (instructions, 16 allocated bytes, C loop steps) a task may spend without yielding
    task_time_limit_ms = 50,            -- ... and ms of CPU time; past either it is killed (no pcall can keep it)
    load_instruction_budget = 10000000, -- ... and a plugin's load phase in total
    max_hook_errors = 5,                -- a plugin whose tasks fail this often is disabled
    memory_limit_mb = 512,              -- cap on the Lua state's memory; a plugin that reaches it is disabled
    max_tasks_per_plugin = 1000,        -- live tasks of one plugin; ds.spawn raises beyond
    max_tasks_per_path = 100,           -- live tasks working for one stream path
    max_cached_paths = 10000,           -- per-path agent states kept; idle ones beyond are rebuilt from the stream
  },
}
