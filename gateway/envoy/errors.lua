-- Answers from Envoy's gRPC-JSON transcoder, made to read like the edge's own
-- REST answers (gateway/transcoder.py). Runs only on the transcoded REST routes.
--
-- * A failed call: the services send the public error body and its HTTP status as
--   the plain trailers x-interlock-error and x-interlock-http-status (beside
--   grpc-status-details-bin, which the transcoder cannot put in our shape). They
--   become the answer. A failure without them (a transport error) is answered in
--   the same shape, with the status the transcoder chose.
-- * x-http-code (initial metadata) sets a 2xx status, grpc-gateway's convention.
-- * A route whose http rule has a response_body names its JSON key in the route's
--   metadata (response_key); the answer is that key's value alone.
-- * The gRPC headers the transcoder leaves behind are dropped.

local ERROR_BODY = "x-interlock-error"
local ERROR_STATUS = "x-interlock-http-status"
local HTTP_CODE = "x-http-code"
local FILTER = "envoy.filters.http.lua"
local GRPC_HEADERS = { "grpc-status", "grpc-message", "grpc-accept-encoding", "grpc-encoding", HTTP_CODE }

-- What the edge answers when a service fails without an error of ours
-- (services.common.errors.from_rpc_error), by the transcoder's HTTP status.
local FALLBACK = {
  [400] = { "invalid_request_error", "invalid_request", "invalid request" },
  [401] = { "authentication_error", "invalid_api_key", "unauthenticated" },
  [403] = { "permission_error", "permission_denied", "permission denied" },
  [404] = { "not_found_error", "not_found", "not found" },
  [429] = { "rate_limit_error", "rate_limit_exceeded", "resource exhausted" },
  [503] = { "upstream_error", "service_unavailable", "a gateway service is unavailable" },
  [504] = { "upstream_error", "timeout", "a gateway service is unavailable" },
}
local INTERNAL = { "server_error", "internal_error", "internal error" }

local function json_string(text)
  local escaped = text:gsub('[%c"\\]', function(c)
    if c == '"' then return '\\"' end
    if c == "\\" then return "\\\\" end
    return string.format("\\u%04x", c:byte())
  end)
  return '"' .. escaped .. '"'
end

local function fallback_body(status, request_id)
  local kind = FALLBACK[status] or INTERNAL
  return string.format(
    '{"error":{"type":"%s","message":"%s","param":null,"code":"%s"},"request_id":%s,"status":%d}',
    kind[1], kind[3], kind[2], json_string(request_id or ""), status
  )
end

local function replace_body(handle, headers, text)
  local body = handle:body(true)
  body:setBytes(text)
  headers:replace("content-length", tostring(#text))
  headers:replace("content-type", "application/json")
end

function envoy_on_request(handle)
  -- The response side cannot see request headers: keep the id for fallback bodies.
  local id = handle:headers():get("x-request-id")
  if id ~= nil then
    handle:streamInfo():dynamicMetadata():set(FILTER, "request_id", id)
  end
end

function envoy_on_response(handle)
  local headers = handle:headers()
  local status = tonumber(headers:get(":status")) or 500
  -- Only the router's answers carry this: Envoy's own replies are shaped by local_reply_config.
  local from_upstream = headers:get("x-envoy-upstream-service-time") ~= nil
  local error_body = headers:get(ERROR_BODY)
  local error_status = headers:get(ERROR_STATUS)
  local code = headers:get(HTTP_CODE)
  for _, name in ipairs(GRPC_HEADERS) do
    headers:remove(name)
  end
  headers:remove(ERROR_BODY)
  headers:remove(ERROR_STATUS)

  if error_body == nil and from_upstream and status >= 400 then
    -- Failed after the initial metadata: our trailers, if any, come at the end.
    handle:body(true)
    local trailers = handle:trailers()
    if trailers ~= nil then
      error_body = trailers:get(ERROR_BODY)
      error_status = trailers:get(ERROR_STATUS)
      trailers:remove(ERROR_BODY)
      trailers:remove(ERROR_STATUS)
    end
    -- The wrapper taken before the body was waited for is stale now; a fresh one is not.
    headers = handle:headers()
    if error_body == nil then
      local meta = handle:streamInfo():dynamicMetadata():get(FILTER) or {}
      replace_body(handle, headers, fallback_body(status, meta["request_id"]))
      return
    end
  end
  if error_body ~= nil then
    if error_status ~= nil and error_status:match("^[1-5]%d%d$") then
      headers:replace(":status", error_status)
    end
    replace_body(handle, headers, error_body)
    return
  end

  if code ~= nil and code:match("^2%d%d$") then
    headers:replace(":status", code)
  end
  local key = handle:metadata():get("response_key")
  if key ~= nil and status < 300 then
    local body = handle:body(true)
    local text = body:getBytes(0, body:length())
    local inner = text:match('^{"' .. key .. '":(.*)}$')
    if inner ~= nil then
      replace_body(handle, headers, inner)
    end
  end
end
