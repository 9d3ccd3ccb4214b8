"""The OpenAI-compatible types (orchestrator_core.openai): every refusal names its field, null
means "default", and the ``openai`` SDK itself sends requests our types accept and parses
every answer our builders make."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx2
import openai
import pytest
from hypothesis import given
from hypothesis import strategies as st
from openai.types import Completion, Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from orchestrator_core import (
    ErrorCode,
    FieldError,
    JobKind,
    JobNotFound,
    JobParams,
    ModelNotFound,
    OrchestratorError,
    Priority,
    QueueFull,
    RequestInvalid,
)
from orchestrator_core.openai import (
    CHAT_DEFAULT_MAX_TOKENS,
    COMPLETION_DEFAULT_MAX_TOKENS,
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    OpenAIRequest,
    ResponseBuilder,
    messages_from_json,
    model_list,
    model_object,
    openai_error,
    openai_error_type,
    user_session_id,
)
from orchestrator_core.sse import encode_data

COMPLETION: dict[str, Any] = {"model": "llama", "prompt": "Hello"}
CHAT: dict[str, Any] = {"model": "llama", "messages": [{"role": "user", "content": "Hi"}]}
BASES: dict[str, tuple[type[OpenAIRequest], dict[str, Any]]] = {
    "completion": (CompletionRequest, COMPLETION),
    "chat": (ChatCompletionRequest, CHAT),
}


def refusal(kind: str, patch: dict[str, Any]) -> RequestInvalid:
    cls, base = BASES[kind]
    with pytest.raises(RequestInvalid) as info:
        cls.parse({**base, **patch})
    return info.value


# (kind, patch, field named, message) — one bad field each, refused alone and by name.
REFUSED: list[tuple[str, dict[str, Any], str, str]] = [
    # shared sampling limits
    ("completion", {"temperature": 3.0}, "temperature", "must be between 0.0 and 2.0, got 3.0"),
    ("chat", {"temperature": -0.1}, "temperature", "must be between 0.0 and 2.0, got -0.1"),
    ("completion", {"top_p": 1.5}, "top_p", "must be between 0.0 and 1.0, got 1.5"),
    ("completion", {"max_tokens": 0}, "max_tokens", "must be between 1 and 1000000, got 0"),
    ("chat", {"max_tokens": 0}, "max_tokens", "must be between 1 and 1000000, got 0"),
    ("chat", {"max_completion_tokens": 0}, "max_completion_tokens", "must be between 1"),
    ("completion", {"presence_penalty": 2.5}, "presence_penalty", "between -2.0 and 2.0"),
    ("chat", {"frequency_penalty": -3}, "frequency_penalty", "between -2.0 and 2.0, got -3"),
    ("completion", {"seed": -1}, "seed", "must be between 0 and 18446744073709551615"),
    ("completion", {"stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4 stop strings, got 5"),
    ("chat", {"stop": ""}, "stop[0]", "must not be empty"),
    ("chat", {"stop": 5}, "stop", "must be a list"),
    ("completion", {"user": "u" * 257}, "user", "must be at most 256 characters"),
    ("completion", {"stream": "yes"}, "stream", "must be a boolean, got 'yes'"),
    (
        "chat",
        {"stream": 1, "stream_options": {"include_usage": True}},
        "stream",
        "must be a boolean",
    ),
    ("chat", {"priority": "urgent"}, "priority", "must be one of interactive or batch"),
    ("completion", {"top_k": -1}, "top_k", "must be between 0 and 1000000"),
    ("chat", {"repetition_penalty": 2.5}, "repetition_penalty", "must be between 0.0 and 2.0"),
    ("completion", {"model": ""}, "model", "must not be empty"),
    ("completion", {"model": None}, "model", "is required"),
    ("completion", {"temperature": "hot"}, "temperature", "must be a number"),
    # the prompt
    ("completion", {"prompt": ["a", "b"]}, "prompt", "arrays of prompts are not supported"),
    ("completion", {"prompt": [1, 2, 3]}, "prompt", "arrays of prompts are not supported"),
    ("completion", {"prompt": ""}, "prompt", "must not be empty"),
    ("completion", {"prompt": None}, "prompt", "is required"),
    # streaming
    (
        "completion",
        {"stream_options": {"include_usage": True}},
        "stream_options",
        "only allowed when stream is true",
    ),
    (
        "chat",
        {"stream": False, "stream_options": {}},
        "stream_options",
        "only allowed when stream is true",
    ),
    (
        "chat",
        {"stream": True, "stream_options": {"include_obfuscation": True}},
        "stream_options.include_obfuscation",
        "not supported",
    ),
    (
        "chat",
        {"stream": True, "stream_options": {"include_usage": 1}},
        "stream_options.include_usage",
        "must be a boolean",
    ),
    (
        "chat",
        {"stream": True, "stream_options": {"chunked": True}},
        "stream_options.chunked",
        "not supported",
    ),
    # what we cannot honour: completions
    ("completion", {"n": 2}, "n", "only n=1 is supported (one choice per request), got 2"),
    ("completion", {"n": 0}, "n", "only n=1 is supported"),
    ("completion", {"best_of": 3}, "best_of", "only best_of=1 is supported, got 3"),
    ("completion", {"logprobs": 0}, "logprobs", "not supported (no log probabilities)"),
    ("completion", {"logprobs": 5}, "logprobs", "not supported"),
    ("completion", {"echo": True}, "echo", "not supported"),
    ("completion", {"suffix": "}"}, "suffix", "not supported (no insertion)"),
    ("completion", {"logit_bias": {"50256": -100}}, "logit_bias", "not supported"),
    ("completion", {"tools": [{"type": "function"}]}, "tools", "not supported (no tool calling)"),
    ("completion", {"functions": [{"name": "f"}]}, "functions", "not supported (no tool calling)"),
    ("completion", {"temprature": 0.5}, "temprature", "not supported"),
    ("completion", {"messages": [{"role": "user", "content": "x"}]}, "messages", "not supported"),
    # what we cannot honour: chat
    ("chat", {"n": 2}, "n", "only n=1 is supported (one choice per request), got 2"),
    (
        "chat",
        {"tools": [{"type": "function", "function": {"name": "f"}}]},
        "tools",
        "no tool calling",
    ),
    ("chat", {"tool_choice": "auto"}, "tool_choice", "not supported (no tool calling)"),
    ("chat", {"tool_choice": {"type": "function"}}, "tool_choice", "no tool calling"),
    ("chat", {"functions": [{"name": "f"}]}, "functions", "not supported (no tool calling)"),
    ("chat", {"function_call": "auto"}, "function_call", "not supported (no tool calling)"),
    (
        "chat",
        {"response_format": {"type": "json_object"}},
        "response_format",
        'only {"type": "text"} is supported',
    ),
    (
        "chat",
        {"response_format": {"type": "json_schema", "json_schema": {}}},
        "response_format",
        "only",
    ),
    ("chat", {"logprobs": True}, "logprobs", "not supported (no log probabilities)"),
    ("chat", {"top_logprobs": 3}, "top_logprobs", "not supported (no log probabilities)"),
    ("chat", {"audio": {"voice": "alloy", "format": "wav"}}, "audio", "not supported (text only)"),
    ("chat", {"modalities": ["text", "audio"]}, "modalities", 'only ["text"] is supported'),
    ("chat", {"prediction": {"type": "content", "content": "x"}}, "prediction", "not supported"),
    ("chat", {"store": True}, "store", "not supported (completions are not stored)"),
    ("chat", {"service_tier": "flex"}, "service_tier", "use priority (interactive or batch)"),
    ("chat", {"logit_bias": {"1": 1}}, "logit_bias", "not supported"),
    ("chat", {"reasoning_effort": "high"}, "reasoning_effort", "not supported"),
    ("chat", {"metadata": {"k": "v"}}, "metadata", "not supported"),
    ("chat", {"prompt": "x"}, "prompt", "not supported"),
    # messages
    ("chat", {"messages": []}, "messages", "must contain at least one message"),
    ("chat", {"messages": None}, "messages", "is required"),
    ("chat", {"messages": "hi"}, "messages", "must be a list"),
    (
        "chat",
        {"messages": [{"role": "tool", "content": "42", "tool_call_id": "c"}]},
        "messages[0].role",
        "tool messages are not supported (no tool calling)",
    ),
    (
        "chat",
        {"messages": [{"role": "function", "content": "42", "name": "f"}]},
        "messages[0].role",
        "function messages are not supported",
    ),
    (
        "chat",
        {"messages": [{"role": "bot", "content": "x"}]},
        "messages[0].role",
        "must be one of system, user, assistant, developer, got 'bot'",
    ),
    ("chat", {"messages": [{"content": "x"}]}, "messages[0].role", "is required"),
    ("chat", {"messages": [{"role": "user"}]}, "messages[0].content", "is required"),
    (
        "chat",
        {"messages": [{"role": "user", "content": None}]},
        "messages[0].content",
        "must be a string or a list of text parts",
    ),
    (
        "chat",
        {"messages": [{"role": "user", "content": 7}]},
        "messages[0].content",
        "must be a string or a list of text parts",
    ),
    (
        "chat",
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}],
                }
            ]
        },
        "messages[0].content[0].type",
        "only \"text\" parts are supported, got 'image_url'",
    ),
    (
        "chat",
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "a"},
                        {"type": "input_audio", "input_audio": {}},
                    ],
                }
            ]
        },
        "messages[0].content[1].type",
        'only "text" parts are supported',
    ),
    (
        "chat",
        {"messages": [{"role": "user", "content": [{"text": "a"}]}]},
        "messages[0].content[0].type",
        "is required",
    ),
    (
        "chat",
        {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
        "messages[0].content[0].text",
        "is required",
    ),
    (
        "chat",
        {"messages": [{"role": "user", "content": ["a"]}]},
        "messages[0].content[0]",
        "must be a JSON object",
    ),
    (
        "chat",
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "a", "cache_control": {"type": "ephemeral"}}
                    ],
                }
            ]
        },
        "messages[0].content[0].cache_control",
        "not supported",
    ),
    (
        "chat",
        {"messages": [{"role": "assistant", "content": "x", "tool_calls": [{"id": "c"}]}]},
        "messages[0].tool_calls",
        "not supported",
    ),
    (
        "chat",
        {"messages": [{"role": "user", "content": "x", "name": ""}]},
        "messages[0].name",
        "must not be empty",
    ),
    (
        "chat",
        {"messages": [CHAT["messages"][0], {"role": "user", "content": "x", "name": 5}]},
        "messages[1].name",
        "must be a string",
    ),
]


@pytest.mark.parametrize(("kind", "patch", "field", "message"), REFUSED)
def test_every_refusal_names_its_field(
    kind: str, patch: dict[str, Any], field: str, message: str
) -> None:
    cls, base = BASES[kind]
    body = {k: v for k, v in {**base, **patch}.items() if v is not None}  # None: left out
    with pytest.raises(RequestInvalid) as info:
        cls.parse(body)
    err = info.value
    assert [e.field for e in err.errors] == [field], err.message
    assert err.errors[0].message.startswith(f"{field}: "), err.errors[0].message
    assert message in err.errors[0].message
    assert err.code in (ErrorCode.INVALID_REQUEST, ErrorCode.INVALID_PARAMETER)
    assert err.http_status == 400
    assert openai_error(err)["error"]["param"] == field


def test_several_bad_fields_are_all_named_in_order() -> None:
    err = refusal("chat", {"n": 2, "temperature": 9, "tools": [{}], "logprobs": True})
    assert [e.field for e in err.errors] == ["temperature", "n", "tools", "logprobs"]
    assert err.message.startswith("temperature: must be between 0.0 and 2.0, got 9")


@pytest.mark.parametrize(
    "body",
    [b'{"model": "m",', b"[1, 2]", b'"prompt"', b"\xff\xfe"],
    ids=["truncated", "array", "string", "not-utf8"],
)
def test_a_body_that_is_not_a_json_object_is_invalid_request(body: bytes) -> None:
    with pytest.raises(RequestInvalid) as info:
        CompletionRequest.parse(body)
    assert info.value.code is ErrorCode.INVALID_REQUEST
    assert info.value.errors[0].field == "body"
    assert openai_error(info.value)["error"]["param"] is None


# Fields OpenAI clients send as null (or at their "off" value): all accepted, all defaults.
NEUTRAL: list[tuple[str, dict[str, Any]]] = [
    ("completion", {"stop": None, "seed": None, "user": None, "logprobs": None, "n": None}),
    ("completion", {"temperature": None, "top_p": None, "max_tokens": None, "stream": None}),
    ("completion", {"presence_penalty": None, "frequency_penalty": None, "priority": None}),
    ("completion", {"n": 1, "best_of": 1, "echo": False, "suffix": "", "logit_bias": {}}),
    ("completion", {"best_of": None, "echo": None, "suffix": None, "stream_options": None}),
    ("completion", {"tools": [], "functions": None, "top_k": None, "repetition_penalty": None}),
    ("completion", {"some_future_field": None, "another": [], "a_map": {}}),
    ("chat", {"max_tokens": None, "max_completion_tokens": None, "n": 1, "logprobs": False}),
    ("chat", {"top_logprobs": None, "tools": [], "tool_choice": "none", "function_call": None}),
    ("chat", {"response_format": {"type": "text"}, "audio": None, "modalities": ["text"]}),
    ("chat", {"prediction": None, "store": False, "service_tier": "auto", "metadata": {}}),
    ("chat", {"parallel_tool_calls": False, "top_logprobs": 0, "service_tier": "default"}),
    ("chat", {"stream": True, "stream_options": {"include_usage": None}}),
    ("chat", {"stream": True, "stream_options": {"include_obfuscation": False}}),
    ("chat", {"stream": True, "stream_options": {}}),
    (
        "chat",
        {
            "messages": [
                {"role": "user", "content": "Hi", "name": None},
                {
                    "role": "assistant",
                    "content": "Hello",
                    "refusal": None,
                    "tool_calls": None,
                    "function_call": None,
                    "audio": None,
                    "annotations": [],
                },
            ]
        },
    ),
]


@pytest.mark.parametrize(("kind", "patch"), NEUTRAL)
def test_null_and_off_values_are_accepted_as_defaults(kind: str, patch: dict[str, Any]) -> None:
    cls, base = BASES[kind]
    req = cls.parse({**base, **patch})
    params = req.job_params()
    assert params.temperature == 1.0 and params.top_p == 1.0 and params.stop == ()
    assert (params.top_k, params.repetition_penalty, params.seed) == (0, 1.0, None)
    assert (params.presence_penalty, params.frequency_penalty) == (0.0, 0.0)
    assert params.max_tokens == cls.default_max_tokens
    assert req.priority_or(Priority.INTERACTIVE) is Priority.INTERACTIVE
    assert req.validate() is req


def test_a_completion_carries_every_sampling_field_into_its_job() -> None:
    req = CompletionRequest.parse(
        {
            "model": "llama",
            "prompt": "Once",
            "max_tokens": 5,
            "temperature": 0,
            "top_p": 0.5,
            "stop": "\n",
            "seed": 7,
            "presence_penalty": -1,
            "frequency_penalty": 1.5,
            "top_k": 40,
            "repetition_penalty": 1.1,
            "priority": "batch",
            "user": "alice",
        }
    )
    assert req.job_params() == JobParams(5, 0.0, 0.5, 40, 1.1, ("\n",), 7, -1.0, 1.5)
    assert req.priority_or("interactive") is Priority.BATCH
    assert (req.input_text(), req.prompt_text(), req.kind) == ("Once", "Once", JobKind.COMPLETION)
    assert req.session_id_or(None) == "alice"
    assert req.session_id_or("s-1") == "s-1"
    assert req.include_usage is False


def test_max_tokens_defaults_follow_openai_and_the_daemon() -> None:
    assert COMPLETION_DEFAULT_MAX_TOKENS == 16 and CHAT_DEFAULT_MAX_TOKENS == 256
    assert CompletionRequest.parse(COMPLETION).job_params().max_tokens == 16
    assert CompletionRequest.parse(COMPLETION).job_params(default_max_tokens=99).max_tokens == 99
    chat = ChatCompletionRequest.parse(CHAT)
    assert chat.job_params().max_tokens == 256
    assert chat.job_params(default_max_tokens=512).max_tokens == 512
    both = ChatCompletionRequest.parse({**CHAT, "max_tokens": 10, "max_completion_tokens": 20})
    assert both.job_params(default_max_tokens=512).max_tokens == 20
    legacy = ChatCompletionRequest.parse({**CHAT, "max_tokens": 10})
    assert legacy.max_tokens_or() == 10


def test_a_chat_keeps_roles_names_and_joined_text_parts() -> None:
    req = ChatCompletionRequest.parse(
        {
            "model": "llama",
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {"role": "system", "content": [{"type": "text", "text": "Ünïcode ✓"}]},
                {
                    "role": "user",
                    "name": "bob",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                },
                {"role": "assistant", "content": ""},
            ],
        }
    )
    assert req.messages[0].role == "developer"  # as sent; normalised on the way out
    expected = [
        {"role": "system", "content": "Be brief."},
        {"role": "system", "content": "Ünïcode ✓"},
        {"role": "user", "content": "a\nb", "name": "bob"},
        {"role": "assistant", "content": ""},
    ]
    assert req.normalized_messages() == expected
    text = req.messages_json()
    assert text == json.dumps(expected, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    assert " " not in text.replace("Be brief.", "").replace("Ünïcode ✓", "")
    assert messages_from_json(text) == expected
    assert req.prompt_text() == text
    assert req.input_text() == "system: Be brief.\nsystem: Ünïcode ✓\nuser: a\nb\nassistant: "
    assert req.kind is JobKind.CHAT


@pytest.mark.parametrize(
    "text", ["{}", "[1]", '[{"role": "user"}]', '[{"role": "user", "content": 1}]', "null"]
)
def test_messages_from_json_refuses_what_is_not_a_message_list(text: str) -> None:
    with pytest.raises(ValueError, match="not a list of chat messages"):
        messages_from_json(text)


@pytest.mark.parametrize("kind", ["completion", "chat"])
def test_requests_survive_a_json_round_trip(kind: str) -> None:
    cls, base = BASES[kind]
    body = {**base, "stop": ["x", "y"], "seed": 3, "stream": True, "user": "u@example.com"}
    body |= {"stream_options": {"include_usage": True}, "priority": "batch"}
    req = cls.parse(body)
    again = cls.parse(json.dumps(req.model_dump()))
    assert again == req
    assert again.job_params() == req.job_params()
    assert again.include_usage is True


def test_direct_construction_and_revalidation_raise_request_invalid() -> None:
    bad: dict[str, Any] = {"role": "tool", "content": "x"}
    with pytest.raises(RequestInvalid) as info:
        ChatMessage(**bad)
    assert info.value.errors[0].field == "role"
    req = CompletionRequest.parse(COMPLETION)
    req.temperature = 5.0
    with pytest.raises(RequestInvalid, match=r"temperature: must be between 0\.0 and 2\.0"):
        req.validate()


def test_the_request_types_have_json_schemas() -> None:
    for cls in (CompletionRequest, ChatCompletionRequest):
        schema = cls.model_json_schema()
        assert "model" in schema["properties"]
        assert "model" in schema["required"]


def test_user_session_ids_are_valid_session_ids() -> None:
    assert user_session_id("alice-1") == "alice-1"
    hashed = user_session_id("alice@example.com")
    assert hashed.startswith("user-") and len(hashed) == 37
    assert hashed == user_session_id("alice@example.com")
    assert user_session_id("x" * 129) != "x" * 129


# -- responses -------------------------------------------------------------------------------

COMPLETION_ANSWER = ResponseBuilder(JobKind.COMPLETION, "job-1", "llama", 1_700_000_000)
CHAT_ANSWER = ResponseBuilder(JobKind.CHAT, "job-1", "llama", 1_700_000_000)


@given(
    kind=st.sampled_from([JobKind.COMPLETION, JobKind.CHAT]),
    model=st.text(max_size=20),
    text=st.text(max_size=30),
)
def test_chunk_parts_render_exactly_the_chunk(kind: JobKind, model: str, text: str) -> None:
    b = ResponseBuilder(kind, "job-1", model, 1_700_000_000)
    before, after = b.chunk_parts()
    rendered = before + json.dumps(text, ensure_ascii=False) + after
    assert rendered == json.dumps(b.chunk(text), ensure_ascii=False, separators=(",", ":"))


def test_a_task_job_has_no_openai_answer() -> None:
    with pytest.raises(ValueError, match="completion and chat jobs only"):
        ResponseBuilder(JobKind.TASK, "job-1", "m", 0)


def test_completion_answers_parse_as_the_sdks_completion() -> None:
    b = COMPLETION_ANSWER
    assert b.id == "cmpl-job-1" and b.start_chunks() == []
    chunk = b.chunk("Hel")
    assert chunk["choices"][0] == {
        "index": 0,
        "text": "Hel",
        "logprobs": None,
        "finish_reason": None,
    }
    final = Completion.model_validate(b.final_chunk("length"))
    assert (final.choices[0].text, final.choices[0].finish_reason) == ("", "length")
    usage = Completion.model_validate(b.usage_chunk(3, 4))
    assert usage.choices == [] and usage.usage is not None and usage.usage.total_tokens == 7
    whole = Completion.model_validate(b.response("Hello", "stop", 2, 1))
    assert (whole.id, whole.object, whole.created, whole.model) == (
        "cmpl-job-1",
        "text_completion",
        1_700_000_000,
        "llama",
    )
    assert whole.choices[0].text == "Hello" and whole.choices[0].finish_reason == "stop"
    assert whole.usage is not None and whole.usage.model_dump(exclude_none=True) == {
        "prompt_tokens": 2,
        "completion_tokens": 1,
        "total_tokens": 3,
    }


def test_chat_answers_parse_as_the_sdks_chat_types() -> None:
    b = CHAT_ANSWER
    assert b.id == "chatcmpl-job-1"
    [first] = [ChatCompletionChunk.model_validate(c) for c in b.start_chunks()]
    assert first.choices[0].delta.role == "assistant" and first.choices[0].delta.content == ""
    token = ChatCompletionChunk.model_validate(b.chunk("Hi"))
    assert token.choices[0].delta.content == "Hi" and token.choices[0].finish_reason is None
    final = ChatCompletionChunk.model_validate(b.final_chunk("length"))
    assert final.choices[0].delta.content is None and final.choices[0].finish_reason == "length"
    usage = ChatCompletionChunk.model_validate(b.usage_chunk(5, 6))
    assert usage.choices == [] and usage.usage is not None and usage.usage.total_tokens == 11
    whole = ChatCompletion.model_validate(b.response("Hello!", "eos", 5, 2))
    assert whole.object == "chat.completion" and whole.id == "chatcmpl-job-1"
    assert whole.choices[0].message.role == "assistant"
    assert whole.choices[0].message.content == "Hello!"
    assert whole.choices[0].finish_reason == "stop"  # anything but "length" is "stop"
    # an answer sent back as the next request's history is accepted
    history = [*CHAT["messages"], b.response("Hello!", "stop", 5, 2)["choices"][0]["message"]]
    assert ChatCompletionRequest.parse({**CHAT, "messages": history}).messages[1].text() == "Hello!"


def test_model_objects_and_lists_parse_as_the_sdks_model() -> None:
    plain = model_object("llama-3-8b", created=1_700_000_000)
    assert plain == {
        "id": "llama-3-8b",
        "object": "model",
        "created": 1_700_000_000,
        "owned_by": "llama-orch",
    }
    ours = model_object("gemma", created=0, owned_by="acme", state="loaded", details={"pools": 2})
    assert ours["llorch"] == {"state": "loaded", "pools": 2}
    listed = model_list([plain, ours])
    assert listed["object"] == "list"
    models = [Model.model_validate(m) for m in listed["data"]]
    assert [m.id for m in models] == ["llama-3-8b", "gemma"]
    assert model_list([]) == {"object": "list", "data": []}


@pytest.mark.parametrize(
    ("err", "status", "type_", "param"),
    [
        (
            RequestInvalid([FieldError("n", ErrorCode.INVALID_PARAMETER, "n: no")]),
            400,
            "invalid_request_error",
            "n",
        ),
        (
            OrchestratorError("too big", code=ErrorCode.PAYLOAD_TOO_LARGE),
            413,
            "invalid_request_error",
            None,
        ),
        (OrchestratorError("who", code=ErrorCode.UNAUTHORIZED), 401, "authentication_error", None),
        (OrchestratorError("no", code=ErrorCode.FORBIDDEN), 403, "permission_error", None),
        (ModelNotFound("gpt-5"), 404, "not_found_error", None),
        (JobNotFound("job-x"), 404, "not_found_error", None),
        (
            OrchestratorError("ctx", code=ErrorCode.CONTEXT_TOO_LARGE),
            400,
            "invalid_request_error",
            None,
        ),
        (
            OrchestratorError("busy", code=ErrorCode.INVALID_STATE),
            409,
            "invalid_request_error",
            None,
        ),
        (QueueFull(10), 429, "rate_limit_error", None),
        (OrchestratorError("quota", code=ErrorCode.QUOTA_EXCEEDED), 429, "rate_limit_error", None),
        (OrchestratorError("none", code=ErrorCode.NO_CAPACITY), 503, "server_error", None),
        (OrchestratorError("oops"), 500, "server_error", None),
        (OrchestratorError("late", code=ErrorCode.DEADLINE_EXCEEDED), 504, "server_error", None),
    ],
)
def test_errors_in_openais_shape_keep_our_code_and_status(
    err: OrchestratorError, status: int, type_: str, param: str | None
) -> None:
    assert err.http_status == status
    assert openai_error_type(status) == type_
    assert openai_error(err) == {
        "error": {"message": err.message, "type": type_, "param": param, "code": str(err.code)}
    }


# -- the openai SDK against a fake server built from these types -----------------------------

Handler = Callable[[str, dict[str, Any]], tuple[int, Any]]


def sdk_client(handler: Handler, seen: list[OpenAIRequest]) -> openai.OpenAI:
    """An ``openai`` client whose HTTP goes to ``handler``; request bodies are parsed with
    our request types (and kept in ``seen``) before the handler answers."""

    def respond(request: httpx2.Request) -> httpx2.Response:
        path = request.url.path
        body: dict[str, Any] = json.loads(request.content) if request.content else {}
        try:
            if path.endswith("/chat/completions"):
                seen.append(ChatCompletionRequest.parse(request.content))
            elif path.endswith("/completions"):
                seen.append(CompletionRequest.parse(request.content))
        except RequestInvalid as exc:
            return httpx2.Response(400, json=openai_error(exc))
        status, answer = handler(path, body)
        if isinstance(answer, list):  # a stream of chunks
            frames = b"".join(encode_data(c) for c in answer) + encode_data("[DONE]")
            headers = {"content-type": "text/event-stream"}
            return httpx2.Response(status, content=frames, headers=headers)
        return httpx2.Response(status, json=answer)

    http = httpx2.Client(transport=httpx2.MockTransport(respond))
    return openai.OpenAI(
        api_key="sk-test", base_url="http://orch.test/v1", http_client=http, max_retries=0
    )


def stream_of(b: ResponseBuilder, pieces: list[str], reason: str, usage: bool) -> list[Any]:
    out = [*b.start_chunks(), *(b.chunk(p) for p in pieces), b.final_chunk(reason)]
    return out + ([b.usage_chunk(4, len(pieces))] if usage else [])


def test_the_sdk_streams_a_completion() -> None:
    seen: list[OpenAIRequest] = []
    client = sdk_client(
        lambda _p, _b: (200, stream_of(COMPLETION_ANSWER, ["He", "llo"], "length", True)), seen
    )
    stream = client.completions.create(
        model="llama",
        prompt="Say hello",
        max_tokens=2,
        stop=["\n"],
        seed=1,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"priority": "batch"},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "Hello"
    assert [c.choices[0].finish_reason for c in chunks if c.choices] == [None, None, "length"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 2
    [req] = seen
    assert isinstance(req, CompletionRequest) and req.include_usage
    assert req.job_params().max_tokens == 2 and req.job_params().stop == ("\n",)
    assert req.priority_or("interactive") is Priority.BATCH


def test_the_sdk_streams_a_chat() -> None:
    seen: list[OpenAIRequest] = []
    client = sdk_client(
        lambda _p, _b: (200, stream_of(CHAT_ANSWER, ["Hi", " there"], "stop", False)), seen
    )
    stream = client.chat.completions.create(
        model="llama",
        messages=[
            {"role": "developer", "content": "Be kind."},
            {"role": "user", "content": [{"type": "text", "text": "Hello"}], "name": "bob"},
        ],
        max_completion_tokens=8,
        temperature=0.2,
        user="bob@example.com",
        stream=True,
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hi there"
    assert chunks[-1].choices[0].finish_reason == "stop"
    [req] = seen
    assert isinstance(req, ChatCompletionRequest)
    assert json.loads(req.messages_json()) == [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "Hello", "name": "bob"},
    ]
    assert req.job_params().max_tokens == 8 and req.job_params().temperature == 0.2
    assert req.session_id_or(None) == user_session_id("bob@example.com")


def test_the_sdk_reads_whole_answers_and_models() -> None:
    def handler(path: str, _body: dict[str, Any]) -> tuple[int, Any]:
        if path.endswith("/chat/completions"):
            return 200, CHAT_ANSWER.response("Hello!", "stop", 3, 2)
        if path.endswith("/completions"):
            return 200, COMPLETION_ANSWER.response("Hello", "length", 3, 1)
        if path.endswith("/models"):
            return 200, model_list([model_object("llama", created=1, state="loaded")])
        return 200, model_object("llama", created=1, state="available")

    seen: list[OpenAIRequest] = []
    client = sdk_client(handler, seen)
    chat = client.chat.completions.create(
        model="llama", messages=[{"role": "user", "content": "Hi"}]
    )
    assert chat.choices[0].message.content == "Hello!" and chat.usage is not None
    assert chat.usage.total_tokens == 5
    done = client.completions.create(model="llama", prompt="Hi")
    assert (done.choices[0].text, done.choices[0].finish_reason) == ("Hello", "length")
    assert [m.id for m in client.models.list()] == ["llama"]
    assert client.models.retrieve("llama").owned_by == "llama-orch"
    assert [r.max_tokens_or() for r in seen] == [CHAT_DEFAULT_MAX_TOKENS, 16]


@pytest.mark.parametrize(
    ("err", "exc_type"),
    [
        (QueueFull(5), openai.RateLimitError),
        (ModelNotFound("nope"), openai.NotFoundError),
        (OrchestratorError("no token", code=ErrorCode.UNAUTHORIZED), openai.AuthenticationError),
        (OrchestratorError("not yours", code=ErrorCode.FORBIDDEN), openai.PermissionDeniedError),
        (OrchestratorError("boom"), openai.InternalServerError),
    ],
)
def test_the_sdk_raises_our_errors_with_their_code(
    err: OrchestratorError, exc_type: type[openai.APIStatusError]
) -> None:
    client = sdk_client(lambda _p, _b: (err.http_status, openai_error(err)), [])
    with pytest.raises(exc_type) as info:
        client.completions.create(model="nope", prompt="Hi")
    assert info.value.status_code == err.http_status
    assert info.value.code == str(err.code)
    assert info.value.body == openai_error(err)["error"]
    assert err.message in str(info.value)


def test_the_sdk_raises_a_refusal_naming_the_field() -> None:
    client = sdk_client(lambda _p, _b: (200, {}), [])
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="llama", messages=[{"role": "user", "content": "Hi"}], n=2
        )
    assert info.value.param == "n" and info.value.code == "INVALID_PARAMETER"
    assert info.value.type == "invalid_request_error"
    assert "n: only n=1 is supported" in info.value.message


# -- property ---------------------------------------------------------------------------------

_text = st.text(max_size=40)
_parts = st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": _text}), max_size=3)
_message = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["system", "user", "assistant", "developer"]),
        "content": st.one_of(_text, _parts),
    },
    optional={"name": st.text(min_size=1, max_size=20)},
)


@given(messages=st.lists(_message, min_size=1, max_size=6))
def test_messages_json_keeps_every_role_name_and_text(messages: list[dict[str, Any]]) -> None:
    req = ChatCompletionRequest.parse(json.dumps({"model": "m", "messages": messages}))
    decoded = json.loads(req.messages_json())
    assert [m["role"] for m in decoded] == [
        "system" if m["role"] == "developer" else m["role"] for m in messages
    ]
    assert [m["content"] for m in decoded] == [
        m["content"]
        if isinstance(m["content"], str)
        else "\n".join(p["text"] for p in m["content"])
        for m in messages
    ]
    assert [m.get("name") for m in decoded] == [m.get("name") for m in messages]
    assert messages_from_json(req.messages_json()) == req.normalized_messages() == decoded
    assert ChatCompletionRequest.parse(req.model_dump()).messages_json() == req.messages_json()
