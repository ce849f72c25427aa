"""The OpenAPI 3 description of the admin API (served at /api/v1/openapi.json).

Written by hand, next to docs/admin.md; tests/admin/test_schema.py runs schemathesis
against a live relay with it, so a route missing here or an answer that contradicts it fails.
"""

from __future__ import annotations

from typing import Any

_ID = {"name": "id", "in": "path", "required": True,
       "schema": {"type": "string", "minLength": 1, "maxLength": 64, "pattern": "^[0-9A-Za-z]+$"}}


def _q(name: str, schema: dict, description: str = "") -> dict:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}


_LIMIT = _q("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 50})
_TEXT = {"type": "string", "maxLength": 320}
_NULLABLE_TEXT = {"type": ["string", "null"]}

_PROBLEM = {
    "type": "object",
    "required": ["type", "title", "status"],
    "properties": {
        "type": {"type": "string"}, "title": {"type": "string"},
        "status": {"type": "integer"}, "detail": {"type": "string"},
        "field": {"type": "string", "description": "the request field that is wrong (400)"},
    },
}

_RECIPIENT = {
    "type": "object",
    "required": ["address", "status"],
    "properties": {
        "address": {"type": "string"}, "status": {"type": "string"},
        "rule": {"type": "string"}, "reason": {"type": "string"},
        "attempts": {"type": "integer"}, "next_attempt": {"type": "number"},
        "last_error": {"type": "string"}, "remote_mta": {"type": "string"},
        "held_by": {"type": "string"},
    },
}

_MESSAGE_SUMMARY = {
    "type": "object",
    "required": ["id", "received_at", "sender", "size", "recipients"],
    "properties": {
        "id": {"type": "string"}, "received_at": {"type": "number"},
        "listener": {"type": "string"}, "client_ip": {"type": "string"},
        "sender": {"type": "string"}, "size": {"type": "integer"},
        "recipients": {"type": "array", "items": {"$ref": "#/components/schemas/Recipient"}},
    },
}

_PAGE = {
    "type": "object",
    "required": ["items", "next"],
    "properties": {"items": {"type": "array", "items": {"type": "object"}},
                   "next": {"type": ["string", "null"],
                            "description": "pass as `after` (`before` for history) for the next page"}},
}

_MESSAGE = {
    "type": "object",
    "required": ["id", "sender", "recipients", "headers"],
    "properties": {
        "id": {"type": "string"}, "received_at": {"type": "number"},
        "listener": {"type": "string"}, "client_ip": {"type": "string"},
        "client_name": _NULLABLE_TEXT, "helo": {"type": "string"},
        "auth_user": _NULLABLE_TEXT, "sender": {"type": "string"},
        "size": {"type": "integer"},
        "recipients": {"type": "array", "items": {"$ref": "#/components/schemas/Recipient"}},
        "headers": {"type": "array", "items": {"type": "array", "items": {"type": "string"},
                                               "minItems": 2, "maxItems": 2}},
    },
}

_SESSION = {
    "type": "object",
    "required": ["user", "role", "csrf_token"],
    "properties": {"user": {"type": "string"},
                   "role": {"type": "string", "enum": ["viewer", "operator", "admin"]},
                   "csrf_token": {"type": ["string", "null"]}},
}

# One step of policy explain; null when the server never asks it (after a refusal; auth
# without a user).
_EXPLAIN_STEP = {
    "type": ["object", "null"],
    "required": ["decision", "code", "enhanced", "rule", "reason"],
    "properties": {"decision": {"type": "string", "enum": ["accept", "reject", "badmail"]},
                   "code": {"type": "integer"}, "enhanced": {"type": ["string", "null"]},
                   "rule": {"type": "string"}, "reason": {"type": "string"}},
}

#: Recipients an attempt under way holds (retry, flush): not made due; free when it ends.
_LEASED = {"type": "array", "items": {
    "type": "object", "required": ["id", "address", "until", "until_text"],
    "properties": {"id": {"type": "string"}, "address": {"type": "string"},
                   "until": {"type": "number", "description": "lease end, epoch seconds "
                             "(renewed while the attempt lasts)"},
                   "until_text": {"type": "string", "description": "HH:MM:SS UTC"}}}}

_ACTION_RESULT = {
    "type": "object", "required": ["id", "recipients"],
    "properties": {"id": {"type": "string"}, "recipients": {"type": "integer"},
                   "leased": _LEASED},
}


def _json(schema: dict | str, description: str = "OK") -> dict:
    if isinstance(schema, str):
        schema = {"$ref": f"#/components/schemas/{schema}"}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _body(schema: dict, required: bool = True) -> dict:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


def _op(summary: str, role: str | None, ok: dict, *, parameters: list | None = None,
        body: dict | None = None, op_id: str, public: bool = False) -> dict:
    op: dict[str, Any] = {
        "operationId": op_id,
        "summary": summary,
        "description": f"Role: {role}." if role else "No login needed.",
        "responses": {**ok, "default": {
            "description": "an error (RFC 9457 problem details)",
            "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }},
    }
    if parameters:
        op["parameters"] = parameters
    if body is not None:
        op["requestBody"] = body
    if public:
        op["security"] = []
    return op


def openapi_document(version: str) -> dict:
    eml = {"200": {"description": "the message as stored",
                   "content": {"message/rfc822": {"schema": {"type": "string", "format": "binary"}}}}}
    queue_filters = [
        _q("status", {"type": "string", "enum": ["queued", "held", "badmail", "delivered", "bounced"]},
           "messages with a recipient in this state"),
        _q("domain", {"type": "string", "maxLength": 255}, "a recipient domain"),
        _q("sender", _TEXT, "an address, or a domain"),
        _q("recipient", _TEXT, "an address"),
        _LIMIT,
        _q("after", {"type": "string", "maxLength": 200}, "`next` of the previous page"),
    ]
    return {
        "openapi": "3.1.0",
        "info": {"title": "relaywarden admin API", "version": version,
                 "description": "The HTTP API of the relaywarden admin process (docs/admin.md)."},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}, {"session": []}],
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "an API token from `relaywarden admin-user token NAME`"},
                "session": {"type": "apiKey", "in": "cookie", "name": "rw_session",
                            "description": "from POST /api/v1/session; state changes also need "
                                           "the X-CSRF-Token header"},
            },
            "schemas": {"Problem": _PROBLEM, "Recipient": _RECIPIENT,
                        "MessageSummary": _MESSAGE_SUMMARY, "Page": _PAGE, "Message": _MESSAGE,
                        "Session": _SESSION, "ActionResult": _ACTION_RESULT},
        },
        "paths": {
            "/api/v1/session": {
                "post": _op("Log in", None, {"200": _json("Session")}, op_id="login", public=True,
                            body=_body({"type": "object", "required": ["username", "password"],
                                        "properties": {"username": {"type": "string"},
                                                       "password": {"type": "string"}}})),
                "get": _op("Who am I", "viewer", {"200": _json("Session")}, op_id="whoami"),
                "delete": _op("Log out", "viewer", {"204": {"description": "logged out"}},
                              op_id="logout"),
            },
            "/api/v1/queue": {
                "get": _op("List queued messages (oldest first, keyset pagination)", "viewer",
                           {"200": _json("Page")}, parameters=queue_filters, op_id="queueList"),
            },
            "/api/v1/queue/flush": {
                "post": _op("Make queued mail (of one domain) due now", "operator",
                            {"200": _json({"type": "object", "required": ["recipients", "leased"],
                                           "properties": {"recipients": {"type": "integer"},
                                                          "leased": _LEASED}})},
                            body=_body({"type": "object",
                                        "properties": {"domain": {"type": "string"}}}, required=False),
                            op_id="queueFlush"),
            },
            "/api/v1/queue/bulk": {
                "post": _op("An action on every message matching a filter", "admin",
                            {"200": _json({"type": "object", "required": ["messages", "recipients"],
                                           "properties": {"messages": {"type": "integer"},
                                                          "recipients": {"type": "integer"}}})},
                            body=_body({"type": "object", "required": ["action"],
                                        "properties": {
                                            "action": {"type": "string",
                                                       "enum": ["hold", "release", "retry", "delete"]},
                                            "status": {"type": "string"}, "domain": {"type": "string"},
                                            "sender": {"type": "string"},
                                            "recipient": {"type": "string"}}}),
                            op_id="queueBulk"),
            },
            "/api/v1/queue/{id}": {
                "get": _op("One message: envelope, recipients, headers", "viewer",
                           {"200": _json("Message")}, parameters=[_ID], op_id="queueShow"),
                "delete": _op("Delete a message (dsn=true: bounce it to the sender)", "operator",
                              {"200": _json({"type": "object", "required": ["id", "recipients"],
                                             "properties": {"id": {"type": "string"},
                                                            "recipients": {"type": "integer"},
                                                            "dsn_id": _NULLABLE_TEXT}})},
                              parameters=[_ID, _q("dsn", {"type": "boolean", "default": False})],
                              op_id="queueDelete"),
            },
            "/api/v1/queue/{id}/eml": {
                "get": _op("The message as stored", "viewer", eml, parameters=[_ID], op_id="queueEml"),
            },
            **{f"/api/v1/queue/{{id}}/{action}": {
                "post": _op(text, "operator", {"200": _json("ActionResult")}, parameters=[_ID],
                            op_id=f"queue{action.title()}")}
               for action, text in (("retry", "Try now (409: nothing waits for a retry, or every waiting "
                                              "recipient is leased by a live attempt: `leased`)"),
                                    ("hold", "Hold (409: nothing queued)"),
                                    ("release", "Release a held message (409: not held)"))},
            "/api/v1/badmail": {
                "get": _op("Quarantined messages", "viewer", {"200": _json("Page")},
                           parameters=[_LIMIT, _q("after", {"type": "string", "maxLength": 200})],
                           op_id="badmailList"),
            },
            "/api/v1/badmail/{id}": {
                "get": _op("One quarantined message with rule and reason", "viewer",
                           {"200": _json("Message")}, parameters=[_ID], op_id="badmailShow"),
                "delete": _op("Delete the quarantined recipients and files", "operator",
                              {"200": _json({"type": "object"})}, parameters=[_ID],
                              op_id="badmailDelete"),
            },
            "/api/v1/badmail/{id}/eml": {
                "get": _op("The quarantined message as stored", "viewer", eml, parameters=[_ID],
                           op_id="badmailEml"),
            },
            "/api/v1/badmail/{id}/release": {
                "post": _op("Send it on as if the policy had allowed it", "operator",
                            {"200": _json({"type": "object"})}, parameters=[_ID],
                            op_id="badmailRelease"),
            },
            "/api/v1/history": {
                "get": _op("Search the message history (newest first)", "viewer",
                           {"200": _json("Page")}, op_id="historySearch", parameters=[
                               _q("queue_id", {"type": "string", "maxLength": 64}),
                               _q("message_id", {"type": "string", "maxLength": 998}),
                               _q("sender", _TEXT, "an address or a domain"),
                               _q("recipient", _TEXT, "an address or a domain"),
                               _q("client", {"type": "string", "maxLength": 64}),
                               _q("status", {"type": "string", "enum": [
                                   "queued", "held", "delivered", "deferred", "bounced",
                                   "badmail", "deleted"]}),
                               _q("since", {"type": "string"}, "2h, 7d, an epoch time or an ISO date"),
                               _q("until", {"type": "string"}),
                               _LIMIT,
                               _q("before", {"type": "string", "maxLength": 200}),
                           ]),
            },
            "/api/v1/history/{id}": {
                "get": _op("A message's timeline", "viewer", {"200": _json({"type": "object"})},
                           parameters=[_ID], op_id="historyTimeline"),
            },
            "/api/v1/status": {
                "get": _op("Listeners, delivery, disk and queue now", "viewer",
                           {"200": _json({"type": "object", "required": [
                               "version", "config", "listeners", "delivery", "disk", "queue"]})},
                           op_id="status"),
            },
            "/api/v1/stats": {
                "get": _op("Per-minute counts for the dashboard", "viewer",
                           {"200": _json({"type": "object"})}, op_id="stats",
                           parameters=[_q("window", {"type": "string", "enum": ["hour", "day"],
                                                     "default": "hour"})]),
            },
            "/api/v1/config": {
                "get": _op("The effective config, secrets as \"***\"", "viewer",
                           {"200": _json({"type": "object", "required": ["config"]})},
                           op_id="config"),
            },
            "/api/v1/explain": {
                "post": _op("What the relay answers a client, sender and recipient, step by step "
                            "(as relaywarden policy explain)", "viewer",
                            {"200": _json({"type": "object",
                                           "required": ["connect", "auth", "sender", "recipient",
                                                        "need", "text"],
                                           "properties": {
                                               "connect": _EXPLAIN_STEP, "auth": _EXPLAIN_STEP,
                                               "sender": _EXPLAIN_STEP, "recipient": _EXPLAIN_STEP,
                                               "need": {"type": ["string", "null"],
                                                        "enum": ["tls", "user", "name", None],
                                                        "description": "what the client must do "
                                                        "or have first (STARTTLS, AUTH, a "
                                                        "verified host name) to get past the "
                                                        "refusal: ask again with tls, user or "
                                                        "name"},
                                               "lookups": {"type": "array", "items": {
                                                   "type": "object",
                                                   "required": ["step", "kind", "source",
                                                                "answer", "detail", "cached"],
                                                   "properties": {
                                                       "step": {"type": "string",
                                                                "enum": ["connect", "recipient"]},
                                                       "kind": {"type": "string", "enum": [
                                                           "dnsbl", "dnswl", "recipient"]},
                                                       "source": {"type": "string"},
                                                       "answer": {"type": "string"},
                                                       "detail": {"type": ["string", "null"]},
                                                       "cached": {"type": ["boolean", "null"]}}},
                                                   "description": "the DNS lists asked at "
                                                   "connect and the recipient validation "
                                                   "sources asked at RCPT, with their answers"},
                                               "text": {"type": "string"}}})},
                            body=_body({"type": "object", "required": ["listener", "client", "to"],
                                        "properties": {
                                            "listener": {"type": "string"},
                                            "client": {"type": "string"},
                                            "name": {"type": "string"},
                                            "user": {"type": "string", "description":
                                                     "the client logs in (SMTP AUTH) as this user"},
                                            "tls": {"type": "boolean", "default": False,
                                                    "description": "the client uses STARTTLS "
                                                    "(implicit-TLS listeners always have TLS); "
                                                    "400 on a listener with tls.mode = \"none\""},
                                            "groups": {"type": "array", "items": {"type": "string"}},
                                            "from": {"type": "string"}, "to": {"type": "string"}}}),
                            op_id="explain"),
            },
            "/api/v1/log/stream": {
                "get": _op("Server-sent events: one per log line, in event order", "viewer",
                           {"200": {"description": "an event stream",
                                    "content": {"text/event-stream": {"schema": {"type": "string"}}}}},
                           parameters=[_q("log", {"type": "string",
                                                  "enum": ["mail", "protocol", "outbound"],
                                                  "default": "mail"})],
                           op_id="logStream"),
            },
            "/api/v1/openapi.json": {
                "get": _op("This document", None, {"200": _json({"type": "object"})},
                           op_id="openapi", public=True),
            },
            "/metrics": {
                "get": _op("Prometheus metrics (loopback, or the admin.metrics_token_file token)",
                           None, {"200": {"description": "Prometheus text format",
                                          "content": {"text/plain": {"schema": {"type": "string"}}}}},
                           op_id="metrics", public=True),
            },
        },
    }
