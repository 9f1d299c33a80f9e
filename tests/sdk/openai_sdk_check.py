"""Drives a Tollgate gateway with the official OpenAI Python SDK.

Environment: TOLLGATE_BASE (gateway URL), TOLLGATE_CLIENT_ID, TOLLGATE_CLIENT_SECRET.
Prints one line per check; any failure raises and exits non-zero.
"""

import base64
import json
import os
import urllib.parse
import urllib.request

import openai

base = os.environ["TOLLGATE_BASE"]
basic = base64.b64encode(
    f"{os.environ['TOLLGATE_CLIENT_ID']}:{os.environ['TOLLGATE_CLIENT_SECRET']}".encode()
).decode()
request = urllib.request.Request(
    f"{base}/oauth/token",
    data=urllib.parse.urlencode({"grant_type": "client_credentials"}).encode(),
    headers={"Authorization": f"Basic {basic}"},
)
with urllib.request.urlopen(request) as resp:
    token = json.load(resp)["access_token"]

client = openai.OpenAI(base_url=f"{base}/v1", api_key=token, max_retries=0)
MODEL = "Qwen/Qwen2.5-7B-Instruct"

models = client.models.list()
assert [m.id for m in models.data] == [MODEL], models

chat = client.chat.completions.create(
    model=MODEL, messages=[{"role": "user", "content": "Hello!"}], max_tokens=10
)
assert chat.choices[0].message.role == "assistant"
assert chat.choices[0].message.content
assert chat.usage.completion_tokens <= 10 and chat.usage.prompt_tokens > 0
print("chat ok")

pieces, usage, finish = [], None, None
for chunk in client.chat.completions.create(
    model=MODEL,
    messages=[{"role": "user", "content": "Hello!"}],
    max_tokens=10,
    stream=True,
    stream_options={"include_usage": True},
):
    if chunk.usage:
        usage = chunk.usage
    for choice in chunk.choices:
        pieces.append(choice.delta.content or "")
        finish = choice.finish_reason or finish
assert "".join(pieces), "no streamed text"
assert finish in ("stop", "length"), finish
assert usage is not None and usage.completion_tokens >= 1
print("chat stream ok")

comp = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=6)
assert comp.choices[0].text and comp.usage.completion_tokens == 6
print("completions ok")

text = "".join(
    c.choices[0].text
    for c in client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=6, stream=True)
    if c.choices
)
assert text
print("completions stream ok")

try:
    openai.OpenAI(base_url=f"{base}/v1", api_key="bogus", max_retries=0).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "x"}]
    )
    raise AssertionError("a bogus key was accepted")
except openai.AuthenticationError:
    pass
try:
    client.chat.completions.create(model=MODEL, messages=[], max_tokens=5)
    raise AssertionError("empty messages were accepted")
except openai.BadRequestError as e:
    assert e.body["param"] == "messages", e.body
try:
    client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    raise AssertionError("an unknown model was accepted")
except openai.NotFoundError:
    pass
print("errors ok")
