"""Test doubles that ship with the package, for our tests and for users' own.

`fake_claude` is a stand-in CLI that misbehaves on request, `fake_api` a fake Messages
API the real CLI runs against offline, `claude_install` installs a pinned real CLI.
"""

#: The CLI's arguments for a stream-json session, the way bridges and SDKs run it, with
#: the Bash tool allowed (tool calls are what cancels interrupt).
STREAM_JSON_ARGS = (
    "-p",
    "--input-format",
    "stream-json",
    "--output-format",
    "stream-json",
    "--verbose",
    "--allowedTools",
    "Bash",
)
